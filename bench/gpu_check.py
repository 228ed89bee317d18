"""All the GPU checks in one call: the CUDA tests, the paper's three scenes trained with the default flags,
speed per precision and setting, and concurrent trainings.

Here, once:          python bench/gpu_check.py --prepare     (copies the scenes from ../shared to bench/device_data/)
Here, to prove it:   python bench/gpu_check.py --cpu-smoke   (the same steps on CPU with tiny sizes, ~3 minutes)
On the GPU machine, as the device tool's run (repository root, carry ["bench/device_data"], timeout_s 600):

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --budget-s 530

Steps, each with a deadline so that the whole call ends within --budget-s (a step may overrun its deadline by
GRACE_S at most, which the later steps absorb):
 1. tests: tests/test_gpu.py alone (the CPU suite runs in CI, not on scarce GPU time);
 2. runs, the call's main job: the default flags (fp32), seed 1, --epochs 1000 --eval_every 50; HYDICE-II
    alone first, then AVIRIS-I_CNND and AVIRIS-II_CNND together in the training time left. A training still
    running at its deadline gets SIGINT (it saves its last epoch and exits 130), then --command predict
    scores each scene's last saved epoch; every scene is reported with the epoch it reached;
 3. speed: AVIRIS-II_CNND (100 x 100 x 189) in fp32, tf32, bf16 and fp16, each in the faithful default
    (deterministic cuDNN, channels-last: what every training runs) and, beside it, with cudnn.benchmark on
    in channels-last and in contiguous layout; s/step from steady epochs, predict timed after a warm-up;
 4. concurrency: the grid of bench/grid_parallel.py (2 ratios x 2 patch sizes x 2 seeds of HYDICE-II) as one
    `benchmark --grid ... --jobs N` for N = 1, 2, 4 on the one GPU: wall seconds, i.e. how many trainings at
    once fill the GPU (and whether the scenes of a later call should train together). The runs' train_log.tsv
    (AUC every 50 epochs to epoch 1000) extends the epoch curves of bench/epoch_curves.py to 1000 epochs.

Output, in $OUT when set (the device tool brings back at most 8 files), else in bench/out/gpu_check/:
summary.md and summary.json (rewritten after each step), pytest_gpu.log, speed.log, and runs.tar.gz
(every training's and prediction's log, train_log.tsv, metrics.json and figures).
"""
import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from datetime import datetime, timezone
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jobs import threads_per_job  # noqa: E402
from runs import log_path, read_log, saved_epochs  # noqa: E402
DEVICE_DATA = os.path.join(ROOT, "bench", "device_data")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SCENES = ("HYDICE-II", "AVIRIS-I_CNND", "AVIRIS-II_CNND")  # the first trains alone, then the others together
SPEED_SCENE = "AVIRIS-II_CNND"  # 100 x 100 x 189, the size of the README's speed table
CONCURRENCY_SCENE = "HYDICE-II"
PHASES = ("tests", "runs", "speed", "concurrency")
# The mode's seconds that each step keeps from the steps before it (the runs: their least training time and
# their predictions).
RESERVES = dict(tests=("tests_s",), runs=("runs_min_s", "predict_s"), speed=("speed_s",),
                concurrency=("concurrency_s",))
AT_ONCE_GAIN = 1.1  # trainings at once count as faster only if they beat one training by more than timing noise
GRACE_S = 30  # after SIGINT: time to save a checkpoint (or print a test summary) before SIGKILL
FINISH_S = 10  # kept at the end of the budget for the summary and the archive
TINY_FLAGS = ["--patch", "5", "--size_window", "3", "--nch_ker", "8", "--nblk", "1", "--batch_size", "32"]
# (name, cudnn.benchmark, layout): the faithful default first, then the fastest settings that compute the same.
SPEED_SETTINGS = (("default", False, "channels-last"), ("cudnn.benchmark", True, "channels-last"),
                  ("cudnn.benchmark, contiguous", True, "contiguous"))
SPEED_EPOCHS = 4  # the first untimed
PREDICT_REPEATS = 3

