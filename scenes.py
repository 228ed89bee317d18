"""Scenes as the tool uses them: a .mat, ENVI or GeoTIFF file (or the built-in synthetic scene) read into
an H x W x B cube, its ground truth, its no-data pixels filled as context, and its identity."""
import functools
import hashlib
import os
import re
from dataclasses import dataclass, field

import numpy as np

from imagery import (ENVI_SUFFIXES, RASTER_SUFFIXES, Raster, envi_data_file, read_raster_map, read_raster_scene,
                     select_bands)
from matfile import binary_map, read_mat_map, read_mat_scene
from utils import UserError

SYNTHETIC = "synthetic"
SCENE_SUFFIXES = (".mat",) + RASTER_SUFFIXES
MOSTLY_MISSING = 0.5  # a note when more than this share of the pixels is no-data
ABU_SCENE = re.compile(r"abu-(airport-[1-4]|beach-[1-4]|urban-[1-5])")  # the ABU set's 13 scenes


@dataclass
class Scene:
    """A scene as the tool uses it.

    `hsi` is H x W x B float32 with no-data pixels filled (fill_missing); `gt` the H x W 0/1 map or None;
    `missing` H x W bool, True at no-data pixels, or None when every pixel holds data; `bands` the
    file's 1-based band numbers used; `raster` how an ENVI / TIFF scene is placed (None for .mat).
    """
    hsi: np.ndarray
    gt: np.ndarray = None
    missing: np.ndarray = None
    bands: list = field(default_factory=list)
    raster: Raster = None
    path: str = None

    def describe(self):
        """What metrics.json records of the scene."""
        height, width, bands = self.hsi.shape
        info = dict(path=self.path and os.path.abspath(self.path), height=height, width=width, bands=bands,
                    bands_used=self.bands, anomaly_pixels=None if self.gt is None else int(self.gt.sum()),
                    nodata_pixels=0 if self.missing is None else int(self.missing.sum()))
        if self.raster is not None:
            info["raster"] = self.raster.describe()
        return info


def load_scene(data_dir, dataset, data_key=None, gt_key=None, gt_file=None, drop_bands=(), keep_bad_bands=False):
    """The Scene `dataset` names, printing notes on guesses.

    `dataset` is `synthetic`, a name in `data_dir` or a path, of a .mat file (matfile.read_mat_scene), an
    ENVI header or a (Geo)TIFF (imagery.read_raster_scene). `gt_file` (a path, or a name in `data_dir`)
    is a ground-truth map in a file of its own (.mat, ENVI or TIFF), used instead of one inside the
    scene's file. `drop_bands` are (low, high) ranges of 1-based band numbers left out; bands the file
    flags as bad are left out too unless `keep_bad_bands`.
    """
    if dataset == SYNTHETIC:
        hsi, gt = synthetic_scene()
        scene = Scene(hsi, gt, bands=list(range(1, hsi.shape[2] + 1)))
    else:
        path = scene_path(data_dir, dataset)
        if path.lower().endswith(".mat"):
            hsi, gt = read_mat_scene(path, data_key, gt_key)
            bands = select_bands(hsi.shape[2], drop_bands, [], path)
            if len(bands) < hsi.shape[2]:
                hsi = np.ascontiguousarray(hsi[:, :, np.asarray(bands) - 1])
            scene = Scene(hsi, gt, bands=bands, path=path)
        else:
            hsi, missing, bands, raster = read_raster_scene(path, drop_bands, keep_bad_bands)
            scene = Scene(hsi, None, missing if missing.any() else None, bands, raster, path)
            check_missing(scene)
    if drop_bands:
        dropped = sum(high - low + 1 for low, high in drop_bands)
        print(f"using {len(scene.bands)} bands of {scene.path or dataset} (--drop_bands left out {dropped})")
    if keep_bad_bands and scene.raster is None:  # ENVI and TIFF scenes say so as they are read
        print(f"note: --keep_bad_bands changes nothing for {scene.path or dataset}: it flags no bad band (ENVI "
              "and GeoTIFF files can, with a bbl)")
    if gt_file is not None:
        if scene.gt is not None:
            print(f"note: using the ground truth in {gt_file}, not the map inside {scene.path}")
        scene.gt = read_map_file(gt_file_path(data_dir, gt_file), scene, gt_key)
    return scene


def scene_from_config(config):
    """load_scene with the scene flags of `config`."""
    return load_scene(config.data_dir, config.dataset, config.data_key, config.gt_key, config.gt_file,
                      config.drop_bands, config.keep_bad_bands)


