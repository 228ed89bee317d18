"""ENVI (through SPy, `spectral`) and GeoTIFF (through `rasterio`) scenes in; georeferenced maps out.

Both packages are optional (requirements-imagery.txt) and both are needed for either format (GDAL,
through rasterio, places ENVI files and writes the GeoTIFF maps); they are imported only when such a
file is used, so a user with .mat files alone never needs them. A cube is read a block of rows at a
time from a memory map (ENVI) or a window (GeoTIFF) straight into the float32 scene, so it is never
held twice.
"""
import contextlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from utils import UserError, range_list_text

ENVI_SUFFIXES = (".hdr",)
TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = ENVI_SUFFIXES + TIFF_SUFFIXES
BLOCK_BYTES = 2 ** 26  # about 64 MiB of the file's values read per block
# ENVI header fields that place the image on the ground, copied as they are into ENVI outputs.
ENVI_GEO_FIELDS = ("map info", "coordinate system string", "projection info", "pixel size")
# Wavelength units as ENVI headers and GDAL name them, and how many micrometres one of them is.
MICROMETRES_PER_UNIT = {"nanometers": 1e-3, "nanometer": 1e-3, "nm": 1e-3, "micrometers": 1.0, "micrometer": 1.0,
                        "microns": 1.0, "um": 1.0, "\u00b5m": 1.0}
INSTALL = "pip install -r requirements-imagery.txt (spectral and rasterio)"


@dataclass
class Raster:
    """Where a raster scene lies on the ground, how it marks no-data and what its bands are: what its output
    maps carry.

    `kind` is 'envi' or 'tiff'; `crs` and `transform` are rasterio's (None and the identity for a file that
    is not placed on the ground, or whose placing cannot be right); `nodata` is the file's ignore / nodata
    value or None; `envi_geo` the ENVI header's placing fields, or None. `band_names`, `wavelengths` and
    `fwhm` hold one value per band used (or are None), in `wavelength_units`, as the file gives them.
    """
    kind: str
    crs: object
    transform: object
    nodata: float = None
    envi_geo: dict = None
    band_names: list = None
    wavelengths: list = None
    wavelength_units: str = None
    fwhm: list = None

    def describe(self):
        """What metrics.json records of the placing."""
        return dict(format=self.kind, crs=self.crs.to_wkt() if self.crs else None,
                    transform=list(self.transform)[:6] if self.transform is not None else None, nodata=self.nodata)


@dataclass
class RasterFile:
    """An ENVI or TIFF file as it declares itself, checked and open for reading: what scene and map readers share.

    `read_rows(top, rows, bands)` gives rows x W x len(bands) values of the 1-based `bands`, of the file's
    type; `read_mask(top, rows)` rows x W bool, True where the file's own mask marks no-data (or None).
    `alpha` are alpha bands (a mask, not bands of the scene); `flagged` the bands the file flags as bad;
    `bands` Raster's band fields for every band of the file; `unplaced` why the file's placing cannot be
    right (then `crs` is None and `transform` the identity), or None.
    """
    path: str
    kind: str
    height: int
    width: int
    count: int
    dtype: np.dtype
    read_rows: object
    nodata: float = None
    read_mask: object = None
    alpha: list = field(default_factory=list)
    flagged: list = field(default_factory=list)
    bands: dict = field(default_factory=dict)
    crs: object = None
    transform: object = None
    envi_geo: dict = None
    unplaced: str = None

    def raster(self, bands):
        """The Raster of a scene made of the 1-based `bands`."""
        per_band = {key: [values[band - 1] for band in bands] for key, values in self.bands.items()
                    if isinstance(values, list)}
        return Raster(self.kind, self.crs, self.transform, self.nodata, self.envi_geo,
                      wavelength_units=self.bands.get("wavelength_units"), **per_band)


def _spectral():
    try:
        import spectral.io.envi as envi
    except ImportError:
        raise UserError(f"ENVI and GeoTIFF scenes need SPy (spectral): {INSTALL}") from None
    return envi


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise UserError(f"ENVI and GeoTIFF scenes need rasterio: {INSTALL}") from None
    return rasterio


