import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA

SANDIEGO = os.path.join(SHARED_DATA, "sandiego-100x100x189-58px.mat")


@pytest.mark.skipif(not os.path.isfile(SANDIEGO), reason="../shared/data (real scenes) is absent in this checkout")
def test_training_on_100x100x189_needs_under_1_gb(tmp_path):
    """The official code needs 16.4 GB here; the sampler keeps one padded copy of the scene.

    Ten training steps through `main` (as a user runs it), then the process's peak resident memory."""
    script = (
        "import resource, sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from main import main\n"
        f"code = main(['--command', 'train', '--device', 'cpu', '--data_dir', {SHARED_DATA!r},"
        " '--dataset', 'sandiego-100x100x189-58px', '--epochs', '1', '--patches_per_epoch', '1000',"
        f" '--checkpoints_dir', {str(tmp_path)!r}])\n"
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    peak_kib = int(result.stdout.split("peak_kib")[1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
