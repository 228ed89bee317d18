"""Label-free statistics and epoch selectors, each on a tiny situation whose answer is known."""
import argparse
import importlib.util
import json
import os
import signal
import threading
import time
import types

import numpy as np
import pytest
import torch

from label_free import (STATISTICS, Selector, consensus, heldout_error, judge_selector, leave_one_scene_out,
                        log_mass_volume, loss_change_per_checkpoint, moving_variances, pixel_errors, rank_correlations,
                        relative_loss_changes, run_statistics, score_stability, select_first_above,
                        select_first_below, select_max, select_min, suspect_contrast)
from conftest import ROOT
from model import reconstruct
from runs import run_lock
from scoring import blindspot_reconstruct

EPOCHS = [5, 10, 15, 20, 25, 30]


class Copier(torch.nn.Module):
    """A 'network' that returns its input plus `offset`: it copies whatever it is shown."""
    receptive_field_radius = 1

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


def test_heldout_error_hides_each_pixel_so_copying_the_input_does_not_lower_it():
    rng = np.random.RandomState(0)
    noise = (100 + rng.randn(12, 10, 6)).astype(np.float32)  # independent pixels, variance 1 per band
    assert heldout_error(pixel_errors(noise, reconstruct(Copier(), noise, "cpu"))) == 0  # shown: copied
    hidden = heldout_error(pixel_errors(noise, blindspot_reconstruct(Copier(), noise, "cpu", 5, 0.9, seed=0)))
    assert 1.6 < hidden < 2.4  # a neighbour's spectrum: E|x_p - x_q|^2 / B = 2 sigma^2 = 2
    flat = np.full((12, 10, 6), 7.0, np.float32)  # a constant scene: every neighbour predicts exactly
    blind = blindspot_reconstruct(Copier(0.5), flat, "cpu", 5, 0.9, seed=0)
    assert heldout_error(pixel_errors(flat, blind)) == pytest.approx(0.25)
    errors, missing = np.ones((3, 4)), np.zeros((3, 4), bool)
    errors[1, 2], missing[1, 2] = 1e6, True
    assert heldout_error(errors, missing) == 1.0  # no-data pixels are left out


def test_loss_plateau_stops_at_the_first_checkpoint_after_the_relative_change_falls_below_the_threshold():
    rows = [dict(epoch=e, loss=1 + 2.0 ** -e) for e in range(1, 31)]
    # relative change at epoch e: 2^-e / (1 + 2^-(e-1)): 0.0294 at 5, 0.0152 at 6, 0.0077 at 7
    changes = loss_change_per_checkpoint(rows, EPOCHS)
    assert changes[0] == pytest.approx(2.0 ** -5 / (1 + 2.0 ** -4))  # smallest of epochs 2..5
    assert select_first_below(EPOCHS, changes, 0.05) == 5
    assert select_first_below(EPOCHS, changes, 0.01) == 10  # plateau at epoch 7: kept checkpoint 10
    assert select_first_below(EPOCHS, changes, 0.0) == 30  # never: the last epoch
    resumed = rows[:12] + [dict(epoch=12, loss=5.0)] + rows[12:]  # epoch 12 logged again: the last counts
    assert relative_loss_changes(resumed)[13] == pytest.approx(abs(rows[12]["loss"] - 5.0) / 5.0)


def test_stability_and_consensus_of_score_maps_from_their_rank_correlations():
    truth = np.arange(20.0).reshape(4, 5)
    maps = [truth, -truth, truth ** 2, truth + 3]  # the second reverses the ranking, the rest keep it
    correlations, ranks = rank_correlations(maps)
    assert ranks.shape == (4, 20)
    stability = score_stability(correlations)
    assert np.isnan(stability[0]) and stability[1:] == pytest.approx([-1, -1, 1])
    assert consensus(correlations) == pytest.approx([1 / 3, -1, 1 / 3, 1 / 3])
    assert select_first_above([5, 10, 15, 20], stability, 0.99) == 20
    assert select_max([5, 10, 15, 20], consensus(correlations)) == 5  # the earliest of the tied
    missing = np.zeros((4, 5), bool)
    missing[0, 0] = True
    assert rank_correlations(maps, missing)[1].shape == (4, 19)


