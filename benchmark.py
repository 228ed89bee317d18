"""`--command benchmark`: every method on every scene (and every seed), summarised in one table."""
import csv
import io
import os
import time
from dataclasses import replace

import numpy as np

from detectors import detect_with_baseline
from predict import predict
from runs import log_path, read_log
from train import Interrupted, ensure_trained
from utils import UserError, atomic_write_text


def trained_seconds(run_dir, epochs):
    """Training seconds of the first `epochs` epochs, read from the run's log."""
    return sum(row["seconds"] for row in read_log(log_path(run_dir)) if row["epoch"] <= epochs)


def row_name(method, scoring):
    """A table row's method: bs3lnet with official scoring keeps its name, blind-spot scoring is marked."""
    return method if scoring == "official" else f"{method}-{scoring}"


def method_rows(method, scoring_list):
    """The table rows one method fills: BS3LNet one per scoring, a baseline one."""
    return [row_name(method, scoring) for scoring in (scoring_list if method == "bs3lnet" else ["official"])]


def run_one(config, method):
    """Train (unless that run's final checkpoint exists) and score one method; returns {row name: figures}.

    BS3LNet is trained once and its checkpoint scored with every scoring of --scoring, so their rows
    differ only by scoring; the baselines have one row.
    """
    if method != "bs3lnet":
        return {method: figures(detect_with_baseline(config, method), 0.0)}
    # --eval_every during training (if asked) uses the first scoring of the list
    run_dir = ensure_trained(replace(config, scoring=config.scoring[:1]))
    train_seconds = trained_seconds(run_dir, config.epochs)
    return {row_name(method, scoring): figures(predict(replace(config, scoring=(scoring,))), train_seconds)
            for scoring in config.scoring}


def figures(metrics, train_seconds):
    """A row's figures from a predict/baseline metrics dict; an undefined AUC is an error."""
    if metrics["auc"] is None:
        raise UserError(metrics["auc_note"])
    return dict(auc=metrics["auc"], auc_f_tau=metrics["metrics_3d"]["AUC(F,tau)"],
                train_seconds=train_seconds, predict_seconds=metrics["seconds"]["inference"])


def summarise(runs):
    """Mean, std and failure per (dataset, method) from the list of per-run results."""
    summary = {}
    for (dataset, method), results in runs.items():
        done = [r for r in results if "error" not in r]
        errors = [r["error"] for r in results if "error" in r]
        entry = dict(dataset=dataset, method=method, runs=len(done), failed=len(errors),
                     error=errors[0] if errors else "")
        for key in ("auc", "auc_f_tau", "train_seconds", "predict_seconds"):
            values = np.array([r[key] for r in done])
            entry[key] = float(values.mean()) if done else None
            entry[key + "_std"] = float(values.std()) if done else None
        summary[(dataset, method)] = entry
    return summary


def markdown_table(summary, datasets, methods, note):
    """The benchmark table: one row per scene and method, failures in a column of their own, then means."""
    lines = [note, "", "| scene | method | AUC(D,F) mean ± std | AUC(F,τ) | train s | predict s | runs | failed |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        best = max((e["auc"] for (d, _), e in summary.items() if d == dataset and e["auc"] is not None),
                   default=None)
        for method in methods:
            e = summary[(dataset, method)]
            failed = f"{e['failed']}: {e['error']}" if e["failed"] else ""
            if e["auc"] is None:
                lines.append(f"| {dataset} | {method} | – | – | – | – | 0 | {failed} |")
                continue
            auc = f"{e['auc']:.4f} ± {e['auc_std']:.4f}"
            if e["auc"] == best:
                auc = f"**{auc}**"
            lines.append(f"| {dataset} | {method} | {auc} | {e['auc_f_tau']:.4f} | {e['train_seconds']:.1f} | "
                         f"{e['predict_seconds']:.2f} | {e['runs']} | {failed} |")
    complete = [d for d in datasets if all(summary[(d, m)]["auc"] is not None for m in methods)]
    if len(complete) > 1:
        for method in methods:
            mean = np.mean([summary[(d, method)]["auc"] for d in complete])
            lines.append(f"| mean over {len(complete)} scenes | {method} | {mean:.4f} | | | | | |")
    lines += [""] + [comparison(summary, complete, method, base) for method in methods
                     for base in methods if method.startswith(base + "-")]
    return "\n".join(lines).rstrip() + "\n"


