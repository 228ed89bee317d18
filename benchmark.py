"""`--command benchmark`: every method on every scene (and every seed), summarised in one table."""
import argparse
import csv
import io
import os
import time

import numpy as np

from predict import detect_with_baseline, predict
from runs import checkpoint_path, log_path, read_log, run_directory
from train import train
from utils import UserError, atomic_write_text

METHODS = ("bs3lnet", "rx", "lrx")


def parse_list(text, flag, cast=str):
    try:
        items = [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"{flag} '{text}' is not a comma-separated list of {cast.__name__} values") from None
    if not items:
        raise UserError(f"{flag} is empty: give a comma-separated list")
    return items


def trained_seconds(run_dir, epochs):
    """Training seconds of the first `epochs` epochs, read from the run's log."""
    return sum(row["seconds"] for row in read_log(log_path(run_dir)) if row["epoch"] <= epochs)


def run_one(config, method):
    """Train (unless that run's final checkpoint exists) and score one method; returns the row's figures."""
    if method == "bs3lnet":
        run_dir = run_directory(config)
        if os.path.exists(checkpoint_path(run_dir, config.epochs)):
            print(f"reusing the trained run {run_dir}")
        else:
            train(config)
        metrics = predict(config)
        train_seconds = trained_seconds(run_dir, config.epochs)
    else:
        metrics = detect_with_baseline(config, method)
        train_seconds = 0.0
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
        entry = dict(dataset=dataset, method=method, runs=len(done), error=errors[0] if errors else "")
        for key in ("auc", "auc_f_tau", "train_seconds", "predict_seconds"):
            values = np.array([r[key] for r in done])
            entry[key] = float(values.mean()) if done else None
            entry[key + "_std"] = float(values.std()) if done else None
        summary[(dataset, method)] = entry
    return summary


def markdown_table(summary, datasets, methods, note):
    lines = [note, "", "| scene | method | AUC(D,F) mean ± std | AUC(F,τ) | train s | predict s | runs |",
             "|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        best = max((e["auc"] for (d, _), e in summary.items() if d == dataset and e["auc"] is not None),
                   default=None)
        for method in methods:
            e = summary[(dataset, method)]
            if e["auc"] is None:
                lines.append(f"| {dataset} | {method} | failed: {e['error']} | | | | 0 |")
                continue
            auc = f"{e['auc']:.4f} ± {e['auc_std']:.4f}"
            if e["auc"] == best:
                auc = f"**{auc}**"
            lines.append(f"| {dataset} | {method} | {auc} | {e['auc_f_tau']:.4f} | {e['train_seconds']:.1f} | "
                         f"{e['predict_seconds']:.2f} | {e['runs']} |")
    return "\n".join(lines) + "\n"


def csv_table(summary):
    buffer = io.StringIO()
    fields = ["dataset", "method", "runs", "auc", "auc_std", "auc_f_tau", "auc_f_tau_std", "train_seconds",
              "train_seconds_std", "predict_seconds", "predict_seconds_std", "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary.values())
    return buffer.getvalue()


def benchmark(config, command_line):
    """Run --methods on every scene of --datasets (BS3LNet once per seed of --seeds) and write the tables."""
    datasets = parse_list(config.datasets or config.dataset, "--datasets")
    seeds = parse_list(config.seeds, "--seeds", int)
    methods = parse_list(config.methods, "--methods")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UserError(f"unknown --methods {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    jobs = [(d, m, s) for d in datasets for m in methods for s in (seeds if m == "bs3lnet" else [None])]
    runs = {(d, m): [] for d in datasets for m in methods}
    for number, (dataset, method, seed) in enumerate(jobs, start=1):
        print(f"\n[{number}/{len(jobs)}] {dataset}: {method}" + (f", seed {seed}" if seed is not None else ""))
        run_config = argparse.Namespace(**{**vars(config), "dataset": dataset,
                                           "seed": config.seed if seed is None else seed})
        started = time.perf_counter()
        try:
            result = run_one(run_config, method)
        except Exception as error:  # one scene's failure is a table entry, not the end of the benchmark
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"failed: {message}")
            result = dict(error=message)
        runs[(dataset, method)].append(result)
        print(f"[{number}/{len(jobs)}] done in {time.perf_counter() - started:.1f} s")
    summary = summarise(runs)
    note = (f"Command: `{command_line}`. BS3LNet: {config.epochs} epochs, seeds {config.seeds}; AUC(D,F) is "
            "the official AUC; RX and LRX are deterministic (one run). Best AUC(D,F) per scene in bold.")
    out_dir = os.path.join(config.results_dir, "benchmark")
    if os.path.exists(os.path.join(out_dir, "benchmark.md")):
        print(f"replacing the earlier benchmark tables in {out_dir}")
    table = markdown_table(summary, datasets, methods, note)
    atomic_write_text(os.path.join(out_dir, "benchmark.md"), table)
    atomic_write_text(os.path.join(out_dir, "benchmark.csv"), csv_table(summary))
    print("\n" + table)
    print(f"tables in {out_dir}")
    return summary
