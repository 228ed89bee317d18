"""Two CPU processes (torchrun, gloo) against one process on the same global batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

from conftest import ROOT, cli_flags
from config import parse_config
from model import load_checkpoint, reconstruct
from runs import checkpoint_path, run_directory
from train import train


def torchrun_train(flags):
    """`torchrun --nproc_per_node 2 main.py --command train FLAGS` on the CPU, one thread a process."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "main.py"), "--command", "train", *flags],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(scene_dir, tmp_path):
    """Equivalent means: the same computation in another floating-point summation order (BatchNorm
    statistics and gradients are summed per process, then across processes). The per-epoch losses
    agree to 1e-5; the weights and the scene's reconstruction to about 1e-3, because Adam divides
    by the root of the squared gradients, so weights whose gradients are near zero turn rounding
    differences into steps of up to lr. The residual blocks' last BatchNorm biases are left out: they
    get a mathematically zero gradient (the decoder's BatchNorm cancels any constant shift of the
    blocks' output), so Adam moves them by rounding noise alone, in any implementation."""
    flags = cli_flags(scene_dir, "tiny", "--epochs", "3", "--batch_size", "30")
    single = parse_config(flags)
    single_losses = train(single)
    multi_dir = tmp_path / "multi"
    multi_flags = flags + ["--checkpoints_dir", str(multi_dir)]
    launched = torchrun_train(multi_flags)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "x 2 processes" in launched.stdout
    multi = parse_config(multi_flags)
    one = torch.load(checkpoint_path(run_directory(single), 3), weights_only=True)
    two = torch.load(checkpoint_path(run_directory(multi), 3), weights_only=True)
    np.testing.assert_allclose(two["losses"], single_losses, rtol=1e-5)
    for key, value in one["model"].items():
        if not key.endswith("norm2.bias") and value.is_floating_point():
            np.testing.assert_allclose(two["model"][key], value, rtol=1e-2, atol=1e-3, err_msg=key)
    scene = scipy.io.loadmat(scene_dir / "tiny.mat")["data"].astype(np.float32)
    outputs = [reconstruct(load_checkpoint(checkpoint_path(run_directory(c), 3))[0], scene, "cpu")
               for c in (single, multi)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-3, atol=1e-3 * np.abs(outputs[0]).max())


@pytest.mark.slow
def test_a_two_process_dry_run_reports_once_and_saves_nothing(scene_dir):
    launched = torchrun_train(cli_flags(scene_dir, "tiny", "--epochs", "3", "--dry-run"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("dry run: one batch trained") == 1
    assert not (scene_dir / "checkpoints").exists()
