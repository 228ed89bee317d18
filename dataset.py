"""Scenes (a .mat, ENVI or GeoTIFF file, or the built-in synthetic one) and the blind-spot patch-pair sampler."""
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from imagery import RASTER_SUFFIXES, Raster, read_raster_map, read_raster_scene, select_bands
from matfile import binary_map, read_mat_map, read_mat_scene
from utils import UserError

SYNTHETIC = "synthetic"
SCENE_SUFFIXES = (".mat",) + RASTER_SUFFIXES
MASK_CHUNK = 2 ** 16  # patches per mask-drawing chunk (part of the random stream's definition)
MOSTLY_MISSING = 0.5  # a note when more than this share of the pixels is no-data


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
    scene's file. `drop_bands` are 1-based band numbers left out; an ENVI file's bbl bad bands are left
    out too unless `keep_bad_bands`.
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
        print(f"using {len(scene.bands)} bands of {scene.path or dataset} (--drop_bands left out {len(drop_bands)})")
    if keep_bad_bands and (scene.raster is None or scene.raster.kind != "envi"):
        print(f"note: --keep_bad_bands changes nothing for {scene.path or dataset}: only ENVI headers flag bad "
              "bands (bbl)")
    if gt_file is not None:
        if scene.gt is not None:
            print(f"note: using the ground truth in {gt_file}, not the map inside {scene.path}")
        found = gt_file if os.path.isfile(gt_file) else os.path.join(data_dir, gt_file)
        scene.gt = read_map_file(found, scene.hsi.shape[:2], gt_key)
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


def read_map_file(path, shape, gt_key=None):
    """A 0/1 ground-truth map of an H x W scene from a file of its own: .mat, ENVI .hdr or TIFF."""
    if not os.path.isfile(path):
        raise UserError(f"ground-truth file {path} not found: pass the path to a .mat, .hdr or .tif map, or its "
                        "name in --data_dir")
    if path.lower().endswith(".mat"):
        return read_mat_map(path, gt_key, shape)
    if not path.lower().endswith(RASTER_SUFFIXES):
        raise UserError(f"--gt_file {path}: use a .mat, .hdr, .tif or .tiff file")
    return binary_map(path, "band 1", read_raster_map(path, shape))


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
    found = [os.path.basename(dataset) + suffix for suffix in RASTER_SUFFIXES
             if not suffixed and os.path.isfile(os.path.join(data_dir, dataset + suffix))]
    if found:
        raise UserError(f"scene {dataset} is not a .mat file in {data_dir}, but {found[0]} is: pass "
                        f"--dataset {found[0]}")
    raise UserError(f"scene file {in_data_dir} not found: put {os.path.basename(in_data_dir)} in {data_dir} "
                    "(or pass --data_dir, or a path to a .mat, .hdr or .tif file as --dataset), or use "
                    "--dataset synthetic")


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


