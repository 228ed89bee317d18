"""Scenes (a `.mat` file or the built-in synthetic one) and the blind-spot patch-pair sampler."""
import math
import os

import numpy as np
import scipy.io
import scipy.sparse
import torch

from utils import UserError

SYNTHETIC = "synthetic"
MASK_CHUNK = 2 ** 16  # patches per mask-drawing chunk (part of the random stream's definition)


# Names, compared case-insensitively, under which public files store the scene and the ground truth.
SCENE_KEYS = {"data", "image", "img", "im", "hsi", "x", "y", "cube", "datacube", "input", "scene",
              "hyperspectral", "hyperspectral_data", "hsi_data", "data_hsi"}
MAP_KEYS = {"map", "gt", "groundtruth", "ground_truth", "gt_map", "mask", "label", "labels", "truth",
            "anomaly_map", "anomaly", "planegt"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MATLAB_NUMERIC = {"double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                  "int64", "uint64"}


def load_scene(data_dir, dataset, data_key=None, gt_key=None):
    """Return (hsi H x W x B float32, map H x W uint8 0/1 or None) for `dataset`, printing notes on guesses.

    `dataset` is a file stem in `data_dir` (`<data_dir>/<dataset>.mat`) or `synthetic`. MATLAB v5/v7
    files are read with scipy; v7.3 (HDF5) files with h5py, every array's axes reversed back from
    HDF5's order to MATLAB's.

    Keys: `data_key` / `gt_key` name the arrays. Otherwise the scene is the one non-empty 3-D numeric
    array under a usual name (SCENE_KEYS, any case), else the one such array under any name; the map
    is the one array of the scene's H x W under a usual name (MAP_KEYS), else, when no array has such
    a name, the one H x W array under any name. Several candidates are an error naming them, as is a
    map-named array of another shape; no map at all gives None.

    Orientation: a B x H x W scene is transposed when the map's shape matches its last two axes and
    not its first two. Without a map, only a B x N x N array with B < N is taken as bands-first.

    Values: the scene may be any real numeric type (negative integers included) without NaN or Inf;
    it is cast to float32, not normalised, as in the official code, and must be at least 2 x 2 pixels.
    The map may be logical, 0/1 or 0/255 (255 = anomaly); any other value is refused. A map with no
    anomaly or no background is returned as it is.
    """
    if dataset == SYNTHETIC:
        return synthetic_scene()
    path = scene_path(data_dir, dataset)
    arrays = _read_mat(path)
    scene_key = data_key if data_key is not None else _guess_scene_key(path, arrays)
    hsi = _real_array(path, arrays, scene_key, "--data_key", "save the scene as a real H x W x bands array")
    if hsi.ndim != 3 or hsi.size == 0:
        raise UserError(f"'{scene_key}' in {path} has shape {hsi.shape}: the scene must be a non-empty numeric "
                        "H x W x bands array (pick another array with --data_key)")
    height, width, bands = hsi.shape
    map_shapes = ((height, width), (width, bands))  # as stored, or bands-first
    map_key = gt_key if gt_key is not None else _guess_map_key(path, arrays, scene_key, map_shapes)
    guessed = [f"'{key}' as the {role}" for key, role, given, usual in
               ((scene_key, "scene", data_key, "data"), (map_key, "ground-truth map", gt_key, "map"))
               if given is None and key not in (None, usual)]
    if guessed:
        print(f"note: using {' and '.join(guessed)} in {path} (choose with --data_key / --gt_key)")
    gt = None
    if map_key is not None:
        gt = _real_array(path, arrays, map_key, "--gt_key", "save the ground truth as an H x W array")
        if gt.shape not in map_shapes:
            raise UserError(f"'{map_key}' in {path} has shape {gt.shape} but the scene '{scene_key}' is "
                            f"{height} x {width} pixels: the map must be H x W like the scene "
                            "(or pick another array with --gt_key)")
    else:
        print(f"note: {path} has no ground-truth map (keys present: {', '.join(arrays)}): "
              "detection maps are written without an AUC; name the map with --gt_key if it is there")
    if gt is not None and gt.shape != (height, width) or gt is None and height < width == bands:
        print(f"note: '{scene_key}' is bands-first ({height} x {width} x {bands}); transposed to "
              f"{width} x {bands} x {height}" + (" to match the map" if gt is not None else
                                                 " (no map to check against: save it as H x W x bands)"))
        hsi = hsi.transpose(1, 2, 0)
        height, width, bands = hsi.shape
    if height < 2 or width < 2:
        raise UserError(f"the scene '{scene_key}' in {path} is {height} x {width} pixels: "
                        "at least 2 x 2 are needed")
    return _finite_float32(path, scene_key, hsi), None if gt is None else _binary_map(path, map_key, gt)


def scene_path(data_dir, dataset):
    """The file `--dataset` names: a path to a .mat file, or a name in --data_dir with or without `.mat`."""
    candidates = [dataset] if dataset.endswith(".mat") and os.path.dirname(dataset) else []
    candidates += [os.path.join(data_dir, dataset + ("" if dataset.endswith(".mat") else ".mat"))]
    for path in candidates:
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder, not a scene file: pass the .mat file inside it, or its name "
                            "with --data_dir set to the folder")
        if os.path.isfile(path):
            return path
    raise UserError(f"scene file {candidates[-1]} not found: put {os.path.basename(candidates[-1])} in {data_dir} "
                    "(or pass --data_dir, or a path to the file as --dataset), or use --dataset synthetic")


class _NonNumeric:
    """A stored value that is not an array of real numbers (text, cell, struct, complex...): for messages."""

    def __init__(self, kind):
        self.kind = kind


def _read_mat(path):
    """{name: real numeric ndarray or _NonNumeric} for the variables of a MATLAB v5/v7 or v7.3 file."""
    try:
        contents = scipy.io.loadmat(path)
    except MemoryError:
        raise UserError(f"{path} declares arrays larger than the memory available "
                        f"({os.path.getsize(path) / 2 ** 20:.0f} MiB on disk): it is damaged, or too big for this "
                        "machine") from None
    except Exception as error:  # NotImplementedError for v7.3 (HDF5); assorted errors for damaged files
        if _is_hdf5(path):
            return _read_hdf5(path)
        raise UserError(f"cannot read {path} as a MATLAB .mat file ({type(error).__name__}): "
                        "check the file is complete and saved by MATLAB or scipy.io.savemat")
    # loadmat returns MATLAB logicals as uint8; whosmat still knows them, so a true/false array is not data
    logical = {name for name, _, kind in scipy.io.whosmat(path) if kind == "logical"}
    arrays = {}
    for key, value in contents.items():
        if key.startswith("__"):  # __header__, __version__, __globals__
            continue
        if scipy.sparse.issparse(value):
            value = value.toarray()
        if key in logical:
            value = value.astype(bool)
        arrays[key] = value if value.dtype.kind in "biuf" else _NonNumeric(_describe(value.dtype))
    return arrays


def _describe(dtype):
    kinds = {"c": "complex-valued", "U": "text (a char array)", "S": "text (a char array)",
             "O": "a cell array", "V": "a struct"}
    return kinds.get(dtype.kind, f"of type {dtype}")


def _is_hdf5(path):
    """Whether HDF5's signature is at byte 0, 512, 1024, 2048, ... (MATLAB v7.3 files put it at 512)."""
    size, offset = os.path.getsize(path), 0
    with open(path, "rb") as handle:
        while offset + len(HDF5_SIGNATURE) <= size:
            handle.seek(offset)
            if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = max(512, 2 * offset)
    return False


def _read_hdf5(path):
    """Variables of a MATLAB v7.3 (HDF5) file. MATLAB writes arrays column-major, so h5py sees their axes
    reversed (an 80 x 100 x 162 scene as 162 x 100 x 80): every array MATLAB wrote (it carries a
    MATLAB_class attribute) is transposed back; datasets of other HDF5 writers are read as stored."""
    try:
        import h5py  # only v7.3 files need it
    except ImportError:
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file and reading it needs h5py: pip install h5py, "
                        "or re-save it in MATLAB with save(..., '-v7')")
    try:
        with h5py.File(path, "r") as handle:
            # '#refs#' and '#subsystem#' hold the contents of cells, strings and objects
            arrays = {key: _hdf5_value(item) for key, item in handle.items() if not key.startswith("#")}
    except MemoryError:
        raise UserError(f"{path} declares arrays larger than the memory available "
                        f"({os.path.getsize(path) / 2 ** 20:.0f} MiB on disk): it is damaged, or too big for this "
                        "machine") from None
    except Exception as error:
        raise UserError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file ({type(error).__name__}: {error}): "
                        "check the file is complete, or re-save it in MATLAB with save(..., '-v7')")
    return arrays


