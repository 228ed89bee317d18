"""Time N epochs resumed from one checkpoint with subnormal floats kept and flushed, and compare losses.

    python bench/subnormals.py --checkpoint RUN_DIR/epoch_0100.pt --data_dir ../shared/data --epochs 25

Both runs resume from copies of the same checkpoint (and its run's log) in bench/out/subnormals/,
on this machine in one sitting (one after the other, or with --parallel both at once with
--threads each), with the training flags stored in the checkpoint and `--device cpu`; one of them
with `--keep_subnormals`. Prints, and writes to
bench/out/subnormals/subnormals.md and .json, the seconds and the mean loss of every epoch both ways.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import build_parser  # noqa: E402
from runs import read_log  # noqa: E402

# Flags that say where and how long to run, not which run it is: set here, not taken from the checkpoint.
NOT_COPIED = {"command", "epochs", "checkpoints_dir", "results_dir", "data_dir", "resume", "overwrite", "dry_run",
              "eval_every", "keep_subnormals", "save_freq", "device", "checkpoint", "datasets", "seeds", "methods"}


def training_flags(config):
    """The command-line flags that rebuild the run described by a checkpoint's stored `config`."""
    flags = []
    for action in build_parser()._actions:
        if action.dest in NOT_COPIED or action.dest not in config or not action.option_strings:
            continue
        value = config[action.dest]
        if isinstance(action, argparse._StoreTrueAction):
            flags += [action.option_strings[0]] if value else []
        elif value is not None:
            flags += [action.option_strings[0], str(value)]
    return flags


def resume_copy(checkpoint, folder, keep, data_dir, epochs, threads):
    """Start resuming a copy of `checkpoint`'s run in `folder` to epoch `epochs`; returns (process, log path)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = state["config"]
    run_dir = os.path.join(folder, config["dataset"], os.path.basename(os.path.dirname(os.path.abspath(checkpoint))))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(run_dir)
    shutil.copy(checkpoint, run_dir)
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "train_log.tsv"), run_dir)
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "train", "--resume", "--device", "cpu",
               "--epochs", str(epochs), "--save_freq", str(epochs), "--data_dir", data_dir,
               "--checkpoints_dir", folder, *training_flags(config)] + (["--keep_subnormals"] if keep else [])
    print(f"{'kept' if keep else 'flushed'} ({threads} threads): {' '.join(command)}", flush=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=environment)
    return process, os.path.join(run_dir, "train_log.tsv")


def finished_rows(process, log, start):
    if process.wait() != 0:
        raise SystemExit(f"a resumed run failed (exit {process.returncode})")
    return {row["epoch"]: row for row in read_log(log) if row["epoch"] > start}


def same_to_6(row):
    return f"{row['loss_kept']:.6f}" == f"{row['loss_flushed']:.6f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint to resume from (its run's log beside it)")
    parser.add_argument("--data_dir", default="../shared/data", help="folder of the scene (default ../shared/data)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs to train after the checkpoint (default 25)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads of each run (default: torch's, the number of cores)")
    parser.add_argument("--parallel", action="store_true", help="run both at once (default: kept first, then flushed)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "subnormals"),
                        help="work and output folder (default bench/out/subnormals)")
    args = parser.parse_args()
    start_time = time.strftime("%Y-%m-%d %H:%M")
    start = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["epoch"]
    end = start + args.epochs
    runs = {}
    for name, keep in (("kept", True), ("flushed", False)):
        runs[name] = resume_copy(args.checkpoint, os.path.join(args.out, name), keep, args.data_dir, end, args.threads)
        if not args.parallel:
            runs[name] = finished_rows(*runs[name], start)
    if args.parallel:
        runs = {name: finished_rows(*run, start) for name, run in runs.items()}
    kept, flushed = runs["kept"], runs["flushed"]
    rows = [dict(epoch=e, seconds_kept=kept[e]["seconds"], seconds_flushed=flushed[e]["seconds"],
                 loss_kept=kept[e]["loss"], loss_flushed=flushed[e]["loss"]) for e in sorted(kept)]
    how = "both at once" if args.parallel else "one after the other (kept first)"
    lines = [f"Resumed from epoch {start} of `{args.checkpoint}`, {args.epochs} epochs each way, {how}, "
             f"{args.threads} threads each, started {start_time}. Command: `python bench/subnormals.py "
             f"{' '.join(sys.argv[1:])}`.", "",
             "| epoch | s kept | s flushed | loss kept | loss flushed | equal to 6 decimals |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['epoch']} | {row['seconds_kept']:.1f} | {row['seconds_flushed']:.1f} | "
                     f"{row['loss_kept']:.6f} | {row['loss_flushed']:.6f} | "
                     f"{'yes' if same_to_6(row) else 'no'} |")
    total_kept, total_flushed = sum(r["seconds_kept"] for r in rows), sum(r["seconds_flushed"] for r in rows)
    equal = sum(same_to_6(r) for r in rows)
    lines += ["", f"Total: {total_kept:.0f} s kept, {total_flushed:.0f} s flushed; losses equal to 6 decimals at "
              f"{equal} of {len(rows)} epochs."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.out, "subnormals.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.out, "subnormals.json"), "w") as handle:
        json.dump(dict(checkpoint=args.checkpoint, start_epoch=start, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
