"""Blind-spot scoring: each pixel reconstructed with its own spectrum hidden, as in training."""
import json
import os

import numpy as np
import pytest
import scipy.io
import torch

from conftest import cli_flags, scene_folder, tiny_scene
from main import main
from model import BS3LNet, init_weights, reconstruct
import scoring as scoring_module
from scoring import blindspot_partition, blindspot_reconstruct, group_count
from utils import UserError


def random_net(bands, nblk=1):
    torch.manual_seed(0)
    net = BS3LNet(bands, nch_ker=8, nblk=nblk)
    init_weights(net, "normal", 0.3)
    with torch.no_grad():  # non-trivial running statistics, so eval mode is not the identity
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_partition_groups_are_disjoint_balanced_and_sources_are_window_neighbours_outside_the_group():
    height, width, window = 23, 17, 5
    group, source = blindspot_partition(height, width, window, 0.9, torch.Generator().manual_seed(3))
    assert group_count(0.9) == 10
    sizes = torch.bincount(group, minlength=10)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == height * width  # every pixel in one group
    assert not (group[source] == group).any()  # never the pixel itself, never one of its group
    row, col = np.divmod(np.arange(height * width), width)
    src_row, src_col = np.divmod(source.numpy(), width)
    # the source is the reflect-padded neighbour at an offset in -2..2: undo the reflection to check
    for r, c, sr, sc in zip(row, col, src_row, src_col):
        dys = [d for d in range(-2, 3) if np.pad(np.arange(height), 2, mode="reflect")[r + d + 2] == sr]
        dxs = [d for d in range(-2, 3) if np.pad(np.arange(width), 2, mode="reflect")[c + d + 2] == sc]
        assert any((dy, dx) != (0, 0) for dy in dys for dx in dxs)
    # interior pixels use every offset of the window except (0, 0), and reflection reaches the border
    interior = (row >= 2) & (row < height - 2) & (col >= 2) & (col < width - 2)
    offsets = set(zip((src_row - row)[interior], (src_col - col)[interior]))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}


def test_a_pixels_blindspot_reconstruction_ignores_its_own_spectrum_and_official_does_not():
    hsi, _ = tiny_scene(height=14, width=11, bands=6)
    net = random_net(6)
    changed = hsi.copy()
    for row, col in [(0, 0), (1, 1), (6, 5), (13, 10)]:  # corners (reflection) and the interior
        changed[row, col] += 50.0
        blind = [blindspot_reconstruct(net, scene, "cpu", 5, 0.9, seed=7, repeats=2) for scene in (hsi, changed)]
        np.testing.assert_allclose(blind[1][row, col], blind[0][row, col], rtol=1e-5, atol=1e-4)
        official = [reconstruct(net, scene, "cpu") for scene in (hsi, changed)]
        assert np.abs(official[1][row, col] - official[0][row, col]).max() > 1e-2
        # its neighbours do depend on it: the property is about the pixel's own spectrum only
        assert np.abs(blind[1] - blind[0]).max() > 1e-2
        changed[row, col] = hsi[row, col]


def test_blindspot_scoring_is_seeded_tiles_equal_whole_scene_and_repeats_average():
    hsi, _ = tiny_scene(height=15, width=13, bands=5)
    net = random_net(5, nblk=2)
    one = blindspot_reconstruct(net, hsi, "cpu", 5, 0.9, seed=1)
    assert np.array_equal(one, blindspot_reconstruct(net, hsi, "cpu", 5, 0.9, seed=1))
    assert not np.allclose(one, blindspot_reconstruct(net, hsi, "cpu", 5, 0.9, seed=2))
    tiled = blindspot_reconstruct(net, hsi, "cpu", 5, 0.9, seed=1, tile=4)
    np.testing.assert_allclose(tiled, one, atol=1e-5 * np.abs(one).max())
    generator_draws = [blindspot_reconstruct(net, hsi, "cpu", 5, 0.9, seed=1, repeats=r) for r in (1, 3)]
    assert generator_draws[0].shape == hsi.shape and not np.array_equal(*generator_draws)


def test_size_window_larger_than_the_scene_is_refused():
    with pytest.raises(UserError, match="too large"):
        blindspot_partition(2, 9, 7, 0.9, torch.Generator().manual_seed(0))