def _hdf5_value(item):
    import h5py
    matlab_class = item.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if isinstance(item, h5py.Group):
        if "MATLAB_sparse" in item.attrs:  # compressed sparse columns; 'data' and 'ir' absent when all zero
            jc = item["jc"][()]
            rows, nonzero = int(item.attrs["MATLAB_sparse"]), int(jc[-1])
            data = item["data"][()] if nonzero else np.zeros(0)
            ir = item["ir"][()] if nonzero else np.zeros(0, np.int64)
            return scipy.sparse.csc_matrix((data, ir, jc), shape=(rows, len(jc) - 1)).toarray()
        return _NonNumeric("a struct" if matlab_class == "struct" else
                           f"a MATLAB {matlab_class} object" if matlab_class else "an HDF5 group")
    if matlab_class and matlab_class not in MATLAB_NUMERIC:
        return _NonNumeric({"char": "text (a char array)", "cell": "a cell array"}.get(
            matlab_class, f"a MATLAB {matlab_class} object"))
    if item.attrs.get("MATLAB_empty", 0):  # an empty array is stored as its dimensions
        return np.zeros(0)
    value = np.asarray(item[()])
    if value.dtype.names and {"real", "imag"} <= set(value.dtype.names):
        return _NonNumeric("complex-valued")
    if value.dtype.kind not in "biuf":
        return _NonNumeric(_describe(value.dtype))
    if not matlab_class:  # a plain HDF5 dataset (not written by MATLAB): its axes are in the order stored
        return value
    return (value.astype(bool) if matlab_class == "logical" else value).T