# What differs between the GPU run and the CPU smoke run; every step runs the same code in both.
MODES = {
    "gpu": dict(
        device="cuda", budget_s=530, tests=["tests/test_gpu.py"], train_flags=[], epochs=1000, eval_every=50,
        precisions=("fp32", "tf32", "bf16", "fp16"), speed_flags=[], speed_steps=40, processes=(1, 2, 4),
        grid="ratio=0.8,0.9 patch=15,19", concurrency_epochs=None, tests_s=120, runs_min_s=30, predict_s=45,
        speed_s=90, concurrency_s=100),
    "cpu-smoke": dict(
        # Epochs that HYDICE-II completes and the two larger scenes do not: the later scenes start, and take
        # the deadline's SIGINT, save, predict path, as they may on the GPU.
        device="cpu", budget_s=240, tests=["tests/test_gpu.py"], train_flags=TINY_FLAGS, epochs=20, eval_every=5,
        precisions=("fp32", "bf16"), speed_flags=TINY_FLAGS, speed_steps=5, processes=(1, 2),  # no fp16 on CPU
        grid="ratio=0.8,0.9 patch=5,7", concurrency_epochs=3, tests_s=60, runs_min_s=10, predict_s=45,
        speed_s=60, concurrency_s=60),
}
CONCURRENCY_TARGET_S = 5  # training seconds of one process alone; the epoch count is sized from the runs
CONCURRENCY_DEFAULT_EPOCHS = 20  # when the runs did not measure the scene


