import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BS3LNET_SHARED names another folder laid out like ../shared (data/, reference/), such as the copy that
# bench/gpu_check.py carries to a GPU machine.
SHARED = os.path.abspath(os.environ.get("BS3LNET_SHARED") or os.path.join(os.path.dirname(ROOT), "shared"))
# The official code's outputs that the fidelity tests compare with, copied from ../shared/reference.
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED_DATA = os.path.join(SHARED, "data")
sys.path.insert(0, ROOT)

needs_shared_data = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, "HYDICE-II.mat")),
                                       reason="../shared/data (real scenes) is absent in this checkout")

# Small but real settings, so that a whole CLI run takes a few seconds.
FAST_FLAGS = ["--patch", "5", "--size_window", "3", "--nch_ker", "8", "--nblk", "1",
              "--batch_size", "32", "--device", "cpu"]


def tiny_scene(height=12, width=10, bands=6, seed=0):
    """A small smooth scene with a 2-pixel anomaly, and its map."""
    rng = np.random.RandomState(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    spectra = np.linspace(1, 2, bands)
    hsi = 100 * (1 + 0.1 * np.sin(rows / 3.0)[..., None] + 0.1 * np.cos(cols / 4.0)[..., None]) * spectra
    hsi += rng.randn(height, width, bands)
    gt = np.zeros((height, width), np.uint8)
    gt[4, 5] = gt[8, 2] = 1
    hsi[gt == 1] = 100 * spectra[::-1]
    return hsi.astype(np.float32), gt


@pytest.fixture(autouse=True)
def unrendered_figures(request, monkeypatch):
    """Figures are built and drawn (their texts parsed and placed: what a draw can raise still raises), but
    neither passed through their layout engine nor rasterised, and their texts stand in for their pixels:
    that is most of a figure's cost, and most tests write figures. Tests of the pictures themselves are
    marked `rendered_figures` and get real PNGs, as do subprocesses."""
    if request.node.get_closest_marker("rendered_figures"):
        return
    import matplotlib.text
    import figures
    from utils import atomic_write_text

    def save(fig, path):
        try:
            fig.set_layout_engine("none")
            fig.draw_without_rendering()
            atomic_write_text(path, "\n".join(text.get_text() for text in fig.findobj(matplotlib.text.Text)))
        finally:
            figures._pyplot().close(fig)
    monkeypatch.setattr(figures, "_save", save)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in this process, as in a terminal, also in a suite started in the
    background (`pytest &` ignores SIGINT); the earlier disposition comes back after the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def scene_dir(tmp_path):
    """A data folder holding tiny.mat (12 x 10 x 6, non-square) with `data` and `map`."""
    hsi, gt = tiny_scene()
    scipy.io.savemat(tmp_path / "tiny.mat", {"data": hsi, "map": gt})
    return tmp_path


def cli_flags(data_dir, dataset="tiny", *extra):
    work = str(data_dir)
    return ["--dataset", dataset, "--data_dir", work, "--checkpoints_dir", os.path.join(work, "checkpoints"),
            "--results_dir", os.path.join(work, "results"), *FAST_FLAGS, *extra]


def scene_folder(parent, name):
    """The folder of scene `name` under a checkpoints or results folder: '<name>-<digest of its contents>'."""
    import pathlib
    found = sorted(pathlib.Path(parent).glob(f"{name}-" + "[0-9a-f]" * 8))
    assert len(found) == 1, f"one folder of scene {name} expected in {parent}, found {found}"
    return found[0]


def run_cli(*args, cwd=None):
    """Run `python main.py ARGS` in a subprocess; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
