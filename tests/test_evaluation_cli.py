"""The evaluation commands and options end to end: rx, lrx, benchmark, --eval_every, results folders."""
import csv
import json
import os
import sys

import numpy as np
import scipy.io

from conftest import cli_flags, scene_folder, tiny_scene
from main import main
from runs import read_log

FIGURES = ("detectmap.png", "roc.png", "roc3d.png", "separation.png")


def test_rx_and_lrx_write_what_predict_writes(scene_dir, capsys):
    assert main(["--command", "rx", *cli_flags(scene_dir)]) == 0
    assert main(["--command", "lrx", "--win_in", "1", "--win_out", "5", *cli_flags(scene_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("AUC: ") == 2 and "AUC_SNPR" in out
    for folder in ("rx", "lrx_1_5"):
        results = scene_folder(scene_dir / "results", "tiny") / folder
        metrics = json.loads((results / "metrics.json").read_text())
        assert 0 <= metrics["auc"] <= 1 and metrics["metrics_3d"]["AUC(D,F)"] == metrics["auc"]
        assert scipy.io.loadmat(results / "detectmap.mat")["detectmap"].shape == (12, 10)
        assert all((results / name).stat().st_size > 0 for name in FIGURES)
    # the plain results folder holds the latest run's files
    latest = json.loads((scene_folder(scene_dir / "results", "tiny") / "latest" / "metrics.json").read_text())
    assert latest["method"] == "LRX 1/5"


def test_lrx_window_errors_are_user_errors(scene_dir, capsys):
    assert main(["--command", "lrx", "--win_in", "4", "--win_out", "7", *cli_flags(scene_dir)]) == 2
    assert "odd" in capsys.readouterr().err


def test_roc_log_option(scene_dir):
    assert main(["--command", "rx", "--roc_log", *cli_flags(scene_dir)]) == 0
    assert (scene_folder(scene_dir / "results", "tiny") / "rx" / "roc.png").exists()


def test_predict_results_are_kept_per_configuration(scene_dir):
    for seed in ("1", "2"):
        flags = cli_flags(scene_dir, "tiny", "--epochs", "1", "--seed", seed)
        assert main(["--command", "train", *flags]) == 0
        assert main(["--command", "predict", *flags]) == 0
    runs = sorted(p.name for p in (scene_folder(scene_dir / "results", "tiny")).iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and runs[0].endswith("seed1") and runs[1].endswith("seed2")
    for run in runs:
        metrics = json.loads((scene_folder(scene_dir / "results", "tiny") / run / "epoch_0001" / "metrics.json").read_text())
        assert metrics["train_config"]["seed"] == int(run[-1])
    latest = json.loads((scene_folder(scene_dir / "results", "tiny") / "latest" / "metrics.json").read_text())
    assert latest["train_config"]["seed"] == 2


def test_eval_every_records_auc_and_draws_the_curve(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "4", "--eval_every", "2")
    assert main(["--command", "train", *flags]) == 0
    run = next((scene_folder(scene_dir / "checkpoints", "tiny")).iterdir())
    rows = read_log(run / "train_log.tsv")
    assert [r["auc"] is not None for r in rows] == [False, True, False, True]
    assert all(0 <= r["auc"] <= 1 for r in rows if r["auc"] is not None)
    assert (run / "training_curve.png").stat().st_size > 0


def test_scene_without_map_writes_maps_without_auc(tmp_path, capsys):
    hsi, _ = tiny_scene()
    scipy.io.savemat(tmp_path / "nomap.mat", {"data": hsi})
    flags = cli_flags(tmp_path, "nomap", "--epochs", "1", "--eval_every", "1")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    out = capsys.readouterr().out
    assert "no ground-truth map" in out and "AUC: " not in out
    results = scene_folder(tmp_path / "results", "nomap") / "latest"
    assert json.loads((results / "metrics.json").read_text())["auc"] is None
    assert (results / "detectmap.png").exists() and not (results / "roc.png").exists()


def test_benchmark_reports_every_scene_and_goes_on_after_a_failure(scene_dir, capsys):
    hsi, gt = tiny_scene(seed=1)
    scipy.io.savemat(scene_dir / "tiny2.mat", {"data": hsi, "map": gt})
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1", "--win_in", "1", "--win_out", "3")
    code = main(["--command", "benchmark", "--datasets", "tiny,missing,tiny2", "--seeds", "1,2",
                 "--methods", "bs3lnet,rx,lrx", *flags])
    assert code == 1  # a failed job makes the benchmark fail, after every other job ran
    captured = capsys.readouterr()
    assert "[1/12] tiny: bs3lnet, seed 1" in captured.out and "4 benchmark job(s) failed" in captured.err
    table = (scene_dir / "results" / "benchmark" / "benchmark.md").read_text()
    assert "| missing | bs3lnet | – | – | – | – | 0 | 2: scene file" in table  # never in the AUC column
    assert table.count("**") >= 4  # a best method in bold for each scene that ran
    with open(scene_dir / "results" / "benchmark" / "benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9
    tiny = {r["method"]: r for r in rows if r["dataset"] == "tiny"}
    assert tiny["bs3lnet"]["runs"] == "2" and tiny["rx"]["runs"] == "1" and tiny["rx"]["failed"] == "0"
    assert float(tiny["bs3lnet"]["auc_std"]) >= 0 and float(tiny["bs3lnet"]["train_seconds"]) > 0
    assert all(0 <= float(tiny[m]["auc"]) <= 1 for m in tiny)
    # a second benchmark reuses the trained runs instead of refusing or retraining them
    assert main(["--command", "benchmark", "--datasets", "tiny", "--seeds", "1", "--methods", "bs3lnet",
                 *flags]) == 0
    assert "reusing epoch 1 of the trained run" in capsys.readouterr().out


def test_ctrl_c_stops_the_benchmark_keeps_finished_jobs_and_says_how_to_continue(scene_dir, capsys, monkeypatch):
    import benchmark
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    calls = []

    def run_job(config, job):
        calls.append(job.method)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_job(config, job)
    real_run_job = benchmark.run_job
    monkeypatch.setattr(benchmark, "run_job", run_job)
    code = main(["--command", "benchmark", "--seeds", "1", "--methods", "rx,lrx,bs3lnet", *flags])
    assert code == 130 and calls == ["rx", "lrx"]  # stopped: the third job never started
    err = capsys.readouterr().err
    assert "interrupted during job 2 of 3" in err
    assert f"Continue with: {sys.executable} main.py --command benchmark" in err
    table = (scene_dir / "results" / "benchmark" / "benchmark.md").read_text()
    assert "Stopped early (interrupted during job 2 of 3): 1 of 3 jobs finished" in table
    assert [line.split("|")[7].strip() for line in table.splitlines() if line.startswith("| tiny")] == ["1", "0", "0"]


def test_a_benchmark_extends_a_shorter_run_and_names_the_epochs_of_a_longer_one(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--seeds", "1", "--methods", "bs3lnet")
    assert main(["--command", "benchmark", *flags, "--epochs", "2"]) == 0
    assert main(["--command", "benchmark", *flags, "--epochs", "3"]) == 0
    assert "extending the run" in capsys.readouterr().out
    assert main(["--command", "benchmark", *flags, "--epochs", "1"]) == 1  # a longer run lacks epoch 1
    assert "none of epoch 1: pass one of those as --epochs" in (scene_dir / "results" / "benchmark" /
                                                               "benchmark.md").read_text()


def test_benchmark_rejects_unknown_methods(scene_dir, capsys):
    assert main(["--command", "benchmark", "--methods", "rx,svm", *cli_flags(scene_dir)]) == 2
    assert "--methods: unknown svm" in capsys.readouterr().err


def test_benchmark_refuses_one_gt_file_for_several_scenes(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--datasets", "tiny,synthetic", "--gt_file", "tiny.mat", "--methods", "rx")
    assert main(["--command", "benchmark", *flags]) == 2
    assert "--gt_file names one scene's map, but --datasets lists 2 scenes" in capsys.readouterr().err
    assert not (scene_dir / "results").exists()


def test_metrics_json_has_the_3d_metrics(scene_dir):
    assert main(["--command", "rx", *cli_flags(scene_dir)]) == 0
    metrics = json.loads((scene_folder(scene_dir / "results", "tiny") / "latest" / "metrics.json").read_text())
    m = metrics["metrics_3d"]
    assert np.isclose(m["AUC_OD"], m["AUC(D,F)"] + m["AUC(D,tau)"] - m["AUC(F,tau)"])
    assert os.path.isdir(metrics["results"])


def test_latest_folder_never_mixes_two_methods(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    latest = scene_folder(scene_dir / "results", "tiny") / "latest"
    assert (latest / "reconstructed_data.mat").exists()
    assert main(["--command", "rx", *flags]) == 0
    assert not (latest / "reconstructed_data.mat").exists()  # RX has no reconstruction
    assert json.loads((latest / "metrics.json").read_text())["method"] == "RX"
    assert len(list((latest.parent).glob("*/epoch_0001/reconstructed_data.mat"))) == 1  # the run's folder keeps it


def test_an_interrupted_predict_leaves_every_results_view_one_runs_files(scene_dir, monkeypatch):
    import results
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    tiny = scene_folder(scene_dir / "results", "tiny")
    before = {p.relative_to(tiny): p.read_bytes() for p in tiny.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(results, "plot_roc_3d", killed)  # after the maps and two figures are written
    assert main(["--command", "rx", *flags]) == 130
    assert main(["--command", "predict", *flags]) == 130  # the same configuration, interrupted
    after = {p.relative_to(tiny): p.read_bytes() for p in tiny.rglob("*") if p.is_file()}
    assert after == before  # no file of the interrupted runs anywhere, none of the earlier run lost
    # a staging folder left by a killed process is removed when results are next written there
    abandoned = tiny / ".tmp-999999999-x"
    abandoned.mkdir()
    monkeypatch.undo()
    assert main(["--command", "rx", *flags]) == 0
    assert not abandoned.exists()
    assert json.loads((tiny / "latest" / "metrics.json").read_text())["method"] == "RX"


def test_a_folder_of_the_users_named_latest_is_refused_before_anything_is_written(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny")
    assert main(["--command", "rx", *flags]) == 0
    tiny = scene_folder(scene_dir / "results", "tiny")
    os.remove(tiny / "latest")
    (tiny / "latest").mkdir()
    (tiny / "latest" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tiny) for p in tiny.rglob("*"))
    capsys.readouterr()
    assert main(["--command", "lrx", *flags, "--win_out", "5"]) == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and str(tiny / "latest") in error and ".tmp-" not in error
    assert "rename or move it" in error and "nothing was written" in error
    assert sorted(p.relative_to(tiny) for p in tiny.rglob("*")) == before  # no debris, the user's folder kept
    assert (tiny / "latest" / "notes.txt").read_text() == "mine"


def test_a_latest_link_left_by_a_killed_process_is_removed(scene_dir):
    flags = cli_flags(scene_dir, "tiny")
    assert main(["--command", "rx", *flags]) == 0
    tiny = scene_folder(scene_dir / "results", "tiny")
    os.symlink("rx", tiny / ".tmp-999999999-latest")
    assert main(["--command", "rx", *flags]) == 0
    assert not os.path.lexists(tiny / ".tmp-999999999-latest")
