"""Epoch curves: can a label-free statistic choose the training epoch as well as the ground truth would?

    python bench/epoch_curves.py --checkpoints_dir /work/curves/checkpoints --data_dir ../shared/data \
        [--jobs 2] [--no_train] [--only SCENE:SEED,...]
    python bench/epoch_curves.py --report

Jobs are scene x seed (JOBS). Each run is trained with the default flags to 30 epochs with a checkpoint
every 5 (`main.py --command train --epochs 30 --save_freq 5`; a partial run is resumed with --resume,
a finished one reused; a run whose `.lock` is held (runs.lock_owner) is being trained elsewhere
and is skipped as in progress; --no_train evaluates finished runs only). A run's folder is
found by its log's `# config` line (dataset, seed, fp32), not by its name. Every checkpoint is then
evaluated on the CPU in fp32: the AUC of official scoring (model.reconstruct of the whole scene,
metrics.detection_map, auc_score), the AUC of blind-spot scoring (R=1, seeded by the run's seed)
and every statistic of label_free.py. A job's rows are appended to bench/epoch_curves.csv when it
ends; jobs already there are skipped, so the same command resumes the study. --jobs N runs N jobs
at once in worker processes, as the benchmark's --jobs does (jobs.run_jobs: the cores shared between
them, each job's output in <checkpoints_dir>/epoch_curves_logs/; Ctrl-C saves the running trainings and
starts no other job). bench/figures/epoch_curves.png plots the AUC against the epoch, one line per
scene (seed 1).

The tables go to bench/epoch_curves.md (rewritten after every study and by --report, which also prints
them): the AUC of every checkpoint, in official and blind-spot scoring, and for each selector of
label_free.py and each fixed epoch the regret per scene (the best checkpoint's AUC minus the chosen
checkpoint's, averaged over the scene's seeds), its mean and worst over scenes, its worst shortfall
against the last epoch and whether that earns the selector an opt-in (label_free.judge_selector).
Thresholds are chosen leave-one-scene-out: on the other scenes' regret, never on the reported scene's.
"""
import argparse
import csv
import glob
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jobs import run_jobs  # noqa: E402
from label_free import (SELECTORS, STATISTICS, judge_selector, leave_one_scene_out, moving_variances,  # noqa: E402
                        pixel_errors, regret, run_statistics)
from runs import LOG_NAME, checkpoint_path, lock_owner, logged_config, read_log, saved_epochs  # noqa: E402
from scenes import scene_name  # noqa: E402
from utils import flush_subnormals, signals_ignored  # noqa: E402

SCENES = ["HYDICE-II", "abu-airport-1", "abu-urban-1", "abu-airport-2", "abu-beach-2", "abu-urban-2",
          "abu-airport-3", "abu-airport-4", "abu-beach-3", "abu-urban-3", "abu-urban-4", "abu-urban-5",
          "abu-beach-1", "AVIRIS-II_CNND", "sandiego-100x100x189-58px", "hydice-urban-80x100x162-17px"]
JOBS = [(scene, 1) for scene in SCENES] + [(scene, seed) for scene in ("abu-airport-1", "HYDICE-II") for seed in (2, 3)]
EPOCHS, SAVE_FREQ = 30, 5
CHECKPOINT_EPOCHS = list(range(SAVE_FREQ, EPOCHS + 1, SAVE_FREQ))
FIXED_EPOCHS = (5, 10, 20, 30)
COLUMNS = ("scene", "seed", "epoch", "precision", "loss", "auc", "auc_blindspot") + STATISTICS
CSV_PATH = os.path.join(ROOT, "bench", "epoch_curves.csv")
FIGURE_PATH = os.path.join(ROOT, "bench", "figures", "epoch_curves.png")
REPORT_PATH = os.path.join(ROOT, "bench", "epoch_curves.md")
TARGETS = {"auc": "AUC(D,F), official scoring", "auc_blindspot": "AUC(D,F), blind-spot scoring (R=1)"}


