"""ENVI and GeoTIFF scenes: read as written, no-data pixels left out, maps written back in place."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io
import torch
from scipy.ndimage import distance_transform_edt
from sklearn.metrics import roc_auc_score

envi = pytest.importorskip("spectral.io.envi", reason="ENVI tests need SPy (requirements-imagery.txt)")
rasterio = pytest.importorskip("rasterio", reason="GeoTIFF tests need rasterio (requirements-imagery.txt)")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

from conftest import ROOT, scene_folder, tiny_scene  # noqa: E402
from dataset import BlindSpotSampler  # noqa: E402
from scenes import file_fingerprint, fill_missing, fill_sources, load_scene  # noqa: E402
from detectors import rx  # noqa: E402
from metrics import detection_map  # noqa: E402
from main import main  # noqa: E402
from scoring import blindspot_partition, blindspot_reconstruct  # noqa: E402
from utils import UserError  # noqa: E402

UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4600000.0)  # 30 m pixels from (500000, 4600000)
MAP_INFO = ["UTM", "1", "1", "500000", "4600000", "30", "30", "33", "North", "WGS-84", "units=Meters"]
NET_FLAGS = ["--epochs", "1", "--patch", "5", "--nch_ker", "8", "--nblk", "1", "--batch_size", "64",
             "--device", "cpu"]


def write_envi(path, cube, interleave="bsq", byteorder=0, dtype=None, **fields):
    """`cube` (H x W x B) as an ENVI .hdr / .img pair; `fields` with '_' for ' ' (data_ignore_value=...)."""
    metadata = {key.replace("_", " "): value for key, value in fields.items()}
    envi.save_image(str(path), cube, interleave=interleave, byteorder=byteorder, dtype=dtype or cube.dtype,
                    metadata=metadata, force=True, ext=".img")
    return str(path)


def write_tiff(path, cube, nodata=None, crs=None, transform=TRANSFORM):
    """`cube` (H x W x B, or H x W) as a GeoTIFF through rasterio."""
    cube = cube[:, :, None] if cube.ndim == 2 else cube
    profile = dict(driver="GTiff", height=cube.shape[0], width=cube.shape[1], count=cube.shape[2],
                   dtype=cube.dtype.name, crs=crs, transform=transform, nodata=nodata)
    with warnings.catch_warnings():  # a plain TIFF (ground truth) without a transform is meant
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as target:
            target.write(cube.transpose(2, 0, 1))
    return str(path)


def edit_header(path, old, new):
    with open(path) as handle:
        text = handle.read()
    assert old in text
    with open(path, "w") as handle:
        handle.write(text.replace(old, new))


def distinct_cube(dtype, shape=(9, 7, 5)):
    """Values spread over `dtype`'s range (negative ones where it has them), distinct but for uint8."""
    count = int(np.prod(shape))
    if np.dtype(dtype).kind == "f":
        return ((np.arange(count) - 100) * 0.25).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    step = max(1, (int(info.max) - int(info.min)) // count)
    values = [int(info.min) + i * step % (int(info.max) - int(info.min) + 1) for i in range(count)]
    return np.array(values, dtype=object).astype(dtype).reshape(shape)


def expected_fill(cube, missing):
    """Each no-data pixel holding its nearest data pixel's spectrum (scipy's distance_transform_edt)."""
    nearest = distance_transform_edt(missing, return_distances=False, return_indices=True)
    return cube[nearest[0], nearest[1]]


def cli_flags(tmp_path, path, *extra):
    """Flags of a quick run on the scene `path`, its runs and results inside `tmp_path`."""
    return ["--dataset", str(path), *NET_FLAGS, "--checkpoints_dir", str(tmp_path / "c"),
            "--results_dir", str(tmp_path / "r"), *extra]


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# 1. ENVI files load as written -------------------------------------------------------------------------

@pytest.mark.parametrize("byteorder", [0, 1])
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_interleave_and_byte_order_round_trip(tmp_path, interleave, byteorder):
    cube = distinct_cube("int16")
    path = write_envi(tmp_path / "scene.hdr", cube, interleave, byteorder)
    scene = load_scene(str(tmp_path), path)
    assert scene.hsi.dtype == np.float32 and scene.hsi.shape == (9, 7, 5)
    np.testing.assert_array_equal(scene.hsi, cube.astype(np.float32))
    assert scene.missing is None and scene.gt is None and scene.bands == [1, 2, 3, 4, 5]
    assert scene.raster.kind == "envi" and scene.raster.nodata is None


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float32", "float64"])
def test_every_real_envi_data_type_round_trips(tmp_path, dtype):
    cube = distinct_cube(dtype)
    write_envi(tmp_path / "scene.hdr", cube, "bil", 1, dtype)
    scene = load_scene(str(tmp_path), "scene.hdr")  # a name in data_dir
    np.testing.assert_array_equal(scene.hsi, cube.astype(np.float32))
    assert scene.missing is None


# 2. ENVI no-data and band selection ---------------------------------------------------------------------

def ignore_value_scene(tmp_path):
    """9 x 7 x 6 float32; -9999 in every band at (0, 0) and (4, 6), in band 2 only at (6, 3), in band 3 (bbl
    bad) only at (2, 2); NaN in band 5 at (8, 1). bbl flags band 3 as bad."""
    cube = distinct_cube("float32", (9, 7, 6))
    cube[0, 0] = cube[4, 6] = -9999
    cube[6, 3, 1] = cube[2, 2, 2] = -9999
    cube[8, 1, 4] = np.nan
    path = write_envi(tmp_path / "scene.hdr", cube, data_ignore_value=-9999, bbl=[1, 1, 0, 1, 1, 1])
    return cube, path


def test_envi_ignore_value_and_nan_in_any_used_band_mark_no_data(tmp_path):
    """No-data in any band used marks the pixel; it is filled with its nearest data pixel's spectrum."""
    cube, path = ignore_value_scene(tmp_path)
    scene = load_scene(str(tmp_path), path)
    missing = np.zeros((9, 7), bool)
    missing[0, 0] = missing[4, 6] = missing[6, 3] = missing[8, 1] = True  # not (2, 2): band 3 is left out
    np.testing.assert_array_equal(scene.missing, missing)
    assert scene.bands == [1, 2, 4, 5, 6] and scene.raster.nodata == -9999
    used = cube[:, :, [0, 1, 3, 4, 5]]
    np.testing.assert_array_equal(scene.hsi[~missing], used[~missing])
    np.testing.assert_array_equal(scene.hsi, expected_fill(used, missing))
    distance = distance_transform_edt(missing)  # each fill comes from a nearest data pixel
    for row, col in zip(*np.nonzero(missing)):
        sources = np.argwhere((scene.hsi == scene.hsi[row, col]).all(axis=2) & ~missing)
        assert np.hypot(*(sources - (row, col)).T).min() == distance[row, col]
    assert scene.describe()["nodata_pixels"] == 4


def test_keep_bad_bands_and_drop_bands(tmp_path):
    cube, path = ignore_value_scene(tmp_path)
    kept = load_scene(str(tmp_path), path, keep_bad_bands=True)
    assert kept.bands == [1, 2, 3, 4, 5, 6] and kept.missing[2, 2] and kept.missing.sum() == 5
    np.testing.assert_array_equal(kept.hsi[1::2], cube[1::2])
    dropped = load_scene(str(tmp_path), path, drop_bands=((2, 2), (6, 6)))
    assert dropped.bands == [1, 4, 5] and not dropped.missing[6, 3] and dropped.missing.sum() == 3
    np.testing.assert_array_equal(dropped.hsi[1::2], cube[1::2][:, :, [0, 3, 4]])


def test_keep_bad_bands_says_when_it_changes_nothing(tmp_path, capsys):
    cube = distinct_cube("int16")
    load_scene(str(tmp_path), write_envi(tmp_path / "plain.hdr", cube), keep_bad_bands=True)
    load_scene(str(tmp_path), write_tiff(tmp_path / "cube.tif", cube), keep_bad_bands=True)
    scipy.io.savemat(tmp_path / "scene.mat", {"data": cube, "map": np.zeros(cube.shape[:2])})
    load_scene(str(tmp_path), "scene", keep_bad_bands=True)
    out = capsys.readouterr().out
    for name in ("plain.hdr", "cube.tif", "scene.mat"):
        assert "--keep_bad_bands changes nothing for " + str(tmp_path / name) + ": it flags no bad band" in out
    cube, path = ignore_value_scene(tmp_path)  # a header with a bbl: the flag keeps its bad bands, no note
    load_scene(str(tmp_path), path, keep_bad_bands=True)
    assert "changes nothing" not in capsys.readouterr().out


# 3. GeoTIFF scenes ----------------------------------------------------------------------------------------

def test_geotiff_cube_placing_and_nodata(tmp_path):
    cube = distinct_cube("int16")
    cube[2, 3] = -9999
    cube[5, 1, 3] = -9999
    path = write_tiff(tmp_path / "scene.tif", cube, nodata=-9999, crs=UTM33)
    scene = load_scene(str(tmp_path), path, drop_bands=((2, 2),))
    missing = np.zeros((9, 7), bool)
    missing[2, 3] = missing[5, 1] = True
    np.testing.assert_array_equal(scene.missing, missing)
    assert scene.bands == [1, 3, 4, 5]
    used = cube[:, :, [0, 2, 3, 4]].astype(np.float32)
    np.testing.assert_array_equal(scene.hsi, expected_fill(used, missing))
    raster = scene.raster
    assert raster.kind == "tiff" and raster.crs == UTM33 and raster.transform == TRANSFORM
    assert raster.nodata == -9999


@pytest.mark.parametrize("suffix", [".hdr", ".tif"])
def test_reading_block_by_block_gives_the_whole_cube(tmp_path, monkeypatch, suffix):
    """Blocks of 2 rows (the last one short) read the same cube and no-data mask as one block."""
    import imagery
    cube = distinct_cube("int16")
    cube[0, 0] = cube[8, 6] = cube[4, 2, 1] = -9999
    path = (write_envi(tmp_path / "scene.hdr", cube, interleave="bsq", data_ignore_value=-9999) if suffix == ".hdr"
            else write_tiff(tmp_path / "scene.tif", cube, nodata=-9999, crs=UTM33))
    whole = load_scene(str(tmp_path), path)
    monkeypatch.setattr(imagery, "BLOCK_BYTES", 2 * 7 * 5 * 2)
    blocks = load_scene(str(tmp_path), path)
    np.testing.assert_array_equal(blocks.hsi, whole.hsi)
    np.testing.assert_array_equal(blocks.missing, whole.missing)
    assert blocks.missing.sum() == 3 and np.array_equal(blocks.hsi[~blocks.missing], cube[~blocks.missing])


def test_tiff_mask_band_and_alpha_band_mark_no_data(tmp_path, capsys):
    """A GeoTIFF's own mask band (GDAL's internal mask) and an alpha band mark no-data as GIS software reads
    them; an alpha band is not a band of the scene."""
    cube = distinct_cube("int16")
    valid = np.full((9, 7), 255, np.uint8)
    valid[0, :3] = valid[5, 5] = 0
    profile = dict(driver="GTiff", height=9, width=7, dtype="int16", crs=UTM33, transform=TRANSFORM)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "masked.tif", "w", count=5, **profile) as target:
            target.write(cube.transpose(2, 0, 1))
            target.write_mask(valid)
    scene = load_scene(str(tmp_path), str(tmp_path / "masked.tif"))
    np.testing.assert_array_equal(scene.missing, valid == 0)
    np.testing.assert_array_equal(scene.hsi[valid > 0], cube[valid > 0])
    with rasterio.open(tmp_path / "alpha.tif", "w", count=4, alpha="YES", **dict(profile, dtype="uint8")) as target:
        target.write(np.concatenate([cube[:, :, :3].astype(np.uint8), valid[:, :, None]], axis=2).transpose(2, 0, 1))
    scene = load_scene(str(tmp_path), str(tmp_path / "alpha.tif"))
    assert scene.bands == [1, 2, 3] and "band 4 of" in capsys.readouterr().out
    np.testing.assert_array_equal(scene.missing, valid == 0)


