import json
import os
import types

import matplotlib.image
import numpy as np
import pytest
import scipy.io
from sklearn.metrics import roc_auc_score

from conftest import SHARED_DATA, needs_shared_data
from detectors import lrx, rx
import figures
from figures import plot_detection_map, plot_roc, plot_roc_3d, plot_separation
from metrics import METRIC_KEYS, format_metrics_table, metrics_3d, min_max, roc_points
from results import write_result_files
from scenes import Scene
from utils import UserError

pytestmark = pytest.mark.rendered_figures  # these tests look at the pictures


def random_scene(height, width, bands, seed=0):
    """Correlated bands, so that the covariance is far from diagonal."""
    rng = np.random.RandomState(seed)
    return rng.randn(height, width, bands) @ rng.randn(bands, bands) + 10 * rng.rand(bands)


def labelled_map(seed=0):
    """A 12 x 10 ground truth with 9 anomalies and a score map that ranks them high, not perfectly."""
    rng = np.random.RandomState(seed)
    gt = np.zeros((12, 10), np.uint8)
    gt[2:5, 3:6] = 1
    return gt, 40 * (rng.rand(12, 10) + 0.6 * gt) - 7


def lrx_by_loops(hsi, win_in, win_out):
    """LRX written out: per pixel, the clipped outer window's pixels that are not in the inner window."""
    height, width, bands = hsi.shape
    outer, inner = win_out // 2, win_in // 2
    scores = np.zeros((height, width))
    for row in range(height):
        for col in range(width):
            background = []
            for d_row in range(-outer, outer + 1):
                for d_col in range(-outer, outer + 1):
                    r, c = row + d_row, col + d_col
                    if 0 <= r < height and 0 <= c < width and (abs(d_row) > inner or abs(d_col) > inner):
                        background.append(hsi[r, c])
            background = np.array(background)
            diff = hsi[row, col] - background.mean(axis=0)
            scores[row, col] = diff @ np.linalg.pinv(np.cov(background, rowvar=False)) @ diff
    return scores


def test_rx_is_the_mahalanobis_distance_to_the_scene_mean():
    hsi = random_scene(7, 6, 5)
    pixels = hsi.reshape(-1, 5)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    expected = [(x - pixels.mean(axis=0)) @ inverse @ (x - pixels.mean(axis=0)) for x in pixels]
    scores = rx(hsi.astype(np.float32))
    assert scores.shape == (7, 6) and scores.dtype == np.float64
    np.testing.assert_allclose(scores.ravel(), expected, rtol=1e-5)  # float32 input: its rounding, not ours
    np.testing.assert_allclose(rx(hsi).ravel(), expected, rtol=1e-9)


@needs_shared_data
@pytest.mark.parametrize("scene, auc", [("HYDICE-II", 0.9272), ("sandiego-100x100x189-58px", 0.8885)])
def test_rx_auc_matches_the_published_figures(scene, auc):
    contents = scipy.io.loadmat(os.path.join(SHARED_DATA, scene + ".mat"))
    scores = rx(contents["data"])
    assert round(roc_auc_score(contents["map"].ravel(), scores.ravel()), 4) == auc
    assert round(roc_auc_score(contents["map"].ravel(), min_max(scores).ravel()), 4) == auc


@pytest.mark.parametrize("bands, win_in, win_out", [(4, 1, 5), (4, 3, 7), (12, 1, 3)])
def test_lrx_matches_the_loop_by_loop_definition(bands, win_in, win_out):
    # 12 bands in 3 x 3 windows: at most 8 background pixels, a singular covariance that only pinv handles
    hsi = random_scene(9, 8, bands, seed=bands)
    np.testing.assert_allclose(lrx(hsi, win_in, win_out), lrx_by_loops(hsi, win_in, win_out), rtol=1e-7)


def test_lrx_ranks_an_implanted_anomaly_first():
    hsi = random_scene(15, 14, 6)
    hsi[7, 6] += 8 * hsi.std(axis=(0, 1))
    scores = lrx(hsi, 3, 9)
    assert np.unravel_index(scores.argmax(), scores.shape) == (7, 6)


@pytest.mark.parametrize("win_in, win_out, message", [
    (2, 7, "win_in=2 is not allowed.*odd"), (3, 8, "win_out=8 is not allowed.*odd"),
    (0, 5, "win_in=0 is not allowed"), (3.0, 7, "win_in=3.0 is not allowed"),
    (5, 5, "not smaller than the outer window.*use an odd win_out of at least 7"),
    (7, 5, "not smaller than the outer window"),
    (3, 11, "larger than the 9 x 8 scene: use an odd win_out from 5 to 7"),
    (7, 9, "larger than the 9 x 8 scene: use win_out=7 with an odd win_in below it")])
