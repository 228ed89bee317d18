"""Official against blind-spot scoring on the same checkpoints: the AUC for each --score_repeats, and a curve.

    python bench/scoring.py repeats --data_dir ../shared/data --runs bench/out/checkpoints --epochs 5 \
        --datasets HYDICE-II,AVIRIS-II_CNND,abu-airport-1,sandiego-100x100x189-58px --repeats 1,2,4,8,16
    python bench/scoring.py curve --data_dir ../shared/data --runs bench/out/checkpoints --datasets HYDICE-II \
        --epochs 10,20,30,40,50,60,70,80,90,100 --repeats 4

`repeats`: for each scene's seed-1 run of default flags, the AUC(D,F) of epoch --epochs with official
scoring and with blind-spot scoring for every R of --repeats, and the prediction seconds of each.
`curve`: the AUC of both scorings at every epoch of --epochs (the run must have saved those
checkpoints, e.g. trained with --save_freq 1). Prints markdown tables and writes them, with a figure
for `curve`, to bench/out/scoring/.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scenes import load_scene  # noqa: E402
from config import parse_config  # noqa: E402
from model import load_checkpoint, reconstruct  # noqa: E402
from runs import checkpoint_path, run_directory  # noqa: E402
from scoring import blindspot_reconstruct  # noqa: E402
from metrics import auc_score, detection_map  # noqa: E402

OUT = os.path.join(ROOT, "bench", "out", "scoring")


def scores(dataset, epoch, args, repeats):
    """{label: (auc, seconds)} for official scoring and blind-spot scoring with each R in `repeats`."""
    config = parse_config(["--dataset", dataset, "--checkpoints_dir", args.runs, "--seed", "1"])
    scene = load_scene(args.data_dir, dataset)
    hsi, gt = scene.hsi, scene.gt
    net, _ = load_checkpoint(checkpoint_path(run_directory(config), epoch))
    results = {}
    reconstruct(net, hsi, "cpu")  # warm-up: the first pass also sets up the convolutions
    started = time.perf_counter()
    reconstructed = reconstruct(net, hsi, "cpu")
    results["official"] = (auc_score(gt, detection_map(hsi, reconstructed)), time.perf_counter() - started)
    for r in repeats:
        started = time.perf_counter()
        reconstructed = blindspot_reconstruct(net, hsi, "cpu", config.size_window, config.ratio, config.seed, r)
        results[f"R={r}"] = (auc_score(gt, detection_map(hsi, reconstructed)), time.perf_counter() - started)
    return results


def repeats_table(args):
    repeats = [int(r) for r in args.repeats.split(",")]
    epoch = int(args.epochs)
    labels = ["official"] + [f"R={r}" for r in repeats]
    lines = ["| scene | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    seconds = {label: [] for label in labels}
    for dataset in args.datasets.split(","):
        results = scores(dataset, epoch, args, repeats)
        lines.append(f"| {dataset} | " + " | ".join(f"{results[label][0]:.4f}" for label in labels) + " |")
        for label in labels:
            seconds[label].append(results[label][1])
        print(lines[-1], flush=True)
    lines.append("| prediction s (mean) | " + " | ".join(f"{np.mean(seconds[label]):.2f}" for label in labels) + " |")
    return f"AUC(D,F) at epoch {epoch}, seed 1, default flags; blind-spot scoring seeded 1.\n\n" + "\n".join(lines)


def curve_table(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    repeats = int(args.repeats)
    epochs = [int(e) for e in args.epochs.split(",")]
    texts = []
    for dataset in args.datasets.split(","):
        rows = {epoch: scores(dataset, epoch, args, [repeats]) for epoch in epochs}
        lines = [f"{dataset}, seed 1, default flags:", "",
                 f"| epoch | official | blind-spot (R={repeats}) | difference |", "|---|---|---|---|"]
        for epoch, results in rows.items():
            official, blind = results["official"][0], results[f"R={repeats}"][0]
            lines.append(f"| {epoch} | {official:.4f} | {blind:.4f} | {blind - official:+.4f} |")
            print(lines[-1], flush=True)
        texts.append("\n".join(lines))
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(epochs, [rows[e]["official"][0] for e in epochs], "o-", label="official scoring")
        axis.plot(epochs, [rows[e][f"R={repeats}"][0] for e in epochs], "s-", label=f"blind-spot scoring (R={repeats})")
        axis.set(xlabel="epoch", ylabel="AUC(D,F)", title=f"{dataset}: AUC after each epoch, two scorings")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(os.path.join(OUT, f"curve_{dataset}.png"), dpi=120)
        plt.close(figure)
    return "\n\n".join(texts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["repeats", "curve"], help="which table")
    parser.add_argument("--data_dir", default="../shared/data", help="folder of the scenes (default ../shared/data)")
    parser.add_argument("--runs", default="bench/out/checkpoints", help="--checkpoints_dir of the trained runs")
    parser.add_argument("--datasets", default="HYDICE-II", help="comma-separated scenes (default HYDICE-II)")
    parser.add_argument("--epochs", default="5", help="repeats: one epoch; curve: comma-separated epochs")
    parser.add_argument("--repeats", default="1,2,4,8,16", help="repeats: the R to compare; curve: one R")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    text = repeats_table(args) if args.what == "repeats" else curve_table(args)
    text = f"Command: `python bench/scoring.py {' '.join(sys.argv[1:])}` (CPU, started {started}).\n\n{text}\n"
    print("\n" + text)
    with open(os.path.join(OUT, f"{args.what}.md"), "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