def default_sigint():
    """In each child, before it starts: Ctrl-C's default disposition. A launcher that starts this script with
    SIGINT ignored passes that on, and Python installs no KeyboardInterrupt handler for an ignored SIGINT: a
    training would not save at its deadline."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Job:
    """A child process in a session of its own (so a signal reaches its children too), output to a log."""

    def __init__(self, command, log, env, append=False):
        self.command, self.log = command, log
        with open(log, "a" if append else "w") as handle:
            handle.write(f"$ {shlex.join(command)}\n")
            handle.flush()
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=default_sigint)
        self.started = time.monotonic()
        self.seconds = None
        self.interrupted = False

    def poll(self):
        code = self.process.poll()
        if code is not None and self.seconds is None:
            self.seconds = round(time.monotonic() - self.started, 1)
        return code

    def signal(self, number):
        if self.poll() is None:
            try:
                os.killpg(self.process.pid, number)
            except ProcessLookupError:
                pass

    def interrupt(self):
        """Ctrl-C: a training saves its last completed epoch and exits 130; pytest prints its summary."""
        if self.poll() is None:
            self.interrupted = True
            self.signal(signal.SIGINT)


def wait_all(jobs, deadline):
    """Wait for `jobs`; at `deadline` (monotonic) interrupt those still running, kill them GRACE_S later."""
    while any(job.poll() is None for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.5)
    for job in jobs:
        job.interrupt()
    grace_end = time.monotonic() + GRACE_S
    while any(job.poll() is None for job in jobs) and time.monotonic() < grace_end:
        time.sleep(0.5)
    for job in jobs:
        job.signal(signal.SIGKILL)
        job.process.wait()
        job.poll()


def child_env(**extra):
    # Progress bars redrawn at most every 10 s, so that the logs stay short.
    return dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10", **{k: str(v) for k, v in extra.items()})


def read_train_log(run_dir):
    """The epoch rows of <run_dir>/train_log.tsv (none before the training wrote it)."""
    path = log_path(run_dir) if run_dir else None
    return read_log(path) if path and os.path.exists(path) else []


def run_folder(checkpoints_dir):
    """The one run folder, <checkpoints_dir>/<scene>/<run>/, of a training that had `checkpoints_dir` to itself;
    None before the training made it."""
    found = sorted(glob.glob(os.path.join(checkpoints_dir, "*", "*", "")))
    return found[0] if found else None


def latest_results(results_dir):
    """<results_dir>/<scene>/latest/ of a prediction that had `results_dir` to itself; None before it wrote one."""
    found = sorted(glob.glob(os.path.join(results_dir, "*", "latest", "")))
    return found[0] if found else None


def steps_per_epoch(scene, data_dir, train_flags):
    """Training steps per epoch of `scene` with `train_flags` (read from the flags and the scene's size)."""
    import scipy.io
    from config import parse_config
    config = parse_config(train_flags)
    shape = dict((name, shape) for name, shape, _ in scipy.io.whosmat(os.path.join(data_dir, scene + ".mat")))
    patches = config.patches_per_epoch or shape["data"][0] * shape["data"][1]
    return math.ceil(patches / config.batch_size)


def steady_epoch_seconds(rows):
    """Mean seconds of the middle half of the epochs after the first (which holds the warm-up): when several
    processes start together, their first and last epochs may run alone. A mean, not a median, because the
    log rounds seconds to 0.01 and a mean averages the rounding out."""
    later = [row["seconds"] for row in rows[1:]] or [row["seconds"] for row in rows]
    middle = later[len(later) // 4:len(later) - len(later) // 4]
    return statistics.mean(middle) if middle else None


def pytest_outcome(log):
    """pytest's closing summary line, e.g. '1 failed, 14 passed, 2 skipped in 31.20s'."""
    with open(log) as handle:
        lines = [line.strip(" =\n") for line in handle]
    closing = [line for line in lines if re.fullmatch(r"(\d+ \w+(, )?)+ in [\d.]+s( \(.*\))?", line)]
    return closing[-1] if closing else "no summary line (see the log)"


def duration(seconds):
    if seconds is None:
        return "–"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def prepare():
    """Copy the three scenes from ../shared/data to bench/device_data/data/ (tests/test_gpu.py needs nothing more)."""
    os.makedirs(os.path.join(DEVICE_DATA, "data"), exist_ok=True)
    total = 0
    for scene in SCENES:
        source = os.path.join(SHARED, "data", scene + ".mat")
        if not os.path.isfile(source):
            sys.exit(f"error: {source} not found: --prepare copies from ../shared beside the repository")
        shutil.copyfile(source, os.path.join(DEVICE_DATA, "data", scene + ".mat"))  # not copy2: read-only sources
        total += os.path.getsize(source)
    print(f"copied {len(SCENES)} scenes ({total / 2 ** 20:.1f} MiB) to {DEVICE_DATA}")
    print(f'device command: PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --budget-s {MODES["gpu"]["budget_s"]}   '
          '(carry ["bench/device_data"], timeout_s 600)')


class Check:
    """The state of one call: its mode, budget, folders, and the report it writes after each step."""

    def __init__(self, mode_name, budget_s, phases, machine):
        self.mode_name, self.mode = mode_name, MODES[mode_name]
        self.device = self.mode["device"]
        # CPU threads of each training, the same however many run at once, so that only their number varies.
        self.threads = threads_per_job(max(max(self.mode["processes"]), len(SCENES) - 1))
        self.start = time.monotonic()
        self.end = self.start + budget_s
        self.phases = phases
        self.out = os.environ.get("OUT") or os.path.join(ROOT, "bench", "out", "gpu_check")
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="gpu_check-")
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs)
        self.data_dir = os.path.join(DEVICE_DATA, "data")
        self.archive = []  # (path, name in runs.tar.gz)
        self.jobs = []  # every child started, so that none outlives the call
        self.report = dict(
            command=shlex.join(["python", *sys.argv]), mode=mode_name,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"), budget_s=budget_s,
            phases=list(phases), machine=machine)

    def left(self):
        return self.end - time.monotonic()

    def job(self, command, log, env, append=False):
        self.jobs.append(Job(command, log, env, append))
        return self.jobs[-1]

    def stop_all(self):
        wait_all([job for job in self.jobs if job.poll() is None], time.monotonic())

    def deadline(self, phase, seconds=math.inf):
        """`seconds` from now, but leaving the steps after `phase` their reserved time and the summary its
        FINISH_S (monotonic time)."""
        later = self.phases[self.phases.index(phase) + 1:]
        reserve = FINISH_S + sum(self.mode[key] for name in later for key in RESERVES[name])
        return min(time.monotonic() + seconds, self.end - reserve)

    # -- 1. tests -------------------------------------------------------------------------------------

    def tests(self):
        pytest = ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
        job = self.job([sys.executable, *pytest, "--basetemp", os.path.join(self.work, "pytest"),
                        *self.mode["tests"]], os.path.join(self.out, "pytest_gpu.log"), child_env())
        wait_all([job], self.deadline("tests", self.mode["tests_s"]))
        self.report["tests"] = dict(command=shlex.join(["python", *pytest, *self.mode["tests"]]),
                                    exit=job.process.returncode, outcome=pytest_outcome(job.log),
                                    seconds=job.seconds, stopped_at_deadline=job.interrupted)

    # -- 2. the paper's runs --------------------------------------------------------------------------

    def scene_dirs(self, scene):
        """The checkpoints and results folders of `scene`'s run, each its own."""
        return os.path.join(self.work, "runs", scene, "checkpoints"), os.path.join(self.work, "runs", scene, "results")

    def run_flags(self, scene):
        checkpoints, results = self.scene_dirs(scene)
        return ["--dataset", scene, "--data_dir", self.data_dir, "--seed", "1", "--device", self.device,
                "--checkpoints_dir", checkpoints, "--results_dir", results, *self.mode["train_flags"]]

    def start_training(self, scene):
        command = [sys.executable, "main.py", "--command", "train", *self.run_flags(scene),
                   "--epochs", str(self.mode["epochs"]), "--eval_every", str(self.mode["eval_every"])]
        job = self.job(command, os.path.join(self.logs, f"{scene}.train.log"), child_env(OMP_NUM_THREADS=self.threads))
        self.archive.append((job.log, f"logs/{scene}.train.log"))
        return job

    def runs(self):
        """The first scene alone to --epochs, then the others together in the training time left; then predict
        from each scene's last saved epoch."""
        predict_end = self.deadline("runs")
        train_end = predict_end - self.mode["predict_s"]
        first, *later = SCENES
        jobs = {first: self.start_training(first)}
        wait_all([jobs[first]], train_end)
        if train_end - time.monotonic() >= self.mode["runs_min_s"]:
            jobs.update((scene, self.start_training(scene)) for scene in later)
            wait_all([jobs[scene] for scene in later], train_end)
        predictions = self.predict_saved(jobs)
        wait_all(list(predictions.values()), predict_end)
        self.report["runs"] = self.runs_report(jobs, predictions)

    def predict_saved(self, jobs):
        """--command predict on the last saved epoch of each scene that saved one: {scene: Job}."""
        predictions = {}
        for scene in jobs:
            run_dir = run_folder(self.scene_dirs(scene)[0])
            epochs = saved_epochs(run_dir) if run_dir else []
            if epochs:
                predictions[scene] = self.job(
                    [sys.executable, "main.py", "--command", "predict", *self.run_flags(scene), "--epochs",
                     str(epochs[-1])], os.path.join(self.logs, f"{scene}.predict.log"),
                    child_env(OMP_NUM_THREADS=self.threads))
                self.archive.append((predictions[scene].log, f"logs/{scene}.predict.log"))
        return predictions

    def runs_report(self, jobs, predictions):
        """The runs' settings and each scene's result, from the finished training and prediction Jobs."""
        scenes = {scene: self.run_result(scene, jobs.get(scene), predictions.get(scene)) for scene in SCENES}
        return dict(epochs=self.mode["epochs"], eval_every=self.mode["eval_every"],
                    train_flags=self.mode["train_flags"], scenes=scenes)

    def run_result(self, scene, job, prediction):
        """What `scene`'s training (None: not started) and prediction gave. A failure to read them is recorded
        in this scene's result, so that the other scenes' results still reach the summary."""
        result = dict(started=job is not None, exit=None, stopped_at_deadline=False, wall_s=None, epochs_reached=0,
                      saved_epochs=[], s_per_epoch=None, projected_1000_epochs_s=None, last_loss=None, aucs={},
                      predict=None, error=None)
        try:
            if job is not None:
                result.update(self.training_result(scene, job))
            if prediction is not None:
                result["predict"] = self.prediction_result(scene, prediction)
        except Exception:
            result["error"] = traceback.format_exc()
        return result

    def training_result(self, scene, job):
        run_dir = run_folder(self.scene_dirs(scene)[0])
        rows = read_train_log(run_dir)
        for name in ("train_log.tsv", "training_curve.png"):
            if run_dir and os.path.exists(os.path.join(run_dir, name)):
                self.archive.append((os.path.join(run_dir, name), f"{scene}/{name}"))
        epoch_seconds = steady_epoch_seconds(rows)
        return dict(exit=job.process.returncode, stopped_at_deadline=job.interrupted, wall_s=job.seconds,
                    epochs_reached=rows[-1]["epoch"] if rows else 0,
                    saved_epochs=saved_epochs(run_dir) if run_dir else [], s_per_epoch=epoch_seconds,
                    projected_1000_epochs_s=epoch_seconds * 1000 if epoch_seconds else None,
                    last_loss=rows[-1]["loss"] if rows else None,
                    aucs={row["epoch"]: row["auc"] for row in rows if row["auc"] is not None})

    def prediction_result(self, scene, prediction):
        metrics = {}
        if prediction.process.returncode == 0:
            latest = latest_results(self.scene_dirs(scene)[1])
            with open(os.path.join(latest, "metrics.json")) as handle:
                metrics = json.load(handle)
            for name in ("metrics.json", "detectmap.png", "roc.png"):
                if os.path.exists(os.path.join(latest, name)):
                    self.archive.append((os.path.join(latest, name), f"{scene}/{name}"))
        return dict(exit=prediction.process.returncode, epoch=metrics.get("epoch"), auc=metrics.get("auc"),
                    seconds=metrics.get("seconds"))

    # -- 3. speed -------------------------------------------------------------------------------------

    def speed(self):
        rows = []
        log = os.path.join(self.out, "speed.log")
        open(log, "w").close()
        phase_end = self.deadline("speed", self.mode["speed_s"])
        for precision in self.mode["precisions"]:
            if time.monotonic() >= phase_end:
                rows.append(dict(precision=precision, failed="not run: the step's time was spent"))
                continue
            result = os.path.join(self.work, f"speed_{precision}.json")
            command = [sys.executable, os.path.abspath(__file__), "--speed-child", precision, "--json", result]
            job = self.job(command + (["--cpu-smoke"] if self.mode_name == "cpu-smoke" else []), log, child_env(),
                           append=True)
            wait_all([job], phase_end)
            measured = json.load(open(result)) if os.path.exists(result) else []
            rows += measured
            if len(measured) < len(SPEED_SETTINGS):
                rows.append(dict(precision=precision, failed=f"{len(measured)} of {len(SPEED_SETTINGS)} settings "
                                 f"measured, exit {job.process.returncode}"
                                 + (", stopped at its deadline" if job.interrupted else "") + "; see speed.log"))
        self.report["speed"] = dict(scene=SPEED_SCENE, steps=self.mode["speed_steps"],
                                    flags=self.mode["speed_flags"], rows=rows)

    # -- 4. concurrency -------------------------------------------------------------------------------

    def concurrency_epochs(self):
        """Epochs that one training alone runs in about CONCURRENCY_TARGET_S, from the runs' seconds per epoch."""
        if self.mode["concurrency_epochs"]:
            return self.mode["concurrency_epochs"]
        seconds = self.report.get("runs", {}).get("scenes", {}).get(CONCURRENCY_SCENE, {}).get("s_per_epoch")
        if not seconds:
            return CONCURRENCY_DEFAULT_EPOCHS
        return min(500, max(4, math.ceil(CONCURRENCY_TARGET_S / seconds)))

    def concurrency(self):
        epochs = self.concurrency_epochs()
        phase_end = self.deadline("concurrency", self.mode["concurrency_s"])
        results = [self.concurrency_round(count, epochs, phase_end) for count in self.mode["processes"]
                   if time.monotonic() < phase_end]
        done = [r for r in results if r["exit"] == 0]
        single = done[0]["seconds"] if done and done[0]["jobs"] == 1 else None
        for result in results:
            result["vs_one"] = single / result["seconds"] if single and result["exit"] == 0 else None
        gains = [r["vs_one"] for r in results[1:] if r["vs_one"]]
        faster = bool(gains) and max(gains) > AT_ONCE_GAIN
        self.report["concurrency"] = dict(
            scene=CONCURRENCY_SCENE, grid=self.mode["grid"], seeds=2, epochs=epochs, results=results, at_once=faster,
            decision=(f"jobs at once finish the grid {max(gains):.2f}x faster than one at a time: the scenes of a "
                      "later call should train together" if faster else "jobs at once gained "
                      + (f"at most {max(gains):.2f}x" if gains else "nothing measurable")
                      + ": the scenes of a later call should train one after another"))

    def concurrency_round(self, count, epochs, phase_end):
        """The grid as one benchmark with --jobs `count`; its wall seconds."""
        name = f"grid_jobs{count}"
        folder = os.path.join(self.work, name)
        command = [sys.executable, "main.py", "--command", "benchmark", "--datasets", CONCURRENCY_SCENE,
                   "--data_dir", self.data_dir, "--seeds", "1,2", "--methods", "bs3lnet", "--grid", self.mode["grid"],
                   "--jobs", str(count), "--epochs", str(epochs), "--save_freq", str(epochs), "--device", self.device,
                   "--checkpoints_dir", os.path.join(folder, "c"), "--results_dir", os.path.join(folder, "r"),
                   *self.mode["train_flags"]]
        job = self.job(command, os.path.join(self.logs, name + ".log"), child_env(OMP_NUM_THREADS=self.threads))
        self.archive.append((job.log, f"logs/{name}.log"))
        wait_all([job], phase_end)
        return dict(jobs=count, exit=job.process.returncode, seconds=job.seconds,
                    stopped_at_deadline=job.interrupted)

    # -- output ---------------------------------------------------------------------------------------

    def write(self):
        self.report["seconds"] = round(time.monotonic() - self.start, 1)
        with open(os.path.join(self.out, "summary.json"), "w") as handle:
            json.dump(self.report, handle, indent=1)
        with open(os.path.join(self.out, "summary.md"), "w") as handle:
            handle.write(markdown(self.report))

    def write_archive(self):
        with tarfile.open(os.path.join(self.out, "runs.tar.gz"), "w:gz") as archive:
            for path, name in self.archive:
                if os.path.exists(path):
                    archive.add(path, arcname=name)