def test_lrx_rejects_bad_windows_saying_what_to_do(win_in, win_out, message):
    with pytest.raises(UserError, match=message):
        lrx(np.zeros((9, 8, 3)), win_in, win_out)


def test_lrx_rejects_a_scene_too_small_for_any_window():
    with pytest.raises(UserError, match="at least 3 pixels high and wide"):
        lrx(np.zeros((2, 8, 3)), 1, 3)


def step_integral(thresholds, curve):
    """Exact area under a step function of tau that equals curve[k] on (thresholds[k+1], thresholds[k]]."""
    return float(np.sum((thresholds[:-1] - thresholds[1:]) * curve[:-1]))


def test_tau_areas_are_the_mean_normalised_scores_and_the_exact_integrals():
    gt, score_map = labelled_map()
    metrics = metrics_3d(gt, score_map)
    normalised = min_max(score_map)
    assert metrics["AUC(D,tau)"] == pytest.approx(normalised[gt == 1].mean(), abs=1e-12)
    assert metrics["AUC(F,tau)"] == pytest.approx(normalised[gt == 0].mean(), abs=1e-12)
    thresholds, detection, false_alarm = roc_points(gt, score_map)
    assert thresholds[0] == thresholds[1] == 1 and thresholds[-1] == 0 and np.all(np.diff(thresholds[1:]) < 0)
    assert detection[0] == false_alarm[0] == 0 and detection[-1] == false_alarm[-1] == 1
    assert step_integral(thresholds, detection) == pytest.approx(metrics["AUC(D,tau)"], abs=1e-12)
    assert step_integral(thresholds, false_alarm) == pytest.approx(metrics["AUC(F,tau)"], abs=1e-12)


def test_auc_df_is_sklearns_roc_auc_and_the_derived_metrics_follow_their_formulas():
    gt, score_map = labelled_map(seed=3)
    metrics = metrics_3d(gt, score_map)
    assert list(metrics) == list(METRIC_KEYS) and all(type(value) is float for value in metrics.values())
    df, dt, ft = metrics["AUC(D,F)"], metrics["AUC(D,tau)"], metrics["AUC(F,tau)"]
    assert df == roc_auc_score(gt.ravel(), score_map.ravel()) and 0.5 < df < 1
    assert metrics["AUC_TD"] == df + dt and metrics["AUC_BS"] == df - ft and metrics["AUC_TDBS"] == dt - ft
    assert metrics["AUC_OD"] == df + dt - ft and metrics["AUC_ODP"] == dt + 1 - ft
    assert metrics["AUC_SNPR"] == dt / ft


def test_a_perfect_map_scores_one_and_its_snpr_is_null_not_infinite():
    gt, _ = labelled_map()
    metrics = metrics_3d(gt, gt.astype(float))
    assert metrics["AUC(D,F)"] == 1 and metrics["AUC(D,tau)"] == 1 and metrics["AUC(F,tau)"] == 0
    assert metrics["AUC_SNPR"] is None and "null" in json.dumps(metrics)
    assert "n/a" in format_metrics_table(metrics)


def test_a_constant_map_gives_chance_auc_without_crashing():
    gt, _ = labelled_map()
    metrics = metrics_3d(gt, np.full(gt.shape, 3.5))
    assert metrics["AUC(D,F)"] == 0.5 and metrics["AUC(D,tau)"] == metrics["AUC(F,tau)"] == 0
    assert metrics["AUC_SNPR"] is None


@pytest.mark.parametrize("gt_value, missing", [(0, "no anomaly"), (1, "no background")])
def test_metrics_refuse_a_ground_truth_without_both_classes(gt_value, missing):
    with pytest.raises(ValueError, match=missing):
        metrics_3d(np.full((4, 5), gt_value), np.random.RandomState(0).rand(4, 5))


def test_metrics_table_lists_every_metric_for_one_or_several_methods():
    gt, score_map = labelled_map()
    single = format_metrics_table(metrics_3d(gt, score_map)).splitlines()
    assert len(single) == 1 + len(METRIC_KEYS) and len({len(line) for line in single}) == 1
    several = format_metrics_table({"RX": metrics_3d(gt, score_map), "perfect": metrics_3d(gt, gt)})
    assert several.splitlines()[0].split() == ["metric", "RX", "perfect"]
    assert all(key in several for key in METRIC_KEYS)


def assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 300 and image.std() > 0.05
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".tmp")]


