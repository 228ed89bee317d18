"""Subnormal floats are flushed to zero on the CPU in every thread, through training, evaluation and prediction."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, cli_flags

# Runs in a fresh process (torch's threads copy the setting when they start, so the parent test
# process, whose threads started long ago, cannot show it), with two intra-op threads.
PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import main, train, utils
seen = []
train_epoch = train.train_epoch
def spy(*args, **kwargs):  # checked at the start of every epoch, so after each evaluation pass too
    seen.append(utils.subnormal_handling())
    return train_epoch(*args, **kwargs)
train.train_epoch = spy
codes = [main.main(["--command", "train", *{train!r}]), main.main(["--command", "predict", *{predict!r}])]
seen.append(utils.subnormal_handling())
print(json.dumps(dict(codes=codes, seen=seen)))
"""


def probe(scene_dir, *extra):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "3", *extra)
    script = PROBE.format(root=ROOT, train=[*flags, "--eval_every", "1"], predict=flags)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("torch").set_flush_denormal(False), reason="this CPU cannot flush subnormals")
@pytest.mark.slow
def test_training_evaluation_and_prediction_flush_subnormals_in_every_thread(scene_dir):
    flushed = probe(scene_dir)
    assert flushed["codes"] == [0, 0]
    assert flushed["seen"] == ["flushed"] * 4  # epochs 1-3 (after evaluations) and after predict
    kept = probe(scene_dir, "--keep_subnormals", "--overwrite")
    assert kept["codes"] == [0, 0]
    assert kept["seen"] == ["kept"] * 4


JOB_PROBE = """
import json, sys, threading
sys.path[:0] = [{root!r}, {tmp!r}]
import jobs, probe_work
from benchmark import Job
from config import parse_config
jobs.check_worker = lambda config, job: None  # the probe reads no scene
seen, job = {{}}, Job("tiny", "bs3lnet", 1, (), ())
for keep in (False, True):
    config = parse_config({flags!r} + (["--keep_subnormals"] if keep else []))
    task = threading.Thread(target=lambda: seen.setdefault(f"dask keep={{keep}}", jobs.remote_job(
        {root!r}, "probe_work", "handling", config.as_dict(), tuple(vars(job).values()), {log!r})))
    task.start()  # a Dask worker runs each task in a thread of its own
    task.join()
    jobs.in_processes(config, [job], probe_work.handling, {tmp!r}, lambda index, result: seen.update(
        {{f"jobs keep={{keep}}": result}}), lambda index, why: seen.update({{f"jobs keep={{keep}}": why}}))
print(json.dumps(seen))
"""


@pytest.mark.skipif(not __import__("torch").set_flush_denormal(False), reason="this CPU cannot flush subnormals")
def test_benchmark_jobs_flush_subnormals_in_worker_processes_and_dask_task_threads(scene_dir, tmp_path):
    (tmp_path / "probe_work.py").write_text("def handling(config, job):\n    import utils\n"
                                            "    return utils.subnormal_handling()\n")
    flags = ["--command", "benchmark", "--jobs", "2", *cli_flags(scene_dir)]
    script = JOB_PROBE.format(root=ROOT, tmp=str(tmp_path), flags=flags, log=str(tmp_path / "job.log"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "dask keep=False": "flushed", "jobs keep=False": "flushed", "dask keep=True": "kept", "jobs keep=True": "kept"}
