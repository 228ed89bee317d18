"""Benchmark grids and where their jobs run: one after another, in worker processes, or on a Dask cluster."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from conftest import ROOT, cli_flags

from benchmark import Job, plan
from config import parse_config
import jobs
import utils
from jobs import PROJECT, glibc, remote_job, threads_per_job
from main import main

GRID = ["--command", "benchmark", "--datasets", "tiny", "--seeds", "1", "--methods", "bs3lnet,rx", "--epochs", "1",
        "--grid", "ratio=0.8,0.9 score_repeats=1,2", "--scoring", "official,blindspot"]


def table(folder):
    with open(folder / "results" / "benchmark" / "benchmark.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_grid_plans_one_training_per_run_and_scores_each_result_variant(scene_dir):
    jobs = plan(parse_config(cli_flags(scene_dir, "tiny", *GRID)))
    trainings = [job for job in jobs if job.method == "bs3lnet"]
    assert [job.training for job in trainings] == [(("ratio", 0.8),), (("ratio", 0.9),)]
    assert all(job.variants == ((("score_repeats", 1),), (("score_repeats", 2),)) for job in trainings)
    assert [job.training for job in jobs if job.method == "rx"] == [()]  # the grid changes no RX result


def test_grid_from_the_command_line_gives_columns_and_sensitivity_figures(scene_dir):
    assert main(cli_flags(scene_dir, "tiny", *GRID)) == 0
    rows = table(scene_dir)
    bs3lnet = [(row["ratio"], row["score_repeats"], row["method"]) for row in rows if row["method"] != "rx"]
    assert sorted(bs3lnet) == sorted((r, s, m) for r in ("0.8", "0.9") for s in ("1", "2")
                                     for m in ("bs3lnet", "bs3lnet-blindspot"))
    assert [row["ratio"] for row in rows if row["method"] == "rx"] == [""]
    assert all(row["auc"] and not row["error"] for row in rows)
    runs = sorted(p.name for p in (scene_dir / "checkpoints").glob("tiny-*/*"))
    assert len(runs) == 2 and "_r0.8_" in runs[0] and "_r0.9_" in runs[1]  # one training per ratio
    for flag, values in (("ratio", ("0.8", "0.9")), ("score_repeats", ("1", "2"))):
        # the figure's texts (tests draw figures without rasterising them, conftest.py; test_evaluation.py
        # looks at the pixels): one line per scene and method, the flag's values on the x axis
        texts = (scene_dir / "results" / "benchmark" / f"sensitivity_{flag}.png").read_text().splitlines()
        assert f"Sensitivity to --{flag}" in texts and all(value in texts for value in values)
        assert any(text.startswith("tiny bs3lnet-blindspot") for text in texts)
    markdown = (scene_dir / "results" / "benchmark" / "benchmark.md").read_text()
    assert "| scene | ratio | score_repeats | method | AUC(D,F) |" in markdown and "±" not in markdown


@pytest.mark.parametrize("grid, message", [("size_window=7", "--size_window 7 must be at most --patch"),
                                           ("ratio=0.8,1.2", "ratio: 1.2 is outside [0, 1)"),
                                           ("seed=1,2", "not dataset or seed")])
def test_an_invalid_grid_value_is_refused_before_anything_trains(scene_dir, capsys, grid, message):
    flags = cli_flags(scene_dir, "tiny", "--command", "benchmark", "--seeds", "1", "--epochs", "1", "--grid", grid)
    assert main(flags) == 2
    assert message in capsys.readouterr().err
    assert not (scene_dir / "checkpoints").exists()


@pytest.mark.slow
def test_parallel_jobs_give_the_sequential_table(scene_dir):
    """The same AUCs bit for bit as a sequential run with each worker's share of the CPU threads (the thread
    count alone changes the float summation order of a convolution)."""
    flags = ["--command", "benchmark", "--datasets", "tiny", "--seeds", "1", "--methods", "bs3lnet,lrx",
             "--epochs", "1", "--grid", "ratio=0.8,0.9", "--win_out", "5"]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(2))
    try:
        assert main(cli_flags(scene_dir, "tiny", *flags)) == 0
    finally:
        torch.set_num_threads(threads)
    sequential = table(scene_dir)
    parallel_dir = scene_dir / "parallel"
    os.makedirs(parallel_dir)
    os.link(scene_dir / "tiny.mat", parallel_dir / "tiny.mat")
    assert main(cli_flags(parallel_dir, "tiny", *flags, "--jobs", "2")) == 0
    parallel = table(parallel_dir)
    assert len(parallel) == len(sequential) == 3
    for one, two in zip(sequential, parallel):
        assert (one["dataset"], one["ratio"], one["method"], one["auc"], one["auc_f_tau"]) == \
            (two["dataset"], two["ratio"], two["method"], two["auc"], two["auc_f_tau"])
    assert len(os.listdir(parallel_dir / "results" / "benchmark" / "logs")) == 3  # one log per job


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_keeps_the_finished_jobs(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--command", "benchmark", "--datasets", "tiny", "--seeds", "1,2,3",
                      "--methods", "rx,bs3lnet", "--epochs", "500", "--save_freq", "1000", "--jobs", "2")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (scene_dir / "checkpoints").exists() or not list((scene_dir / "checkpoints").rglob("train_log.tsv")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.5)
    while not list((scene_dir / "results").glob("tiny-*/rx/metrics.json")):  # the rx job has finished
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.5)
    time.sleep(2)  # the trainings are running
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) >= 2
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Continue with:" in err and "--jobs 2" in err
    rows = table(scene_dir)
    assert [row["runs"] for row in rows if row["method"] == "rx"] == ["1"]
    saved = list((scene_dir / "checkpoints").rglob("epoch_*.pt"))
    assert saved  # the interrupted trainings saved their last epoch
    assert "epoch_0500.pt" not in {path.name for path in saved}  # and no training went on to its end
    logs = sorted(os.listdir(scene_dir / "results" / "benchmark" / "logs"))
    assert logs == ["job001.log", "job002.log", "job003.log"]  # the fourth job was never started
    deadline = time.monotonic() + 15
    while [pid for pid in workers if os.path.exists(f"/proc/{pid}")] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: open(f"/proc/{pid}/cmdline").read() for pid in workers if os.path.exists(f"/proc/{pid}")}
    assert not left  # no worker left behind


def test_an_interrupted_worker_starts_no_job_and_one_between_jobs_ends(monkeypatch):
    monkeypatch.setattr(jobs, "_stopping", False)
    with pytest.raises(SystemExit):
        jobs.interrupt(signal.SIGINT, None)  # between jobs
    assert not jobs._stopping
    monkeypatch.setattr(jobs, "_in_job", True)
    monkeypatch.setattr(utils, "_stopped_threads", set())  # restored after the test: other tests train in-process
    for _ in range(2):  # a Ctrl-C swallowed somewhere (a weakref callback ignores exceptions) gets a second chance
        with pytest.raises(KeyboardInterrupt):
            jobs.interrupt(signal.SIGINT, None)
    # and the job's training stops at its next batch (utils.raise_if_stop_requested)
    assert threading.get_ident() in utils._stopped_threads
    monkeypatch.setattr(jobs, "_in_job", False)
    ran = []
    with pytest.raises(KeyboardInterrupt):
        jobs.logged(lambda config, job: ran.append(job), None, "job", os.devnull)
    assert not ran


WORK = """import os, signal, time
def run(config, job):
    if job == "dies":
        time.sleep(1)  # "beside" has started
        os.kill(os.getpid(), signal.SIGKILL)  # as the system's out-of-memory killer does
    if job == "beside":
        time.sleep(3)
    return job