def test_float_tiff_without_nodata_tag_nan_and_inf_are_no_data(tmp_path):
    cube = distinct_cube("float32")
    cube[1, 1] = np.nan
    cube[7, 5, 2] = np.inf
    cube[3, 0, 4] = np.nan
    scene = load_scene(str(tmp_path), write_tiff(tmp_path / "scene.tif", cube))
    assert scene.raster.nodata is None and scene.raster.crs is None
    np.testing.assert_array_equal(np.argwhere(scene.missing), [[1, 1], [3, 0], [7, 5]])
    assert np.isfinite(scene.hsi).all()
    np.testing.assert_array_equal(scene.hsi[~scene.missing], cube[~scene.missing])


# 4. Train and predict on raster scenes --------------------------------------------------------------------

def raster_scene(tmp_path, kind):
    """A 16 x 18 x 6 scene with a no-data border (top two rows, left column), and its map as a .tif.
    ENVI: float32, data ignore value 0 (so maps use NaN), band 6 bad in its bbl; GeoTIFF: int16, nodata -9999."""
    hsi, gt = tiny_scene(16, 18, 6)
    gt[10, 12] = gt[13, 7] = 1
    hsi[10, 12] = hsi[13, 7] = 100 * np.linspace(2, 1, 6)
    missing = np.zeros(gt.shape, bool)
    missing[:2] = missing[:, 0] = True
    if kind == "envi":
        hsi[missing] = 0
        path = write_envi(tmp_path / "flight.hdr", hsi, "bip", data_ignore_value=0, map_info=MAP_INFO,
                          bbl=[1, 1, 1, 1, 1, 0])
    else:
        hsi = np.round(hsi).astype(np.int16)
        hsi[missing] = -9999
        path = write_tiff(tmp_path / "flight.tif", hsi, nodata=-9999, crs=UTM33)
    return path, write_tiff(tmp_path / "gt.tif", gt, transform=None), gt, missing