def test_predict_with_blindspot_scoring_from_the_command_line(scene_dir, tmp_path, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2")
    assert main(["--command", "train", *flags]) == 0
    checkpoint = next((scene_folder(scene_dir / "checkpoints", "tiny")).iterdir()) / "epoch_0002.pt"
    hsi, gt = tiny_scene()
    changed_dir = tmp_path / "changed"
    changed_dir.mkdir()
    changed = hsi.copy()
    changed[6, 4] *= 3.0
    scipy.io.savemat(changed_dir / "tiny.mat", {"data": changed, "map": gt})
    recon = {}
    for name, data_dir in (("original", scene_dir), ("changed", changed_dir)):
        for scoring in ("official", "blindspot"):
            results = tmp_path / f"results_{name}_{scoring}"
            code = main(["--command", "predict", *flags, "--data_dir", str(data_dir), "--checkpoint", str(checkpoint),
                         "--results_dir", str(results), "--scoring", scoring, "--score_repeats", "2"])
            assert code == 0
            folder = "latest"
            metrics = json.loads((scene_folder(results, "tiny") / folder / "metrics.json").read_text())
            assert os.readlink(scene_folder(results, "tiny") / "latest").startswith("checkpoint_epoch_0002_")
            assert os.readlink(scene_folder(results, "tiny") / "latest").endswith("_blindspot_r2" if scoring == "blindspot" else "")
            assert metrics["scoring"]["name"] == scoring and metrics["seconds"]["inference"] > 0
            assert metrics["scoring"].get("repeats") == (2 if scoring == "blindspot" else None)
            recon[name, scoring] = scipy.io.loadmat(scene_folder(results, "tiny") / folder / "reconstructed_data.mat")[
                "reconstructed_data"]
    np.testing.assert_allclose(recon["changed", "blindspot"][6, 4], recon["original", "blindspot"][6, 4], rtol=1e-5)
    assert np.abs(recon["changed", "official"][6, 4] - recon["original", "official"][6, 4]).max() > 1e-3
    assert not np.allclose(recon["original", "blindspot"], recon["original", "official"])


def test_one_scoring_for_predict_and_a_known_name(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "predict", *flags, "--scoring", "official,blindspot"]) == 2
    assert "give one scoring" in capsys.readouterr().err
    assert main(["--command", "predict", *flags, "--scoring", "blind"]) == 2
    assert "--scoring: unknown blind" in capsys.readouterr().err
    assert main(["--command", "predict", *flags, "--scoring", "blindspot", "--score_repeats", "0"]) == 2


def test_benchmark_scores_one_training_both_ways(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "benchmark", *flags, "--seeds", "1", "--methods", "bs3lnet,rx",
                 "--scoring", "official,blindspot", "--score_repeats", "1"]) == 0
    table = (scene_dir / "results" / "benchmark" / "benchmark.md").read_text()
    rows = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| tiny")]
    assert rows == ["bs3lnet", "bs3lnet-blindspot", "rx"]
    assert "bs3lnet-blindspot against bs3lnet over 1 scenes: " in table
    assert len(os.listdir(scene_folder(scene_dir / "checkpoints", "tiny"))) == 1  # trained once, scored twice


def test_blindspot_scoring_with_bf16_and_during_training(scene_dir, monkeypatch):
    import scoring
    hsi, _ = tiny_scene()
    blind = blindspot_reconstruct(random_net(6), hsi, "cpu", 3, 0.9, seed=1, amp="bf16")
    assert np.isfinite(blind).all() and np.abs(blind).max() > 0
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3:6])  # size_window, ratio, seed
        return blindspot_reconstruct(*args, **kwargs)
    monkeypatch.setattr(scoring, "blindspot_reconstruct", spy)
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2", "--eval_every", "1", "--seed", "5")
    assert main(["--command", "train", *flags, "--scoring", "blindspot", "--score_repeats", "1"]) == 0
    assert calls == [(3, 0.9, 5)] * 2  # one blind-spot scoring per evaluation, seeded by --seed
    state = torch.load(next((scene_folder(scene_dir / "checkpoints", "tiny")).glob("*/epoch_0002.pt")), weights_only=True)
    assert sorted(state["aucs"]) == [1, 2]


def test_the_scene_is_shown_in_place_and_restored_even_when_a_pass_is_interrupted():
    """Blind-spot scoring changes a float32 scene's pixels for each pass instead of copying the scene, and
    puts every value back: after a call, and after a pass that raised (Ctrl-C)."""
    hsi = np.random.RandomState(2).rand(11, 9, 4).astype(np.float32)
    before = hsi.copy()
    net = random_net(4)
    blindspot_reconstruct(net, hsi, "cpu", 3, 0.9, seed=1, repeats=2)
    assert np.array_equal(hsi, before)

    class Interrupting(torch.nn.Module):
        receptive_field_radius = net.receptive_field_radius

        def forward(self, x):
            assert not np.array_equal(hsi, before)  # the caller's scene shows the hidden pixels: no copy made
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        blindspot_reconstruct(Interrupting(), hsi, "cpu", 3, 0.9, seed=1)
    assert np.array_equal(hsi, before)


def test_blind_spot_scoring_that_takes_more_than_a_moment_shows_progress(monkeypatch, capsys):
    import time

    def slow(net, shown, device, tile, amp, keep, out):
        time.sleep(0.25)
    monkeypatch.setattr(scoring_module, "reconstruct", slow)
    hsi = np.random.RandomState(0).rand(8, 8, 3).astype(np.float32)
    scoring_module.blindspot_reconstruct(None, hsi, "cpu", 3, 0.9, seed=1, repeats=1)  # 10 passes, 2.5 s
    assert "blind-spot scoring" in capsys.readouterr().err
