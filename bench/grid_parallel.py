"""One benchmark grid run three ways: sequentially, with --jobs N worker processes, and on a Dask LocalCluster.

    python bench/grid_parallel.py [--data_dir ../shared/data] [--dataset HYDICE-II] [--epochs 2] [--jobs 2]
        [--modes sequential,sequential-threads,jobs,dask]

The grid: 2 ratios x 2 patch sizes x 2 seeds = 8 trainings of BS3LNet (default flags otherwise), each
scored once. Every mode starts from empty checkpoint and results folders, so each trains all 8. Prints a
markdown table: wall seconds, the ratio to the first mode's (the sequential run's by default), and the
largest difference of an AUC (mean of the seeds) from the first mode's. A sequential run with each job's share of the threads (cores /
--jobs) shows how much of a difference the thread count alone (the float summation order) makes. The
LocalCluster (started before the clock) has --jobs workers with that share each.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jobs import threads_per_job  # noqa: E402
GRID = "ratio=0.8,0.9 patch=15,19"


def run(mode, args, folder, scheduler=None, threads=None):
    """Wall seconds and {row: auc} of one benchmark run in `folder`."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "benchmark", "--datasets", args.dataset,
               "--data_dir", args.data_dir, "--seeds", "1,2", "--methods", "bs3lnet", "--epochs", str(args.epochs),
               "--grid", GRID, "--device", "cpu", "--checkpoints_dir", os.path.join(folder, "c"),
               "--results_dir", os.path.join(folder, "r")]
    if mode == "jobs":
        command += ["--jobs", str(args.jobs)]
    if scheduler:
        command += ["--scheduler", scheduler]
    started = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
                   env=env)  # outside the project, as a cluster's workers are
    seconds = time.perf_counter() - started
    with open(os.path.join(folder, "r", "benchmark", "benchmark.csv")) as handle:
        aucs = {(row["ratio"], row["patch"]): float(row["auc"]) for row in csv.DictReader(handle)}
    return seconds, aucs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    parser.add_argument("--dataset", default="HYDICE-II")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--modes", default="sequential,sequential-threads,jobs,dask",
                        help="the modes to run, in this order (the first is the reference)")
    args = parser.parse_args()
    threads = threads_per_job(args.jobs)  # what each --jobs worker gets
    labels = {"sequential": "sequential", "sequential-threads": f"sequential, {threads} thread(s) as each job has",
              "jobs": f"--jobs {args.jobs}", "dask": f"Dask LocalCluster, {args.jobs} workers x {threads} thread(s)"}
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(labels))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(labels)}")
    print(f"| mode ({args.dataset}, 8 trainings of {args.epochs} epochs) | wall s | vs {labels[modes[0]]} | "
          "largest AUC difference |")
    print("|---|---|---|---|", flush=True)
    base = None
    with tempfile.TemporaryDirectory() as work:
        for mode in modes:
            folder = os.path.join(work, mode)
            os.makedirs(folder)
            if mode == "dask":  # started before the clock; its processes do not have this project on their path
                from dask.distributed import LocalCluster
                with LocalCluster(n_workers=args.jobs, threads_per_worker=threads, processes=True,
                                  dashboard_address=None) as cluster:
                    seconds, aucs = run(mode, args, folder, cluster.scheduler_address)
            else:
                seconds, aucs = run(mode, args, folder, threads=threads if mode == "sequential-threads" else None)
            base = base or (seconds, aucs)
            largest = max(abs(aucs[key] - base[1][key]) for key in base[1])
            print(f"| {labels[mode]} | {seconds:.1f} | {base[0] / seconds:.2f}x | {largest:.1e} |", flush=True)
    print("\nAUC (mean of the seeds) per (ratio, patch):", {key: round(value, 4) for key, value in base[1].items()})


if __name__ == "__main__":
    main()