def comparison(summary, datasets, method, base, tie=0.0005):
    """One line: on how many scenes `method` (another scoring of `base`) scores a higher, equal or lower AUC."""
    if not datasets:
        return ""
    differences = np.array([summary[(d, method)]["auc"] - summary[(d, base)]["auc"] for d in datasets])
    return (f"{method} against {base} over {len(datasets)} scenes: {int((differences > tie).sum())} higher, "
            f"{int((np.abs(differences) <= tie).sum())} within ±{tie}, {int((differences < -tie).sum())} lower; "
            f"mean difference {differences.mean():+.4f}.")


def csv_table(summary):
    buffer = io.StringIO()
    fields = ["dataset", "method", "runs", "failed", "auc", "auc_std", "auc_f_tau", "auc_f_tau_std", "train_seconds",
              "train_seconds_std", "predict_seconds", "predict_seconds_std", "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary.values())
    return buffer.getvalue()


def benchmark(config, command_line):
    """Run --methods on every scene of --datasets (BS3LNet once per seed of --seeds) and write the tables."""
    datasets, seeds, methods = config.datasets or (config.dataset,), config.seeds, config.methods
    rows = [row for method in methods for row in method_rows(method, config.scoring)]
    jobs = [(d, m, s) for d in datasets for m in methods for s in (seeds if m == "bs3lnet" else [None])]
    runs = {(d, r): [] for d in datasets for r in rows}
    interrupted = None
    for number, (dataset, method, seed) in enumerate(jobs, start=1):
        print(f"\n[{number}/{len(jobs)}] {dataset}: {method}" + (f", seed {seed}" if seed is not None else ""))
        run_config = replace(config, dataset=dataset, seed=config.seed if seed is None else seed)
        started = time.perf_counter()
        try:
            results = run_one(run_config, method)
        except (KeyboardInterrupt, Interrupted) as interruption:  # stop here; the finished jobs are kept
            interrupted = (number, str(interruption))
            break
        except Exception as error:  # one scene's failure is a table entry, not the end of the benchmark
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"failed: {message}")
            results = {row: dict(error=message) for row in method_rows(method, config.scoring)}
        for row, result in results.items():
            runs[(dataset, row)].append(result)
        print(f"[{number}/{len(jobs)}] done in {time.perf_counter() - started:.1f} s")
    summary = summarise(runs)
    note = (f"Command: `{command_line}`. BS3LNet: {config.epochs} epochs, seeds {','.join(map(str, seeds))}; AUC(D,F) is "
            "the official AUC; RX and LRX are deterministic (one run). Best AUC(D,F) per scene in bold.")
    if interrupted:
        note += f" Interrupted during job {interrupted[0]} of {len(jobs)}: later jobs did not run."
    out_dir = os.path.join(config.results_dir, "benchmark")
    if os.path.exists(os.path.join(out_dir, "benchmark.md")):
        print(f"replacing the earlier benchmark tables in {out_dir}")
    table = markdown_table(summary, datasets, rows, note)
    atomic_write_text(os.path.join(out_dir, "benchmark.md"), table)
    atomic_write_text(os.path.join(out_dir, "benchmark.csv"), csv_table(summary))
    print("\n" + table)
    print(f"tables in {out_dir}")
    if interrupted:
        raise Interrupted(f"benchmark interrupted during job {interrupted[0]} of {len(jobs)}; the tables hold the "
                          f"{interrupted[0] - 1} finished jobs. Continue with: {command_line} (finished and "
                          "interrupted trainings are reused)")
    return summary


def failed_jobs(summary):
    """How many jobs of a benchmark summary failed."""
    return sum(entry["failed"] for entry in summary.values())