def find_run(checkpoints_dir, scene, seed):
    """The run folder under `checkpoints_dir` whose log's config names `scene` and `seed`, trained in
    fp32 (amp off), or None; the one with most checkpoints if several."""
    found = []
    for path in glob.glob(os.path.join(checkpoints_dir, "**", LOG_NAME), recursive=True):
        config = logged_config(path)
        if config and scene_name(config["dataset"]) == scene and config["seed"] == seed and config["amp"] == "off":
            found.append(os.path.dirname(path))
    return max(found, key=lambda run_dir: len(saved_epochs(run_dir)), default=None)


def train_run(scene, seed, settings, resume):
    """Train (or resume) the job's run through the command line, with this process's torch threads; (ok, the
    output's last line). Interrupted (Ctrl-C, or the benchmark engine stopping its workers), it sends the
    training SIGTERM and waits while it saves its last completed epoch (main.py treats SIGTERM as Ctrl-C; a
    study started in the background, `&`, ignores Ctrl-C and so would its training)."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "train", "--dataset", scene,
               "--data_dir", settings.data_dir, "--seed", str(seed), "--epochs", str(EPOCHS),
               "--save_freq", str(SAVE_FREQ), "--checkpoints_dir", settings.checkpoints_dir]
    import torch
    threads = str(torch.get_num_threads())
    environment = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    training = subprocess.Popen(command + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=environment, cwd=ROOT)
    try:
        output, _ = training.communicate()
    except KeyboardInterrupt:
        training.send_signal(signal.SIGTERM)
        with signals_ignored():  # repeated signals must not leave the training's save behind unwaited
            training.wait()
        raise
    lines = output.strip().splitlines()
    return training.returncode == 0, lines[-1] if lines else ""


def evaluate_run(scene, seed, run_dir, data_dir):
    """The CSV rows of a finished run: per checkpoint the loss, both AUCs and every label-free statistic."""
    from metrics import auc_score, detection_map
    from model import load_checkpoint, reconstruct
    from scenes import load_scene
    from scoring import blindspot_reconstruct
    config = logged_config(os.path.join(run_dir, LOG_NAME))
    log_rows = read_log(os.path.join(run_dir, LOG_NAME))
    losses = {row["epoch"]: row["loss"] for row in log_rows}
    loaded = load_scene(data_dir, scene)
    hsi, gt, missing = loaded.hsi, loaded.gt, loaded.missing
    reconstructions, official, heldout, aucs = [], [], [], []
    for epoch in CHECKPOINT_EPOCHS:
        net, _ = load_checkpoint(checkpoint_path(run_dir, epoch))
        reconstruction = reconstruct(net, hsi, "cpu")
        hidden = blindspot_reconstruct(net, hsi, "cpu", config["size_window"], config["ratio"], config["seed"],
                                       missing=missing)
        aucs.append((auc_score(gt, detection_map(hsi, reconstruction, missing)),
                     auc_score(gt, detection_map(hsi, hidden, missing))))
        reconstructions.append(reconstruction)
        official.append(pixel_errors(hsi, reconstruction))
        heldout.append(pixel_errors(hsi, hidden))
    statistics = run_statistics(CHECKPOINT_EPOCHS, official, heldout, moving_variances(reconstructions), log_rows,
                                hsi.shape[2], missing)
    return [dict(scene=scene, seed=seed, epoch=epoch, precision="fp32", loss=losses.get(epoch), auc=auc,
                 auc_blindspot=auc_blindspot, **{name: statistics[name][index] for name in STATISTICS})
            for index, (epoch, (auc, auc_blindspot)) in enumerate(zip(CHECKPOINT_EPOCHS, aucs))]


def run_job(settings, job):
    """Train the job (scene, seed)'s run if needed and allowed, then evaluate it: (status, rows). `settings`
    holds data_dir, checkpoints_dir and no_train."""
    scene, seed = job
    run_dir = find_run(settings.checkpoints_dir, scene, seed)
    owner = lock_owner(run_dir) if run_dir else None
    if owner is not None:
        return f"in progress (being trained by process {owner})", []
    missing_epochs = [e for e in CHECKPOINT_EPOCHS if e not in (saved_epochs(run_dir) if run_dir else [])]
    if missing_epochs:
        if settings.no_train:
            return f"not evaluated: no checkpoint for epochs {missing_epochs} and --no_train", []
        ok, last_line = train_run(scene, seed, settings, resume=run_dir is not None)
        if not ok:
            return f"training failed: {last_line}", []
        run_dir = find_run(settings.checkpoints_dir, scene, seed)
    return f"evaluated {run_dir}", evaluate_run(scene, seed, run_dir, settings.data_dir)


def read_rows(path=CSV_PATH):
    """The CSV's rows, numbers as numbers (empty cells as None)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in COLUMNS:
            if key in ("seed", "epoch"):
                row[key] = int(row[key])
            elif key not in ("scene", "precision"):
                row[key] = float(row[key]) if row[key] != "" else None
    return rows