def _guess_scene_key(path, arrays):
    def plausible(key):
        return isinstance(arrays[key], np.ndarray) and arrays[key].ndim == 3 and arrays[key].size > 0

    named = [key for key in arrays if key.lower() in SCENE_KEYS]
    for candidates in ([key for key in named if plausible(key)], [key for key in arrays if plausible(key)]):
        if len(candidates) > 1:
            raise UserError(f"{path} holds several arrays that could be the scene ({', '.join(candidates)}): "
                            "pick one with --data_key")
        if candidates:
            return candidates[0]
    if len(named) == 1:
        return named[0]  # not a usable scene: the checks that follow say why
    raise UserError(f"{path} holds no scene: no non-empty numeric H x W x bands array (keys present: "
                    f"{', '.join(arrays) or 'none'}): save the scene in the file, or pick it with --data_key")


def _guess_map_key(path, arrays, scene_key, shapes):
    """The map's key, or None; `shapes` are the scene's H x W as stored and if bands-first."""
    others = [key for key in arrays if key != scene_key]
    named = [key for key in others if key.lower() in MAP_KEYS]
    # With a usual name present, an H x W array under another name (a band image, an RGB channel) is ignored.
    candidates = [key for key in (named or others)
                  if isinstance(arrays[key], np.ndarray) and arrays[key].shape in shapes]
    if len(candidates) > 1:
        raise UserError(f"{path} holds several arrays that could be the ground-truth map "
                        f"({', '.join(candidates)}): pick one with --gt_key")
    if candidates:
        return candidates[0]
    if len(named) > 1:
        found = ", ".join(f"{key} {getattr(arrays[key], 'shape', '(not numeric)')}" for key in named)
        raise UserError(f"no map of the scene's {shapes[0][0]} x {shapes[0][1]} pixels in {path} ({found}): "
                        "the map must be H x W like the scene (or pick it with --gt_key)")
    return named[0] if named else None  # a misshapen map is reported by the shape check that follows