@contextlib.contextmanager
def _gdal_quiet():
    """rasterio without GDAL's side files (.aux.xml), with a small block cache, and without its warning about
    unreferenced files."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning
    # GDAL's block cache would otherwise grow to 5 % of the machine's memory while a big cube is written.
    with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=64), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield rasterio


def read_raster_scene(path, drop_bands=(), keep_bad_bands=False):
    """(hsi H x W x b float32, no-data H x W bool, bands used (1-based), Raster) of an ENVI .hdr or a TIFF.

    No-data pixels are those holding the ignore / nodata value, or a non-finite value, in any band used, or
    masked by the file's mask; their values in `hsi` are left for the caller to fill. Bands: those the file
    flags as bad (bbl) and those no-data in every pixel are left out, named in one note, unless
    `keep_bad_bands`; `drop_bands` ((low, high) ranges, 1-based) in any case.
    """
    with _opened(path) as file:
        if file.unplaced:
            print(f"note: {path} cannot be placed on the ground ({file.unplaced}): the maps are written without "
                  "georeferencing")
        flagged = [] if keep_bad_bands else file.flagged
        bands = select_bands(file.count, drop_bands, flagged + file.alpha, path)
        _check_scene_size(file, bands)
        if file.alpha:
            print(f"note: band {ranges_text(file.alpha)} of {path} is an alpha band: used as the no-data mask, "
                  "not as a band of the scene")
        hsi, bad_count, masked, detected = _read_cube(file, bands)
    empty = [] if keep_bad_bands or len(detected) == len(bands) else detected
    if keep_bad_bands and not file.flagged and not detected:
        print(f"note: --keep_bad_bands changes nothing for {path}: it flags no bad band (no bbl) and every band "
              "holds data")
    elif flagged or empty:
        _note_bad_bands(path, flagged, empty)
    partly = (bad_count > len(empty)) & (bad_count < len(bands))
    if empty:
        hsi = _without_bands(hsi, [bands.index(band) for band in empty])
        bands = [band for band in bands if band not in empty]
    _note_partly_missing(path, hsi, partly, file.nodata, bands)
    return hsi, (bad_count > len(empty)) | masked, bands, file.raster(bands)


@contextlib.contextmanager
def _opened(path):
    """The ENVI header or TIFF `path` as a checked RasterFile, open while the context lasts."""
    if path.lower().endswith(ENVI_SUFFIXES):
        yield _envi_file(path)
    else:
        with _tiff_file(path) as file:
            yield file


def _envi_file(path):
    """An ENVI header and its data file as a RasterFile, read from a memory map."""
    image = _open_envi(path)
    header, count = image.metadata, image.nbands
    cube = image.open_memmap(interleave="bip")  # H x W x B view of the file, whatever its interleave
    crs, transform, unreadable = _gdal_placing(image.filename)
    geo = {key: header[key] for key in ENVI_GEO_FIELDS if key in header}
    file = RasterFile(path, "envi", image.nrows, image.ncols, count, np.dtype(image.dtype),
                      lambda top, rows, bands: cube[top:top + rows][:, :, np.asarray(bands) - 1],
                      nodata=_number(path, "data ignore value", header.get("data ignore value")),
                      flagged=_bad_band_list(path, header.get("bbl"), count), bands=_envi_bands(header, count),
                      crs=crs, transform=transform, envi_geo=geo or None)
    return _unplace(file, unreadable or _map_info_problem(header.get("map info"))
                    or _crs_problem(crs, transform, image.ncols, image.nrows))


def _open_envi(path):
    """The SPy image of an ENVI header, checked: its fields, a real data type, a data file beside it of the size
    the header describes."""
    envi = _spectral()
    header = _envi_header(envi, path)
    try:
        envi.check_compatibility(header)
        params = envi.gen_params(header)
    except (envi.SpyException, KeyError, ValueError, TypeError) as error:
        raise UserError(f"cannot read ENVI header {path} ({type(error).__name__}: {error}): check it is an "
                        "ENVI header (first line 'ENVI') with valid fields") from None
    params.filename = _find_envi_data_file(path, header["interleave"])
    if params.filename is None:
        raise UserError(f"ENVI header {path} has no data file beside it (looked for its name with no extension, "
                        ".img, .dat or the interleave's name): put the data file next to it")
    image = {"bsq": envi.BsqFile, "bil": envi.BilFile, "bip": envi.BipFile}[header["interleave"]](params, header)
    if np.dtype(image.dtype).kind not in "biuf":
        raise UserError(f"ENVI file {path} holds {np.dtype(image.dtype)} values (data type "
                        f"{header.get('data type')}): only real-valued cubes can be scenes or maps")
    expected = image.offset + image.nrows * image.ncols * image.nbands * image.sample_size
    actual = os.path.getsize(image.filename)
    if actual != expected:
        raise UserError(f"ENVI data file {image.filename} holds {actual} bytes but its header {path} describes "
                        f"{image.nrows} lines x {image.ncols} samples x {image.nbands} bands of "
                        f"{np.dtype(image.dtype)} (+ {image.offset} header bytes) = {expected}: fix lines, samples, "
                        "bands, data type or header offset")
    return image


def _envi_header(envi, path):
    """The fields of an ENVI header, checked: the ones SPy needs, bsq, bil or bip interleave, and a byte order
    (little-endian, as ENVI and GDAL read a header without one)."""
    try:
        header = envi.read_envi_header(path)
    except (envi.SpyException, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read ENVI header {path} ({type(error).__name__}: {error}): check it is an "
                        "ENVI header (first line 'ENVI') with valid fields") from None
    absent = [key for key in ("samples", "lines", "bands", "data type", "interleave") if key not in header]
    if absent:
        raise UserError(f"ENVI header {path} has no {', '.join(absent)} (ENVI needs samples, lines, bands, data "
                        "type and interleave): fix the header")
    if header.get("file type") == "ENVI Spectral Library":
        raise UserError(f"{path} is an ENVI spectral library, not an image: pass an image's header")
    interleave = str(header["interleave"]).strip().lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise UserError(f"ENVI header {path} says 'interleave = {header['interleave']}': ENVI images are bsq, bil "
                        "or bip: fix the header")
    header["interleave"] = interleave
    if "byte order" not in header:
        print(f"note: ENVI header {path} gives no byte order: read as little-endian (byte order = 0), as ENVI "
              "and GDAL read it; add 'byte order = 1' to the header if the file is big-endian")
        header["byte order"] = "0"
    return header


def _find_envi_data_file(path, interleave):
    """The data file beside an ENVI header as SPy looks for it (the header's name with no extension, .img, .dat,
    ... or the interleave's name, in either case), or None."""
    stem = os.path.splitext(path)[0]
    suffixes = [suffix.lower() for suffix in _spectral().KNOWN_EXTS] + [str(interleave).lower()]
    for candidate in [stem] + [f"{stem}.{suffix}" for suffix in suffixes + [suffix.upper() for suffix in suffixes]]:
        if os.path.isfile(candidate):
            return candidate
    return None


def _envi_bands(header, count):
    """Raster's band fields from an ENVI header: band names, wavelength, fwhm (one per band) and their unit."""
    fields = {key: _per_band(header.get(name), count, kind) for key, name, kind in
              (("band_names", "band names", str), ("wavelengths", "wavelength", float), ("fwhm", "fwhm", float))}
    return dict(fields, wavelength_units=header.get("wavelength units"))


def _per_band(values, count, kind):
    """`values` as a list of one `kind` per band, or None when they are not that."""
    try:
        values = [kind(value) for value in values]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _gdal_placing(data_file):
    """GDAL's (crs, transform) of a file, and why GDAL cannot open it (None when it can)."""
    with _gdal_quiet() as rasterio:
        try:
            with rasterio.open(data_file) as source:
                return source.crs, source.transform, None
        except rasterio.errors.RasterioError as error:
            return None, None, f"GDAL cannot open it: {error}"


def _unplace(file, problem):
    """`file` with no placing (no CRS, the identity transform, no ENVI placing fields) when `problem` says why."""
    if problem:
        file.crs, file.transform, file.envi_geo, file.unplaced = None, _rasterio().Affine.identity(), None, problem
    return file


def _map_info_problem(map_info):
    """Why an ENVI `map info` cannot place an image (too few fields, a field that should be a number, a pixel
    size that is not positive, a UTM zone outside 1-60 or a hemisphere other than North / South), or None."""
    if map_info is None:
        return None
    fields = [str(item).strip() for item in (map_info if isinstance(map_info, list) else str(map_info).split(","))]
    if len(fields) < 7:
        return f"its map info has {len(fields)} fields, fewer than the 7 that place an image"
    for text in fields[1:7]:
        try:
            float(text)
        except ValueError:
            return f"its map info field '{text}' is not a number"
    if not (float(fields[5]) > 0 and float(fields[6]) > 0):
        return f"its map info's pixel size {fields[5]} x {fields[6]} is not positive"
    if fields[0].lower() == "utm":
        zone, hemisphere = (fields[7:9] + ["none", "none"])[:2]
        if not (zone.isdigit() and 1 <= int(zone) <= 60):
            return f"its map info's UTM zone {zone} is not one of 1-60"
        if hemisphere.lower() not in ("north", "south"):
            return f"its map info's UTM hemisphere '{hemisphere}' is not North or South"
    return None


def _crs_problem(crs, transform, width, height):
    """Why a CRS and transform cannot place an image (a geographic CRS whose corners are not degrees), or None."""
    if crs is None or not crs.is_geographic:
        return None
    corners = [(column, row) for column in (0, width) for row in (0, height)]
    xs = [transform.c + transform.a * column + transform.b * row for column, row in corners]
    ys = [transform.f + transform.d * column + transform.e * row for column, row in corners]
    if -180 <= min(xs) and max(xs) <= 360 and -90 <= min(ys) and max(ys) <= 90:
        return None
    return (f"its CRS {_crs_text(crs)} is in degrees but its corner ({transform.c:.10g}, {transform.f:.10g}) is "
            "not")


def _crs_text(crs):
    """'EPSG:32633', or the CRS's name where it has no EPSG code."""
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt().split('"')[1]


@contextlib.contextmanager
def _tiff_file(path):
    """A (Geo)TIFF as a RasterFile, open while the context lasts. Its mask band of its own (GDAL's internal
    mask, a .msk file or an alpha band, which is then not a band of the scene) marks no-data."""
    with _gdal_quiet() as rasterio:
        from rasterio.enums import ColorInterp, MaskFlags
        try:
            source = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise UserError(f"cannot read TIFF {path} ({error}): check it is a complete (Geo)TIFF") from None
        with source:
            _check_tiff(rasterio, source, path)

            def window(top, rows):
                return rasterio.windows.Window(0, top, source.width, rows)

            alpha = [band for band, kind in zip(source.indexes, source.colorinterp) if kind == ColorInterp.alpha]
            first = next((band for band in source.indexes if band not in alpha), 1)

            def read_rows(top, rows, bands):  # rasterio reads bands x rows x columns
                return source.read(bands, window=window(top, rows)).transpose(1, 2, 0)

            def read_mask(top, rows):  # the file's own mask band, as GDAL and QGIS read it
                return source.read_masks(first, window=window(top, rows)) == 0

            masked = MaskFlags.per_dataset in source.mask_flag_enums[first - 1]
            tags = [dict(source.tags(band, ns="ENVI"), **source.tags(band)) for band in source.indexes]
            file = RasterFile(path, "tiff", source.height, source.width, source.count, np.dtype(source.dtypes[0]),
                              read_rows, source.nodata, read_mask if masked else None, alpha,
                              _tiff_flagged(source, tags, path),
                              _tiff_bands(source, tags), source.crs, source.transform)
            yield _unplace(file, _crs_problem(source.crs, source.transform, source.width, source.height))


def _check_tiff(rasterio, source, path):
    """Refuse a TIFF of several pages, of a complex type or of several types, or shorter than its values."""
    pages = source.subdatasets
    if len(pages) > 1:
        raise UserError(f"TIFF {path} holds {len(pages)} pages ({_pages_text(rasterio, pages)}), but a scene or "
                        f"map is one image: extract the page you mean (gdal_translate GTIFF_DIR:1:{path} page1.tif; "
                        f"every page: gdal_translate -sds {path} page.tif; pages that are the bands of one cube: "
                        "gdalbuildvrt -separate, then gdal_translate) and pass that file")
    dtype = np.dtype(source.dtypes[0])
    if dtype.kind not in "biuf" or len(set(source.dtypes)) > 1:
        raise UserError(f"TIFF {path} holds {', '.join(sorted(set(source.dtypes)))} bands: only real-valued "
                        "cubes with one data type can be scenes or maps")
    if source.compression is None:  # compressed sizes cannot be foreseen
        bits = int(source.tags(1, ns="IMAGE_STRUCTURE").get("NBITS", 8 * dtype.itemsize))
        declared, actual = source.height * source.width * source.count * bits // 8, os.path.getsize(path)
        if actual < declared:
            raise UserError(f"TIFF {path} is damaged or truncated: it holds {actual} bytes, fewer than the {declared} "
                            f"of the {source.height} x {source.width} x {source.count} uncompressed {dtype} values "
                            "it declares: replace it with a complete copy")


def _pages_text(rasterio, pages, shown=4):
    """'page 1: 9 x 7 pixels x 5 bands int16; page 2: ...' for the first `shown` pages."""
    texts = []
    for number, name in enumerate(pages[:shown], start=1):
        with rasterio.open(name) as page:
            texts.append(f"page {number}: {page.height} x {page.width} pixels x {page.count} "
                         f"band{'s' if page.count > 1 else ''} {page.dtypes[0]}")
    return "; ".join(texts) + ("; ..." if len(pages) > shown else "")


def _tiff_flagged(source, tags, path):
    """1-based bands a TIFF flags as bad: band metadata `bbl` = 0 (default or ENVI domain, as EnMAP-Box writes
    it; a band without one is good), else a dataset `bbl` list like an ENVI header's."""
    flagged = any("bbl" in band_tags for band_tags in tags)
    per_band = [band_tags.get("bbl", 1) for band_tags in tags] if flagged else None
    listed = source.tags().get("bbl") or source.tags(ns="ENVI").get("bbl")
    return _bad_band_list(path, per_band or (listed and listed.strip("{} ").split(",")), source.count)


def _tiff_bands(source, tags):
    """Raster's band fields of a TIFF: band descriptions, band metadata `wavelength`, `fwhm`, `wavelength_units`
    (as GDAL's ENVI driver and EnMAP-Box write them), else GDAL's IMAGERY domain (micrometres)."""
    names = [name or "" for name in source.descriptions] if any(source.descriptions) else None
    fields = dict(band_names=names, wavelength_units=tags[0].get("wavelength_units"),
                  wavelengths=_per_band([band_tags.get("wavelength") for band_tags in tags], source.count, float),
                  fwhm=_per_band([band_tags.get("fwhm") for band_tags in tags], source.count, float))
    if fields["wavelengths"] is None:
        imagery = [source.tags(band, ns="IMAGERY") for band in source.indexes]
        central = _per_band([band_tags.get("CENTRAL_WAVELENGTH_UM") for band_tags in imagery], source.count, float)
        if central:
            fields.update(wavelengths=central, wavelength_units="Micrometers", fwhm=_per_band(
                [band_tags.get("FWHM_UM") for band_tags in imagery], source.count, float))
    return fields


def memory_bytes():
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_scene_size(file, bands):
    """A scene is at least 2 x 2 pixels, as a .mat scene must be, and fits in memory as float32."""
    if file.height < 2 or file.width < 2:
        raise UserError(f"the scene {file.path} is {file.height} x {file.width} pixels: at least 2 x 2 are needed")
    needed = file.height * file.width * (4 * len(bands) + 2)  # the float32 scene, its no-data counts and mask
    available = memory_bytes()
    if available is not None and needed > available:
        raise UserError(f"{file.path} is {file.height} x {file.width} pixels x {len(bands)} bands: "
                        f"{needed / 2 ** 30:.1f} GiB as float32, more than this machine's memory "
                        f"({available / 2 ** 30:.1f} GiB): crop it (gdal_translate -srcwin) or leave bands out "
                        "(--drop_bands)")


def _read_cube(file, bands):
    """Fill a float32 H x W x b scene with the 1-based `bands` of `file`, a block of rows at a time.

    Returns (hsi, bad_count, masked, empty): at each pixel how many bands hold the nodata value or a
    non-finite value (H x W) and whether the file's mask marks it no-data (H x W bool), and the bands that
    are no-data in every pixel.
    """
    height, width = file.height, file.width
    hsi = np.empty((height, width, len(bands)), np.float32)
    bad_count = np.empty((height, width), np.min_scalar_type(len(bands)))
    masked = np.zeros((height, width), bool)
    bad_per_band = np.zeros(len(bands), np.int64)
    rows = max(1, BLOCK_BYTES // max(1, width * file.dtype.itemsize * file.count))
    for top in range(0, height, rows):
        values = _read_rows(file, file.read_rows, top, rows, bands)
        block = hsi[top:top + rows]
        block[...] = values
        bad = ~np.isfinite(block)  # NaN, and values beyond float32's range
        if file.nodata is not None:
            bad |= values == file.nodata
        bad_count[top:top + rows] = bad.sum(axis=2)
        bad_per_band += bad.sum(axis=(0, 1))
        if file.read_mask is not None:
            masked[top:top + rows] = _read_rows(file, file.read_mask, top, rows)
    return hsi, bad_count, masked, [band for band, count in zip(bands, bad_per_band) if count == height * width]


def _read_rows(file, read, top, rows, *args):
    """`read(top, rows, *args)` as an array; a read that fails is a damaged file, named with the rows."""
    try:
        return np.asarray(read(top, rows, *args))
    except OSError as error:  # rasterio's read errors, GDAL's own message as their cause
        last = min(top + rows, file.height) - 1
        raise UserError(f"{'TIFF' if file.kind == 'tiff' else 'ENVI file'} {file.path} is damaged or truncated "
                        f"(reading rows {top}-{last} failed: {error.__cause__ or error}): replace it with a complete "
                        f"copy (gdalinfo -checksum {file.path} shows the damage)") from None


def _without_bands(hsi, drop):
    """`hsi` without the band columns `drop` (0-based), moved within its own memory: no second cube."""
    height, width, count = hsi.shape
    keep = np.setdiff1d(np.arange(count), drop)
    pixels, flat = hsi.reshape(-1, count), hsi.reshape(-1)
    for start in range(0, height * width, 2 ** 16):
        block = pixels[start:start + 2 ** 16][:, keep]  # a copy, taken before its place is written over
        flat[start * len(keep):start * len(keep) + block.size] = block.ravel()
    return flat[:height * width * len(keep)].reshape(height, width, len(keep))


def _note_bad_bands(path, flagged, empty):
    """One note naming the bands left out as bad: flagged in a bbl, and no-data in every pixel."""
    reasons = ([f"{ranges_text(flagged)} (flagged bad in its bbl)"] if flagged else []) + (
        [f"{ranges_text(empty)} (no-data in every pixel)"] if empty else [])
    count = len(flagged) + len(empty)
    print(f"note: {count} bad band{'s' if count > 1 else ''} of {path} left out: {', '.join(reasons)} "
          "(--keep_bad_bands keeps them)")


def _note_partly_missing(path, hsi, partly, nodata, bands):
    """A note on the pixels no-data in some bands only (`partly`, H x W bool), naming the band most often
    responsible."""
    pixels = np.flatnonzero(partly)
    if not len(pixels):
        return
    spectra, counts = hsi.reshape(-1, hsi.shape[2]), np.zeros(hsi.shape[2], np.int64)
    with np.errstate(over="ignore"):
        marker = np.float32(np.nan if nodata is None else nodata)  # as the no-data value reads in hsi
    for start in range(0, len(pixels), 2 ** 16):
        values = spectra[pixels[start:start + 2 ** 16]]
        counts += (~np.isfinite(values) | (values == marker)).sum(axis=0)
    worst = int(np.argmax(counts))
    print(f"note: {len(pixels)} pixels of {path} are no-data in some bands only (band {bands[worst]} in "
          f"{counts[worst]} of them): they are left out like no-data pixels; if that band is bad, "
          f"--drop_bands {bands[worst]} keeps them")


def select_bands(total, drop_ranges, bad_bands, path):
    """The 1-based bands used: all `total` but `bad_bands` and the (low, high) `drop_ranges`; an error when
    none is left. Ranges are checked against `total` without being expanded."""
    beyond = [high for low, high in drop_ranges if high > total]
    if beyond:
        raise UserError(f"--drop_bands names band {max(beyond)}, but {path} has {total} bands (numbered from 1): "
                        f"name bands from 1 to {total}")
    used = np.ones(total + 1, bool)
    used[0] = False
    for low, high in drop_ranges:
        used[low:high + 1] = False
    used[list(bad_bands)] = False
    bands = np.flatnonzero(used).tolist()
    if not bands:
        raise UserError(f"no band of {path} is left after --drop_bands and the bad-band flags: keep some bands")
    return bands


def _bad_band_list(path, bbl, total):
    """1-based bands flagged 0 in an ENVI `bbl`; a list of the wrong length is ignored with a note."""
    if bbl is None:
        return []
    try:
        flags = [float(flag) for flag in bbl]
    except (TypeError, ValueError):
        flags = []
    if len(flags) != total:
        print(f"note: the bbl of {path} does not hold one 0/1 flag per band ({len(flags)} for {total} bands): "
              "ignored, every band kept")
        return []
    return [band for band, flag in enumerate(flags, start=1) if flag == 0]


def _number(path, field, text):
    if text is None:
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        raise UserError(f"ENVI header {path}: '{field} = {text}' is not a number: fix the header") from None


def ranges_text(bands, separator=", "):
    """Ascending band numbers as '104-113, 148' text."""
    ranges = []
    for band in bands:
        if ranges and band == ranges[-1][1] + 1:
            ranges[-1][1] = band
        else:
            ranges.append([band, band])
    return range_list_text(ranges, separator)


def read_raster_map(path, shape, scene_raster=None, scene_path=None):
    """A ground-truth map from the first band of an ENVI .hdr or a TIFF: H x W values, as stored.

    The file is checked as a scene's is, and its size against the scene's `shape`, before any value is read;
    where both it and the scene (`scene_raster`) are placed on the ground, they must share one grid.
    """
    with _opened(path) as file:
        if (file.height, file.width) != tuple(shape):
            raise UserError(f"the ground truth {path} is {file.height} x {file.width} pixels but the scene is "
                            f"{shape[0]} x {shape[1]}: pass the map of this scene")
        if file.unplaced:
            print(f"note: the ground truth {path} cannot be placed on the ground ({file.unplaced}): its grid is not "
                  "compared with the scene's")
        _check_same_grid(file, scene_raster, scene_path)
        return _read_rows(file, file.read_rows, 0, file.height, [1])[:, :, 0]


def _check_same_grid(file, raster, scene_path):
    """An error unless a map and a scene that are both placed on the ground share their CRS and transform."""
    if raster is None or raster.crs is None or file.crs is None:
        return
    tolerance = 1e-3 * min(abs(raster.transform.a), abs(raster.transform.e))  # a thousandth of a pixel
    if file.crs == raster.crs and file.transform.almost_equals(raster.transform, precision=tolerance):
        return
    from rasterio.transform import array_bounds
    west, south, east, north = array_bounds(file.height, file.width, raster.transform)
    raise UserError(f"the ground truth {file.path} and the scene {scene_path} lie on different grids (map: "
                    f"{_grid_text(file.crs, file.transform)}; scene: {_grid_text(raster.crs, raster.transform)}): "
                    f"pass the map of this scene, or resample it onto the scene's grid (gdalwarp -t_srs "
                    f"{_crs_text(raster.crs)} -te {west:.10g} {south:.10g} {east:.10g} {north:.10g} -ts {file.width} "
                    f"{file.height} -r near {file.path} map.tif)")


def _grid_text(crs, transform):
    """'EPSG:32633, corner (500000, 4600000), 30 x 30 pixels'."""
    return (f"{_crs_text(crs)}, corner ({transform.c:.10g}, {transform.f:.10g}), {transform.a:.10g} x "
            f"{-transform.e:.10g} pixels")


def map_nodata(raster):
    """The no-data value written in output rasters: the input's, unless it could be a score in [0, 1] or is
    not a float32 value, then NaN."""
    value = raster.nodata
    if value is None or not np.isfinite(value) or 0 <= value <= 1 or np.float32(value) != value:
        return float("nan")
    return float(value)


def write_map(folder, name, score_map, raster):
    """`score_map` (H x W float32, NaN at no-data) as <name>.tif, placed like the input, and as an ENVI
    <name>.hdr / .img pair when the input was ENVI."""
    nodata = map_nodata(raster)
    values = np.where(np.isnan(score_map), np.float32(nodata), score_map).astype(np.float32)
    if raster.transform is not None:
        with _gdal_quiet() as rasterio:
            profile = dict(driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                           dtype="float32", crs=raster.crs, transform=raster.transform, nodata=nodata,
                           compress="deflate", tiled=True)
            with rasterio.open(os.path.join(folder, name + ".tif"), "w", **profile) as target:
                target.write(values, 1)
    if raster.kind == "envi":
        envi = _spectral()
        metadata = dict(raster.envi_geo or {}, **{"data ignore value": nodata, "band names": [name],
                                                  "description": "BS3LNet detection map"})
        envi.save_image(os.path.join(folder, name + ".hdr"), values[:, :, None], dtype=np.float32,
                        interleave="bsq", metadata=metadata, force=True, ext=".img")


def write_cube(path, cube, raster, missing=None, rows_per_block=64):
    """An H x W x B float32 cube as a GeoTIFF placed like the input, no-data where `missing` (H x W bool), written
    a block of rows at a time, its bands named as the input's bands used (names and wavelengths)."""
    nodata = map_nodata(raster)
    with _gdal_quiet() as rasterio:
        height, width, bands = cube.shape
        profile = dict(driver="GTiff", height=height, width=width, count=bands, dtype="float32", crs=raster.crs,
                       transform=raster.transform, nodata=nodata, interleave="pixel", BIGTIFF="IF_SAFER")
        with rasterio.open(path, "w", **profile) as target:
            for top in range(0, height, rows_per_block):
                block = np.ascontiguousarray(cube[top:top + rows_per_block].transpose(2, 0, 1))
                if missing is not None:
                    block[:, missing[top:top + rows_per_block]] = nodata
                target.write(block, window=rasterio.windows.Window(0, top, width, block.shape[1]))
            _describe_bands(target, raster)


def _describe_bands(target, raster):
    """Band names (GDAL band descriptions) and wavelengths (band metadata `wavelength`, `fwhm`,
    `wavelength_units`, as GDAL's ENVI driver and EnMAP-Box write them, and GDAL's IMAGERY domain in
    micrometres where the unit is known) of the bands of `raster`."""
    to_micrometres = MICROMETRES_PER_UNIT.get(str(raster.wavelength_units).strip().lower())
    for band in range(1, target.count + 1):
        if raster.band_names and raster.band_names[band - 1]:
            target.set_band_description(band, raster.band_names[band - 1])
        if not raster.wavelengths:
            continue
        tags = dict(wavelength=f"{raster.wavelengths[band - 1]:.10g}", wavelength_units=raster.wavelength_units,
                    fwhm=raster.fwhm and f"{raster.fwhm[band - 1]:.10g}")
        target.update_tags(band, **{key: value for key, value in tags.items() if value})
        if to_micrometres:
            central = dict(CENTRAL_WAVELENGTH_UM=f"{raster.wavelengths[band - 1] * to_micrometres:.6g}")
            if raster.fwhm:
                central["FWHM_UM"] = f"{raster.fwhm[band - 1] * to_micrometres:.6g}"
            target.update_tags(band, ns="IMAGERY", **central)


def envi_data_file(header):
    """The data file of an ENVI header, as SPy finds it (its name with no extension, .img, .dat, ...), or None
    when there is none or the header cannot be read (reading the scene then says why)."""
    try:
        return _find_envi_data_file(header, _spectral().read_envi_header(header).get("interleave", ""))
    except Exception:
        return None
