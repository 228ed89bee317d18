"""ENVI and GeoTIFF files that are not what they seem: several pages, damaged or oversized files, bad bands
flagged by GDAL, odd headers and placings, maps off the scene's grid, band names carried into the output."""
import json
import os
import warnings

import numpy as np
import pytest

envi = pytest.importorskip("spectral.io.envi", reason="ENVI tests need SPy (requirements-imagery.txt)")
rasterio = pytest.importorskip("rasterio", reason="GeoTIFF tests need rasterio (requirements-imagery.txt)")
from rasterio.transform import Affine  # noqa: E402

from main import main  # noqa: E402
from scenes import load_scene  # noqa: E402
from test_imagery import (MAP_INFO, TRANSFORM, UTM33, cli_flags, distinct_cube, edit_header,  # noqa: E402
                          one_error_line, write_envi, write_tiff)


def run(tmp_path, path, *extra, command="rx"):
    """`main` on the scene `path`: RX (quick) unless `command` says otherwise."""
    flags = cli_flags(tmp_path, path, *extra)
    if command == "rx":
        flags = ["--dataset", str(path), "--results_dir", str(tmp_path / "r"), *extra]
    return main(["--command", command, *flags])


def results(tmp_path, name):
    return tmp_path / "r" / next(entry for entry in os.listdir(tmp_path / "r") if entry.startswith(name)) / "latest"


def quiet_tiff(path, count, height=9, width=7, dtype="float32", **profile):
    """An open rasterio writer of a GeoTIFF, warnings about unreferenced files silenced."""
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    return rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count, dtype=dtype,
                         **profile)


# 3. A TIFF of several pages -----------------------------------------------------------------------------

def multi_page_tiff(path):
    """A 9 x 7 x 5 int16 first page and a 4 x 3 x 1 uint8 second page."""
    with quiet_tiff(path, 5, dtype="int16", crs=UTM33, transform=TRANSFORM) as target:
        target.write(distinct_cube("int16").transpose(2, 0, 1))
    with quiet_tiff(path, 1, 4, 3, "uint8", APPEND_SUBDATASET="YES") as target:
        target.write(np.ones((1, 4, 3), np.uint8))
    return str(path)


def test_multi_page_tiff_is_refused_naming_its_pages(tmp_path, capsys):
    path = multi_page_tiff(tmp_path / "pages.tif")
    assert run(tmp_path, path) == 2
    error = one_error_line(capsys)
    assert "2 pages" in error and "9 x 7 pixels x 5 bands" in error and "4 x 3 pixels x 1 band" in error
    assert f"gdal_translate GTIFF_DIR:1:{path}" in error and "-sds" in error
    gt = np.zeros((9, 7), np.uint8)
    gt[2, 3] = 1
    scene = write_tiff(tmp_path / "scene.tif", distinct_cube("float32"), crs=UTM33)
    assert run(tmp_path, scene, "--gt_file", path) == 2
    assert "2 pages" in one_error_line(capsys)


# 5. The size checks of scene files apply to ground-truth files -----------------------------------------

def test_envi_gt_file_declaring_more_than_its_data_file_is_refused(tmp_path, capsys):
    scene = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"))
    gt = write_envi(tmp_path / "gt.hdr", np.zeros((9, 7, 1), np.uint8))
    edit_header(gt, "samples = 7\nlines = 9", "samples = 3000\nlines = 3000")
    assert run(tmp_path, scene, "--gt_file", gt) == 2
    assert "holds 63 bytes but its header" in one_error_line(capsys)


def test_tiff_gt_file_of_another_size_is_refused_before_it_is_read(scene_dir, capsys, monkeypatch):
    """The declared size is checked before any value is read."""
    gt = scene_dir / "big.tif"
    with quiet_tiff(gt, 1, 3000, 3000, "uint8", compress="deflate", tiled=True) as target:
        target.write(np.zeros((1, 3000, 3000), np.uint8))

    def no_read(*args, **kwargs):
        raise AssertionError("the map's values were read")
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", no_read)
    assert run(scene_dir, "tiny", "--data_dir", str(scene_dir), "--gt_file", str(gt)) == 2
    assert "is 3000 x 3000 pixels but the scene is 12 x 10" in one_error_line(capsys)