def append_rows(rows, path=CSV_PATH):
    """Append a job's rows to the CSV, writing the header first if the file is new."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows({key: "" if value is None else value if isinstance(value, (str, int)) else f"{value:.10g}"
                          for key, value in row.items()} for row in rows)


def runs_by_scene(rows):
    """{scene: [one run's rows in epoch order, per seed]}, scenes in the CSV's order."""
    scenes = {}
    for row in rows:
        scenes.setdefault(row["scene"], {}).setdefault(row["seed"], []).append(row)
    return {scene: [sorted(run, key=lambda row: row["epoch"]) for run in seeds.values()]
            for scene, seeds in scenes.items()}


def markdown_table(header, lines):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines])


def auc_table(rows, target):
    """The `target` AUC of every checkpoint of every run, the best in bold."""
    lines = []
    for scene, runs in runs_by_scene(rows).items():
        for run in runs:
            best = max(row[target] for row in run)
            lines.append([scene, str(run[0]["seed"])] + [f"**{row[target]:.4f}**" if row[target] == best
                                                         else f"{row[target]:.4f}" for row in run])
    return markdown_table(["scene", "seed"] + [f"e{e}" for e in CHECKPOINT_EPOCHS], lines)


def regret_table(rows, target):
    """The regret tables: per selector and fixed epoch, the mean and worst regret over scenes, the worst
    shortfall against the last epoch and whether the selector may be offered (label_free.judge_selector);
    then each scene's regret (mean over its seeds), a column per selector; then the thresholds chosen."""
    scenes = runs_by_scene(rows)
    regrets, short_names, thresholds = {}, {}, []
    for selector in SELECTORS:
        chosen = leave_one_scene_out(scenes, selector, target)
        regrets[selector.name] = {scene: value for scene, (_, value) in chosen.items()}
        short_names[selector.name] = selector.statistic
        if selector.grid:
            thresholds.append(f"{selector.name}: " + ", ".join(f"{s} {'n/a (no other scene)' if t is None else t}"
                                                              for s, (t, _) in chosen.items()))
    fixed = {}
    for epoch in FIXED_EPOCHS:
        name = f"epoch {epoch}" + (" (the last)" if epoch == EPOCHS else "")
        fixed[name] = {scene: float(np.mean([regret(run, epoch, target) for run in runs]))
                       for scene, runs in scenes.items()}
        short_names[name] = f"e{epoch}"
    last, every = fixed[f"epoch {EPOCHS} (the last)"], {**regrets, **fixed}
    summary = []
    for name, per_scene in every.items():
        mean, worst, shortfall, offered = judge_selector(per_scene, fixed, last)
        verdict = "–" if name in fixed else "yes" if offered else "no"
        summary.append([name] + ["n/a" if v is None else f"{v:.4f}" for v in (mean, worst, shortfall)] + [verdict])
    per_scene_lines = [[scene] + ["n/a" if table[scene] is None else f"{table[scene]:.4f}"
                                  for table in every.values()] for scene in scenes]
    return "\n\n".join([
        markdown_table(["selector", "mean", "worst", "worst below the last epoch", "offered"], summary),
        markdown_table(["scene"] + list(short_names.values()), per_scene_lines),
        "Thresholds chosen leave-one-scene-out (scene: threshold):\n" + "\n".join(thresholds)])


def report(rows):
    """The markdown of bench/epoch_curves.md: every checkpoint's AUC and the regret tables, in both AUCs."""
    runs = [f"{scene} seed {run[0]['seed']}" for scene, scene_runs in runs_by_scene(rows).items() for run in scene_runs]
    parts = ["# Epoch curves: the tables",
             f"Written by `python bench/epoch_curves.py --report` from `bench/epoch_curves.csv` ({len(runs)} runs: "
             f"{', '.join(runs)}). How the runs were trained and evaluated, what each statistic is, and the lessons: "
             "[README.md](README.md#choosing-the-epoch-without-ground-truth). Bold: each run's best checkpoint."]
    for target, title in TARGETS.items():
        parts += [f"## {title} of every checkpoint", auc_table(rows, target)]
    for target, title in TARGETS.items():
        parts += [f"## Regret in {title}", regret_table(rows, target)]
    return "\n\n".join(parts) + "\n"


def plot_curves(rows, path=FIGURE_PATH):
    """AUC against epoch, one line per scene (seed 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 5))
    axis.set_prop_cycle(color=plt.cm.tab20.colors)  # 16 scenes: the default cycle repeats after 10
    for scene, runs in runs_by_scene(rows).items():
        for run in runs:
            if run[0]["seed"] == 1:
                axis.plot([row["epoch"] for row in run], [row["auc"] for row in run], "o-", label=scene)
    axis.set(xlabel="epoch", ylabel="AUC(D,F), official scoring", title="AUC after each checkpoint, seed 1")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_jobs(text):
    """--only's jobs: 'SCENE:SEED,...' as [(scene, seed)], each one of JOBS."""
    jobs = []
    for item in text.split(","):
        scene, _, seed = item.partition(":")
        job = (scene, int(seed)) if seed.isdigit() else None
        if job not in JOBS:
            raise argparse.ArgumentTypeError(f"{item!r} is not a job of the study (SCENE:SEED, e.g. HYDICE-II:2)")
        jobs.append(job)
    return jobs


def run_pending_jobs(args, path=CSV_PATH):
    """Run every job not yet in the CSV at `path`, `args.jobs` at a time, on the benchmark's engine
    (jobs.run_jobs); append each finished job's rows. Returns why it stopped early (Ctrl-C), or None."""
    done = {(row["scene"], row["seed"]) for row in read_rows(path)}
    pending = [job for job in (args.only or JOBS) if job not in done]
    settings = SimpleNamespace(data_dir=args.data_dir, checkpoints_dir=args.checkpoints_dir, no_train=args.no_train,
                               jobs=args.jobs, scheduler=None, keep_subnormals=False)
    print(f"{len(done)} jobs already in {path}; {len(pending)} to go, {args.jobs} at a time", flush=True)

    def job_ended(index, result):
        status, rows = result
        if rows:
            append_rows(rows, path)
        print(f"{pending[index][0]} seed {pending[index][1]}: {status}", flush=True)

    def lost(index, why):
        print(f"{pending[index][0]} seed {pending[index][1]}: not evaluated: {why}", flush=True)
    return run_jobs(settings, pending, guarded_job, os.path.join(args.checkpoints_dir, "epoch_curves_logs"),
                    job_ended, lost)


def guarded_job(settings, job):
    """run_job, a failure reported as the job's status: one job's failure must not stop the others."""
    try:
        return run_job(settings, job)
    except Exception as error:
        return f"failed: {type(error).__name__}: {error}", []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints_dir", default=os.path.join(ROOT, "bench", "out", "epoch_curves"))
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once in worker processes, sharing the "
                        "cores (default 1: one job at a time, in this process, with every core)")
    parser.add_argument("--no_train", action="store_true", help="evaluate finished runs only, train none")
    parser.add_argument("--report", action="store_true", help="write the tables and the figure from the CSV, "
                        "and print the tables; run nothing")
    parser.add_argument("--only", type=parse_jobs,
                        help="run these jobs only, in this order, e.g. HYDICE-II:2,HYDICE-II:3")
    args = parser.parse_args()
    if not args.report:
        flush_subnormals(True)  # as main.py does: what a job run in this process computes is what predict would
        stopped = run_pending_jobs(args)
        if stopped:
            print(f"study {stopped}; the same command resumes it")
            sys.exit(130)
    rows = read_rows()
    if not rows:
        print(f"no rows in {CSV_PATH} yet")
        return
    plot_curves(rows)
    text = report(rows)
    with open(REPORT_PATH, "w") as handle:
        handle.write(text)
    if args.report:
        print(text)


if __name__ == "__main__":
    main()