# -- the speed step's child process -----------------------------------------------------------------------

def speed_child(mode, precision, json_path):
    """Measure `precision` in each of SPEED_SETTINGS, in this process, after an untimed warm-up training; the
    rows so far go to `json_path` after each."""
    import numpy as np
    import scipy.io
    from utils import atomic_write_text
    hsi = np.asarray(scipy.io.loadmat(os.path.join(DEVICE_DATA, "data", SPEED_SCENE + ".mat"))["data"], np.float32)
    rows = []
    # An untimed warm-up training first, so that no setting pays for the process's first training.
    for index, setting in enumerate((SPEED_SETTINGS[0], *SPEED_SETTINGS)):
        folder = tempfile.mkdtemp(prefix=f"speed_{precision}_", dir=os.path.dirname(json_path))
        row = measure_speed(mode, precision, hsi, folder, *setting)
        if index > 0:
            rows.append(row)
            atomic_write_text(json_path, json.dumps(rows))


def measure_speed(mode, precision, hsi, folder, setting, benchmark, layout):
    """Train SPEED_EPOCHS epochs of mode['speed_steps'] steps on SPEED_SCENE in `setting`, checkpoints in
    `folder`; s/step from the median epoch after the first (which holds the warm-up and cuDNN's algorithm
    search). Then time predict."""
    import torch
    import train as train_module
    from config import parse_config
    amp = precision if precision in ("bf16", "fp16") else "off"
    config = parse_config(["--command", "train", "--dataset", SPEED_SCENE, "--data_dir",
                           os.path.join(DEVICE_DATA, "data"), "--device", mode["device"], "--amp", amp, "--epochs",
                           str(SPEED_EPOCHS), "--checkpoints_dir", folder, *(["--tf32"] if precision == "tf32" else []),
                           *mode["speed_flags"]])
    config = dataclasses.replace(config, patches_per_epoch=mode["speed_steps"] * config.batch_size)
    epoch_seconds, trained = [], {}
    real_epoch, real_seed = train_module.train_epoch, train_module.seed_everything

    def timed_epoch(*args, **kwargs):  # it ends by reading the loss: the device has finished the epoch
        started = time.perf_counter()
        loss = real_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - started)
        return loss

    def seeded(seed):  # after the trainings' own setting: deterministic cuDNN without benchmarking
        real_seed(seed)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = not benchmark
    cuda = mode["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    network = contiguous_net() if layout == "contiguous" else train_module.BS3LNet
    with mock.patch.multiple(train_module, train_epoch=timed_epoch, seed_everything=seeded, BS3LNet=network):
        train_module.train(config, after_epoch=lambda epoch, net, loss: trained.update(net=net))
    gpu_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    step_s = statistics.median(epoch_seconds[1:]) / mode["speed_steps"]
    height, width = hsi.shape[:2]
    return dict(precision=precision, setting=setting, step_s=step_s,
                epoch_s=step_s * math.ceil(height * width / config.batch_size), gpu_peak_mib=gpu_peak,
                predict_s=predict_seconds(trained["net"], hsi, mode["device"], amp))


def contiguous_net():
    """BS3LNet kept in the default contiguous (NCHW) layout: the channels-last moves of training and predict are
    ignored, and each batch is copied out of the sampler's channels-last patches."""
    from model import BS3LNet

    class ContiguousNet(BS3LNet):
        def to(self, *args, memory_format=None, **kwargs):
            return super().to(*args, **kwargs)

        def forward(self, x):
            return super().forward(x.contiguous())
    return ContiguousNet


def predict_seconds(net, hsi, device, amp):
    """Median seconds of PREDICT_REPEATS whole-scene reconstructions, after one untimed warm-up (CUDA kernels,
    cuDNN's algorithm search, the allocator's first blocks)."""
    from model import reconstruct
    reconstruct(net, hsi, device, amp=amp)
    times = []
    for _ in range(PREDICT_REPEATS):
        started = time.perf_counter()
        reconstruct(net, hsi, device, amp=amp)  # ends with the copy to the host: the device has finished
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- the summary ------------------------------------------------------------------------------------------

def machine_info():
    import torch
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cpus=os.cpu_count(), gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def markdown(report):
    """summary.md: what ran, and a table per step."""
    machine = report["machine"]
    lines = [f"# GPU check ({report['mode']})", "",
             f"{report['started']}, `{report['command']}`, {report['seconds']:.0f} s of a {report['budget_s']} s "
             f"budget. Machine: {machine['gpu'] or 'no GPU'}, {machine['cpus']} CPU cores, Python "
             f"{machine['python']}, torch {machine['torch']} (CUDA {machine['cuda']}).", ""]
    if "tests" in report:
        test = report["tests"]
        stopped = " (stopped at its deadline)" if test["stopped_at_deadline"] else ""
        lines += ["## Tests", "", "| run | outcome | exit | seconds |", "|---|---|---|---|",
                  f"| `{test['command']}` | {test['outcome']}{stopped} | {test['exit']} | {test['seconds']} |", "",
                  "Log: pytest_gpu.log.", ""]
    sections = dict(runs=runs_markdown, speed=speed_markdown, concurrency=concurrency_markdown)
    for phase in PHASES:
        if phase in sections and phase in report:
            lines += sections[phase](report[phase])
    for phase, error in report.get("errors", {}).items():
        lines += [f"## Error in step {phase}", "", "```", error.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def runs_markdown(runs):
    scenes = runs["scenes"]
    first, *later = scenes
    flags = " ".join(runs["train_flags"]) or "default flags (fp32)"
    lines = ["## The paper's scenes", "",
             f"{flags}, seed 1, `--epochs {runs['epochs']} --eval_every {runs['eval_every']}`: {first} alone first, "
             f"then {' and '.join(later)} together in the training time left. A training still running at its "
             "deadline got SIGINT and saved its last epoch, and predict scored each scene's last saved epoch. "
             "Logs, train_log.tsv, metrics.json and figures: runs.tar.gz.", "",
             "| | " + " | ".join(f"{scene} (epoch {r['epochs_reached']})" for scene, r in scenes.items()) + " |",
             "|---" * (len(scenes) + 1) + "|"]
    epochs = sorted({int(epoch) for result in scenes.values() for epoch in result["aucs"]})
    for epoch in epochs:
        cells = [f"{result['aucs'][epoch]:.4f}" if epoch in result["aucs"] else "" for result in scenes.values()]
        lines.append(f"| AUC after epoch {epoch} | " + " | ".join(cells) + " |")

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(result) for result in scenes.values()) + " |")
    row("epochs reached", lambda r: "not started (no training time left)" if not r["started"] else
        f"{r['epochs_reached']}" + (" (stopped at the deadline)" if r["stopped_at_deadline"] else ""))
    row("training exit", lambda r: str(r["exit"]) if r["started"] else "–")
    row("last loss", lambda r: f"{r['last_loss']:.4f}" if r["last_loss"] is not None else "–")
    row("s/epoch (training only, mean of the middle half)",
        lambda r: f"{r['s_per_epoch']:.3g}" if r["s_per_epoch"] else "–")
    row("1000 epochs (projected from s/epoch)", lambda r: duration(r["projected_1000_epochs_s"]))
    row("predict AUC (epoch)", lambda r: "not run" if r["predict"] is None else
        f"{r['predict']['auc']:.4f} ({r['predict']['epoch']})" if r["predict"]["auc"] is not None else
        f"failed, exit {r['predict']['exit']}")
    lines.append("")
    for scene, result in scenes.items():
        if result["error"]:
            lines += [f"Reading {scene}'s results failed:", "", "```", result["error"].rstrip(), "```", ""]
    return lines