def test_uncompressed_tiff_shorter_than_declared_is_refused_as_truncated(tmp_path, capsys):
    path = write_tiff(tmp_path / "scene.tif", distinct_cube("float32", (40, 7, 5)), crs=UTM33)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    assert run(tmp_path, path) == 2
    assert f"TIFF {path} is damaged or truncated" in one_error_line(capsys)


@pytest.mark.parametrize("suffix", [".hdr", ".tif"])
def test_a_scene_larger_than_memory_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch, suffix):
    import imagery
    cube = distinct_cube("float32")
    path = (write_envi(tmp_path / "scene.hdr", cube) if suffix == ".hdr"
            else write_tiff(tmp_path / "scene.tif", cube, crs=UTM33))
    monkeypatch.setattr(imagery, "memory_bytes", lambda: 1000)  # the scene needs 9 x 7 x 5 x 4 = 1260
    assert run(tmp_path, path) == 2
    error = one_error_line(capsys)
    assert "9 x 7 pixels x 5 bands" in error and "more than this machine's memory" in error


# 6. Bad bands of GeoTIFFs: GDAL's bbl, and bands without data --------------------------------------------

def bad_band_tiff(path):
    """9 x 7 x 7 float32, nodata -9999: band 2 flagged bbl=0 (band metadata, default domain), band 4 flagged
    in the ENVI domain, band 5 -9999 everywhere, band 6 NaN everywhere, band 7 bbl=1."""
    cube = distinct_cube("float32", (9, 7, 7))
    cube[:, :, 4], cube[:, :, 5] = -9999, np.nan
    cube[3, 3, 0] = -9999  # one no-data pixel in a good band
    with quiet_tiff(path, 7, nodata=-9999, crs=UTM33, transform=TRANSFORM) as target:
        target.write(cube.transpose(2, 0, 1))
        target.update_tags(2, bbl="0")
        target.update_tags(4, ns="ENVI", bbl="0")
        target.update_tags(7, bbl="1")
    return str(path), cube


def test_tiff_bad_bands_and_bands_without_data_are_left_out_in_one_note(tmp_path, capsys):
    path, cube = bad_band_tiff(tmp_path / "scene.tif")
    assert run(tmp_path, path) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "bad band" in line]
    assert len(notes) == 1 and "2, 4" in notes[0] and "5-6" in notes[0] and "--keep_bad_bands" in notes[0], out
    scene = load_scene(str(tmp_path), path)
    assert scene.bands == [1, 3, 7] and scene.missing.sum() == 1 and scene.missing[3, 3]
    np.testing.assert_array_equal(scene.hsi[~scene.missing], cube[:, :, [0, 2, 6]][~scene.missing])


def test_keep_bad_bands_keeps_them(tmp_path, capsys):
    path, _ = bad_band_tiff(tmp_path / "scene.tif")
    assert run(tmp_path, path, "--keep_bad_bands") == 2  # bands 5 and 6 hold no data at all
    assert "every pixel of" in one_error_line(capsys)
    write_tiff(tmp_path / "plain.tif", distinct_cube("float32"), crs=UTM33)
    assert run(tmp_path, tmp_path / "plain.tif", "--keep_bad_bands") == 0
    out = capsys.readouterr().out
    assert "--keep_bad_bands changes nothing" in out and "only ENVI" not in out


def test_envi_bad_bands_and_a_band_without_data_share_one_note(tmp_path, capsys):
    cube = distinct_cube("float32", (9, 7, 5))
    cube[:, :, 3] = np.nan
    path = write_envi(tmp_path / "scene.hdr", cube, bbl=[1, 0, 1, 1, 1])
    assert run(tmp_path, path) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "bad band" in line]
    assert len(notes) == 1 and "2 (" in notes[0] and "4 (" in notes[0]
    assert load_scene(str(tmp_path), path).bands == [1, 3, 5]