"""


def test_a_killed_worker_loses_the_running_jobs_and_the_others_go_on(scene_dir, tmp_path, monkeypatch, capfd):
    (tmp_path / "killed_work.py").write_text(WORK)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit the path
    import killed_work
    config = parse_config(["--command", "benchmark", "--jobs", "2", *cli_flags(scene_dir)])
    reported, lost = {}, {}
    stopped = jobs.in_processes(config, ["dies", "beside", "after", "last"], killed_work.run, str(tmp_path / "logs"),
                                reported.__setitem__, lost.__setitem__)
    assert stopped is None and "worker process died" in lost[0]
    assert lost[1] == lost[0]  # "beside" was running when its neighbour died: the broken pool stopped it
    assert reported == {2: "after", 3: "last"}  # in a new pool
    assert "Traceback" not in capfd.readouterr().err  # nor did the workers the broken pool stopped print one


def test_a_lost_job_is_a_failed_row_of_the_benchmark(scene_dir, capsys, monkeypatch):
    import benchmark

    def run_jobs(config, planned, work, log_dir, report, lost):
        lost(0, jobs.WORKER_DIED)
        report(1, work(config, planned[1]))
    monkeypatch.setattr(benchmark, "run_jobs", run_jobs)
    code = main(["--command", "benchmark", "--seeds", "1", "--methods", "lrx,rx", *cli_flags(scene_dir, "tiny")])
    assert code == 1  # a failed job fails the benchmark
    assert "tiny: lrx failed: a worker process died" in capsys.readouterr().err
    rows = {row["method"]: row for row in table(scene_dir)}
    assert "worker process died" in rows["lrx"]["error"] and rows["rx"]["auc"] and not rows["rx"]["error"]


def test_a_worker_that_cannot_see_the_folders_fails_its_job_with_the_reason(scene_dir):
    config = parse_config(cli_flags(scene_dir, "tiny", "--command", "benchmark", "--methods", "rx", "--data_dir",
                                    str(scene_dir / "absent")))
    job = plan(config)[0]
    rows = remote_job(PROJECT, "benchmark", "run_job", config.as_dict(), tuple(vars(job).values()),
                      str(scene_dir / "job.log"))
    assert len(rows) == 1 and "does not see --data_dir" in rows[0][1]["error"]
    assert "must be on a filesystem every worker sees" in rows[0][1]["error"]


@pytest.mark.slow
def test_a_dask_cluster_gives_the_sequential_table_and_loses_only_a_killed_workers_job(scene_dir, tmp_path,
                                                                                       monkeypatch):
    pytest.importorskip("dask.distributed", reason="Dask's distributed is an optional extra "
                        "(pip install -r requirements-cluster.txt)")
    import dask
    from dask.distributed import LocalCluster
    flags = ["--command", "benchmark", "--datasets", "tiny", "--seeds", "1", "--methods", "bs3lnet,rx",
             "--epochs", "1"]
    assert main(cli_flags(scene_dir, "tiny", *flags)) == 0
    sequential = table(scene_dir)
    cluster_dir = scene_dir / "cluster"
    os.makedirs(cluster_dir)
    os.link(scene_dir / "tiny.mat", cluster_dir / "tiny.mat")
    (tmp_path / "dask_work.py").write_text("import os, signal\ndef run(config, job):\n    if job.seed == 2:\n"
                                           "        os.kill(os.getpid(), signal.SIGKILL)\n    return job.seed\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers' path (they are spawned)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main(cli_flags(cluster_dir, "tiny", *flags, "--scheduler", cluster.scheduler_address)) == 0
        # a job whose worker is killed (and, with allowed-failures retries, every worker Dask gave it to) is lost
        config = parse_config(cli_flags(cluster_dir, "tiny", *flags, "--scheduler", cluster.scheduler_address))
        reported, lost = {}, {}
        job_fields = [Job("tiny", "rx", seed, (), ()) for seed in (1, 2)]
        monkeypatch.setattr(jobs, "check_worker", lambda config, job: None)
        jobs.on_dask(config, job_fields, types.SimpleNamespace(__module__="dask_work", __name__="run"),
                     str(tmp_path / "logs"), reported.__setitem__, lost.__setitem__)
    assert reported == {0: 1} and "every Dask worker that ran it died" in lost[1]
    clustered = table(cluster_dir)
    assert len(os.listdir(cluster_dir / "results" / "benchmark" / "logs")) == 2  # one log per job, on the workers
    assert [(r["method"], r["auc"], r["runs"]) for r in clustered] == [(r["method"], r["auc"], r["runs"])
                                                                        for r in sequential]


@pytest.mark.slow
def test_ctrl_c_on_a_dask_cluster_stops_the_trainings_and_a_second_stops_waiting(scene_dir, tmp_path, capsys,
                                                                                monkeypatch, sigint_raises):
    pytest.importorskip("dask.distributed", reason="Dask's distributed is an optional extra "
                        "(pip install -r requirements-cluster.txt)")
    from dask.distributed import LocalCluster
    (tmp_path / "stubborn_work.py").write_text(  # a job that no stop reaches
        "import os, time\ndef run(config, job):\n    open(os.path.join(config.results_dir, 'started'), 'w').close()\n"
        "    time.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers' path (they are spawned)

    def ctrl_c_when(ready, then=None):
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)
        if then:
            time.sleep(1)  # the jobs are told to stop, and waited for
            os.kill(os.getpid(), signal.SIGINT)

    def two_trainings_run():
        logs = list((scene_dir / "checkpoints").rglob("train_log.tsv"))
        return len(logs) == 2 and all(len(log.read_text().splitlines()) > 3 for log in logs)
    # One worker process running two tasks in two threads: a stop reaches each training's thread.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        flags = cli_flags(scene_dir, "tiny", "--command", "benchmark", "--datasets", "tiny", "--seeds", "1,2,3",
                          "--methods", "bs3lnet", "--epochs", "500", "--save_freq", "1000",
                          "--scheduler", cluster.scheduler_address)
        threading.Thread(target=ctrl_c_when, args=(two_trainings_run,), daemon=True).start()
        assert main(flags) == 130
        err = capsys.readouterr().err
        # A second Ctrl-C stops waiting for a job that does not stop.
        config = parse_config(flags)
        threading.Thread(target=ctrl_c_when, args=(lambda: (scene_dir / "results" / "started").exists(), True),
                         daemon=True).start()
        started = time.monotonic()
        stopped = jobs.on_dask(config, [Job("tiny", "rx", 1, (), ())],
                               types.SimpleNamespace(__module__="stubborn_work", __name__="run"),
                               str(tmp_path / "logs"), None, None)
        assert stopped.startswith("interrupted again") and time.monotonic() - started < 50
    assert "Continue with:" in err and "Traceback" not in err
    saved = {path.parent.name: path.name for path in (scene_dir / "checkpoints").rglob("epoch_*.pt")}
    assert len(saved) == 2  # both running trainings saved their last completed epoch, having stopped
    assert "epoch_0500.pt" not in saved.values()
    assert not list((scene_dir / "checkpoints").rglob(".lock"))  # and neither trains on, on its worker
    assert len(os.listdir(scene_dir / "results" / "benchmark" / "logs")) == 2  # the third job did not start


def test_without_dask_the_scheduler_flag_names_the_install_line(scene_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    flags = cli_flags(scene_dir, "tiny", "--command", "benchmark", "--seeds", "1", "--methods", "rx",
                      "--scheduler", "tcp://127.0.0.1:1")
    assert main(flags) == 2
    assert "pip install -r requirements-cluster.txt" in capsys.readouterr().err


HEAP_PROBE = """
import json, resource, sys, threading
sys.path.insert(0, {root!r})
import torch
import jobs

def page_faults():  # a tensor of 4 MiB made and freed 50 times, as a training step's activations are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.empty(1 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def in_a_job():
    with jobs.heap_for_tensors():
        page_faults()  # the thread's own heap grows to hold the tensor
        seen["job"] = page_faults()
    seen["after"] = page_faults()

seen = dict(before=page_faults())
task = threading.Thread(target=in_a_job)  # as a Dask worker runs a task
task.start()
task.join()
print(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or glibc() is None, reason="glibc's mallopt only")
def test_a_job_on_a_dask_worker_keeps_freed_tensors_in_the_heap():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, under which every freed tensor above
    128 KiB goes back to the system and the next one faults its pages in again."""
    result = subprocess.run([sys.executable, "-c", HEAP_PROBE.format(root=ROOT)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    assert faults["before"] > 50 * 1000  # 1024 pages of 4 KiB per tensor: the setting's cost
    assert faults["job"] < 1024  # not one tensor's pages: the heap kept the memory
    assert faults["after"] > 50 * 1000  # Dask's own setting is back after the job