def test_moving_variance_is_least_where_the_reconstructions_stop_moving():
    base = np.random.RandomState(1).rand(3, 4, 2)
    shifts = [0, 4, 8, 9, 9, 9, 12, 20]
    values = moving_variances([base + s for s in shifts], window=3)
    assert np.isnan(values[:2]).all()
    assert values[2:] == pytest.approx([np.var(shifts[i - 2:i + 1]) for i in range(2, 8)])
    assert select_min(list(range(8)), values) == 5  # the window 9, 9, 9


def test_suspect_contrast_peaks_when_the_suspects_stand_out_most_and_ignores_one_maps_spike():
    rng = np.random.RandomState(2)
    anomaly_errors = [5, 9, 12, 7, 3]
    maps = []
    for value in anomaly_errors:
        errors = 1 + 0.1 * rng.rand(20, 20)  # 400 pixels: 1 % is 4 suspects
        errors[2:4, 5:7] = value
        maps.append(errors)
    maps[0][15, 15] = 50.0  # a spike in one map only
    _, ranks = rank_correlations(maps)
    contrast = suspect_contrast(maps, ranks)
    assert contrast[1:] == pytest.approx([v / 1.05 for v in anomaly_errors[1:]], rel=0.02)
    assert contrast[0] < 5 / 1.05  # the spike counts as background, not as a suspect
    assert select_max(EPOCHS[:5], contrast) == 15


def test_mass_volume_is_the_ball_volume_at_each_mass_quantile():
    errors = np.full((10, 10), 3.0)  # every quantile is 3: in 2 bands a disc of radius sqrt(2 * 3)
    assert log_mass_volume(errors, 2) == pytest.approx(np.log(np.pi * 6 * (0.999 - 0.9)))
    tail = np.random.RandomState(3).exponential(size=(30, 30))
    # doubling every error doubles every quantile: the volume in B dimensions grows 2^(B/2)
    assert log_mass_volume(2 * tail, 162) - log_mass_volume(tail, 162) == pytest.approx(81 * np.log(2))
    fitted_tail = np.minimum(tail, np.quantile(tail, 0.95))  # the top 5 % reconstructed better
    assert log_mass_volume(fitted_tail, 162) < log_mass_volume(tail, 162)


def test_select_min_and_max_skip_nan_prefer_the_earliest_and_fall_back_to_the_last():
    assert select_min([5, 10, 15], [np.nan, 2.0, 2.0]) == 10
    assert select_max([5, 10, 15], [1.0, 3.0, np.nan]) == 10
    assert select_min([5, 10], [np.nan, np.nan]) == 10


def test_leave_one_scene_out_never_uses_the_reported_scenes_own_regret():
    selector = Selector("first stable", "s", select_first_above, (0.5, 0.9))

    def run(aucs):
        return [dict(epoch=5, s=0.6, auc=aucs[0]), dict(epoch=10, s=0.95, auc=aucs[1])]

    # threshold 0.5 stops at epoch 5, 0.9 at epoch 10; scene a peaks early, b and c late
    scenes = dict(a=[run([0.9, 0.8])], b=[run([0.7, 0.9])], c=[run([0.7, 0.9]), run([0.8, 0.85])])
    result = leave_one_scene_out(scenes, selector)
    assert result["a"] == (0.9, pytest.approx(0.1))  # learnt on b and c; 0.5 would have been right for a
    assert result["b"] == (0.9, pytest.approx(0.0))  # a: 0 / 0.1, c: 0.15 / 0: 0.9 has the least mean
    assert result["c"] == (0.9, pytest.approx(0.0))
    assert leave_one_scene_out(dict(a=scenes["a"]), selector) == {"a": (None, None)}
    plain = Selector("earliest minimum", "s", select_min)
    assert leave_one_scene_out(scenes, plain)["a"] == (None, pytest.approx(0.0))


