"""All the GPU checks in one call: the CUDA tests, speed per precision, concurrent trainings, and the paper's
three scenes trained with the default flags.

Here, once:          python bench/gpu_check.py --prepare     (copies the scenes from ../shared to bench/device_data/)
Here, to prove it:   python bench/gpu_check.py --cpu-smoke   (the same steps on CPU with tiny sizes, ~3 minutes)
On the GPU machine, as the device tool's run (repository root, carry ["bench/device_data"], timeout_s 600):

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --budget-s 480

Steps, each with a deadline so that the whole call ends within --budget-s:
 1. tests: tests/test_gpu.py and, beside it, the rest of the suite (-x), with BS3LNET_SHARED=bench/device_data;
 2. speed: bench/speed.py on AVIRIS-II_CNND (100 x 100 x 189) in fp32, tf32, bf16 and fp16;
 3. concurrency: 1, 2 and 3 trainings of HYDICE-II at once on the one GPU: steps per second in all;
 4. runs: HYDICE-II, AVIRIS-I_CNND and AVIRIS-II_CNND with the default flags (fp32), seed 1, 1000 epochs,
    --eval_every 50, all at once when step 3 found that faster (or did not run), else one after another;
    a training still running at its deadline gets SIGINT (it saves its last epoch and exits 130), then
    --command predict scores the last saved epoch.

Output, in $OUT when set (the device tool brings back at most 8 files), else in bench/out/gpu_check/:
summary.md and summary.json (rewritten after each step), pytest_gpu.log, pytest_suite.log, speed.log, and
runs.tar.gz (every training's and prediction's output, train_log.tsv, metrics.json and figures).
"""
import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from runs import log_path, read_log, saved_epochs  # noqa: E402
DEVICE_DATA = os.path.join(ROOT, "bench", "device_data")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SCENES = ("HYDICE-II", "AVIRIS-I_CNND", "AVIRIS-II_CNND")
# Also carried for the rest of the test suite: San Diego (memory and RX tests) and the anomaly counts in
# the data README (loading tests).
SUITE_DATA = ("sandiego-100x100x189-58px.mat", "README.md")
SPEED_SCENE = "AVIRIS-II_CNND"  # 100 x 100 x 189, the size of the README's speed table
CONCURRENCY_SCENE = "HYDICE-II"
PHASES = ("tests", "speed", "concurrency", "runs")
AT_ONCE_GAIN = 1.1  # trainings run at once only if that beats one training by more than timing noise
GRACE_S = 30  # after SIGINT: time to save a checkpoint (or print a test summary) before SIGKILL
FINISH_S = 10  # kept at the end of the budget for the summary and the archive
TINY_FLAGS = ["--patch", "5", "--size_window", "3", "--nch_ker", "8", "--nblk", "1", "--batch_size", "32",
              "--patches_per_epoch", "64"]

# What differs between the GPU run and the CPU smoke run; every step runs the same code in both.
MODES = {
    "gpu": dict(
        device="cuda", budget_s=480, precisions=("fp32", "tf32", "bf16", "fp16"), speed_steps=100,
        train_flags=[], processes=(1, 2, 3), concurrency_epochs=None, epochs=1000, eval_every=50,
        gpu_tests=["tests/test_gpu.py"], suite=["-x", "--ignore=tests/test_gpu.py"],
        tests_s=170, speed_s=45, concurrency_s=80, runs_min_s=120, predict_s=45),
    "cpu-smoke": dict(
        device="cpu", budget_s=180, precisions=("fp32", "tf32", "bf16"), speed_steps=2,  # no fp16 on CPU
        # More epochs than fit in the budget: the runs take the deadline's SIGINT, save, predict path, as the
        # larger scenes will on the GPU.
        train_flags=TINY_FLAGS, processes=(1, 2), concurrency_epochs=10, epochs=5000, eval_every=250,
        gpu_tests=["tests/test_gpu.py"], suite=["-x", "tests/test_gpu.py"],
        tests_s=90, speed_s=40, concurrency_s=60, runs_min_s=30, predict_s=45),
}
CONCURRENCY_TARGET_S = 5  # training seconds of one process alone; the epoch count is sized from step 2
CONCURRENCY_DEFAULT_EPOCHS = 20  # when step 2 did not run