def window_offsets(size_window):
    """The source offsets (dy, dx) of a blind spot, row-major, without (0, 0): a (w*w - 1, 2) int64 tensor.

    Each coordinate ranges over [-w//2 + w%2, w//2 + w%2) with Python's floor division (w=5: -2..2), as
    the official code draws them.
    """
    window = range(-size_window // 2 + size_window % 2, size_window // 2 + size_window % 2)
    return torch.tensor([(dy, dx) for dy in window for dx in window if (dy, dx) != (0, 0)])


class BlindSpotSampler:
    """Blind-spot training pairs cut on the fly from one reflect-padded copy of the scene.

    For patch k (centred on pixel k in row-major order) a mask is `n` target positions inside the
    p x p patch, the centre first, and one source position per target (target + an offset in the
    size_window, never (0, 0), wrapped modulo p). The input patch is the original patch with every
    target's whole spectrum replaced by the original spectrum at its source; the label is the
    original patch; the mask is 0 at targets and 1 elsewhere. Masks are stored as (targets,
    sources) index pairs, a few bytes per target, and patches are gathered per batch on `device`.

    With `missing` (H x W bool), only data pixels are patch centres (patch k is centred on the k-th data
    pixel in row-major order). A target that falls on a no-data pixel, or whose source is a no-data
    pixel filled with the target's own spectrum (fill_sources), is no target: its position keeps its
    value and mask 1, so it is neither replaced nor counted in the loss. A no-data position copying a
    pixel of the patch shows what that pixel shows: the copies of a hidden pixel are hidden with it.
    """

    def __init__(self, hsi, patch=19, size_window=5, ratio=0.9, device="cpu", missing=None):
        height, width, bands = hsi.shape
        if patch < 2:
            raise UserError(f"--patch {patch} is too small: use at least 2 (default 19)")
        if patch // 2 >= min(height, width):
            raise UserError(f"--patch {patch} is too large for a {height} x {width} scene (reflect padding needs "
                            f"patch // 2 < {min(height, width)}): use --patch {2 * min(height, width) - 1} or less")
        if not 2 <= size_window <= patch:
            raise UserError(f"--size_window {size_window} must be between 2 and --patch ({patch}) so that every "
                            "target has a source other than itself inside the patch")
        if not 0 <= ratio < 1:
            raise UserError(f"--ratio {ratio} must be in [0, 1): it is the share of each patch left unmasked")
        self.height, self.width, self.bands, self.patch, self.size_window = height, width, bands, patch, size_window
        self.n_targets = math.ceil(patch * patch * (1 - ratio))
        self.device = torch.device(device)
        pad = patch // 2
        padded = np.pad(hsi, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        padded_width = padded.shape[1]
        # Pixels as rows of a (pixels x bands) table: a patch is a gather of p*p rows.
        self.pixels = torch.from_numpy(np.ascontiguousarray(padded.reshape(-1, bands), np.float32)).to(self.device)
        centres = np.arange(height * width) if missing is None else np.flatnonzero(~missing)
        self.num_patches = len(centres)
        rows, cols = np.divmod(centres, width)
        self.patch_origin = torch.from_numpy(rows * padded_width + cols).to(self.device)
        # Per pixel of the padded scene (padded like the scene itself): whether it holds data, and the
        # scene pixel whose spectrum it holds; None when all pixels hold data.
        self.has_data = self.shows = None
        if missing is not None:
            self.has_data = torch.from_numpy(~np.pad(missing, pad, mode="reflect").ravel()).to(self.device)
            self.shows = torch.from_numpy(np.pad(fill_sources(missing), pad, mode="reflect").ravel()).to(self.device)
        within = np.arange(patch)
        offsets = (within[:, None] * padded_width + within[None, :]).ravel()
        self.patch_offsets = torch.from_numpy(offsets).to(self.device)
        self.identity = torch.arange(patch * patch, device=self.device)
        offsets = window_offsets(size_window)
        position = torch.arange(patch * patch)[:, None]
        target_row, target_col = position.div(patch, rounding_mode="floor"), position % patch
        self.source_table = ((target_row + offsets[:, 0]) % patch) * patch + (target_col + offsets[:, 1]) % patch

    def scene(self):
        """The unpadded H x W x B scene: a view of the padded copy, so no second copy is kept."""
        pad = self.patch // 2
        padded = self.pixels.view(self.height + 2 * pad, self.width + 2 * pad, self.bands)
        return padded[pad:pad + self.height, pad:pad + self.width]

    def draw_masks(self, generator, num_patches=None):
        """Draw (targets, sources), each (num_patches, n) int16 positions in p*p, with `generator` (CPU).

        Drawn in chunks of MASK_CHUNK patches so that the int64 temporaries stay small on big scenes.
        """
        num_patches = self.num_patches if num_patches is None else num_patches
        dtype = torch.int16 if self.patch ** 2 <= torch.iinfo(torch.int16).max else torch.int32
        targets = torch.empty((num_patches, self.n_targets), dtype=dtype)
        sources = torch.empty_like(targets)
        for start in range(0, num_patches, MASK_CHUNK):
            count = min(MASK_CHUNK, num_patches - start)
            targets[start:start + count], sources[start:start + count] = self._draw_chunk(generator, count)
        return targets, sources

    def _draw_chunk(self, generator, num_patches):
        p, n = self.patch, self.n_targets
        centre = (p // 2) * p + p // 2
        others = torch.randint(0, p * p - 1, (num_patches, n - 1), generator=generator)
        others += (others >= centre).long()  # uniform over the patch without the centre, with replacement
        targets = torch.cat([torch.full((num_patches, 1), centre), others], dim=1)
        # Redrawing (0, 0) until it is not, as the official code does, is the same as drawing uniformly
        # among the window's other w*w - 1 offsets (row-major order); the source of target t under offset
        # k, wrapped inside the patch, is looked up in a (p*p, w*w - 1) table.
        slot = torch.randint(0, self.source_table.shape[1], (num_patches, n), generator=generator)
        sources = self.source_table[targets, slot]
        # A target drawn twice keeps its last draw's source (numpy's fancy assignment does the same);
        # giving every duplicate that source makes the later scatter independent of write order.
        last_draw = torch.full((num_patches, p * p), -1)
        last_draw.scatter_reduce_(1, targets, torch.arange(n).expand(num_patches, n), reduce="amax")
        return targets, sources.gather(1, last_draw.gather(1, targets))

    def blind_no_data(self, pixel, targets, sources):
        """The no-data rules of a batch: (sources, copies), in patch positions.

        A target on a no-data pixel, or whose source is a no-data pixel filled with the target's own
        spectrum, becomes its own source (no target). `copies` (N, p*p) gives, for a no-data position
        filled with the spectrum of a pixel that is a target of the patch, that target's source (so the
        copy shows what the pixel shows), and -1 elsewhere.
        """
        shows = self.shows[pixel]  # the scene pixel whose spectrum each position holds
        filled = ~self.has_data[pixel]
        target_shows, source_shows = shows.gather(1, targets), shows.gather(1, sources)
        blind = ~filled.gather(1, targets) & ~(filled.gather(1, sources) & (source_shows == target_shows))
        sources = torch.where(blind, sources, targets)
        target_shows = torch.where(blind, target_shows, -1)  # -1 matches no pixel
        match = filled[:, :, None] & (shows[:, :, None] == target_shows[:, None, :])  # (N, p*p, n)
        copies = torch.where(match.any(dim=2), sources.gather(1, match.byte().argmax(dim=2)), -1)
        return sources, copies

    def batch(self, patch_index, targets, sources):
        """Return (input, label, mask) for patches `patch_index`: (N, B, p, p), (N, B, p, p), (N, 1, p, p).

        `targets` and `sources` are the masks of these patches, (N, n), on any device.
        """
        patch_index = patch_index.to(self.device)
        targets, sources = targets.to(self.device).long(), sources.to(self.device).long()
        count, p = patch_index.numel(), self.patch
        pixel = self.patch_origin[patch_index][:, None] + self.patch_offsets  # (N, p*p) rows of the padded scene
        copies = None
        if self.has_data is not None:
            sources, copies = self.blind_no_data(pixel, targets, sources)
        source_of = self.identity.expand(count, -1).scatter(1, targets, sources)
        mask = source_of == self.identity
        if copies is not None:
            source_of = torch.where(copies >= 0, copies, source_of)
        label = self.pixels[pixel]
        inputs = self.pixels[pixel.gather(1, source_of)]
        mask = mask.to(label.dtype)

        def to_image(table):
            return table.view(count, p, p, table.shape[-1]).permute(0, 3, 1, 2)
        return to_image(inputs), to_image(label), to_image(mask[:, :, None])