def speed_markdown(speed):
    flags = " ".join(speed["flags"]) or "default flags"
    lines = ["## Speed", "",
             f"{speed['scene']}, {flags}, {SPEED_EPOCHS} epochs of {speed['steps']} steps per setting, in one process "
             "per precision after an untimed warm-up training; s/step is the median epoch after the first (which "
             "holds the warm-up) over its steps, free-running as a training runs. "
             "Settings: *default* is what every training runs (cuDNN deterministic, no benchmarking, the network "
             "and batches channels-last); *cudnn.benchmark* lets cuDNN time its algorithms and keep the fastest "
             "(results equal up to float rounding, not bit for bit from run to run); *contiguous* also keeps the "
             "default NCHW layout (each batch copied out of the sampler's channels-last patches). On the CPU the "
             f"cuDNN switches do not apply. Predict: the whole scene's reconstruction, median of "
             f"{PREDICT_REPEATS} after a warm-up.", "",
             "| precision | setting | s/step | vs default | s/epoch | 1000 epochs (projected) | GPU peak MiB "
             "| predict s |", "|---|---|---|---|---|---|---|---|"]
    defaults = {row["precision"]: row["step_s"] for row in speed["rows"] if row.get("setting") == "default"}
    for row in speed["rows"]:
        if "failed" in row:
            lines.append(f"| {row['precision']} | failed: {row['failed']} | | | | | | |")
            continue
        default = defaults.get(row["precision"])
        gpu_peak = f"{row['gpu_peak_mib']:.0f}" if row["gpu_peak_mib"] is not None else "–"
        lines.append(f"| {row['precision']} | {row['setting']} | {row['step_s']:.4g} | "
                     + (f"{default / row['step_s']:.2f}x" if default else "–") + f" | {row['epoch_s']:.3g} | "
                     f"{duration(row['epoch_s'] * 1000)} | {gpu_peak} | {row['predict_s']:.3f} |")
    return lines + ["", fastest_settings(speed["rows"], defaults), "", "Log: speed.log.", ""]