def test_run_statistics_gives_every_statistic_for_every_checkpoint():
    rng = np.random.RandomState(4)
    official = [rng.rand(6, 5) for _ in EPOCHS]
    heldout = [rng.rand(6, 5) + 1 for _ in EPOCHS]
    rows = [dict(epoch=e, loss=10.0 / e) for e in range(1, 31)]
    statistics = run_statistics(EPOCHS, official, heldout, moving_variances([m[..., None] for m in official]),
                                rows, bands=4)
    assert set(statistics) == set(STATISTICS)
    assert all(len(values) == len(EPOCHS) for values in statistics.values())


def load_epoch_curves():
    spec = importlib.util.spec_from_file_location("epoch_curves", os.path.join(ROOT, "bench", "epoch_curves.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_finds_runs_by_their_log_and_skips_one_being_trained(tmp_path):
    curves = load_epoch_curves()
    for folder, dataset, seed in [("a", "HYDICE-II", 1), ("b", "/data/HYDICE-II.mat", 2), ("c", "abu-urban-1", 2)]:
        (tmp_path / folder).mkdir()
        config = dict(dataset=dataset, seed=seed, amp="off")
        (tmp_path / folder / "train_log.tsv").write_text(f"# config {json.dumps(config)}\nepoch\tloss\n")
    assert curves.find_run(str(tmp_path), "HYDICE-II", 2) == str(tmp_path / "b")
    assert curves.find_run(str(tmp_path), "abu-urban-1", 1) is None
    settings = types.SimpleNamespace(checkpoints_dir=str(tmp_path), data_dir=str(tmp_path), no_train=True)
    with run_lock(str(tmp_path / "b")):  # as a training holds it
        status, rows = curves.run_job(settings, ("HYDICE-II", 2))
    assert status.startswith("in progress") and rows == []
    status, rows = curves.run_job(settings, ("HYDICE-II", 2))  # the lock released
    assert status.startswith("not evaluated") and "--no_train" in status and rows == []


def study_args(tmp_path, jobs, only):
    return argparse.Namespace(checkpoints_dir=str(tmp_path / "runs"), data_dir=str(tmp_path), no_train=True,
                              jobs=jobs, only=only)


def test_the_study_appends_each_finished_jobs_rows_and_goes_on_after_a_failure(tmp_path, monkeypatch, capsys):
    curves = load_epoch_curves()
    row = dict(scene="HYDICE-II", seed=2, epoch=5, precision="fp32", loss=3.1, auc=0.95, auc_blindspot=0.94,
               **{name: 0.5 for name in STATISTICS})
    path = str(tmp_path / "curves.csv")
    curves.append_rows([dict(row, seed=3)], path)  # a job done in an earlier sitting

    def job(settings, job):
        if job == ("abu-urban-1", 1):
            raise RuntimeError("no such scene")
        return "evaluated somewhere", [dict(row, scene=job[0], seed=job[1])]
    monkeypatch.setattr(curves, "run_job", job)
    only = [("HYDICE-II", 3), ("abu-urban-1", 1), ("HYDICE-II", 2)]
    assert curves.run_pending_jobs(study_args(tmp_path, 1, only), path) is None
    out = capsys.readouterr().out
    assert "1 jobs already in" in out and "2 to go" in out
    assert "abu-urban-1 seed 1: failed: RuntimeError: no such scene" in out
    assert "HYDICE-II seed 2: evaluated somewhere" in out
    assert [(r["scene"], r["seed"]) for r in curves.read_rows(path)] == [("HYDICE-II", 3), ("HYDICE-II", 2)]


@pytest.mark.slow
def test_the_study_runs_its_jobs_in_the_benchmarks_worker_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))  # the workers import the study by name
    import epoch_curves
    path = str(tmp_path / "curves.csv")
    only = [("HYDICE-II", 2), ("abu-urban-1", 1), ("HYDICE-II", 3)]
    assert epoch_curves.run_pending_jobs(study_args(tmp_path, 2, only), path) is None
    out = capsys.readouterr().out
    assert all(f"{scene} seed {seed}: not evaluated: no checkpoint" in out for scene, seed in only)
    logs = sorted(os.listdir(tmp_path / "runs" / "epoch_curves_logs"))
    assert logs == ["job001.log", "job002.log", "job003.log"] and not os.path.exists(path)


