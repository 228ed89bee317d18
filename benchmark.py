"""`--command benchmark`: every method on every scene, seed and point of a --grid, in one table.

A job trains one run at most (jobs never share a run, so they can run at once anywhere: jobs.py) and
scores it once per result-changing grid value and --scoring. Rows are (scene, grid values, method),
averaged over seeds.
"""
import csv
import io
import itertools
import os
import sys
from dataclasses import dataclass, replace

import numpy as np

from config import RESULT, changes_result, role_of
from detectors import detect_with_baseline
from figures import plot_sensitivity
from jobs import run_jobs
from predict import predict
from runs import log_path, read_log
from train import Interrupted, ensure_trained
from utils import UserError, atomic_write_text


@dataclass(frozen=True)
class Job:
    """A method on one scene and seed at one point of the grid's run-changing flags (`training`), scored at
    each point of its result-changing flags (`variants`)."""
    dataset: str
    method: str
    seed: int
    training: tuple
    variants: tuple

    def describe(self):
        values = ", ".join(f"{name}={value}" for name, value in self.training)
        return f"{self.dataset}: {self.method}" + (f", seed {self.seed}" if self.method == "bs3lnet" else "") \
            + (f" ({values})" if values else "")


def grid_points(grid):
    """Every combination of the grid's values, as tuples of (flag, value); one empty point without a grid."""
    names = [name for name, _ in grid]
    return [tuple(zip(names, values)) for values in itertools.product(*(values for _, values in grid))]


def plan(config):
    """The benchmark's jobs. Every combination is checked as a Config first, so a bad one is refused before
    anything trains."""
    variants = {}
    for dataset, point, method in itertools.product(config.datasets or (config.dataset,), grid_points(config.grid),
                                                    config.methods):
        relevant = tuple((name, value) for name, value in point if changes_result(name, method))
        training = tuple(item for item in relevant if method != "bs3lnet" or role_of(item[0]) != RESULT)
        for seed in config.seeds if method == "bs3lnet" else (config.seed,):
            replace(config, dataset=dataset, seed=seed, **dict(relevant))  # raises UserError if not valid
            found = variants.setdefault((dataset, method, seed, training), [])
            variant = tuple(item for item in relevant if item not in training)
            if variant not in found:
                found.append(variant)
    return [Job(*key, tuple(found)) for key, found in variants.items()]


def row_keys(config, job):
    """The table rows a job fills, (dataset, grid values, row name): one per variant and scoring."""
    scorings = config.scoring if job.method == "bs3lnet" else ("official",)
    return [(job.dataset, job.training + variant, row_name(job.method, scoring))
            for variant in job.variants for scoring in scorings]


def run_job(config, job):
    """One job's rows: [((dataset, grid values, row name), figures or dict(error=...)), ...]."""
    base = replace(config, dataset=job.dataset, seed=job.seed, **dict(job.training))
    scorings = config.scoring if job.method == "bs3lnet" else ("official",)
    keys = row_keys(config, job)
    try:
        if job.method != "bs3lnet":
            return [(keys[0], figures(detect_with_baseline(base, job.method), 0.0))]
        # --eval_every during training (if asked) uses the first scoring of the list
        seconds = trained_seconds(ensure_trained(replace(base, scoring=scorings[:1])), base.epochs)
        return [(key, figures(predict(replace(base, scoring=(scoring,), **dict(variant))), seconds))
                for key, (variant, scoring) in zip(keys, itertools.product(job.variants, scorings))]
    except Interrupted as interruption:
        raise KeyboardInterrupt(str(interruption)) from None
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one job's failure is a table entry, not the end of the benchmark
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"failed: {message}")
        return failure_rows(config, job, message)


def failure_rows(config, job, message):
    """The rows of a failed job: each with the error in place of its figures."""
    return [(key, dict(error=message)) for key in row_keys(config, job)]


def trained_seconds(run_dir, epochs):
    """Training seconds of the first `epochs` epochs, read from the run's log."""
    return sum(row["seconds"] for row in read_log(log_path(run_dir)) if row["epoch"] <= epochs)


