"""Peak memory and set-up time of training on a real scene (ten training steps).

    python bench/memory_setup.py [--scene ../shared/data/sandiego-100x100x189-58px.mat]

Runs `main.py --command train --epochs 1 --patches_per_epoch 1000` (ten steps of the default,
official flags otherwise) in a child process, in a temporary checkpoints folder, and reports the
child's peak resident memory and the set-up time it prints (scene loaded, masks drawn for all
patches, network built), with the command line used.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCENE = os.path.join(os.path.dirname(ROOT), "shared", "data", "sandiego-100x100x189-58px.mat")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default=DEFAULT_SCENE, help="a .mat file with data and map")
    args = parser.parse_args()
    data_dir, name = os.path.split(os.path.abspath(args.scene))
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "train", "--epochs", "1",
               "--patches_per_epoch", "1000", "--device", "cpu", "--data_dir", data_dir,
               "--dataset", os.path.splitext(name)[0], "--checkpoints_dir", tempfile.mkdtemp()]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(result.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    setup = re.search(r"set-up ([\d.]+) s", result.stdout).group(1)
    print(f"command: {' '.join(command[1:])}")
    print("| scene | peak RSS (MiB) | set-up before the first step (s) | whole process incl. imports (s) |")
    print("|---|---|---|---|")
    print(f"| {name} | {peak_mib:.0f} | {setup} | {wall:.1f} |")


if __name__ == "__main__":
    main()
