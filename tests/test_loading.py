"""load_scene on what users hand the tool: every file either loads correctly or ends in one UserError line."""
import glob
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from conftest import ROOT, SHARED_DATA, tiny_scene
from scenes import load_scene
from metrics import auc_score
from utils import UserError

VARIANTS = os.path.join(SHARED_DATA, "variants")
SHARED_FILES = sorted(glob.glob(os.path.join(SHARED_DATA, "*.mat")) + glob.glob(os.path.join(VARIANTS, "*.mat")))
needs_shared_files = pytest.mark.skipif(not os.path.isdir(VARIANTS),
                                        reason="../shared/data/variants (real scenes) is absent in this checkout")
HSI, GT = tiny_scene()  # 12 x 10 x 6, anomalies at (4, 5) and (8, 2)


def load(folder, name="scene", **keys):
    scene = load_scene(str(folder), name, **keys)
    return scene.hsi, scene.gt


def error_of(folder, name="scene", **keys):
    """The UserError message of loading `name`; any other exception fails the test by propagating."""
    with pytest.raises(UserError) as info:
        load(folder, name, **keys)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def save(folder, arrays, name="scene"):
    scipy.io.savemat(folder / f"{name}.mat", arrays)


MATLAB_CLASS = {"float64": "double", "float32": "single", "bool": "logical", "uint8": "uint8",
                "uint16": "uint16", "int16": "int16"}


def save_v73(folder, arrays, name="scene", matlab=True):
    """Write `arrays` as MATLAB does in a v7.3 file: HDF5, axes reversed, with MATLAB's 512-byte header and
    MATLAB_class attributes when `matlab` (else a bare HDF5 file in C order, as h5py writes a numpy array)."""
    path = folder / f"{name}.mat"
    with h5py.File(path, "w", userblock_size=512 if matlab else 0) as handle:
        for key, value in arrays.items():
            if callable(value):  # writes a non-numeric MATLAB value itself
                value(handle, key)
                continue
            value = np.asarray(value)
            value = value.astype(np.uint8) if value.dtype == bool else value
            dataset = handle.create_dataset(key, data=value.T if matlab else value)
            if matlab:
                dataset.attrs["MATLAB_class"] = np.bytes_(MATLAB_CLASS[value.dtype.name])
    if matlab:
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        with open(path, "r+b") as handle:
            handle.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    return path


def test_drop_bands_and_gt_file_with_a_mat_scene(tmp_path, capsys):
    """--drop_bands (numbered from 1) leaves bands out of a .mat scene too; --gt_file replaces its map."""
    save(tmp_path, {"data": HSI, "map": GT})
    scene = load_scene(str(tmp_path), "scene", drop_bands=((1, 1), (4, 5)))
    assert scene.bands == [2, 3, 6] and np.array_equal(scene.hsi, HSI[:, :, [1, 2, 5]].astype(np.float32))
    assert scene.missing is None and np.array_equal(scene.gt, GT)
    other = np.zeros_like(GT)
    other[0, 0] = 1
    save(tmp_path, {"truth": other}, name="other")
    scene = load_scene(str(tmp_path), "scene", gt_file=str(tmp_path / "other.mat"))
    assert np.array_equal(scene.gt, other) and "not the map inside" in capsys.readouterr().out
    with pytest.raises(UserError, match="has 6 bands"):
        load_scene(str(tmp_path), "scene", drop_bands=((7, 7),))


def test_v5_scene_loads_as_stored(tmp_path):
    save(tmp_path, {"data": HSI.astype(np.uint16), "map": GT})
    hsi, gt = load(tmp_path)
    assert hsi.dtype == np.float32 and hsi.flags.c_contiguous and gt.dtype == np.uint8
    assert np.array_equal(hsi, HSI.astype(np.uint16)) and np.array_equal(gt, GT)


@pytest.mark.parametrize("matlab", [True, False], ids=["matlab-v73", "bare-hdf5"])
def test_v73_axes_are_reversed_back(tmp_path, capsys, matlab):
    path = save_v73(tmp_path, {"data": HSI, "map": GT.astype(bool)}, matlab=matlab)
    with h5py.File(path, "r") as handle:  # MATLAB's column-major order, or a C-order writer's own
        assert handle["data"].shape == ((6, 10, 12) if matlab else (12, 10, 6))
    hsi, gt = load(tmp_path)
    assert np.array_equal(hsi, HSI) and np.array_equal(gt, GT)
    assert "note" not in capsys.readouterr().out