def row_name(method, scoring):
    """A table row's method: bs3lnet with official scoring keeps its name, blind-spot scoring is marked."""
    return method if scoring == "official" else f"{method}-{scoring}"


def figures(metrics, train_seconds):
    """A row's figures from a predict/baseline metrics dict; an undefined AUC is an error."""
    if metrics["auc"] is None:
        raise UserError(metrics["auc_note"])
    return dict(auc=metrics["auc"], auc_f_tau=metrics["metrics_3d"]["AUC(F,tau)"],
                train_seconds=train_seconds, predict_seconds=metrics["seconds"]["inference"])


def summarise(results):
    """Mean, std and failures per row key (dataset, grid values, method) of the per-seed results."""
    summary = {}
    for key, runs in results.items():
        done = [r for r in runs if "error" not in r]
        errors = [r["error"] for r in runs if "error" in r]
        entry = dict(dataset=key[0], **{name: value for name, value in key[1]}, method=key[2], runs=len(done),
                     failed=len(errors), error=errors[0] if errors else "")
        for field in ("auc", "auc_f_tau", "train_seconds", "predict_seconds"):
            values = np.array([r[field] for r in done])
            entry[field] = float(values.mean()) if done else None
            entry[field + "_std"] = float(values.std()) if done else None
        summary[key] = entry
    return summary


