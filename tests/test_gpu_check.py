"""bench/gpu_check.py on the CPU: each scene's result reaches the summary whatever happened to the others, and
a training started by a launcher that ignores SIGINT still saves at its deadline."""
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, cli_flags
from runs import log_header, log_row, saved_epochs

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

MACHINE = dict(python="3", torch="2", cuda=None, cpus=2, gpu=None)


def finished(returncode):
    """A Job that has ended with `returncode`."""
    return SimpleNamespace(process=SimpleNamespace(returncode=returncode), interrupted=False, seconds=1.0)


def completed_run(check, scene, auc):
    """`scene`'s run folder with two logged epochs and a checkpoint of the second, and its prediction's metrics."""
    checkpoints, results = check.scene_dirs(scene)
    run_dir = os.path.join(checkpoints, f"{scene}-0123abcd", "run")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "train_log.tsv"), "w") as log:
        log.write(log_header({}, {}, 0) + log_row(1, 2.0, 1.5) + log_row(2, 1.0, 1.5, auc))
    open(os.path.join(run_dir, "epoch_0002.pt"), "w").close()
    latest = os.path.join(results, f"{scene}-0123abcd", "latest")
    os.makedirs(latest)
    with open(os.path.join(latest, "metrics.json"), "w") as metrics:
        json.dump(dict(epoch=2, auc=auc, seconds=0.1), metrics)


def test_each_scene_result_survives_the_others_failures(tmp_path, monkeypatch):
    """A training that failed before making its run folder (nothing to predict), a prediction whose results
    cannot be read, and a scene never started: the completed scene's result is still in the summary."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    check = gpu_check.Check("cpu-smoke", 60, ["runs"], MACHINE)
    shutil.rmtree(check.work)
    check.work = str(tmp_path / "work")
    first, failed, not_started = gpu_check.SCENES
    completed_run(check, first, 0.95)
    jobs = {first: finished(0), failed: finished(1)}
    assert check.predict_saved({failed: jobs[failed]}) == {}  # no run folder: nothing saved, no error
    check.report["runs"] = check.runs_report(jobs, {first: finished(0), failed: finished(0)})
    check.write()
    scenes = check.report["runs"]["scenes"]
    assert scenes[first]["predict"]["auc"] == 0.95 and scenes[first]["aucs"] == {2: 0.95}
    assert scenes[failed]["exit"] == 1 and scenes[failed]["error"]  # its metrics.json could not be read
    assert not scenes[not_started]["started"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| predict AUC (epoch) | 0.9500 (2) |" in summary
    assert f"Reading {failed}'s results failed" in summary and "not started" in summary


SIGINT_IGNORED = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a launcher that ignores Ctrl-C starts the check
sys.path.insert(0, {bench!r})
import gpu_check
gpu_check.GRACE_S = 20
job = gpu_check.Job({command!r}, {log!r}, gpu_check.child_env())
give_up = time.monotonic() + 240
while (job.poll() is None and not gpu_check.read_train_log(gpu_check.run_folder({checkpoints!r}))
       and time.monotonic() < give_up):
    time.sleep(0.2)
gpu_check.wait_all([job], time.monotonic())  # the deadline: SIGINT, then SIGKILL after GRACE_S
print("exit", job.process.returncode)
"""


@pytest.mark.slow
def test_a_training_saves_at_its_deadline_when_the_check_runs_with_sigint_ignored(scene_dir, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "train",
               *cli_flags(scene_dir, "tiny", "--epochs", "100000")]
    log = tmp_path / "train.log"
    script = SIGINT_IGNORED.format(bench=os.path.join(ROOT, "bench"), command=command, log=str(log),
                                   checkpoints=str(scene_dir / "checkpoints"))
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "exit 130" in ran.stdout, ran.stdout + ran.stderr + log.read_text()[-3000:]
    assert saved_epochs(gpu_check.run_folder(str(scene_dir / "checkpoints")))