@pytest.fixture
def drawn(monkeypatch):
    """What each figure held when saved: {file name: [(title, x label, y label, x scale, tick labels), ...]},
    the figure's own title under 'suptitle'."""
    found, save = {}, figures._save

    def record(fig, path):
        found[os.path.basename(path)] = dict(suptitle=fig._suptitle.get_text() if fig._suptitle else "", axes=[
            (axis.get_title(), axis.get_xlabel(), axis.get_ylabel(), axis.get_xscale(),
             [label.get_text() for label in axis.get_xticklabels() + axis.get_yticklabels()])
            for axis in fig.axes if axis.get_label() != "<colorbar>"])
        save(fig, path)
    monkeypatch.setattr(figures, "_save", record)
    return found


@pytest.mark.parametrize("log_pf", [False, True])
def test_plot_roc_writes_a_png(tmp_path, log_pf, drawn):
    gt, score_map = labelled_map()
    path = str(tmp_path / "roc.png")
    plot_roc(path, {"noisy": (gt, score_map), "perfect": (gt, gt)}, log_pf=log_pf, title="scene X")
    assert_png(path)
    axes = drawn["roc.png"]["axes"]
    # both P_F scales side by side; log_pf: the log scale alone
    assert [axis[3] for axis in axes] == (["log"] if log_pf else ["linear", "log"])
    assert all(axis[2] == "detection probability $P_D$" and "$P_F$" in axis[1] for axis in axes)
    assert "scene X" in (axes[0][0] if log_pf else drawn["roc.png"]["suptitle"])


def test_detection_map_has_pixel_axes(tmp_path, drawn):
    gt, score_map = labelled_map()
    plot_detection_map(str(tmp_path / "detectmap.png"), min_max(score_map), gt, "scene X")
    assert_png(str(tmp_path / "detectmap.png"))
    axes = drawn["detectmap.png"]["axes"]
    assert len(axes) == 2 and axes[0][0] == "scene X" and axes[1][0].startswith("ground truth")
    for _, xlabel, ylabel, _, ticks in axes:
        assert (xlabel, ylabel) == ("column (pixel)", "row (pixel)")
        shown = [int(text.replace("\u2212", "-")) for text in ticks if text]  # whole pixels
        assert shown and 0 in shown and max(shown) >= 8


@pytest.mark.parametrize("method, info, expected, absent", [
    ("BS3LNet", dict(epoch=170, scoring=dict(name="official")), "HYDICE-II: BS3LNet, epoch 170, official scoring",
     None),
    ("BS3LNet (blind-spot scoring, R=4)", dict(epoch=5, scoring=dict(name="blindspot")),
     "HYDICE-II: BS3LNet (blind-spot scoring, R=4), epoch 5", "official"),
    ("RX", dict(), "HYDICE-II: RX", "epoch")])
def test_result_titles_name_scene_epoch_and_scoring(tmp_path, drawn, method, info, expected, absent):
    gt, score_map = labelled_map()
    config = types.SimpleNamespace(dataset="HYDICE-II", roc_log=False)
    metrics = write_result_files(config, str(tmp_path), method, min_max(score_map), Scene(
        hsi=np.zeros(gt.shape + (3,), np.float32), gt=gt), None, info)
    titles = {name: figure["suptitle"] + " | " + " | ".join(axis[0] for axis in figure["axes"])
              for name, figure in drawn.items()}
    assert sorted(titles) == ["detectmap.png", "roc.png", "roc3d.png", "separation.png"]
    assert f"AUC(D,F) {metrics['auc']:.4f}" in titles["detectmap.png"]
    for name, title in titles.items():
        assert expected in title, (name, title)
        assert absent is None or absent not in title, (name, title)


@pytest.mark.parametrize("projections", [True, False])
def test_plot_roc_3d_writes_a_png(tmp_path, projections):
    gt, score_map = labelled_map()
    path = str(tmp_path / "roc3d.png")
    plot_roc_3d(path, {"noisy": (gt, score_map), "constant": (gt, np.zeros(gt.shape))}, projections=projections)
    assert_png(path)


def test_plot_separation_writes_a_png(tmp_path):
    gt, score_map = labelled_map()
    path = str(tmp_path / "separation.png")
    plot_separation(path, {"noisy": score_map, "perfect": gt, "RX": rx(random_scene(12, 10, 4))}, gt)
    assert_png(path)


def test_plot_sensitivity_writes_a_png(tmp_path, drawn):
    path = str(tmp_path / "sensitivity_ratio.png")
    figures.plot_sensitivity(path, "ratio", ["0.8", "0.9"], {"tiny bs3lnet": [(0, 0.91, 0.01), (1, 0.93, 0.02)],
                                                              "tiny lrx": [(1, 0.88, 0.0)]})
    assert_png(path)
    [(title, xlabel, _, _, ticks)] = drawn["sensitivity_ratio.png"]["axes"]
    assert (title, xlabel) == ("Sensitivity to --ratio", "--ratio") and ticks[:2] == ["0.8", "0.9"]