def test_v73_keeps_a_square_map_in_place(tmp_path):
    """On a square scene only reversing both arrays keeps each anomaly on its own pixel."""
    hsi = np.random.RandomState(0).rand(9, 9, 4)
    gt = np.zeros((9, 9), np.uint8)
    gt[1, 7] = 1
    hsi[1, 7] += 5
    save_v73(tmp_path, {"image": hsi, "mask": gt.astype(float)})
    loaded, loaded_gt = load(tmp_path)
    assert np.allclose(loaded, hsi) and np.array_equal(loaded_gt, gt)


def test_v73_bands_first_is_transposed_after_reversal(tmp_path, capsys):
    save_v73(tmp_path, {"data": HSI.transpose(2, 0, 1), "map": GT})
    hsi, gt = load(tmp_path)
    assert np.array_equal(hsi, HSI) and np.array_equal(gt, GT)
    assert "note: 'data' is bands-first (6 x 12 x 10); transposed to 12 x 10 x 6 to match the map" in \
        capsys.readouterr().out


def test_v73_sparse_map(tmp_path):
    def sparse_map(handle, key):
        columns = scipy.sparse.csc_matrix(GT.astype(float))  # MATLAB stores sparse matrices by columns
        group = handle.create_group(key)
        group.attrs["MATLAB_class"], group.attrs["MATLAB_sparse"] = np.bytes_("double"), np.uint64(GT.shape[0])
        for part, values in (("data", columns.data), ("ir", columns.indices), ("jc", columns.indptr)):
            group.create_dataset(part, data=values.astype(np.float64 if part == "data" else np.uint64))
    save_v73(tmp_path, {"data": HSI, "map": sparse_map})
    assert np.array_equal(load(tmp_path)[1], GT)


def test_v5_sparse_map(tmp_path):
    save(tmp_path, {"data": HSI, "map": scipy.sparse.csc_matrix(GT.astype(float))})
    assert np.array_equal(load(tmp_path)[1], GT)


def v73_char(handle, key):
    handle.create_dataset(key, data=np.frombuffer("abc".encode("utf-16-le"), np.uint16)[:, None])
    handle[key].attrs["MATLAB_class"] = np.bytes_("char")


def v73_cell(handle, key):
    refs = handle.require_group("#refs#")
    refs.create_dataset("a", data=HSI.T)
    cell = handle.create_dataset(key, (1, 1), dtype=h5py.ref_dtype)
    cell[0, 0] = refs["a"].ref
    cell.attrs["MATLAB_class"] = np.bytes_("cell")


def v73_struct(handle, key):
    group = handle.create_group(key)
    group.attrs["MATLAB_class"] = np.bytes_("struct")
    group.create_dataset("cube", data=HSI.T)


def v73_string(handle, key):
    handle.create_dataset(key, data=np.array([[3707764736], [2], [1], [1], [1], [1]], np.uint32))
    handle[key].attrs["MATLAB_class"] = np.bytes_("string")