def fastest_settings(rows, defaults):
    """One line: the fastest measured setting of each precision, and its gain over the default."""
    fastest = {}
    for row in rows:
        if "failed" not in row and (row["precision"] not in fastest
                                    or row["step_s"] < fastest[row["precision"]]["step_s"]):
            fastest[row["precision"]] = row
    return "Fastest setting per precision: " + ("; ".join(
        f"{precision}: {row['setting']}" + (f", {defaults[precision] / row['step_s']:.2f}x the default's steps "
                                            "per second" if defaults.get(precision) and row["setting"] != "default"
                                            else "")
        for precision, row in fastest.items()) or "none measured") + "."


def concurrency_markdown(concurrency):
    lines = ["## Benchmark jobs at once on one device", "",
             f"`benchmark --grid \"{concurrency['grid']}\" --seeds 1,2` on {concurrency['scene']} (8 trainings of "
             f"{concurrency['epochs']} epochs, the runs' flags, each scored), with --jobs N.", "",
             "| --jobs | wall s | vs one at a time | exit |", "|---|---|---|---|"]
    for result in concurrency["results"]:
        vs_one = f"{result['vs_one']:.2f}x" if result["vs_one"] else "–"
        stopped = " (stopped at the deadline)" if result["stopped_at_deadline"] else ""
        seconds = f"{result['seconds']:.1f}" if result["seconds"] is not None else "–"
        lines.append(f"| {result['jobs']} | {seconds} | {vs_one} | {result['exit']}{stopped} |")
    return lines + ["", f"Conclusion: {concurrency['decision']}.", ""]


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true",
                        help="copy the scenes from ../shared to bench/device_data/ and stop")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every step on CPU with tiny sizes, to prove the script before it costs device time")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds the whole call may take (default: {MODES['gpu']['budget_s']}; "
                             f"{MODES['cpu-smoke']['budget_s']} with --cpu-smoke)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated steps to run, in this order (default: {','.join(PHASES)})")
    parser.add_argument("--speed-child", metavar="PRECISION", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if set(args.phases.split(",")) - set(PHASES):
        parser.error(f"--phases takes some of {', '.join(PHASES)}, comma-separated")
    return args


def main():
    args = parse_arguments()
    if args.prepare:
        return prepare()
    mode_name = "cpu-smoke" if args.cpu_smoke else "gpu"
    if args.speed_child:
        return speed_child(MODES[mode_name], args.speed_child, args.json)
    phases = [phase for phase in PHASES if phase in args.phases.split(",")]
    machine = machine_info()
    if mode_name == "gpu" and machine["gpu"] is None:
        sys.exit("error: no CUDA device here: run the GPU check on a GPU machine, or --cpu-smoke to try the script")
    missing = [scene for scene in SCENES if not os.path.isfile(os.path.join(DEVICE_DATA, "data", scene + ".mat"))]
    if missing:
        sys.exit(f"error: {', '.join(missing)} missing in {DEVICE_DATA}/data: run `python bench/gpu_check.py "
                 "--prepare` where ../shared is, and carry bench/device_data")
    check = Check(mode_name, args.budget_s or MODES[mode_name]["budget_s"], phases, machine)
    print(f"gpu_check ({mode_name}): steps {', '.join(phases)}; budget {check.left():.0f} s; output in {check.out}")
    try:
        for phase in phases:
            started = time.monotonic()
            try:
                getattr(check, phase)()
            except Exception:  # one broken step must not cost the others' device time
                check.report.setdefault("errors", {})[phase] = traceback.format_exc()
                print(check.report["errors"][phase], file=sys.stderr)
                check.stop_all()
            check.write()
            print(f"{phase}: done in {time.monotonic() - started:.0f} s; {check.left():.0f} s of the budget left")
    finally:
        check.stop_all()
        check.write()
        check.write_archive()
        shutil.rmtree(check.work, ignore_errors=True)
    with open(os.path.join(check.out, "summary.md")) as summary:
        print(summary.read())


if __name__ == "__main__":
    main()
