"""Reading a scene and its ground truth from a MATLAB .mat file (v5/v7 with scipy, v7.3 with h5py)."""
import os

import numpy as np
import scipy.io
import scipy.sparse

from utils import UserError

# Names, compared case-insensitively, under which public files store the scene and the ground truth.
SCENE_KEYS = {"data", "image", "img", "im", "hsi", "x", "y", "cube", "datacube", "input", "scene",
              "hyperspectral", "hyperspectral_data", "hsi_data", "data_hsi"}
MAP_KEYS = {"map", "gt", "groundtruth", "ground_truth", "gt_map", "mask", "label", "labels", "truth",
            "anomaly_map", "anomaly", "planegt"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MATLAB_NUMERIC = {"double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                  "int64", "uint64"}


def read_mat_scene(path, data_key=None, gt_key=None):
    """(hsi H x W x B float32, map H x W uint8 0/1 or None) from the .mat file `path`, printing notes on guesses.

    MATLAB v5/v7 files are read with scipy; v7.3 (HDF5) files with h5py, every array MATLAB wrote put back
    from HDF5's axis order to MATLAB's.

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
    return _finite_float32(path, scene_key, hsi), None if gt is None else binary_map(path, map_key, gt)


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


def read_mat_map(path, gt_key, shape):
    """A 0/1 ground-truth map of an H x W scene from a .mat file of its own: `gt_key`, else the one H x W array
    under a usual name (MAP_KEYS), else the one H x W array."""
    arrays = _read_mat(path)
    key = gt_key if gt_key is not None else _guess_map_key(path, arrays, None, (tuple(shape),))
    if key is None:
        raise UserError(f"{path} holds no {shape[0]} x {shape[1]} map (keys present: {', '.join(arrays) or 'none'}): "
                        "pass the ground truth of this scene, or name it with --gt_key")
    gt = _real_array(path, arrays, key, "--gt_key", "save the ground truth as an H x W array")
    if gt.shape != tuple(shape):
        raise UserError(f"'{key}' in {path} has shape {gt.shape} but the scene is {shape[0]} x {shape[1]} pixels: "
                        "pass the map of this scene")
    return binary_map(path, key, gt)


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


def binary_map(path, key, gt):
    """0/1 uint8 from a logical, 0/1 or 0/255 map; a map with other values is refused, naming them."""
    values = np.unique(gt)
    if not np.isin(values, (0, 1)).all():
        if not np.isin(values, (0, 255)).all():
            shown = ", ".join(f"{value:g}" for value in values[:6]) + (", ..." if len(values) > 6 else "")
            raise UserError(f"'{key}' in {path} holds values other than 0 and 1 ({len(values)} distinct: {shown}): "
                            "save a binary map (1 = anomaly, 0 = background; 0/255 is also read)")
        print(f"note: '{key}' in {path} holds 0 and 255: 255 read as anomaly")
    return np.ascontiguousarray(gt != 0, dtype=np.uint8)