def placing(path):
    with rasterio.open(path) as source:
        return source.crs, source.transform, source.nodata, source.read()


@pytest.mark.parametrize("kind, extra, bands, suffix", [
    ("envi", ["--keep_bad_bands"], [1, 2, 3, 4, 5, 6], "_allbands"),
    ("tiff", ["--drop_bands", "2-3,5"], [1, 4, 6], "_drop2-3+5"),
])
def test_train_and_predict_write_placed_maps_and_score_data_pixels_only(tmp_path, capsys, kind, extra, bands,
                                                                       suffix):
    """Maps placed like the input, NaN / nodata at no-data pixels, the AUC over the data pixels only."""
    path, gt_path, gt, missing = raster_scene(tmp_path, kind)
    flags = cli_flags(tmp_path, path, "--gt_file", gt_path, *extra)
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    (run,) = os.listdir(scene_folder(tmp_path / "c", "flight"))
    assert run.endswith(suffix) and os.path.isfile(scene_folder(tmp_path / "c", "flight") / run / "epoch_0001.pt")
    out = scene_folder(tmp_path / "r", "flight") / "latest"
    gt_tag = f"gt-gt-{file_fingerprint([gt_path])[:8]}"  # the results are named by the map's contents too
    assert os.path.realpath(out) == str(scene_folder(tmp_path / "r", "flight") / run / f"epoch_0001_{gt_tag}")
    data_file = path[:-4] + ".img" if kind == "envi" else path
    crs, transform, _, _ = placing(data_file)
    assert crs == UTM33 and transform == TRANSFORM  # GDAL reads the ENVI map info too
    map_crs, map_transform, nodata, values = placing(out / "detectmap.tif")
    assert map_crs == crs and map_transform == transform and values.shape == (1, 16, 18)
    detectmap = scipy.io.loadmat(out / "detectmap.mat")["detectmap"]
    assert np.isnan(detectmap[missing]).all() and np.isfinite(detectmap[~missing]).all()
    np.testing.assert_array_equal(values[0][~missing], detectmap[~missing])
    if kind == "envi":  # ignore value 0 could be a score: NaN instead
        assert np.isnan(nodata) and np.isnan(values[0][missing]).all()
        envi_crs, envi_transform, _, envi_values = placing(out / "detectmap.img")
        assert envi_crs == crs and envi_transform == transform
        np.testing.assert_array_equal(envi_values, values)
        assert os.path.isfile(out / "detectmap.hdr")
    else:
        assert nodata == -9999 and (values[0][missing] == -9999).all()
    _, _, cube_nodata, reconstructed = placing(out / "reconstructed.tif")
    assert reconstructed.shape == (len(bands), 16, 18) and np.isfinite(reconstructed[:, ~missing]).all()
    np.testing.assert_array_equal(np.isnan(nodata), np.isnan(cube_nodata))
    assert (np.isnan(reconstructed[:, missing]) if kind == "envi" else reconstructed[:, missing] == -9999).all()
    metrics = json.loads((out / "metrics.json").read_text())
    auc = metrics["auc"]
    assert auc == roc_auc_score(gt[~missing], detectmap[~missing])
    assert metrics["scene"]["nodata_pixels"] == int(missing.sum()) == 50
    assert metrics["scene"]["bands_used"] == bands
    assert CRS.from_wkt(metrics["scene"]["raster"]["crs"]) == UTM33
    # Anomalies marked at no-data pixels change nothing: they are not scored.
    gt[0, :5] = gt[5, 0] = 1
    flags[flags.index("--gt_file") + 1] = write_tiff(tmp_path / "gt2.tif", gt, transform=None)
    assert main(["--command", "predict", *flags]) == 0
    assert json.loads((out / "metrics.json").read_text())["auc"] == auc
    assert "error" not in capsys.readouterr().err