# 7. A damaged TIFF --------------------------------------------------------------------------------------

def test_damaged_tiff_names_the_file_and_the_rows(tmp_path, capsys):
    """A compressed TIFF cut short: the size cannot be checked beforehand, the read fails."""
    path = tmp_path / "scene.tif"
    values = np.random.RandomState(0).rand(3, 200, 50).astype(np.float32)
    with quiet_tiff(path, 3, 200, 50, compress="deflate", crs=UTM33, transform=TRANSFORM) as target:
        target.write(values)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    assert run(tmp_path, str(path)) == 2
    error = one_error_line(capsys)
    assert f"TIFF {path} is damaged or truncated (reading rows " in error and "See previous" not in error


# 9. ENVI interleave and byte order ---------------------------------------------------------------------

def test_unknown_interleave_is_refused(tmp_path, capsys):
    path = write_envi(tmp_path / "scene.hdr", distinct_cube("int16"), "bil")
    edit_header(path, "interleave = bil", "interleave = bsx")
    assert run(tmp_path, path) == 2
    assert "interleave = bsx" in (error := one_error_line(capsys)) and "bsq, bil or bip" in error


def test_header_without_byte_order_is_read_little_endian_with_a_note(tmp_path, capsys):
    cube = distinct_cube("int16")
    path = write_envi(tmp_path / "scene.hdr", cube, "bil", byteorder=0)
    edit_header(path, "byte order = 0\n", "")
    assert run(tmp_path, path) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "byte order" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "little-endian" in notes[0]
    np.testing.assert_array_equal(load_scene(str(tmp_path), path).hsi, cube)


# 10. A placing that cannot be right is not written ------------------------------------------------------

@pytest.mark.parametrize("field, value, words", [(7, "61", "UTM zone 61"), (3, "abc", "'abc'"),
                                                  (5, "-30", "pixel size")])
def test_invalid_map_info_gives_unreferenced_maps_and_a_note(tmp_path, capsys, field, value, words):
    map_info = list(MAP_INFO)
    map_info[field] = value
    path = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"), map_info=map_info)
    assert run(tmp_path, path) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "without georeferencing" in line]
    assert len(notes) == 1 and words in notes[0]
    out = results(tmp_path, "scene")
    with rasterio.open(out / "detectmap.tif") as source:
        assert source.crs is None and source.transform == Affine.identity()
    assert "map info" not in (out / "detectmap.hdr").read_text()


def test_geographic_crs_with_coordinates_in_metres_gives_unreferenced_maps(tmp_path, capsys):
    path = write_tiff(tmp_path / "scene.tif", distinct_cube("float32"), crs="EPSG:4326")
    assert run(tmp_path, path) == 0
    assert "without georeferencing" in capsys.readouterr().out
    with rasterio.open(results(tmp_path, "scene") / "detectmap.tif") as source:
        assert source.crs is None


# 11. A georeferenced map must lie on the scene's grid ----------------------------------------------------

def test_georeferenced_gt_off_the_scene_grid_is_refused(tmp_path, capsys):
    gt = np.zeros((9, 7), np.uint8)
    gt[2, 3] = 1
    scene = write_envi(tmp_path / "scene.hdr", distinct_cube("float32"), map_info=MAP_INFO)
    same = write_tiff(tmp_path / "same.tif", gt, crs=UTM33)  # the same grid, written by another driver
    assert run(tmp_path, scene, "--gt_file", same) == 0
    capsys.readouterr()
    away = write_tiff(tmp_path / "away.tif", gt, crs=UTM33, transform=Affine(30, 0, 501900, 0, -30, 4600000))
    assert run(tmp_path, scene, "--gt_file", away) == 2
    error = one_error_line(capsys)
    assert "away.tif" in error and "scene.hdr" in error and "grid" in error and "501900" in error
    other_crs = write_tiff(tmp_path / "utm32.tif", gt, crs="EPSG:32632")
    assert run(tmp_path, scene, "--gt_file", other_crs) == 2
    assert "EPSG:32632" in one_error_line(capsys)