def test_an_interrupted_study_waits_for_the_training_to_save(tmp_path, monkeypatch, sigint_raises):
    """Ctrl-C (or the engine stopping its workers) reaches the study's process: it stops the training with
    SIGTERM and returns only after the training has saved (a fake main.py whose save takes a moment)."""
    curves = load_epoch_curves()
    (tmp_path / "main.py").write_text(
        "import pathlib, signal, sys, time\n"
        "here = pathlib.Path(sys.argv[0]).parent\n"
        "def save(*_):\n"
        "    time.sleep(0.5)\n"
        "    (here / 'saved').write_text('epoch 3')\n"
        "    sys.exit(130)\n"
        "signal.signal(signal.SIGTERM, save)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # as for a study started in the background (`&`)
        "(here / 'started').write_text('')\n"
        "time.sleep(60)\n")
    monkeypatch.setattr(curves, "ROOT", str(tmp_path))

    def interrupt_when_started():
        while not (tmp_path / "started").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt_when_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        curves.train_run("HYDICE-II", 1, types.SimpleNamespace(data_dir=".", checkpoints_dir="."), resume=False)
    assert (tmp_path / "saved").read_text() == "epoch 3" and time.monotonic() - started < 30


def test_the_study_writes_and_reads_back_its_csv_rows(tmp_path):
    curves = load_epoch_curves()
    row = dict(scene="HYDICE-II", seed=1, epoch=5, precision="fp32", loss=3.1, auc=0.95, auc_blindspot=0.94,
               **{name: np.float64(0.5) for name in STATISTICS})
    row["score_stability"] = np.nan
    path = str(tmp_path / "curves.csv")
    curves.append_rows([row], path)
    curves.append_rows([dict(row, epoch=10)], path)
    back = curves.read_rows(path)
    assert [r["epoch"] for r in back] == [5, 10] and back[0]["auc"] == 0.95 and np.isnan(back[0]["score_stability"])


def test_a_selector_is_offered_only_below_every_fixed_epoch_and_never_far_below_the_last():
    last = {"rising": 0.0, "falling": 0.03}
    fixed = {"epoch 5": {"rising": 0.04, "falling": 0.0}, "epoch 30": last}
    judged = judge_selector({"rising": 0.004, "falling": 0.002}, fixed, last)
    assert judged == pytest.approx((0.003, 0.004, 0.004, True))
    # the least mean regret, but 0.006 below the last epoch on the rising scene
    mean, worst, shortfall, offered = judge_selector({"rising": 0.006, "falling": 0.0}, fixed, last)
    assert shortfall == pytest.approx(0.006) and not offered
    # never below the last epoch, but no better than a fixed epoch on average
    assert not judge_selector({"rising": 0.0, "falling": 0.04}, fixed, last)[3]
    assert judge_selector({"rising": 0.001, "falling": None}, fixed, last) == (None, None, None, False)


def test_only_names_jobs_of_the_study():
    curves = load_epoch_curves()
    assert curves.parse_jobs("HYDICE-II:3,abu-urban-1:1") == [("HYDICE-II", 3), ("abu-urban-1", 1)]
    for bad in ("HYDICE-II:9", "HYDICE-II", "nowhere:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            curves.parse_jobs(bad)


def test_the_report_offers_a_selector_that_finds_every_scenes_best_checkpoint():
    curves = load_epoch_curves()
    rows = []
    for scene, aucs in (("rising", (0.90, 0.92, 0.94, 0.95, 0.97, 0.96)),
                        ("falling", (0.95, 0.97, 0.93, 0.92, 0.91, 0.90))):
        for epoch, auc in zip(curves.CHECKPOINT_EPOCHS, aucs):
            statistics = {name: 1.0 for name in STATISTICS}
            statistics["heldout_error"] = 1.0 - auc  # a statistic whose minimum is the best checkpoint
            rows.append(dict(scene=scene, seed=1, epoch=epoch, precision="fp32", loss=1.0, auc=auc,
                             auc_blindspot=auc, **statistics))
    text = curves.report(rows)
    assert "2 runs: rising seed 1, falling seed 1" in text
    assert "| held-out error minimum | 0.0000 | 0.0000 | -0.0100 | yes |" in text  # never below the last epoch
    assert "| consensus maximum | " in text and text.count("| yes |") == 2  # in both AUCs; constants are not offered