# 5. Bad input: one error line, exit status 2 -------------------------------------------------------------

BREAKING = {  # how to spoil a good 9 x 7 x 5 float32 scene, extra flags, the error's words
    "no-samples": (lambda path: edit_header(path, "samples = 7\n", ""), [], "samples"),
    "wrong-size": (lambda path: edit_header(path, "samples = 7", "samples = 8"), [], "holds 1260 bytes"),
    "no-data-file": (lambda path: os.remove(path[:-4] + ".img"), [], "has no data file beside it"),
    "band-beyond": (lambda path: None, ["--drop_bands", "3-5,9"], "--drop_bands names band 9, but"),
}


@pytest.mark.parametrize("case", BREAKING)
def test_bad_envi_scenes_end_in_one_error_line(tmp_path, capsys, case):
    breaking, extra, message = BREAKING[case]
    path = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"))
    breaking(path)
    assert main(["--command", "train", *cli_flags(tmp_path, path, *extra)]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "c").exists()  # a refused run leaves no empty run folder behind


def test_a_file_name_is_found_in_data_dir_or_in_the_current_folder(tmp_path, monkeypatch):
    """`--dataset scene.hdr` is looked for in --data_dir, then in the current folder; runs are named by
    the file's stem either way."""
    here, data_dir = tmp_path / "here", tmp_path / "data"
    here.mkdir(), data_dir.mkdir()
    cube = distinct_cube("int16")
    write_envi(here / "scene.hdr", cube)
    monkeypatch.chdir(here)
    np.testing.assert_array_equal(load_scene(str(data_dir), "scene.hdr").hsi, cube)
    write_envi(data_dir / "scene.hdr", cube + 1)
    np.testing.assert_array_equal(load_scene(str(data_dir), "scene.hdr").hsi, cube + 1)