class Job:
    """A child process in a session of its own (so a signal reaches its children too), output to a log."""

    def __init__(self, command, log, env, append=False):
        self.command, self.log = command, log
        with open(log, "a" if append else "w") as handle:
            handle.write(f"$ {shlex.join(command)}\n")
            handle.flush()
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
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


def threads_each(count):
    """CPU threads per process when `count` run at once, so they do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // count)


def read_train_log(run_dir):
    """The epoch rows of <run_dir>/train_log.tsv (none before the training wrote it)."""
    path = log_path(run_dir) if run_dir else None
    return read_log(path) if path and os.path.exists(path) else []


def run_folder(checkpoints_dir, scene):
    """The one run folder under <checkpoints_dir>/<scene>/, or None before the training made it."""
    found = sorted(glob.glob(os.path.join(checkpoints_dir, scene, "*", "")))
    return found[0] if found else None


def steps_per_epoch(scene, data_dir, train_flags):
    """Training steps per epoch of `scene` with `train_flags` (read from the flags and the scene's size)."""
    import scipy.io
    from main import build_parser
    config = build_parser().parse_args(train_flags)
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
    """Copy the scenes, the suite's data and the reference fixtures from ../shared to bench/device_data/."""
    files = [("data", name + ".mat") for name in SCENES] + [("data", name) for name in SUITE_DATA]
    files += [("reference", os.path.basename(path)) for pattern in ("*.npz", "*.json")
              for path in glob.glob(os.path.join(SHARED, "reference", pattern))]
    total = 0
    for folder, name in files:
        source = os.path.join(SHARED, folder, name)
        if not os.path.isfile(source):
            sys.exit(f"error: {source} not found: --prepare copies from ../shared beside the repository")
        os.makedirs(os.path.join(DEVICE_DATA, folder), exist_ok=True)
        shutil.copyfile(source, os.path.join(DEVICE_DATA, folder, name))  # not copy2: the sources are read-only
        total += os.path.getsize(source)
    print(f"copied {len(files)} files ({total / 2 ** 20:.1f} MiB) to {DEVICE_DATA}")
    print('device command: PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --budget-s 480   '
          '(carry ["bench/device_data"], timeout_s 600)')


class Check:
    """The state of one call: its mode, budget, folders, and the report it writes after each step."""

    def __init__(self, mode_name, budget_s, phases, machine):
        self.mode_name, self.mode = mode_name, MODES[mode_name]
        self.device = self.mode["device"]
        # CPU threads of each training, the same however many run at once, so that only their number varies.
        self.threads = threads_each(max(max(self.mode["processes"]), len(SCENES)))
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

    def deadline(self, seconds):
        """For the steps before the runs: `seconds` from now, but leaving the runs their least training time,
        their predictions and the summary (monotonic time)."""
        reserve = self.mode["predict_s"] + FINISH_S + (self.mode["runs_min_s"] if "runs" in self.phases else 0)
        return min(time.monotonic() + seconds, self.end - reserve)

    # -- 1. tests -------------------------------------------------------------------------------------

    def tests(self):
        pytest = ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
        jobs = {}
        for name, args in (("gpu", self.mode["gpu_tests"]), ("suite", self.mode["suite"])):
            # Two pytest processes at once: the GPU tests and the rest of the (mostly CPU) suite.
            env = child_env(BS3LNET_SHARED=DEVICE_DATA, OMP_NUM_THREADS=threads_each(2))
            jobs[name] = (self.job([sys.executable, *pytest, "--basetemp", os.path.join(self.work, f"pytest_{name}"),
                                    *args], os.path.join(self.out, f"pytest_{name}.log"), env),
                          shlex.join(["python", *pytest, *args]))
        wait_all([job for job, _ in jobs.values()], self.deadline(self.mode["tests_s"]))
        self.report["tests"] = {
            name: dict(command=command, exit=job.process.returncode, outcome=pytest_outcome(job.log),
                       seconds=job.seconds, stopped_at_deadline=job.interrupted)
            for name, (job, command) in jobs.items()}

    # -- 2. speed -------------------------------------------------------------------------------------

    def speed(self):
        rows = []
        log = os.path.join(self.out, "speed.log")
        open(log, "w").close()
        for precision in self.mode["precisions"]:
            result = os.path.join(self.work, f"speed_{precision}.json")
            job = self.job([sys.executable, os.path.join("bench", "speed.py"), "--device", self.device,
                            "--precisions", precision, "--steps", str(self.mode["speed_steps"]),
                            "--scene", os.path.join(self.data_dir, SPEED_SCENE + ".mat"), "--json", result],
                           log, child_env(), append=True)
            wait_all([job], self.deadline(self.mode["speed_s"]))
            measured = json.load(open(result)) if os.path.exists(result) else []
            rows += [dict(row, precision="fp32" if row["precision"] == "off" else row["precision"])
                     for row in measured]
            if not measured:
                rows.append(dict(precision=precision, failed=f"exit {job.process.returncode}"
                                 + (", stopped at its deadline" if job.interrupted else "") + "; see speed.log"))
        self.report["speed"] = dict(scene=SPEED_SCENE, steps=self.mode["speed_steps"], rows=rows)

    # -- 3. concurrency -------------------------------------------------------------------------------

    def concurrency_epochs(self, steps):
        if self.mode["concurrency_epochs"]:
            return self.mode["concurrency_epochs"]
        fp32 = [row for row in self.report.get("speed", {}).get("rows", []) if row.get("step_s")
                and row["precision"] == "fp32"]
        if not fp32:
            return CONCURRENCY_DEFAULT_EPOCHS
        return min(500, max(4, math.ceil(CONCURRENCY_TARGET_S / (fp32[0]["step_s"] * steps))))

    def concurrency(self):
        flags = self.mode["train_flags"]
        steps = steps_per_epoch(CONCURRENCY_SCENE, self.data_dir, flags)
        epochs = self.concurrency_epochs(steps)
        phase_end = self.deadline(self.mode["concurrency_s"])
        results = []
        for count in self.mode["processes"]:
            jobs, folders = [], []
            for index in range(count):
                name = f"concurrency_{count}x_{index + 1}"
                folders.append(os.path.join(self.work, name))
                command = [sys.executable, "main.py", "--command", "train", "--dataset", CONCURRENCY_SCENE,
                           "--data_dir", self.data_dir, "--checkpoints_dir", folders[-1],
                           "--epochs", str(epochs), "--save_freq", str(epochs), "--device", self.device, *flags]
                jobs.append(self.job(command, os.path.join(self.logs, name + ".log"),
                                     child_env(OMP_NUM_THREADS=self.threads)))
                self.archive.append((jobs[-1].log, f"logs/{name}.log"))
            wait_all(jobs, phase_end)
            epoch_seconds = [steady_epoch_seconds(read_train_log(run_folder(folder, CONCURRENCY_SCENE)))
                             for folder in folders]
            total = sum(steps / seconds for seconds in epoch_seconds) if all(epoch_seconds) else None
            results.append(dict(processes=count, exits=[job.process.returncode for job in jobs],
                                s_per_epoch=epoch_seconds, steps_per_s=total,
                                stopped_at_deadline=any(job.interrupted for job in jobs)))
        single = results[0]["steps_per_s"]
        for result in results:
            result["vs_one"] = result["steps_per_s"] / single if single and result["steps_per_s"] else None
        gains = [r["vs_one"] for r in results[1:] if r["vs_one"]]
        at_once = bool(gains) and max(gains) > AT_ONCE_GAIN
        self.report["concurrency"] = dict(
            scene=CONCURRENCY_SCENE, epochs=epochs, steps_per_epoch=steps, results=results, at_once=at_once,
            decision=(f"the paper's runs start together: {max(gains):.2f}x the steps per second of one training"
                      if at_once else "the paper's runs go one after another: running several at once gained "
                      + (f"at most {max(gains):.2f}x" if gains else "nothing measurable")))

    # -- 4. the paper's runs --------------------------------------------------------------------------

    def run_flags(self, scene):
        return ["--dataset", scene, "--data_dir", self.data_dir, "--seed", "1", "--device", self.device,
                "--checkpoints_dir", os.path.join(self.work, "runs", "checkpoints"),
                "--results_dir", os.path.join(self.work, "runs", "results"), *self.mode["train_flags"]]

    def runs(self):
        at_once = self.report.get("concurrency", {}).get("at_once", True)
        train_end = self.end - self.mode["predict_s"] - FINISH_S
        jobs = {}

        def start(scene):
            command = [sys.executable, "main.py", "--command", "train", *self.run_flags(scene),
                       "--epochs", str(self.mode["epochs"]), "--eval_every", str(self.mode["eval_every"])]
            jobs[scene] = self.job(command, os.path.join(self.logs, f"{scene}.train.log"),
                                   child_env(OMP_NUM_THREADS=self.threads))
            self.archive.append((jobs[scene].log, f"logs/{scene}.train.log"))

        if at_once:
            for scene in SCENES:
                start(scene)
            wait_all(list(jobs.values()), train_end)
        else:
            for index, scene in enumerate(SCENES):  # the time left is shared equally by the runs not yet done
                start(scene)
                wait_all([jobs[scene]], time.monotonic() + (train_end - time.monotonic()) / (len(SCENES) - index))
        predictions = {}
        for scene in SCENES:
            epochs = saved_epochs(run_folder(os.path.join(self.work, "runs", "checkpoints"), scene))
            if epochs:
                predictions[scene] = self.job(
                    [sys.executable, "main.py", "--command", "predict", *self.run_flags(scene), "--epochs",
                     str(epochs[-1])], os.path.join(self.logs, f"{scene}.predict.log"),
                    child_env(OMP_NUM_THREADS=self.threads))
                self.archive.append((predictions[scene].log, f"logs/{scene}.predict.log"))
        wait_all(list(predictions.values()), self.end - FINISH_S)
        scenes = {scene: self.run_result(scene, jobs[scene], predictions.get(scene)) for scene in SCENES}
        self.report["runs"] = dict(at_once=at_once, epochs=self.mode["epochs"], eval_every=self.mode["eval_every"],
                                   train_flags=self.mode["train_flags"], scenes=scenes)

    def run_result(self, scene, job, prediction):
        run_dir = run_folder(os.path.join(self.work, "runs", "checkpoints"), scene)
        rows = read_train_log(run_dir)
        if run_dir:
            for name in ("train_log.tsv", "training_curve.png"):
                if os.path.exists(os.path.join(run_dir, name)):
                    self.archive.append((os.path.join(run_dir, name), f"{scene}/{name}"))
        epoch_seconds = steady_epoch_seconds(rows)
        result = dict(exit=job.process.returncode, stopped_at_deadline=job.interrupted, wall_s=job.seconds,
                      epochs_reached=rows[-1]["epoch"] if rows else 0,
                      saved_epochs=saved_epochs(run_dir) if run_dir else [],
                      s_per_epoch=epoch_seconds,
                      projected_1000_epochs_s=epoch_seconds * 1000 if epoch_seconds else None,
                      last_loss=rows[-1]["loss"] if rows else None,
                      aucs={row["epoch"]: row["auc"] for row in rows if row["auc"] is not None}, predict=None)
        if prediction is not None:
            latest = os.path.join(self.work, "runs", "results", scene, "latest")
            metrics_path = os.path.join(latest, "metrics.json")
            metrics = json.load(open(metrics_path)) if prediction.process.returncode == 0 else {}
            result["predict"] = dict(exit=prediction.process.returncode, epoch=metrics.get("epoch"),
                                     auc=metrics.get("auc"), seconds=metrics.get("seconds"))
            for name in ("metrics.json", "detectmap.png", "roc.png"):
                if os.path.exists(os.path.join(latest, name)):
                    self.archive.append((os.path.join(latest, name), f"{scene}/{name}"))
        return result

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
        lines += ["## Tests", "", "| run | outcome | exit | seconds |", "|---|---|---|---|"]
        for name, test in report["tests"].items():
            stopped = " (stopped at its deadline)" if test["stopped_at_deadline"] else ""
            lines.append(f"| `{test['command']}` | {test['outcome']}{stopped} | {test['exit']} | {test['seconds']} |")
        lines += ["", "Logs: pytest_gpu.log, pytest_suite.log.", ""]
    if "speed" in report:
        speed = report["speed"]
        lines += ["## Speed", "",
                  f"`bench/speed.py` on {speed['scene']}, default flags, {speed['steps']} steps per precision. Each "
                  "step is timed with a device synchronisation, so s/step also holds the launch time that a "
                  "free-running training overlaps with the GPU's work (the runs below show that).", "",
                  "| precision | s/step | GPU peak MiB | to first step s | s/epoch | 1000 epochs (projected) "
                  "| predict s |", "|---|---|---|---|---|---|---|"]
        for row in speed["rows"]:
            if "failed" in row:
                lines.append(f"| {row['precision']} | failed: {row['failed']} | | | | | |")
                continue
            gpu_peak = f"{row['gpu_peak_mib']:.0f}" if row["gpu_peak_mib"] is not None else "–"
            lines.append(f"| {row['precision']} | {row['step_s']:.4g} | {gpu_peak} | {row['first_step_s']:.2f} | "
                         f"{row['epoch_s']:.3g} | {duration(row['epoch_s'] * 1000)} | {row['predict_s']:.2f} |")
        lines += ["", "Log: speed.log.", ""]
    if "concurrency" in report:
        concurrency = report["concurrency"]
        lines += ["## Trainings at once on one device", "",
                  f"{concurrency['scene']}, the runs' flags, {concurrency['epochs']} epochs of "
                  f"{concurrency['steps_per_epoch']} steps in each process, all started together; s/epoch is each "
                  "process's mean over the middle half of its epochs.", "",
                  "| processes | s/epoch of each | steps/s in all | vs one | exit |", "|---|---|---|---|---|"]
        for result in concurrency["results"]:
            each = ", ".join(f"{m:.3g}" if m else "–" for m in result["s_per_epoch"])
            total = f"{result['steps_per_s']:.1f}" if result["steps_per_s"] else "–"
            vs_one = f"{result['vs_one']:.2f}x" if result["vs_one"] else "–"
            stopped = " (stopped at the deadline)" if result["stopped_at_deadline"] else ""
            lines.append(f"| {result['processes']} | {each} | {total} | {vs_one} | "
                         f"{', '.join(map(str, result['exits']))}{stopped} |")
        lines += ["", f"Decision: {concurrency['decision']}.", ""]
    if "runs" in report:
        lines += runs_markdown(report["runs"])
    for phase, error in report.get("errors", {}).items():
        lines += [f"## Error in step {phase}", "", "```", error.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def runs_markdown(runs):
    scenes = runs["scenes"]
    flags = " ".join(runs["train_flags"]) or "default flags (fp32)"
    lines = ["## The paper's scenes", "",
             f"{flags}, seed 1, `--epochs {runs['epochs']} --eval_every {runs['eval_every']}`, "
             + ("all three at once" if runs["at_once"] else "one after another")
             + "; a training still running at its deadline got SIGINT and saved its last epoch, and predict "
               "scored the last saved epoch. Logs, train_log.tsv, metrics.json and figures: runs.tar.gz.", "",
             "| | " + " | ".join(scenes) + " |", "|---" * (len(scenes) + 1) + "|"]
    epochs = sorted({int(epoch) for result in scenes.values() for epoch in result["aucs"]})
    for epoch in epochs:
        cells = [f"{result['aucs'][epoch]:.4f}" if epoch in result["aucs"] else "" for result in scenes.values()]
        lines.append(f"| AUC after epoch {epoch} | " + " | ".join(cells) + " |")

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(result) for result in scenes.values()) + " |")
    row("epochs reached", lambda r: f"{r['epochs_reached']}" + (" (stopped at the deadline)"
                                                                 if r["stopped_at_deadline"] else ""))
    row("training exit", lambda r: str(r["exit"]))
    row("last loss", lambda r: f"{r['last_loss']:.4f}" if r["last_loss"] is not None else "–")
    row("s/epoch (training only, mean of the middle half)",
        lambda r: f"{r['s_per_epoch']:.3g}" if r["s_per_epoch"] else "–")
    row("1000 epochs (projected from s/epoch)", lambda r: duration(r["projected_1000_epochs_s"]))
    row("predict AUC (epoch)", lambda r: "not run" if r["predict"] is None else
        f"{r['predict']['auc']:.4f} ({r['predict']['epoch']})" if r["predict"]["auc"] is not None else
        f"failed, exit {r['predict']['exit']}")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true",
                        help="copy the scenes and reference fixtures from ../shared to bench/device_data/ and stop")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every step on CPU with tiny sizes, to prove the script before it costs device time")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds the whole call may take (default: 480; 180 with --cpu-smoke)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated steps to run, in this order (default: {','.join(PHASES)}); without "
                             "the concurrency step the paper's runs start together")
    args = parser.parse_args()
    if args.prepare:
        return prepare()
    mode_name = "cpu-smoke" if args.cpu_smoke else "gpu"
    phases = [phase for phase in PHASES if phase in args.phases.split(",")]
    if set(args.phases.split(",")) - set(PHASES):
        parser.error(f"--phases takes some of {', '.join(PHASES)}, comma-separated")
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