# 12. One size rule, a hint that works, the AUC's reason ---------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 7, 5), (9, 1, 5)])
def test_raster_scenes_under_2_x_2_pixels_are_refused_like_mat_files(tmp_path, capsys, shape):
    path = write_tiff(tmp_path / "line.tif", distinct_cube("float32", shape), crs=UTM33)
    assert run(tmp_path, path) == 2
    assert f"is {shape[0]} x {shape[1]} pixels: at least 2 x 2 are needed" in one_error_line(capsys)


def test_an_envi_data_file_passed_without_suffix_gets_a_hint_that_works(tmp_path, capsys, monkeypatch):
    flight, project = tmp_path / "flight", tmp_path / "project"
    flight.mkdir(), project.mkdir()
    write_envi(flight / "line.hdr", distinct_cube("float32"))
    os.rename(flight / "line.img", flight / "line")
    monkeypatch.chdir(project)
    for given in (str(flight / "line"), os.path.join("..", "flight", "line")):
        assert run(tmp_path, given) == 2
        error = one_error_line(capsys)
        hint = error.split("pass --dataset ")[1].split()[0]
        assert hint == given + ".hdr", error
        assert run(tmp_path, hint) == 0


def test_auc_note_says_every_anomaly_pixel_is_no_data(tmp_path, capsys):
    cube = distinct_cube("float32")
    cube[0] = np.nan
    path = write_tiff(tmp_path / "scene.tif", cube, crs=UTM33)
    gt = np.zeros((9, 7), np.uint8)
    gt[0, 2] = gt[0, 4] = 1
    assert run(tmp_path, path, "--gt_file", write_tiff(tmp_path / "gt.tif", gt, transform=None)) == 0
    out = capsys.readouterr().out
    assert "every anomaly pixel of the map" in out and "is no-data" in out
    assert json.loads((results(tmp_path, "scene") / "metrics.json").read_text())["auc"] is None


# 15. Band names and wavelengths in reconstructed.tif -----------------------------------------------------

def test_reconstruction_carries_the_used_bands_names_and_wavelengths(tmp_path):
    hsi = distinct_cube("float32", (12, 10, 6)) + 50
    names = [f"b{band}" for band in range(1, 7)]
    wavelengths = [400.5, 500, 600, 700, 800, 900]
    path = write_envi(tmp_path / "scene.hdr", hsi, band_names=names, wavelength=wavelengths,
                      wavelength_units="Nanometers", fwhm=[10] * 6, bbl=[1, 1, 0, 1, 1, 1])
    flags = cli_flags(tmp_path, path, "--drop_bands", "5")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    with rasterio.open(results(tmp_path, "scene") / "reconstructed.tif") as source:
        assert source.descriptions == ("b1", "b2", "b4", "b6")
        assert [float(source.tags(band)["wavelength"]) for band in range(1, 5)] == [400.5, 500, 700, 900]
        assert source.tags(1)["wavelength_units"] == "Nanometers" and source.tags(1)["fwhm"] == "10"
        assert float(source.tags(4, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]) == pytest.approx(0.9)


def test_tiff_band_descriptions_and_wavelengths_are_read(tmp_path):
    path = tmp_path / "scene.tif"
    with quiet_tiff(path, 3, crs=UTM33, transform=TRANSFORM) as target:
        target.write(distinct_cube("float32", (9, 7, 3)).transpose(2, 0, 1))
        for band, (name, wavelength) in enumerate([("blue", 0.45), ("green", 0.55), ("red", 0.65)], start=1):
            target.set_band_description(band, name)
            target.update_tags(band, wavelength=str(wavelength), wavelength_units="Micrometers")
    raster = load_scene(str(tmp_path), str(path), drop_bands=((2, 2),)).raster
    assert raster.band_names == ["blue", "red"] and raster.wavelengths == [0.45, 0.65]
    assert raster.wavelength_units == "Micrometers"