def test_complex_envi_scene_is_refused(tmp_path, capsys):
    path = write_envi(tmp_path / "scene.hdr", distinct_cube("float32").astype(np.complex64))
    assert main(["--command", "train", *cli_flags(tmp_path, path)]) == 2
    assert "only real-valued cubes" in one_error_line(capsys)


@pytest.mark.parametrize("suffix", [".hdr", ".tif"])
def test_gt_file_as_envi_or_tiff(tmp_path, suffix):
    """A ground truth of its own, 0/1 or 0/255, in an ENVI or TIFF file; other values are refused."""
    gt = np.zeros((9, 7), np.uint8)
    gt[2, 3] = gt[6, 1] = 1
    scene_path = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"))
    for values, name in ((gt, "gt"), (gt * 255, "gt255")):
        path = tmp_path / (name + suffix)
        path = write_envi(path, values[:, :, None]) if suffix == ".hdr" else write_tiff(path, values, transform=None)
        np.testing.assert_array_equal(load_scene(str(tmp_path), scene_path, gt_file=path).gt, gt)
    path = tmp_path / ("gt3" + suffix)
    path = write_envi(path, 3 * gt[:, :, None]) if suffix == ".hdr" else write_tiff(path, 3 * gt, transform=None)
    with pytest.raises(UserError, match="values other than 0 and 1"):
        load_scene(str(tmp_path), scene_path, gt_file=path)
    by_name = load_scene(str(tmp_path), scene_path, gt_file="gt" + suffix)  # a name in --data_dir
    np.testing.assert_array_equal(by_name.gt, gt)