def _real_array(path, arrays, key, flag, fix):
    """arrays[key] when it is a real numeric array, else a UserError saying what it is."""
    if key not in arrays:
        raise UserError(f"{path} has no '{key}' array (keys present: {', '.join(arrays) or 'none'}): "
                        f"pass one of them with {flag}")
    value = arrays[key]
    if isinstance(value, _NonNumeric):
        raise UserError(f"'{key}' in {path} is {value.kind}, not an array of real numbers: {fix}")
    return value


def _finite_float32(path, key, hsi):
    """The scene as C-ordered float32; integers (negative ones too, as in ABU files) are real data."""
    if hsi.dtype.kind == "b":
        raise UserError(f"'{key}' in {path} is logical (true/false), not a scene of measured values: save the "
                        "scene as numbers, or pick another array with --data_key")
    if hsi.dtype.kind == "f":
        nan, inf = int(np.isnan(hsi).sum()), int(np.isinf(hsi).sum())
        if nan or inf:
            raise UserError(f"'{key}' in {path} holds {nan} NaN and {inf} infinite values: "
                            "replace them (e.g. by their neighbours' mean) or crop them out")
        if hsi.dtype.itemsize > 4 and np.abs(hsi).max() > np.finfo(np.float32).max:
            raise UserError(f"'{key}' in {path} holds values beyond float32's range (+-3.4e38): rescale the scene")
    return np.ascontiguousarray(hsi, dtype=np.float32)  # no normalisation of any kind, as in the official code


def _binary_map(path, key, gt):
    """0/1 uint8 from a logical, 0/1 or 0/255 map; a map with other values is refused, naming them."""
    values = np.unique(gt)
    if not np.isin(values, (0, 1)).all():
        if not np.isin(values, (0, 255)).all():
            shown = ", ".join(f"{value:g}" for value in values[:6]) + (", ..." if len(values) > 6 else "")
            raise UserError(f"'{key}' in {path} holds values other than 0 and 1 ({len(values)} distinct: {shown}): "
                            "save a binary map (1 = anomaly, 0 = background; 0/255 is also read)")
        print(f"note: '{key}' in {path} holds 0 and 255: 255 read as anomaly")
    return np.ascontiguousarray(gt != 0, dtype=np.uint8)


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
    """

    def __init__(self, hsi, patch=19, size_window=5, ratio=0.9, device="cpu"):
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
        self.num_patches = height * width
        self.n_targets = math.ceil(patch * patch * (1 - ratio))
        self.device = torch.device(device)
        pad = patch // 2
        padded = np.pad(hsi, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        padded_width = padded.shape[1]
        # Pixels as rows of a (pixels x bands) table: a patch is a gather of p*p rows.
        self.pixels = torch.from_numpy(np.ascontiguousarray(padded.reshape(-1, bands), np.float32)).to(self.device)
        rows, cols = np.divmod(np.arange(self.num_patches), width)
        self.patch_origin = torch.from_numpy(rows * padded_width + cols).to(self.device)
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

    def batch(self, patch_index, targets, sources):
        """Return (input, label, mask) for patches `patch_index`: (N, B, p, p), (N, B, p, p), (N, 1, p, p).

        `targets` and `sources` are the masks of these patches, (N, n), on any device.
        """
        patch_index = patch_index.to(self.device)
        targets, sources = targets.to(self.device).long(), sources.to(self.device).long()
        count, p = patch_index.numel(), self.patch
        source_of = self.identity.expand(count, -1).scatter(1, targets, sources)
        origin = self.patch_origin[patch_index][:, None]
        label = self.pixels[origin + self.patch_offsets]
        inputs = self.pixels[origin + self.patch_offsets[source_of]]
        mask = (source_of == self.identity).to(label.dtype)

        def to_image(table):
            return table.view(count, p, p, table.shape[-1]).permute(0, 3, 1, 2)
        return to_image(inputs), to_image(label), to_image(mask[:, :, None])
