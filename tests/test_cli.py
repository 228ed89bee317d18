import json
import os

import matplotlib.image
import numpy as np
import pytest
import scipy.io
import torch

from conftest import FIXTURES, SHARED_DATA, cli_flags, needs_shared_data, run_cli, scene_folder, tiny_scene
from scenes import synthetic_scene
from config import build_parser, parse_config
from main import main


def test_train_then_predict_end_to_end(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2")
    trained = run_cli("--command", "train", *flags)
    assert trained.returncode == 0, trained.stderr
    predicted = run_cli("--command", "predict", *flags)
    assert predicted.returncode == 0, predicted.stderr
    auc_line = [line for line in predicted.stdout.splitlines() if line.startswith("AUC: ")]
    assert len(auc_line) == 1
    out = scene_folder(scene_dir / "results", "tiny") / "latest"
    detectmap = scipy.io.loadmat(out / "detectmap.mat")["detectmap"]
    reconstructed = scipy.io.loadmat(out / "reconstructed_data.mat")["reconstructed_data"]
    assert detectmap.shape == (12, 10) and reconstructed.shape == (12, 10, 6)
    assert detectmap.min() == 0 and detectmap.max() == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["auc"] <= 1 and auc_line[0] == f"AUC: {metrics['auc']:.4f}"
    assert metrics["epoch"] == 2 and metrics["model_args"]["bands"] == 6
    assert metrics["train_config"]["patch"] == 5 and metrics["seconds"]["inference"] >= 0
    for picture in ("detectmap.png", "roc.png"):
        image = matplotlib.image.imread(out / picture)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.05
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_help_states_every_default():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "%(default)s" not in action.help
            assert f"--{action.dest}" in text or action.dest == "dry_run"
    assert text.count("(default:") == len(parser._actions) - 1


def test_official_defaults():
    config = parse_config([])
    official = dict(seed=1, gpu_ids="0", command="train", batch_size=100, patch=19, size_window=5, ratio=0.9,
                    nch_ker=64, nblk=2, norm_mode="bnorm", init_weight_type="normal", init_gain=0.02, lossm="l1",
                    learning_rate=1e-4, weight_decay=1e-5, epochs=1000, dataset="AVIRIS-II", save_freq=50,
                    data_dir="./data", results_dir="./results", device="auto", remask=False, checkpoint=None)
    assert {k: getattr(config, k) for k in official} == official


def test_predict_from_an_official_pkl(tmp_path):
    data = np.load(f"{FIXTURES}/official_forward_bnorm.npz")
    state = {k.removeprefix("state_dict/"): torch.from_numpy(np.asarray(data[k]))
             for k in data.files if k.startswith("state_dict/")}
    torch.save(state, tmp_path / "official.pkl")
    scene = data["input"][0].transpose(1, 2, 0)  # 23 x 17 x 16
    gt = np.zeros(scene.shape[:2], np.uint8)
    gt[3, 4] = 1
    scipy.io.savemat(tmp_path / "fixture.mat", {"data": scene, "map": gt})
    result = run_cli("--command", "predict", "--checkpoint", str(tmp_path / "official.pkl"),
                     *cli_flags(tmp_path, "fixture"), "--nch_ker", "64", "--nblk", "2")  # the official network
    assert result.returncode == 0, result.stderr
    reconstructed = scipy.io.loadmat(scene_folder(tmp_path / "results", "fixture") / "latest" / "reconstructed_data.mat")
    expected = data["output"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(reconstructed["reconstructed_data"], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def write_mat(folder, name, arrays):
    scipy.io.savemat(folder / f"{name}.mat", arrays)


@pytest.mark.parametrize("name, arrays, message", [
    ("absent", None, "not found"),
    ("nodata", {"cube2d": np.zeros((4, 4)), "map": np.zeros((4, 4))}, "keys present: cube2d, map"),
    ("twomaps", {"data": np.zeros((8, 8, 3)), "truth": np.zeros((8, 8)), "gt": np.zeros((8, 8))},
     "pick one with --gt_key"),
    ("twoscenes", {"data": np.zeros((8, 8, 3)), "cube": np.zeros((8, 8, 3)), "map": np.zeros((8, 8))},
     "pick one with --data_key"),
    ("flat", {"data": np.zeros((8, 8)), "map": np.zeros((8, 8))}, "H x W x bands"),
    ("mismatch", {"data": np.zeros((8, 8, 3)), "map": np.zeros((8, 7))}, "must be H x W like the scene"),
    ("graded", {"data": np.zeros((8, 8, 3)), "map": np.full((8, 8), 0.5)}, "values other than 0 and 1"),
    ("small", {"data": np.ones((6, 9, 3)), "map": np.zeros((6, 9))}, "too large for a 6 x 9 scene"),
    ("broken", b"MATLAB 5.0 MAT-file, truncated", "cannot read"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, name, arrays, message, capsys):
    """In-process (test_robustness.py runs one bad input end to end in a real process)."""
    if isinstance(arrays, dict):
        write_mat(tmp_path, name, arrays)
    elif isinstance(arrays, bytes):
        (tmp_path / f"{name}.mat").write_bytes(arrays)
    flags = cli_flags(tmp_path, name)
    flags[flags.index("--patch") + 1] = "13"
    assert main(["--command", "train", *flags]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_predict_without_a_trained_run_says_what_to_do(scene_dir, capsys):
    assert main(["--command", "predict", *cli_flags(scene_dir, "tiny", "--epochs", "7")]) == 2
    assert "train with the same flags first" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "train", *flags]) == 2
    assert "--overwrite to replace it" in capsys.readouterr().err
    assert main(["--command", "predict", *cli_flags(scene_dir, "tiny", "--epochs", "3")]) == 2
    assert "it has epochs 1" in capsys.readouterr().err


def test_band_count_mismatch_is_reported(scene_dir, capsys):
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1")]) == 0
    hsi, gt = tiny_scene(bands=4)
    scipy.io.savemat(scene_dir / "other.mat", {"data": hsi, "map": gt})
    checkpoint = next((scene_folder(scene_dir / "checkpoints", "tiny")).glob("*/epoch_0001.pt"))
    assert main(["--command", "predict", "--checkpoint", str(checkpoint), *cli_flags(scene_dir, "other")]) == 2
    assert "trained on 6 bands but other has 4" in capsys.readouterr().err


def test_synthetic_scene_is_deterministic():
    hsi, gt = synthetic_scene()
    again, gt_again = synthetic_scene()
    assert np.array_equal(hsi, again) and np.array_equal(gt, gt_again)
    assert hsi.dtype == np.float32 and hsi.shape == (40, 48, 32) and gt.shape == (40, 48)
    assert 0 < gt.sum() < 20 and np.isfinite(hsi).all()


def test_synthetic_target_is_scaled_by_its_own_maximum():
    """A full-pixel target is 400 * (1.2 - 0.9 * s / max(s)) for one spectrum s: its minimum is 400 * 0.3."""
    hsi, gt = synthetic_scene()
    assert gt[8, 10] == 1 and np.isclose(hsi[8, 10].min(), 120.0, rtol=1e-5)
    assert np.allclose(hsi[8, 10], hsi[30, 36])  # both full-pixel targets are the same spectrum


@pytest.mark.slow
def test_synthetic_demo_reaches_a_useful_auc(tmp_path):
    """The README's demo: default flags, 3 epochs, on the built-in scene."""
    flags = ["--dataset", "synthetic", "--epochs", "3", "--device", "cpu",
             "--checkpoints_dir", str(tmp_path / "c"), "--results_dir", str(tmp_path / "r")]
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    metrics = json.loads((tmp_path / "r" / "synthetic" / "latest" / "metrics.json").read_text())
    assert metrics["auc"] >= 0.95


@needs_shared_data
def test_non_square_hydice_trains_and_predicts(tmp_path):
    flags = ["--dataset", "HYDICE-II", "--data_dir", SHARED_DATA, "--epochs", "1", "--patch", "7",
             "--nch_ker", "16", "--nblk", "1", "--device", "cpu",
             "--checkpoints_dir", str(tmp_path / "c"), "--results_dir", str(tmp_path / "r")]
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    metrics = json.loads((scene_folder(tmp_path / "r", "HYDICE-II") / "latest" / "metrics.json").read_text())
    assert metrics["scene"] == dict(path=os.path.join(os.path.abspath(SHARED_DATA), "HYDICE-II.mat"), height=80,
                                    width=60, bands=162, bands_used=list(range(1, 163)), anomaly_pixels=10,
                                    nodata_pixels=0)
    assert 0 <= metrics["auc"] <= 1
    assert scipy.io.loadmat(scene_folder(tmp_path / "r", "HYDICE-II") / "latest" / "detectmap.mat")["detectmap"].shape == (80, 60)


def test_map_without_anomalies_gives_null_auc(scene_dir, capsys):
    hsi, _ = tiny_scene()
    scipy.io.savemat(scene_dir / "clean.mat", {"data": hsi, "map": np.zeros(hsi.shape[:2], np.uint8)})
    flags = cli_flags(scene_dir, "clean", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", *flags]) == 0
    assert "AUC undefined: the map has no anomaly pixel" in capsys.readouterr().out
    metrics = json.loads((scene_folder(scene_dir / "results", "clean") / "latest" / "metrics.json").read_text())
    assert metrics["auc"] is None and "no anomaly" in metrics["auc_note"]
    assert (scene_folder(scene_dir / "results", "clean") / "latest" / "detectmap.mat").exists()


def test_predict_trusts_the_checkpoints_network_over_the_flags(scene_dir, capsys):
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1")]) == 0
    checkpoint = next((scene_folder(scene_dir / "checkpoints", "tiny")).glob("*/epoch_0001.pt"))
    flags = cli_flags(scene_dir, "tiny")
    flags[flags.index("--nblk") + 1] = "2"
    assert main(["--command", "predict", "--checkpoint", str(checkpoint), *flags]) == 0
    out = capsys.readouterr().out
    assert "holds a network with nch_ker=8, nblk=1, norm=bnorm (the flags say nch_ker=8, nblk=2" in out
    metrics = json.loads((scene_folder(scene_dir / "results", "tiny") / "latest" / "metrics.json").read_text())
    assert metrics["model_args"]["nblk"] == 1 and metrics["auc"] is not None