def test_gt_file_of_another_shape_is_refused(tmp_path, capsys):
    path = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"))
    gt_path = write_tiff(tmp_path / "gt.tif", np.zeros((7, 9), np.uint8), transform=None)
    assert main(["--command", "train", *cli_flags(tmp_path, path, "--gt_file", gt_path)]) == 2
    assert "is 7 x 9 pixels but the scene is 9 x 7" in one_error_line(capsys)


def test_all_no_data_is_refused_and_mostly_no_data_noted(tmp_path, capsys):
    cube = distinct_cube("float32")
    cube[0::2, :, 1] = cube[1::2, :, 3] = np.nan  # every pixel, but no band in every pixel (a bad band)
    path = write_envi(tmp_path / "scene.hdr", cube)
    assert main(["--command", "train", *cli_flags(tmp_path, path)]) == 2
    assert "every pixel of" in one_error_line(capsys)
    cube = distinct_cube("float32")
    cube[:5, :, 3] = -1  # 35 of 63 pixels
    scene = load_scene(str(tmp_path), write_envi(tmp_path / "mostly.hdr", cube, data_ignore_value=-1))
    assert scene.missing.sum() == 35
    assert "mostly no-data: 35 of 63 pixels" in capsys.readouterr().out


# 6. Blind spots never fall on no-data pixels --------------------------------------------------------------

def no_data_pattern(height, width, seed=0):
    missing = np.random.RandomState(seed).rand(height, width) < 0.3
    missing[0, :3] = True  # at the border, where reflect padding mirrors it
    return missing


