"""Speed and memory of training and prediction, per device and precision; prints a markdown table.

    python bench/speed.py [--scene ../shared/data/sandiego-100x100x189-58px.mat] [--steps 20] [--big]

For each available device (cpu, and cuda when present) and precision (fp32 = the faithful default,
bf16, and tf32 and fp16 on GPU) a fresh child process trains `--steps` steps with the default flags and
predicts the whole scene. Reported: peak resident memory of the child after training and after
predicting (the bench itself loads the scene again for the prediction), seconds from the start of
`train()` to the end of the first step, seconds per step (median after the first), the epoch time
that implies (H*W / batch steps), the projected 1000-epoch time, and the whole-scene predict time.
`--big` adds a generated 1000 x 1000 x 189 scene (a few steps, CPU, tiled prediction) to show that
memory grows with the scene alone. `--json FILE` also writes the measurements, unrounded, to FILE.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCENE = os.path.join(os.path.dirname(ROOT), "shared", "data", "sandiego-100x100x189-58px.mat")


def child(args):
    """Measure in this process and print one JSON line."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import scipy.io
    import torch

    import train as train_module
    from config import parse_config
    from model import reconstruct

    work = tempfile.mkdtemp()
    if args.generate:
        height, width, bands = (int(v) for v in args.generate.split("x"))
        rng = np.random.default_rng(0)
        hsi = (100 + rng.standard_normal((height, width, bands), dtype=np.float32)).astype(np.float32)
        scipy.io.savemat(os.path.join(work, "big.mat"), {"data": hsi, "map": np.zeros((height, width), np.uint8)})
        del hsi
        data_dir, dataset = work, "big"
    else:
        data_dir, dataset = os.path.split(os.path.abspath(args.scene))
        dataset = os.path.splitext(dataset)[0]
    amp = "off" if args.precision == "tf32" else args.precision  # tf32 = fp32 with --tf32
    config = parse_config([
        "--dataset", dataset, "--data_dir", data_dir, "--device", args.device, "--amp", amp,
        "--checkpoints_dir", work, "--epochs", "1", "--patches_per_epoch", str(args.steps * 100),
        *(["--tf32"] if args.precision == "tf32" else [])])
    step_ends = []
    real_loss = train_module.masked_loss

    def timed_loss(*a, **k):  # the loss of step k is computed once per step: mark time there
        if config_device.type == "cuda":
            torch.cuda.synchronize()
        step_ends.append(time.perf_counter())
        return real_loss(*a, **k)
    config_device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    train_module.masked_loss = timed_loss
    started = time.perf_counter()
    captured = {}
    train_module.train(config, after_epoch=lambda epoch, net, loss: captured.setdefault("net", net))
    ended = time.perf_counter()
    train_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = np.diff(step_ends + [ended])
    hsi = np.asarray(scipy.io.loadmat(os.path.join(data_dir, dataset + ".mat"))["data"], np.float32)
    net = captured["net"]
    predict_start = time.perf_counter()
    reconstruct(net, hsi, config_device, tile=args.tile, amp=amp)
    if config_device.type == "cuda":
        torch.cuda.synchronize()
    predict_seconds = time.perf_counter() - predict_start
    height, width = hsi.shape[:2]
    step = float(np.median(steps[1:]))
    print(json.dumps(dict(
        scene=f"{height}x{width}x{hsi.shape[2]}", device=args.device, precision=args.precision,
        train_peak_mib=train_peak, peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        scene_mib=hsi.nbytes / 2 ** 20,
        gpu_peak_mib=torch.cuda.max_memory_allocated() / 2 ** 20 if config_device.type == "cuda" else None,
        first_step_s=step_ends[0] - started,
        step_s=step, epoch_s=step * -(-height * width // 100), predict_s=predict_seconds,
        threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default=DEFAULT_SCENE)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--device", default=None, help="measure only this device (default: cpu and cuda if any)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated fp32, tf32, bf16, fp16 (default: all for the device)")
    parser.add_argument("--json", default=None, help="also write the measured rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="off", help=argparse.SUPPRESS)
    parser.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import torch
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    jobs = []
    for device in devices:
        precisions = ["off", "bf16"] + (["tf32", "fp16"] if device.startswith("cuda") else [])
        if args.precisions:
            precisions = [p.replace("fp32", "off") for p in args.precisions.split(",")]
        jobs += [(device, p, ["--scene", args.scene]) for p in precisions]
    if args.big:
        jobs.append(("cpu", "off", ["--generate", "1000x1000x189", "--tile", "250"]))
    rows = []
    for device, precision, extra in jobs:
        command = [sys.executable, __file__, "--child", "--device", device, "--precision", precision,
                   "--steps", str(args.steps if "--generate" not in extra else 5), *extra]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{device} {precision}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"\ncommand: python bench/speed.py {' '.join(sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU: {gpu}, "
          f"torch {torch.__version__}\n")
    print("| scene (float32 MiB) | device | precision | training peak RSS MiB | with predict MiB | GPU peak MiB "
          "| to first step s | s/step | s/epoch | 1000 epochs (projected) | predict s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu_peak = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "–"
        precision = "fp32" if r["precision"] == "off" else r["precision"]
        print(f"| {r['scene']} ({r['scene_mib']:.0f}) | {r['device']} ({r['threads']} threads) | {precision} | "
              f"{r['train_peak_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{gpu_peak} | {r['first_step_s']:.2f} | {r['step_s']:.4g} | {r['epoch_s']:.3g} | "
              f"{duration(r['epoch_s'] * 1000)} | {r['predict_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


def duration(seconds):
    """Hours above one hour, else minutes: a GPU's 1000 epochs round to 0.0 h."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    main()