def markdown_table(summary, grid_flags, note):
    """The benchmark table: a row per scene, grid values and method, failures in a column of their own, then
    the means of each method over the scenes it completed."""
    head = ["scene", *grid_flags, "method", "AUC(D,F)" + (" mean ± std" if any(e["runs"] > 1 for e in
                                                                              summary.values()) else ""),
            "AUC(F,τ)", "train s", "predict s", "runs", "failed"]
    lines = [note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, e in summary.items():
        best = max((other["auc"] for k, other in summary.items() if k[0] == key[0] and other["auc"] is not None),
                   default=None)
        grid = [str(e.get(flag, "–")) for flag in grid_flags]
        failed = f"{e['failed']}: {e['error']}" if e["failed"] else ""
        if e["auc"] is None:
            lines.append("| " + " | ".join([e["dataset"], *grid, e["method"], "–", "–", "–", "–", "0", failed]) + " |")
            continue
        auc = f"{e['auc']:.4f}" + (f" ± {e['auc_std']:.4f}" if e["runs"] > 1 else "")
        lines.append("| " + " | ".join([e["dataset"], *grid, e["method"], f"**{auc}**" if e["auc"] == best else auc,
                                        f"{e['auc_f_tau']:.4f}", f"{e['train_seconds']:.1f}",
                                        f"{e['predict_seconds']:.2f}", str(e["runs"]), failed]) + " |")
    lines += means_over_scenes(summary, len(head))
    methods = list(dict.fromkeys(key[2] for key in summary))
    datasets = complete_datasets(summary)
    lines += [""] + [comparison(flat_summary(summary), datasets, method, base) for method in methods
                     for base in methods if method.startswith(base + "-") and not grid_flags]
    return "\n".join(lines).rstrip() + "\n"


def complete_datasets(summary):
    """The scenes where every row has an AUC."""
    datasets = list(dict.fromkeys(key[0] for key in summary))
    return [d for d in datasets if all(e["auc"] is not None for k, e in summary.items() if k[0] == d)]


def means_over_scenes(summary, columns):
    """Table lines: each (grid values, method)'s mean AUC over the complete scenes, when there are several."""
    complete = complete_datasets(summary)
    if len(complete) < 2:
        return []
    groups = {}
    for (dataset, point, method), e in summary.items():
        if dataset in complete:
            groups.setdefault((point, method), []).append(e["auc"])
    return [f"| mean over {len(complete)} scenes | " + " | ".join(
        [*(str(v) for _, v in point), method, f"{np.mean(aucs):.4f}"]) + " |" * (columns - len(point) - 2)
        for (point, method), aucs in groups.items() if len(aucs) == len(complete)]


def flat_summary(summary):
    """{(dataset, method): entry} of a summary without grid values (for comparison)."""
    return {(key[0], key[2]): entry for key, entry in summary.items()}


def comparison(summary, datasets, method, base, tie=0.0005):
    """One line: on how many scenes `method` (another scoring of `base`) scores a higher, equal or lower AUC."""
    if not datasets:
        return ""
    differences = np.array([summary[(d, method)]["auc"] - summary[(d, base)]["auc"] for d in datasets])
    return (f"{method} against {base} over {len(datasets)} scenes: {int((differences > tie).sum())} higher, "
            f"{int((np.abs(differences) <= tie).sum())} within ±{tie}, {int((differences < -tie).sum())} lower; "
            f"mean difference {differences.mean():+.4f}.")


def csv_table(summary, grid_flags):
    buffer = io.StringIO()
    fields = ["dataset", *grid_flags, "method", "runs", "failed", "auc", "auc_std", "auc_f_tau", "auc_f_tau_std",
              "train_seconds", "train_seconds_std", "predict_seconds", "predict_seconds_std", "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary.values())
    return buffer.getvalue()


def sensitivity_figures(out_dir, summary, grid):
    """sensitivity_<flag>.png for each grid flag: AUC (mean and spread over seeds) against the flag's values,
    one line per scene and method (and values of the other grid flags), as a parameter analysis draws it."""
    for flag, values in grid:
        lines = {}
        for (dataset, point, method), e in summary.items():
            settings = dict(point)
            if flag not in settings or e["auc"] is None:
                continue
            others = ", ".join(f"{name}={value}" for name, value in point if name != flag)
            label = f"{dataset} {method}" + (f" ({others})" if others else "")
            lines.setdefault(label, []).append((values.index(settings[flag]), e["auc"], e["auc_std"]))
        if lines:
            plot_sensitivity(os.path.join(out_dir, f"sensitivity_{flag}.png"), flag, [str(v) for v in values],
                             {label: sorted(points) for label, points in lines.items()})


def benchmark(config, command_line):
    """Run every job of the benchmark (jobs.py decides where), write the tables and sensitivity figures; returns
    how many jobs failed."""
    jobs = plan(config)
    out_dir = os.path.join(config.results_dir, "benchmark")
    results = {key: [] for job in jobs for key in row_keys(config, job)}
    finished, failed = [], []

    def report(index, rows):
        finished.append(index)
        failed.extend([index] if any("error" in result for _, result in rows) else [])
        for key, result in rows:
            results[key].append(result)
        aucs = ", ".join(f"{key[2]} {r['auc']:.4f}" if "auc" in r else f"{key[2]} failed" for key, r in rows)
        print(f"[{len(finished)}/{len(jobs)}] {jobs[index].describe()}: {aucs}", flush=True)

    def lost(index, why):
        print(f"{jobs[index].describe()} failed: {why}", file=sys.stderr, flush=True)
        report(index, failure_rows(config, jobs[index], why))

    stopped = run_jobs(config, jobs, run_job, os.path.join(out_dir, "logs"), report, lost)
    summary = summarise(results)
    grid_flags = [name for name, _ in config.grid]
    note = (f"Command: `{command_line}`. BS3LNet: {config.epochs} epochs, seeds "
            f"{','.join(map(str, config.seeds))}; AUC(D,F) is the official AUC; RX and LRX are deterministic (one "
            "run). Best AUC(D,F) per scene in bold.")
    if stopped:
        note += f" Stopped early ({stopped}): {len(finished)} of {len(jobs)} jobs finished."
    if os.path.exists(os.path.join(out_dir, "benchmark.md")):
        print(f"replacing the earlier benchmark tables in {out_dir}")
    table = markdown_table(summary, grid_flags, note)
    atomic_write_text(os.path.join(out_dir, "benchmark.md"), table)
    atomic_write_text(os.path.join(out_dir, "benchmark.csv"), csv_table(summary, grid_flags))
    sensitivity_figures(out_dir, summary, config.grid)
    print("\n" + table)
    print(f"tables in {out_dir}")
    if stopped:
        held = f"{len(finished)} finished job" + ("" if len(finished) == 1 else "s")
        raise Interrupted(f"benchmark {stopped}; the tables hold the {held}. Continue with: "
                          f"{command_line} (finished and interrupted trainings are reused)")
    return len(failed)