def test_sampler_centres_and_targets_are_data_pixels():
    """Patch k is centred on the k-th data pixel. A target on a no-data pixel, or whose source is a fill
    copy of the target itself, keeps its value and mask 1; every other target shows its source's
    spectrum; a no-data position filled with the spectrum of a blind spot of the patch shows what the
    blind spot shows."""
    height, width, bands, patch = 8, 9, 2, 5
    cube = np.arange(height * width * bands, dtype=np.float32).reshape(height, width, bands)
    missing = no_data_pattern(height, width)
    fill_missing(cube, missing)
    sampler = BlindSpotSampler(cube, patch, 3, 0.5, missing=missing)
    data = np.flatnonzero(~missing)
    assert sampler.num_patches == len(data)
    targets, sources = (t.long().numpy() for t in sampler.draw_masks(torch.Generator().manual_seed(0)))
    inputs, label, mask = (t.numpy() for t in sampler.batch(torch.arange(len(data)), torch.from_numpy(targets),
                                                             torch.from_numpy(sources)))
    pad = patch // 2
    padded = np.pad(cube, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    padded_missing = np.pad(missing, pad, mode="reflect")
    padded_shows = np.pad(fill_sources(missing), pad, mode="reflect")
    flat = lambda a: a.reshape(a.shape[0], a.shape[1], -1)  # noqa: E731  (N, B, p*p)
    inputs, label, mask = flat(inputs), flat(label), flat(mask)[:, 0]
    on_no_data_targets = own_copies = followed = 0
    for k, pixel in enumerate(data):
        row, col = divmod(pixel, width)
        np.testing.assert_array_equal(label[k], padded[row:row + patch, col:col + patch].reshape(-1, bands).T)
        np.testing.assert_array_equal(label[k][:, pad * patch + pad], cube[row, col])  # the k-th data pixel
        on_no_data = padded_missing[row:row + patch, col:col + patch].ravel()
        shows = padded_shows[row:row + patch, col:col + patch].ravel()
        expected_input, expected_mask = label[k].copy(), np.ones(patch * patch)
        for target, source in zip(targets[k], sources[k]):
            own_copy = on_no_data[source] and shows[source] == shows[target]
            if not on_no_data[target] and not own_copy:
                expected_input[:, target], expected_mask[target] = label[k][:, source], 0
            on_no_data_targets += int(on_no_data[target])
            own_copies += int(own_copy and not on_no_data[target])
        blind = [(target, source) for target, source in zip(targets[k], sources[k]) if expected_mask[target] == 0]
        for position in np.flatnonzero(on_no_data):  # a copy of a blind spot shows what the blind spot shows
            copied = [source for target, source in blind if shows[target] == shows[position]]
            if copied:
                expected_input[:, position] = label[k][:, copied[0]]
                followed += 1
        np.testing.assert_array_equal(mask[k], expected_mask)
        np.testing.assert_array_equal(inputs[k], expected_input)
        assert not (on_no_data & (mask[k] == 0)).any()
    assert on_no_data_targets and own_copies and followed  # every case did occur


class Identity(torch.nn.Module):
    """Returns what it is shown, and records it."""
    receptive_field_radius = 3

    def __init__(self):
        super().__init__()
        self.shown = []

    def forward(self, x):
        self.shown.append(x[0].permute(1, 2, 0).numpy().copy())
        return x


def filled_scene(height=10, width=11, bands=3, seed=1):
    """A distinct-valued cube with no-data pixels filled as load_scene fills them, and its no-data mask."""
    hsi = np.arange(height * width * bands, dtype=np.float32).reshape(height, width, bands)
    missing = no_data_pattern(height, width, seed)
    fill_missing(hsi, missing)
    return hsi, missing


def test_blindspot_scoring_hides_fill_copies_with_their_pixel():
    """No-data pixels are never hidden themselves; in every pass each shows what the pixel it copies shows.
    With the identity net a data pixel's result is its source's spectrum."""
    hsi, missing = filled_scene()
    shows = fill_sources(missing).ravel()
    net = Identity()
    output = blindspot_reconstruct(net, hsi, "cpu", 3, 0.5, seed=4, missing=missing)
    assert len(net.shown) == 2  # one pass per group
    no_data = missing.ravel()
    for shown in net.shown:
        flat = shown.reshape(-1, 3)
        np.testing.assert_array_equal(flat[no_data], flat[shows[no_data]])
    _, source = blindspot_partition(10, 11, 3, 0.5, torch.Generator().manual_seed(4), torch.from_numpy(shows))
    expected = hsi.reshape(-1, 3)[source.numpy()]
    np.testing.assert_array_equal(output.reshape(-1, 3)[~no_data], expected[~no_data])


def test_blindspot_scoring_never_shows_a_pixel_its_own_spectrum():
    """In the pass that scores a pixel, its spectrum is nowhere in the scene shown: not in its place, not in
    a fill copy ('a pixel's result never depends on its own spectrum', scoring.blindspot_reconstruct)."""
    hsi, missing = filled_scene()
    net = Identity()
    output = blindspot_reconstruct(net, hsi, "cpu", 3, 0.5, seed=4, missing=missing)
    shown_own = (output == hsi).all(axis=2) & ~missing
    assert not shown_own.any(), f"scoring shows pixels {np.argwhere(shown_own).tolist()} their own spectrum"
    for shown in net.shown:
        hidden = ~(shown == hsi).all(axis=2) & ~missing  # the pass's hidden data pixels
        for row, col in zip(*np.nonzero(hidden)):
            assert not (shown == hsi[row, col]).all(axis=2).any()


def test_training_never_shows_a_target_its_own_spectrum():
    """In a patch away from the scene's border (where reflect mirrors show pixels twice, as in the official
    patches), no blind spot (mask 0) shows its own spectrum, in its place or in a no-data copy of itself;
    and most patch centres stay blind spots."""
    hsi, missing = filled_scene(14, 15)
    sampler = BlindSpotSampler(hsi, 5, 3, 0.5, missing=missing)
    targets, sources = sampler.draw_masks(torch.Generator().manual_seed(0))
    inputs, label, mask = (t.flatten(2).numpy() for t in sampler.batch(torch.arange(sampler.num_patches),
                                                                         targets, sources))
    shows = fill_sources(missing)
    copies_seen = interior = 0
    for k, pixel in enumerate(np.flatnonzero(~missing)):
        row, col = divmod(pixel, missing.shape[1])
        if not (2 <= row < missing.shape[0] - 2 and 2 <= col < missing.shape[1] - 2):
            continue
        interior += 1
        on_no_data = missing[row - 2:row + 3, col - 2:col + 3].ravel()
        patch_shows = shows[row - 2:row + 3, col - 2:col + 3].ravel()
        for target in np.flatnonzero(mask[k, 0] == 0):
            own = label[k][:, target]
            copies = on_no_data & (patch_shows == patch_shows[target])
            assert not (inputs[k][:, target] == own).all()
            assert not (inputs[k][:, copies] == own[:, None]).all(axis=0).any()
            copies_seen += int(copies.sum())
    assert interior > 30 and copies_seen > 0 and (mask[:, 0, 12] == 0).mean() > 0.8


# 7. RX and the detection map over the data pixels ------------------------------------------------------

def test_rx_and_detection_map_use_data_pixels_only():
    """RX with no-data pixels is RX of the data pixels alone, NaN elsewhere; the map is scaled over them."""
    hsi, _ = tiny_scene(12, 10, 4)
    missing = no_data_pattern(12, 10, seed=2)
    hsi[missing] = 1e6  # would dominate the statistics if they were used
    scores = rx(hsi, missing)
    assert np.isnan(scores[missing]).all()
    np.testing.assert_array_equal(scores[~missing], rx(hsi[~missing].reshape(-1, 1, 4)).ravel())
    reconstructed = hsi + np.random.RandomState(0).randn(*hsi.shape).astype(np.float32)
    score_map = detection_map(hsi, reconstructed, missing)
    error = ((hsi.astype(np.float64) - reconstructed) ** 2).mean(axis=2)[~missing]
    assert np.isnan(score_map[missing]).all() and score_map.dtype == np.float32
    np.testing.assert_allclose(score_map[~missing], (error - error.min()) / (error.max() - error.min()), rtol=1e-6)


# 8. The packages are optional ----------------------------------------------------------------------------

def run_without(packages, code, *args):
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in packages)
    return subprocess.run([sys.executable, "-c", f"import sys\n{blocked}{code}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("absent, name", [(["spectral"], "scene.hdr"), (["rasterio"], "scene.hdr"),
                                           (["rasterio"], "scene.tif")])
def test_without_a_package_a_raster_scene_names_the_requirements_file(tmp_path, absent, name):
    write_envi(tmp_path / "scene.hdr", distinct_cube("float32"))
    write_tiff(tmp_path / "scene.tif", distinct_cube("float32"))
    code = "from scenes import load_scene\nfrom utils import UserError\ntry:\n    load_scene('.', sys.argv[1])\n" \
           "except UserError as error:\n    print('UserError:', error)\n"
    result = run_without(absent, code, str(tmp_path / name))
    assert result.returncode == 0 and result.stdout.startswith("UserError: "), result.stdout + result.stderr
    assert "requirements-imagery.txt" in result.stdout


def test_main_imports_without_spy_or_rasterio():
    """.mat users are not made to install either package."""
    result = run_without(["spectral", "rasterio"], "import main\nprint('imported')")
    assert result.returncode == 0 and result.stdout == "imported\n", result.stderr


def test_the_requirements_file_named_in_the_messages_exists():
    assert os.path.isfile(os.path.join(ROOT, "requirements-imagery.txt"))
