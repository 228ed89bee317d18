"""Our AUC and loss after each epoch on HYDICE-II next to the official code's (reference fixture).

    python bench/auc_trajectory.py [--seeds 1,2,3] [--epochs 10] [--data_dir ../shared/data]

Trains with the default (official) flags on CPU, scores the whole scene after each recorded epoch
exactly as `predict` does, and prints a markdown table: per seed our AUC and loss, and the official
seeds' range. An epoch passes when every seed of ours lies within that range widened by 0.01.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scenes import load_scene  # noqa: E402
from config import parse_config  # noqa: E402
from model import reconstruct  # noqa: E402
from train import train  # noqa: E402
from metrics import auc_score, detection_map  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MARGIN = 0.01


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data_dir", default=os.path.join(SHARED, "data"))
    parser.add_argument("--reference", default=os.path.join(SHARED, "reference", "official_auc_trajectory.json"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official = json.load(open(args.reference))["runs"]
    recorded = sorted({int(e) for run in official.values() for e in run["auc"] if int(e) <= args.epochs})
    scene = load_scene(args.data_dir, "HYDICE-II")
    hsi, gt = scene.hsi, scene.gt
    seeds = [int(s) for s in args.seeds.split(",")]
    ours = {}
    for seed in seeds:
        aucs, losses, started = {}, {}, time.perf_counter()

        def score(epoch, net, loss):
            losses[epoch] = loss
            if epoch in recorded:
                aucs[epoch] = auc_score(gt, detection_map(hsi, reconstruct(net, hsi, "cpu")))

        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config([
                "--dataset", "HYDICE-II", "--data_dir", args.data_dir, "--checkpoints_dir", tmp,
                "--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu"])
            train(config, after_epoch=score)
        ours[seed] = dict(auc=aucs, loss=losses, seconds_per_epoch=(time.perf_counter() - started) / args.epochs)

    print(f"\nHYDICE-II, default flags, CPU fp32, {torch.get_num_threads()} threads; "
          f"command: python bench/auc_trajectory.py --seeds {args.seeds} --epochs {args.epochs}\n")
    header = ["epoch"] + [f"ours s{s}" for s in seeds] + ["official s1..s3 range", "ours within ±0.01"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    all_within = True
    for epoch in recorded:
        values = [run["auc"][str(epoch)] for run in official.values() if str(epoch) in run["auc"]]
        low, high = min(values), max(values)
        within = all(low - MARGIN <= ours[s]["auc"][epoch] <= high + MARGIN for s in seeds)
        all_within &= within
        print(f"| {epoch} | " + " | ".join(f"{ours[s]['auc'][epoch]:.4f}" for s in seeds)
              + f" | {low:.4f}–{high:.4f} | {'yes' if within else 'NO'} |")
    print("\nmean training loss per epoch (ours / official, same seed)\n")
    print("| epoch | " + " | ".join(f"s{s} ours | s{s} official" for s in seeds) + " |")
    print("|" + "---|" * (1 + 2 * len(seeds)))
    for epoch in range(1, args.epochs + 1):
        cells = []
        for s in seeds:
            reference = official.get(f"seed{s}", {}).get("loss", {}).get(str(epoch))
            cells += [f"{ours[s]['loss'][epoch]:.4f}", f"{reference:.4f}" if reference is not None else "–"]
        print(f"| {epoch} | " + " | ".join(cells) + " |")
    print("\nseconds per epoch (ours, training only + scoring): "
          + ", ".join(f"s{s} {ours[s]['seconds_per_epoch']:.1f}" for s in seeds))
    print("all recorded epochs within the official range ±0.01:", "yes" if all_within else "NO")
    return 0 if all_within else 1


if __name__ == "__main__":
    sys.exit(main())
