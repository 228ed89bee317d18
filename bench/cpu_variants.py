"""Seconds per training step of the bare network for CPU variants, to choose the default path.

    python bench/cpu_variants.py [--bands 189] [--steps 10]

One step = forward, masked L1 loss, backward and Adam on a batch of 100 patches of 19 x 19 x B
(the defaults), for: NCHW fp32, channels_last fp32 (what training uses by default), and bf16
autocast in both layouts.
Prints the median of `--steps` steps after two warm-up steps.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import BS3LNet  # noqa: E402
from train import masked_loss  # noqa: E402
from model import init_weights  # noqa: E402
from utils import autocast  # noqa: E402


def measure(bands, steps, channels_last, amp):
    torch.manual_seed(0)
    net = BS3LNet(bands)
    init_weights(net)
    inputs = torch.rand(100, bands, 19, 19) * 500
    label = inputs + torch.randn_like(inputs)
    mask = (torch.rand(100, 1, 19, 19) > 0.1).float()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        inputs, label = (t.contiguous(memory_format=torch.channels_last) for t in (inputs, label))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-5)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with autocast("cpu", amp):
            output = net(inputs)
        loss = masked_loss(output.float(), label, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bands", type=int, default=189)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"command: python bench/cpu_variants.py --bands {args.bands} --steps {args.steps}; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| layout | precision | s/step |\n|---|---|---|")
    for channels_last in (False, True):
        for amp in ("off", "bf16"):
            seconds = measure(args.bands, args.steps, channels_last, amp)
            print(f"| {'channels_last' if channels_last else 'NCHW'} | {'fp32' if amp == 'off' else amp} | "
                  f"{seconds:.3f} |")


if __name__ == "__main__":
    main()
