"""How often a completed two-process CPU training (torchrun, gloo) still exits non-zero.

    python bench/torchrun_exits.py [--workers 3] [--runs 30] [--root .]

Each of --workers loops runs --runs short trainings of a small scene, each launched as
`torchrun --standalone --nproc_per_node 2 main.py --command train ...` with one thread per process;
the workers run side by side, so the processes contend for the cores as in a busy CI machine. Prints
every failed run's exit status and the line that names its cause, then the count. --root points at
another checkout (e.g. `git worktree add /tmp/old 1795027~1`, before the fix) to compare two versions on one machine.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import scipy.io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scenes import synthetic_scene  # noqa: E402

FLAGS = ["--patch", "5", "--size_window", "3", "--nch_ker", "8", "--nblk", "1", "--batch_size", "30",
         "--patches_per_epoch", "120", "--epochs", "3", "--device", "cpu"]


def cause(output):
    """The line of a failed run's output that says what ended it."""
    for marker in ("terminate called", "Error", "exitcode"):
        for line in output.splitlines():
            if marker in line:
                return line.strip()
    return output.strip().splitlines()[-1] if output.strip() else "(no output)"


def worker(number, args, scene_dir):
    failures = []
    for run in range(1, args.runs + 1):
        work = os.path.join(scene_dir, f"worker{number}_run{run}")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   os.path.join(args.root, "main.py"), "--command", "train", "--dataset", "scene",
                   "--data_dir", scene_dir, "--checkpoints_dir", work, "--results_dir", work, *FLAGS]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        if done.returncode != 0:
            failures.append((run, done.returncode, cause(done.stdout + done.stderr)))
            print(f"worker {number} run {run}: exit {done.returncode}: {failures[-1][2]}", flush=True)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3, help="trainings run side by side (default 3)")
    parser.add_argument("--runs", type=int, default=30, help="trainings per worker (default 30)")
    parser.add_argument("--root", default=ROOT, help="the checkout whose main.py runs (default this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scene_dir:
        hsi, gt = synthetic_scene()
        scipy.io.savemat(os.path.join(scene_dir, "scene.mat"), {"data": hsi[:12, :10], "map": gt[:12, :10]})
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda n: worker(n, args, scene_dir), range(1, args.workers + 1)))
    failed = sum(len(r) for r in results)
    print(f"{args.root}: {failed} of {args.workers * args.runs} trainings exited non-zero")


if __name__ == "__main__":
    main()
