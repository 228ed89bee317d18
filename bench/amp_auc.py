"""AUC after each epoch with fp32 (the faithful default) and with --amp bf16, side by side.

    python bench/amp_auc.py --dataset HYDICE-II --epochs 10 [--data_dir ../shared/data] [--seed 1]

Trains both precisions with otherwise default flags on CPU (`--eval_every 1`) in a temporary
folder and prints a markdown table of the AUC per epoch, their difference, and seconds per epoch.
"""
import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import parse_config  # noqa: E402
from runs import log_path, read_log  # noqa: E402
from train import train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    args = parser.parse_args()
    aucs, seconds = {}, {}
    for amp in ("off", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config([
                "--dataset", args.dataset, "--data_dir", args.data_dir, "--checkpoints_dir", tmp,
                "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", "cpu", "--amp", amp,
                "--eval_every", "1"])
            train(config)
            run = os.path.join(tmp, args.dataset, os.listdir(os.path.join(tmp, args.dataset))[0])
            state = torch.load(os.path.join(run, f"epoch_{args.epochs:04d}.pt"), weights_only=True)
            aucs[amp] = state["aucs"]
            rows = read_log(log_path(run))
            seconds[amp] = sum(r["seconds"] for r in rows) / len(rows)
    print(f"\n{args.dataset}, seed {args.seed}, CPU ({torch.get_num_threads()} threads); command: "
          f"python bench/amp_auc.py --dataset {args.dataset} --epochs {args.epochs} --seed {args.seed}\n")
    print("| epoch | AUC fp32 | AUC bf16 | bf16 - fp32 |\n|---|---|---|---|")
    for epoch in sorted(aucs["off"]):
        print(f"| {epoch} | {aucs['off'][epoch]:.4f} | {aucs['bf16'][epoch]:.4f} | "
              f"{aucs['bf16'][epoch] - aucs['off'][epoch]:+.4f} |")
    print(f"\nseconds per epoch (training only): fp32 {seconds['off']:.1f}, bf16 {seconds['bf16']:.1f}")


if __name__ == "__main__":
    main()