def check_missing(scene):
    """Refuse a scene without data; note one mostly without; fill the no-data pixels as context."""
    if scene.missing is None:
        return
    count, total = int(scene.missing.sum()), scene.missing.size
    if count == total:
        raise UserError(f"every pixel of {scene.path} is no-data (its ignore / nodata value or NaN): check the "
                        "file, its 'data ignore value' or nodata tag, and --drop_bands")
    if count > MOSTLY_MISSING * total:
        print(f"note: {scene.path} is mostly no-data: {count} of {total} pixels ({100 * count / total:.0f} %) are "
              "left out of training and scoring")
    else:
        print(f"{count} no-data pixels of {scene.path} are left out of training and scoring")
    fill_missing(scene.hsi, scene.missing)


def fill_sources(missing):
    """For each pixel, the row-major index of the data pixel whose spectrum it holds once filled: H x W int64.

    A data pixel holds its own; a no-data pixel holds its nearest data pixel's (scipy's Euclidean
    distance transform, which breaks ties by its scan order).
    """
    from scipy.ndimage import distance_transform_edt
    height, width = missing.shape
    nearest_row, nearest_col = distance_transform_edt(missing, return_distances=False, return_indices=True)
    return nearest_row.astype(np.int64) * width + nearest_col


def fill_missing(hsi, missing):
    """Fill each no-data pixel, in place, with the spectrum of its nearest data pixel (fill_sources).

    The network sees no-data pixels only as context around data pixels: they are never patch centres,
    targets, hidden or scored. The nearest data spectrum continues the background across the no-data
    edge. On a generated flight line it gave the best AUC near the edge (0.89, two seeds), against 0.84
    for a mirror fill and 0.72 for the data's mean spectrum, whose edge makes its neighbours look
    anomalous (bench/README.md#flight-lines). A fill copy is never a pixel's blind-spot source, in
    training or in blind-spot scoring, where the copies also follow the pixel they copy.
    """
    flat = hsi.reshape(-1, hsi.shape[2])
    targets = np.flatnonzero(missing)
    sources = fill_sources(missing).ravel()[targets]
    for start in range(0, len(targets), 2 ** 16):  # bounded temporaries on big scenes
        part = slice(start, start + 2 ** 16)
        flat[targets[part]] = flat[sources[part]]


def read_map_file(path, scene, gt_key=None):
    """A 0/1 ground-truth map of `scene` from a file of its own: .mat, ENVI .hdr or TIFF (on the scene's grid
    where both are placed on the ground). A note says when every anomaly or background pixel is no-data."""
    if not os.path.isfile(path):
        raise UserError(f"ground-truth file {path} not found: pass the path to a .mat, .hdr or .tif map, or its "
                        "name in --data_dir")
    shape = scene.hsi.shape[:2]
    if path.lower().endswith(".mat"):
        gt = read_mat_map(path, gt_key, shape)
    elif path.lower().endswith(RASTER_SUFFIXES):
        gt = binary_map(path, "band 1", read_raster_map(path, shape, scene.raster, scene.path))
    else:
        raise UserError(f"--gt_file {path}: use a .mat, .hdr, .tif or .tiff file")
    for value, kind in ((1, "anomaly"), (0, "background")):
        marked = gt == value
        if scene.missing is not None and marked.any() and scene.missing[marked].all():
            print(f"note: every {kind} pixel of the map {path} ({int(marked.sum())}) is no-data in {scene.path}: "
                  "no AUC can be computed (no-data pixels are not scored)")
    return gt


def scene_name(dataset):
    """The scene's name in the checkpoints and results folders: the file name without folder and suffix."""
    name = os.path.basename(dataset.rstrip("/\\"))
    for suffix in SCENE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def scene_path(data_dir, dataset):
    """The file `--dataset` names: a path to a .mat, .hdr, .tif or .tiff file, or a name in --data_dir
    (with its suffix, or without it for a .mat file); a file name with its suffix is also looked for in
    the current folder."""
    suffixed = dataset.lower().endswith(SCENE_SUFFIXES)
    in_data_dir = os.path.join(data_dir, dataset + ("" if suffixed else ".mat"))
    if not suffixed:
        candidates = [in_data_dir]
    elif os.path.dirname(dataset):  # a path first
        candidates = [dataset, in_data_dir]
    else:  # a file name: in --data_dir, else in the current folder
        candidates = [in_data_dir, dataset]
    if not suffixed and os.path.isfile(dataset) and os.path.splitext(dataset)[1]:
        raise UserError(f"{dataset}: scenes are .mat, .hdr (ENVI: pass the header, not its data file), .tif or "
                        ".tiff files")
    for path in candidates:
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder, not a scene file: pass the scene file inside it, or its name "
                            "with --data_dir set to the folder")
        if os.path.isfile(path):
            return path
    found = [dataset + suffix for suffix in RASTER_SUFFIXES if not suffixed and (
        os.path.isfile(dataset + suffix) or os.path.isfile(os.path.join(data_dir, dataset + suffix)))]
    if found:  # named as --dataset finds it: a path, or a name in --data_dir
        raise UserError(f"scene {dataset} names no .mat file, but {found[0]} is a scene: pass --dataset {found[0]}")
    hint = None if suffixed or os.path.dirname(dataset) else where_to_get(dataset)
    raise UserError(f"scene file {in_data_dir} not found: put {os.path.basename(in_data_dir)} in {data_dir} "
                    "(or pass --data_dir, or a path to a .mat, .hdr or .tif file as --dataset), or use "
                    "--dataset synthetic" + (f"; {hint}; see README 'Reproduce the paper'" if hint else ""))


