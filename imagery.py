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
from dataclasses import dataclass

import numpy as np

from utils import UserError

ENVI_SUFFIXES = (".hdr",)
TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = ENVI_SUFFIXES + TIFF_SUFFIXES
BLOCK_BYTES = 2 ** 26  # about 64 MiB of the file's values read per block
# ENVI header fields that place the image on the ground, copied as they are into ENVI outputs.
ENVI_GEO_FIELDS = ("map info", "coordinate system string", "projection info", "pixel size")
INSTALL = "pip install -r requirements-imagery.txt (spectral and rasterio)"


@dataclass
class Raster:
    """Where a raster scene lies on the ground and how it marks no-data: what its output maps carry.

    `kind` is 'envi' or 'tiff'; `crs` and `transform` are rasterio's (None and the identity for a plain,
    unreferenced TIFF; both None where GDAL cannot place an ENVI file); `nodata` is the file's ignore /
    nodata value or None; `envi_geo` the ENVI header's placing fields, or None.
    """
    kind: str
    crs: object
    transform: object
    nodata: float = None
    envi_geo: dict = None

    def describe(self):
        """What metrics.json records of the placing."""
        return dict(format=self.kind, crs=self.crs.to_wkt() if self.crs else None,
                    transform=list(self.transform)[:6] if self.transform is not None else None, nodata=self.nodata)


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

    No-data pixels are those holding the ignore / nodata value, or a non-finite value, in any band used;
    their values in `hsi` are left for the caller to fill. Bands: ENVI's `bbl` bad bands are left out
    unless `keep_bad_bands`, and `drop_bands` (1-based) in any case.
    """
    if path.lower().endswith(ENVI_SUFFIXES):
        return _read_envi(path, drop_bands, keep_bad_bands)
    return _read_tiff(path, drop_bands)


def _read_envi(path, drop_bands, keep_bad_bands):
    envi = _spectral()
    try:
        image = envi.open(path)
    except envi.MissingEnviHeaderParameter as error:
        raise UserError(f"ENVI header {path}: {error} (ENVI needs samples, lines, bands, data type): fix the "
                        "header") from None
    except envi.EnviDataFileNotFoundError:
        raise UserError(f"ENVI header {path} has no data file beside it (looked for its name with no extension, "
                        ".img, .dat or the interleave's name): put the data file next to it") from None
    except (envi.SpyException, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read ENVI header {path} ({type(error).__name__}: {error}): check it is an "
                        "ENVI header (first line 'ENVI') with valid fields") from None
    if isinstance(image, envi.SpectralLibrary):
        raise UserError(f"{path} is an ENVI spectral library, not an image: pass an image's header")
    metadata = image.metadata
    if np.dtype(image.dtype).kind not in "biuf":
        raise UserError(f"ENVI file {path} holds {np.dtype(image.dtype)} values (data type "
                        f"{metadata.get('data type')}): only real-valued cubes can be scenes")
    height, width, total = image.nrows, image.ncols, image.nbands
    expected = image.offset + height * width * total * image.sample_size
    actual = os.path.getsize(image.filename)
    if actual != expected:
        raise UserError(f"ENVI data file {image.filename} holds {actual} bytes but its header {path} describes "
                        f"{height} lines x {width} samples x {total} bands of {np.dtype(image.dtype)} "
                        f"(+ {image.offset} header bytes) = {expected}: fix lines, samples, bands, data type or "
                        "header offset")
    bad_bands = _bad_band_list(path, metadata.get("bbl"), total) if not keep_bad_bands else []
    if keep_bad_bands and metadata.get("bbl") is None:
        print(f"note: --keep_bad_bands changes nothing for {path}: its header has no bbl")
    if bad_bands:
        print(f"note: {path} flags {len(bad_bands)} bad bands in its bbl ({ranges_text(bad_bands)}): left out "
              "(--keep_bad_bands keeps them)")
    bands = select_bands(total, drop_bands, bad_bands, path)
    nodata = _number(path, "data ignore value", metadata.get("data ignore value"))
    hsi, missing = _read_envi_cube(image, bands, nodata, path)
    geo = {key: metadata[key] for key in ENVI_GEO_FIELDS if key in metadata}
    crs, transform = _envi_placing(image.filename)
    return hsi, missing, bands, Raster("envi", crs, transform, nodata, geo)


def _read_envi_cube(image, bands, nodata, path):
    """(hsi, missing) of an opened ENVI image, read from a memory map unmapped on return."""
    cube = image.open_memmap(interleave="bip")  # H x W x B view of the file, whatever its interleave
    columns = np.asarray(bands) - 1
    return _read_blocks(lambda top, rows: cube[top:top + rows][:, :, columns], image.nrows, image.ncols, bands,
                        np.dtype(image.dtype).itemsize * image.nbands, nodata, path)


def _envi_placing(data_file):
    """GDAL's reading of an ENVI file's map info as (crs, transform), or (None, None) where GDAL cannot."""
    with _gdal_quiet() as rasterio:
        try:
            with rasterio.open(data_file) as source:
                return source.crs, source.transform
        except rasterio.errors.RasterioError as error:  # the ENVI map still copies the header's fields
            print(f"note: GDAL cannot place {data_file} ({error}): no GeoTIFF map is written")
    return None, None


def _read_tiff(path, drop_bands):
    with _gdal_quiet() as rasterio:
        from rasterio.enums import ColorInterp, MaskFlags
        try:
            source = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise UserError(f"cannot read TIFF {path} ({error}): check it is a complete (Geo)TIFF") from None
        with source:
            dtype = np.dtype(source.dtypes[0])
            if dtype.kind not in "biuf" or len(set(source.dtypes)) > 1:
                raise UserError(f"TIFF {path} holds {', '.join(sorted(set(source.dtypes)))} bands: only real-valued "
                                "cubes with one data type can be scenes")
            # An alpha band is a mask, not a band of the scene: it marks no-data through the file's mask.
            alpha = [band for band, kind in enumerate(source.colorinterp, start=1) if kind == ColorInterp.alpha]
            bands = select_bands(source.count, drop_bands, alpha, path)
            if alpha:
                print(f"note: band {ranges_text(alpha)} of {path} is an alpha band: used as the no-data mask, "
                      "not as a band of the scene")
            window = rasterio.windows.Window

            def block(top, rows):  # rasterio reads bands x rows x columns
                return source.read(bands, window=window(0, top, source.width, rows)).transpose(1, 2, 0)

            mask = None  # a mask band of its own (internal, .msk or alpha), as GDAL and QGIS read it
            if MaskFlags.per_dataset in source.mask_flag_enums[bands[0] - 1]:
                def mask(top, rows):
                    return source.read_masks(bands[0], window=window(0, top, source.width, rows)) == 0
            hsi, missing = _read_blocks(block, source.height, source.width, bands,
                                        dtype.itemsize * source.count, source.nodata, path, mask)
            placing = Raster("tiff", source.crs, source.transform, source.nodata)
    return hsi, missing, bands, placing


def _read_blocks(read_block, height, width, bands, bytes_per_pixel, nodata, path, read_mask=None):
    """Fill a float32 H x W x b scene from `read_block(top, rows)` (rows x W x b, the file's type), block by block.

    Returns (hsi, missing): missing is H x W, True where any band holds `nodata` or a non-finite value, or
    where `read_mask(top, rows)` (rows x W bool) says no-data. Pixels missing in some bands only are named
    in a note, with the band most often missing.
    """
    hsi = np.empty((height, width, len(bands)), np.float32)
    missing = np.zeros((height, width), bool)
    partly_missing, band_counts = 0, np.zeros(len(bands), np.int64)
    rows = max(1, BLOCK_BYTES // max(1, width * bytes_per_pixel))
    for top in range(0, height, rows):
        values = np.asarray(read_block(top, rows))
        bad = np.zeros(values.shape, bool) if nodata is None else values == nodata
        hsi[top:top + rows] = values
        bad |= ~np.isfinite(hsi[top:top + rows])  # NaN, and values beyond float32's range
        missing[top:top + rows] = bad.any(axis=2)
        partly = missing[top:top + rows] & ~bad.all(axis=2)
        partly_missing += int(partly.sum())
        band_counts += bad[partly].sum(axis=0)
        if read_mask is not None:
            missing[top:top + rows] |= read_mask(top, rows)
    if partly_missing:
        worst = int(np.argmax(band_counts))
        print(f"note: {partly_missing} pixels of {path} are no-data in some bands only (band {bands[worst]} in "
              f"{band_counts[worst]} of them): they are left out like no-data pixels; if that band is bad, "
              f"--drop_bands {bands[worst]} keeps them")
    return hsi, missing


def select_bands(total, drop_bands, bad_bands, path):
    """The 1-based bands used: all `total` but `bad_bands` and `drop_bands`; an error when none is left."""
    beyond = [band for band in drop_bands if band > total]
    if beyond:
        raise UserError(f"--drop_bands names band {beyond[0]}, but {path} has {total} bands (numbered from 1)")
    dropped = set(drop_bands) | set(bad_bands)
    bands = [band for band in range(1, total + 1) if band not in dropped]
    if not bands:
        raise UserError(f"no band of {path} is left after --drop_bands and the bbl: keep some bands")
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
    pieces, start = [], None
    for index, band in enumerate(bands):
        start = band if start is None else start
        if index + 1 == len(bands) or bands[index + 1] != band + 1:
            pieces.append(str(band) if band == start else f"{start}-{band}")
            start = None
    return separator.join(pieces)


def read_raster_map(path, shape):
    """A ground-truth map from the first band of an ENVI .hdr or a TIFF: H x W values, as stored."""
    if path.lower().endswith(ENVI_SUFFIXES):
        envi = _spectral()
        try:
            values = envi.open(path).read_band(0)
        except Exception as error:
            raise UserError(f"cannot read the ground truth {path} ({type(error).__name__}: {error}): check the "
                            "ENVI header and its data file") from None
    else:
        with _gdal_quiet() as rasterio:
            try:
                with rasterio.open(path) as source:
                    values = source.read(1)
            except rasterio.errors.RasterioIOError as error:
                raise UserError(f"cannot read the ground truth {path} ({error}): check it is a complete TIFF") from None
    if values.shape != tuple(shape):
        raise UserError(f"the ground truth {path} is {values.shape[0]} x {values.shape[1]} pixels but the scene is "
                        f"{shape[0]} x {shape[1]}: pass the map of this scene")
    return values


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
    a block of rows at a time."""
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