def v73_complex(handle, key):
    pairs = np.zeros(HSI.T.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    pairs["real"] = HSI.T
    handle.create_dataset(key, data=pairs)
    handle[key].attrs["MATLAB_class"] = np.bytes_("double")


def v73_empty(handle, key):
    handle.create_dataset(key, data=np.array([0, 0], np.uint64))
    handle[key].attrs["MATLAB_class"], handle[key].attrs["MATLAB_empty"] = np.bytes_("double"), np.uint8(1)


@pytest.mark.parametrize("writer, message", [
    (v73_char, "'data' in {} is text (a char array), not an array of real numbers"),
    (v73_cell, "'data' in {} is a cell array"),
    (v73_struct, "'data' in {} is a struct"),
    (v73_string, "'data' in {} is a MATLAB string object"),
    (v73_complex, "'data' in {} is complex-valued"),
    (v73_empty, "'data' in {} has shape (0,): the scene must be a non-empty numeric H x W x bands array"),
])
def test_v73_values_that_are_not_scenes(tmp_path, writer, message):
    path = save_v73(tmp_path, {"data": writer, "map": GT})
    assert message.format(path) in error_of(tmp_path)


def test_v73_non_numeric_map(tmp_path):
    save_v73(tmp_path, {"data": HSI, "map": v73_char})
    assert "'map' in" in error_of(tmp_path) and "is text" in error_of(tmp_path)


@pytest.mark.parametrize("cut", [100, 600, 2000, 4000])
def test_truncated_v73_file(tmp_path, cut):
    path = save_v73(tmp_path, {"data": HSI, "map": GT})
    path.write_bytes(path.read_bytes()[:cut])
    message = error_of(tmp_path)
    assert "cannot read" in message or "holds no scene" in message


def test_hdf5_garbage_after_the_signature(tmp_path):
    (tmp_path / "scene.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    assert "as a MATLAB v7.3 (HDF5) file" in error_of(tmp_path)


def test_h5py_is_imported_only_for_hdf5_files(tmp_path):
    save(tmp_path, {"data": HSI, "map": GT}, "v5")
    save_v73(tmp_path, {"data": HSI, "map": GT}, "v73")
    code = ("import sys; from scenes import load_scene; load_scene({d!r}, 'v5'); print('h5py' in sys.modules); "
            "load_scene({d!r}, 'v73'); print('h5py' in sys.modules)").format(d=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_v5_file_at_every_length(tmp_path, compress):
    scipy.io.savemat(tmp_path / "full.mat", {"data": HSI, "map": GT}, do_compression=compress)
    content = (tmp_path / "full.mat").read_bytes()
    for cut in sorted({0, 1, 64, 127, 128, 130, 200, *range(256, len(content), max(1, len(content) // 40))}):
        (tmp_path / "scene.mat").write_bytes(content[:cut])
        message = error_of(tmp_path)
        assert "cannot read" in message or "holds no scene" in message, (cut, message)


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes(tmp_path, seed):
    rng = np.random.RandomState(seed)
    content = rng.bytes(rng.choice([3, 128, 129, 700, 5000]))
    if seed % 3 == 0:  # a plausible MATLAB 5 header in front of the noise
        content = b"MATLAB 5.0 MAT-file".ljust(124) + b"\x00\x01IM" + content
    (tmp_path / "scene.mat").write_bytes(content)
    try:
        hsi, gt = load(tmp_path)
    except UserError as error:
        assert "\n" not in str(error)
    else:  # noise that happens to parse must still come out as a valid scene
        assert hsi.ndim == 3 and hsi.dtype == np.float32 and np.isfinite(hsi).all()
        assert gt is None or gt.shape == hsi.shape[:2]


@pytest.mark.parametrize("arrays, message", [
    ({"data": HSI[:, :, 0], "map": GT}, "'data' in {} has shape (12, 10): the scene must be a non-empty numeric "
                                        "H x W x bands array"),
    ({"data": HSI[0, 0], "map": GT}, "has shape (1, 6): the scene must be"),
    ({"data": np.float64(3.0)}, "has shape (1, 1)"),
    ({"data": np.zeros((0, 4, 3)), "map": np.zeros((0, 4))}, "has shape (0, 4, 3): the scene must be a non-empty"),
    ({"data": np.zeros((0, 0))}, "has shape (0, 0)"),
    ({"data": "a scene", "map": GT}, "'data' in {} is text (a char array), not an array of real numbers: "
                                     "save the scene as a real H x W x bands array"),
    ({"data": np.array([[HSI, "x"]], dtype=object), "map": GT}, "'data' in {} is a cell array"),
    ({"data": {"cube": HSI}, "map": GT}, "'data' in {} is a struct"),
    ({"data": HSI + 1j, "map": GT}, "'data' in {} is complex-valued"),
    ({"data": np.where(GT[..., None] > 0, np.nan, HSI), "map": GT}, "holds 12 NaN and 0 infinite values"),
    ({"data": np.where(GT[..., None] > 0, -np.inf, HSI), "map": GT}, "holds 0 NaN and 12 infinite values"),
    ({"data": np.full((3, 3, 2), 1e300), "map": np.zeros((3, 3))}, "beyond float32's range"),
    ({"data": np.ones((1, 5, 3)), "map": np.zeros((1, 5))}, "is 1 x 5 pixels: at least 2 x 2 are needed"),
    ({"data": HSI, "map": GT[:, :9]}, "'map' in {} has shape (12, 9) but the scene 'data' is 12 x 10 pixels: "
                                      "the map must be H x W like the scene"),
    ({"data": HSI, "map": GT.T}, "the map must be H x W like the scene"),
    ({"data": HSI, "map": GT[..., None]}, "has shape (12, 10, 1) but"),
    ({"data": HSI, "map": GT * 2}, "'map' in {} holds values other than 0 and 1 (2 distinct: 0, 2)"),
    ({"data": HSI, "map": np.full(GT.shape, 0.5)}, "values other than 0 and 1 (1 distinct: 0.5)"),
    ({"data": HSI, "map": np.where(GT > 0, np.nan, 0)}, "values other than 0 and 1 (2 distinct: 0, nan)"),
    ({"data": HSI, "map": np.arange(120.0).reshape(12, 10)}, "(120 distinct: 0, 1, 2, 3, 4, 5, ...)"),
    ({"data": HSI, "map": GT.astype(np.int8) - 1}, "values other than 0 and 1 (2 distinct: -1, 0)"),
    ({"data": HSI, "map": "12 x 10"}, "'map' in {} is text"),
    ({"data": HSI, "map": GT + 0j}, "'map' in {} is complex-valued"),
    ({"PlaneGT": GT}, "{} holds no scene: no non-empty numeric H x W x bands array (keys present: PlaneGT)"),
    ({}, "holds no scene: no non-empty numeric H x W x bands array (keys present: none)"),
    ({"data": HSI, "image": HSI + 1, "map": GT}, "holds several arrays that could be the scene (data, image): "
                                                 "pick one with --data_key"),
    ({"a": HSI, "b": HSI, "map": GT}, "several arrays that could be the scene (a, b)"),
    ({"data": HSI, "gt": GT, "mask": GT}, "several arrays that could be the ground-truth map (gt, mask): "
                                          "pick one with --gt_key"),
    ({"data": HSI, "band_10": GT, "rgb_r": GT}, "could be the ground-truth map (band_10, rgb_r)"),
    ({"data": HSI, "gt": GT[:5], "label": np.arange(6.0)}, "no map of the scene's 12 x 10 pixels in {} "
                                                          "(gt (5, 10), label (1, 6)): the map must be H x W"),
], ids=lambda value: None if isinstance(value, str) else "-".join(value) or "empty")
def test_bad_files_give_one_clear_error(tmp_path, arrays, message):
    save(tmp_path, arrays)
    assert message.format(tmp_path / "scene.mat") in error_of(tmp_path)


def test_explicit_keys(tmp_path, capsys):
    save(tmp_path, {"data": HSI, "image": HSI + 1, "gt": GT, "mask": 1 - GT})
    hsi, gt = load(tmp_path, data_key="image", gt_key="mask")
    assert np.array_equal(hsi, HSI + 1) and np.array_equal(gt, 1 - GT)
    assert "note" not in capsys.readouterr().out
    assert "has no 'cube' array (keys present: data, image, gt, mask): pass one of them with --data_key" in \
        error_of(tmp_path, data_key="cube")
    assert "has no 'truth' array (keys present: data, image, gt, mask): pass one of them with --gt_key" in \
        error_of(tmp_path, data_key="data", gt_key="truth")
    assert "'gt' in" in error_of(tmp_path, data_key="gt")  # a 2-D array named as the scene
    assert "'image' in" in error_of(tmp_path, data_key="data", gt_key="image")  # a cube named as the map


@pytest.mark.parametrize("scene_key, map_key", [("data", "map"), ("Image", "GT"), ("X", "groundtruth"),
                                                ("hsi", "ground_truth"), ("cube", "PlaneGT"), ("img", "Mask"),
                                                ("input", "label"), ("hyperspectral", "anomaly_map")])
def test_usual_names_are_found(tmp_path, capsys, scene_key, map_key):
    save(tmp_path, {scene_key: HSI, map_key: GT, "wavelength": np.linspace(400, 2500, 6)[None]})
    hsi, gt = load(tmp_path)
    assert np.array_equal(hsi, HSI) and np.array_equal(gt, GT)
    out = capsys.readouterr().out
    assert (scene_key, map_key) == ("data", "map") or f"note: using '{scene_key}' as the scene" in out \
        or f"'{map_key}' as the ground-truth map" in out


def test_any_name_when_only_one_array_fits(tmp_path, capsys):
    save(tmp_path, {"radiance": HSI, "targets_here": GT, "wavelength": np.linspace(400, 2500, 6)[None]})
    hsi, gt = load(tmp_path)
    assert np.array_equal(hsi, HSI) and np.array_equal(gt, GT)
    assert "using 'radiance' as the scene and 'targets_here' as the ground-truth map" in capsys.readouterr().out


def test_a_named_map_wins_over_other_arrays_of_the_scene_size(tmp_path):
    save(tmp_path, {"data": HSI, "mean_band": HSI.mean(axis=2), "gt": GT})
    assert np.array_equal(load(tmp_path)[1], GT)


def test_a_usual_scene_name_wins_over_other_cubes(tmp_path):
    save(tmp_path, {"data": HSI, "reconstruction": HSI + 1, "map": GT})
    assert np.array_equal(load(tmp_path)[0], HSI)


def test_no_map_returns_none(tmp_path, capsys):
    save(tmp_path, {"data": HSI, "wavelength": np.linspace(400, 2500, 6)[None]})
    hsi, gt = load(tmp_path)
    assert gt is None and np.array_equal(hsi, HSI)
    assert "has no ground-truth map (keys present: data, wavelength)" in capsys.readouterr().out


@pytest.mark.parametrize("gt", [np.zeros((12, 10)), np.ones((12, 10), bool)], ids=["no-anomaly", "all-anomaly"])
def test_one_class_maps_load(tmp_path, gt):
    save(tmp_path, {"data": HSI, "map": gt})
    assert np.array_equal(load(tmp_path)[1], gt.astype(np.uint8))


def test_map_of_0_and_255(tmp_path, capsys):
    save(tmp_path, {"data": HSI, "map": GT * 255})
    gt = load(tmp_path)[1]
    assert gt.dtype == np.uint8 and np.array_equal(gt, GT)
    assert "holds 0 and 255: 255 read as anomaly" in capsys.readouterr().out


def test_bands_first_v5_is_transposed_to_match_the_map(tmp_path, capsys):
    save(tmp_path, {"data": HSI.transpose(2, 0, 1), "map": GT})
    hsi, gt = load(tmp_path)
    assert np.array_equal(hsi, HSI) and hsi.flags.c_contiguous and np.array_equal(gt, GT)
    assert "note: 'data' is bands-first (6 x 12 x 10); transposed to 12 x 10 x 6 to match the map" in \
        capsys.readouterr().out


def test_cube_matching_the_map_both_ways_is_read_as_stored(tmp_path, capsys):
    cube = np.random.RandomState(0).rand(5, 5, 5)
    save(tmp_path, {"data": cube, "map": np.zeros((5, 5))})
    assert np.array_equal(load(tmp_path)[0], cube.astype(np.float32))
    assert "bands-first" not in capsys.readouterr().out


@pytest.mark.parametrize("shape, transposed", [((4, 9, 9), True), ((6, 12, 10), False), ((12, 9, 9), False),
                                               ((9, 9, 4), False), ((8, 12, 12), True)])
def test_bands_first_without_a_map_only_for_b_by_n_by_n_with_b_below_n(tmp_path, capsys, shape, transposed):
    cube = np.random.RandomState(0).rand(*shape)
    save(tmp_path, {"data": cube})
    hsi, gt = load(tmp_path)
    assert gt is None
    assert np.array_equal(hsi, (cube.transpose(1, 2, 0) if transposed else cube).astype(np.float32))
    assert ("no map to check against" in capsys.readouterr().out) == transposed


def test_negative_integers_are_real_data(tmp_path):
    scene = (HSI * 10 - 1500).astype(np.int16)
    assert scene.min() < 0
    save(tmp_path, {"data": scene, "map": GT})
    hsi = load(tmp_path)[0]
    assert hsi.dtype == np.float32 and np.array_equal(hsi, scene.astype(np.float32))


def test_many_bands(tmp_path):
    scene = np.random.RandomState(0).randint(0, 5000, (3, 3, 5000)).astype(np.uint16)
    save(tmp_path, {"data": scene, "map": np.eye(3)})
    hsi, gt = load(tmp_path)
    assert hsi.shape == (3, 3, 5000) and np.array_equal(gt, np.eye(3)) and np.array_equal(hsi, scene)


def test_missing_file(tmp_path):
    assert "scene file" in error_of(tmp_path, "absent") and "not found" in error_of(tmp_path, "absent")


def test_a_folder_named_like_a_scene_is_called_a_folder(tmp_path):
    (tmp_path / "scene.mat").mkdir()
    assert "is a folder, not a scene file" in error_of(tmp_path)


def test_dataset_may_be_given_with_its_extension_or_as_a_path(tmp_path):
    save(tmp_path, {"data": HSI, "map": GT})
    for name in ("scene", "scene.mat", str(tmp_path / "scene.mat")):
        hsi, gt = load("/nonexistent" if os.path.isabs(name) else tmp_path, name)
        assert np.array_equal(hsi, HSI) and np.array_equal(gt, GT)


def test_a_logical_scene_is_refused(tmp_path):
    save(tmp_path, {"data": HSI > 100, "map": GT})
    assert "is logical (true/false), not a scene" in error_of(tmp_path)


def test_a_file_declaring_more_than_memory_names_its_size(tmp_path, monkeypatch):
    save(tmp_path, {"data": HSI, "map": GT})

    def out_of_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(scipy.io, "loadmat", out_of_memory)
    message = error_of(tmp_path)
    assert "larger than the memory available" in message and "MiB on disk" in message


def expected_anomalies():
    """Anomaly pixel counts from the shared README's table (`| name.mat | ... | count |`)."""
    readme = os.path.join(SHARED_DATA, "README.md")
    rows = re.findall(r"^\| ([\w.-]+\.mat) \|[^|]*\|[^|]*\| (\d+) \|", open(readme).read(), re.MULTILINE)
    return {name: int(count) for name, count in rows}


@needs_shared_files
@pytest.mark.parametrize("path", SHARED_FILES, ids=os.path.basename)
def test_every_shared_file(path):
    name = os.path.basename(path)
    if "gtonly" in name:
        assert "holds no scene" in error_of(os.path.dirname(path), name[:-4])
        return
    hsi, gt = load(os.path.dirname(path), name[:-4])
    assert hsi.ndim == 3 and hsi.dtype == np.float32 and np.isfinite(hsi).all()
    assert gt is not None and gt.shape == hsi.shape[:2] and gt.dtype == np.uint8
    from_name = re.search(r"-(\d+)px", name)
    expected = int(from_name.group(1)) if from_name else expected_anomalies().get(name)
    assert expected is None or int(gt.sum()) == expected


@needs_shared_files
@pytest.mark.parametrize("name", ["AutoAD_HYDICE1-v73-norm-17px", "TAEF_MUUFL-v73-100x100x64-269px",
                                  "TAEF_pavia-v73-100x100x102-norm-71px"])
def test_v73_anomalies_stand_out_where_the_map_says(name):
    """Global RX finds these anomalies (AUC > 0.98) only with the map on the right pixels (0.67 transposed)."""
    hsi, gt = load(VARIANTS, name)
    pixels = hsi.reshape(-1, hsi.shape[2]).astype(np.float64)
    pixels -= pixels.mean(axis=0)
    rx = np.einsum("ij,jk,ik->i", pixels, np.linalg.pinv(np.cov(pixels.T)), pixels)
    assert auc_score(gt, rx.reshape(gt.shape)) > 0.98


@needs_shared_files
def test_v73_hydice_is_the_v5_hydice_normalised():
    hsi, gt = load(VARIANTS, "AutoAD_HYDICE1-v73-norm-17px")
    raw, raw_gt = load(SHARED_DATA, "hydice-urban-80x100x162-17px")
    low, high = raw.min(axis=(0, 1)), raw.max(axis=(0, 1))
    assert hsi.shape == raw.shape == (80, 100, 162) and np.array_equal(gt, raw_gt)
    assert np.abs(hsi - (raw - low) / (high - low)).max() < 0.01