def where_to_get(name):
    """Where the public scene `name` (no folder, no suffix) can be downloaded, or None for other names."""
    key = name.lower()
    if key == "hydice-ii":
        return (f"{name}.mat is the paper's own file: get data/HYDICE-II.mat from "
                "github.com/DegangWang97/IEEE_TGRS_BS3LNet")
    if key in ("aviris-i", "aviris-ii", "aviris-i_cnnd", "aviris-ii_cnnd"):
        base = key.split("_")[0].upper()
        return (f"the paper's repository holds no {base}.mat: a public file of that name is input/{base}.mat in "
                f"github.com/yuchaoY/CNND (not verified identical to the paper's), to save as {name}.mat")
    if ABU_SCENE.fullmatch(key):
        return (f"{name}.mat is an ABU scene (Kang et al., IEEE TGRS 2017; xudongkang.weebly.com), also in data/ of "
                "github.com/jiojio0505/OT-AD")
    return None


def synthetic_scene(height=40, width=48, bands=32, seed=0):
    """A deterministic test scene: a smooth mixed background with implanted anomalies and its map.

    Four smooth endmember spectra are mixed by spatially smooth abundances (sum to one), noise is
    added, then two full-pixel targets, two 2 x 2 targets and four sub-pixel targets (30-70 % of a
    fifth spectrum) are implanted. Values are in the range of calibrated sensor counts (0..~1000).
    """
    from scipy.ndimage import gaussian_filter
    rng = np.random.RandomState(seed)
    wavelength = np.linspace(0.0, 1.0, bands)

    def smooth_spectrum():
        centres, widths, heights = rng.uniform(0, 1, 3), rng.uniform(0.1, 0.3, 3), rng.uniform(0.2, 1.0, 3)
        return 0.2 + sum(h * np.exp(-0.5 * ((wavelength - c) / w) ** 2) for c, w, h in zip(centres, widths, heights))

    endmembers = np.stack([smooth_spectrum() for _ in range(4)])
    logits = np.stack([gaussian_filter(rng.randn(height, width), sigma=6, mode="reflect") for _ in range(4)])
    abundances = np.exp(8 * logits) / np.exp(8 * logits).sum(axis=0)
    hsi = np.einsum("khw,kb->hwb", abundances, endmembers)
    hsi += 0.01 * rng.randn(height, width, bands)
    gt = np.zeros((height, width), np.uint8)
    spectrum = smooth_spectrum()
    target = 1.2 - 0.9 * spectrum / spectrum.max()
    implants = [(8, 10, 1, 1.0), (30, 36, 1, 1.0), (14, 32, 2, 1.0), (28, 12, 2, 1.0),
                (6, 40, 1, 0.7), (20, 22, 1, 0.5), (34, 5, 1, 0.4), (24, 42, 1, 0.3)]
    for row, col, size, fraction in implants:
        block = (slice(row, row + size), slice(col, col + size))
        hsi[block] = (1 - fraction) * hsi[block] + fraction * target
        gt[block] = 1
    return (400.0 * hsi).astype(np.float32), gt


def gt_file_path(data_dir, gt_file):
    """The file --gt_file names: a path, or a name in --data_dir."""
    return gt_file if os.path.isfile(gt_file) else os.path.join(data_dir, gt_file)


def scene_identity(data_dir, dataset):
    """The scene's folder name in checkpoints and results: its file name and a digest of its contents.

    Contents, not the path: two files named alike in different folders get folders of their own, a
    scene moved or reached another way (a name in --data_dir, a path) keeps its runs, and a file
    replaced by another scene gets new runs instead of its predecessor's. The built-in scene is
    'synthetic'.
    """
    if dataset == SYNTHETIC:
        return SYNTHETIC
    path = scene_path(data_dir, dataset)
    return f"{scene_name(path)}-{file_fingerprint(scene_files(path))[:8]}"


def scene_files(path):
    """The files a scene is read from: an ENVI header and its data file, or the one .mat / TIFF file."""
    data_file = envi_data_file(path) if path.lower().endswith(ENVI_SUFFIXES) else None
    return [path] + ([data_file] if data_file else [])


def file_fingerprint(paths):
    """A hex digest (BLAKE2b) of the files' contents, read in 1 MiB blocks; remembered per path, size and
    modification time, so a process hashes a file once."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        digest.update(_file_digest(os.path.realpath(path), *_stamp(path)))
    return digest.hexdigest()


def _stamp(path):
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_digest(path, size, mtime_ns):
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2 ** 20), b""):
            digest.update(block)
    return digest.digest()
