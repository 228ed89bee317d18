"""The configuration: every flag declared with a role, and run and results folders derived from the roles."""
import os
import shutil
from dataclasses import FrozenInstanceError, fields, replace

import numpy as np
import pytest
import scipy.io

from config import RESULT, ROLES, SCENE, WEIGHTS, Config, build_parser, parse_config, result_folder
from conftest import cli_flags, scene_folder, tiny_scene
from main import main
from runs import run_directory

# For each field, a valid value other than the default (and, where the field only matters in some
# setting, the setting it matters in).
ALTERNATIVES = dict(
    patch=7, size_window=3, ratio=0.8, nch_ker=32, nblk=1, norm_mode="inorm", init_weight_type="xavier",
    init_gain=0.05, lossm="l2", learning_rate=1e-3, weight_decay=0.0, batch_size=50, seed=2, remask=True,
    patches_per_epoch=100, amp="bf16", drop_bands=((1, 2),), keep_bad_bands=True, tf32=True, data_key="data",
    dataset="other", data_dir="./elsewhere", epochs=500, checkpoint="x/epoch_0003.pt", scoring=("blindspot",),
    score_repeats=2, tile=16, win_in=5, win_out=11, gt_key="map", gt_file="gt.mat", command="predict",
    gpu_ids="1", checkpoints_dir="./c", results_dir="./r", save_freq=5, device="cpu", overwrite=True,
    dry_run=True, resume=True, eval_every=2, roc_log=True, keep_subnormals=True, datasets=("a", "b"),
    seeds=(4,), methods=("rx",), grid=(("ratio", (0.8,)),), jobs=2, scheduler="tcp://127.0.0.1:8786")
SETTING = dict(score_repeats=dict(scoring=("blindspot",)), tile=dict(norm_mode="inorm"))


def undeclared_flags(parser):
    """Flags of `parser` with no Config field declaring their role."""
    declared = {item.name: item.metadata.get("role") for item in fields(Config)}
    return [action.dest for action in parser._actions
            if action.dest != "help" and declared.get(action.dest) not in ROLES]


def test_every_flag_is_declared_with_a_role():
    assert undeclared_flags(build_parser()) == []


def test_a_flag_added_without_a_declaration_is_caught():
    parser = build_parser()
    parser.add_argument("--momentum", type=float, default=0.9)
    assert undeclared_flags(parser) == ["momentum"]


def test_every_field_has_an_alternative_value_here():
    assert set(ALTERNATIVES) == {item.name for item in fields(Config)}


@pytest.fixture
def scenes(tmp_path):
    """Two different scenes named alike ('scene.mat') and a map file, as the folders' names need real files."""
    for folder, seed in (("data", 0), ("elsewhere", 1)):
        os.makedirs(tmp_path / folder)
        hsi, gt = tiny_scene(seed=seed)
        scipy.io.savemat(tmp_path / folder / "scene.mat", {"data": hsi, "map": gt})
        scipy.io.savemat(tmp_path / folder / "other.mat", {"data": hsi[:, :, :5], "map": gt})
    scipy.io.savemat(tmp_path / "data" / "gt.mat", {"map": gt})
    return tmp_path


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_the_folders_follow_each_fields_role(scenes, monkeypatch, name):
    """A WEIGHTS or SCENE field changes the run folder, a RESULT or SCENE field the results folder of the
    methods it applies to, a NEITHER field no folder."""
    monkeypatch.chdir(scenes)
    base = replace(parse_config(["--dataset", "scene"]), **SETTING.get(name, {}))
    changed = replace(base, **{name: ALTERNATIVES[name]})
    if name == "command":  # --scoring's list is for benchmark only: compare with a valid base
        base = replace(base, command="train")
    role = next(item.metadata["role"] for item in fields(Config) if item.name == name)
    if name in ("data_dir", "dataset"):  # another scene file (its contents differ): another scene folder
        assert run_directory(changed) != run_directory(base)
        return
    assert (run(changed) != run(base)) == (role in (WEIGHTS, SCENE))
    applies = next(item.metadata["methods"] for item in fields(Config) if item.name == name) or ("bs3lnet", "rx", "lrx")
    for method in ("bs3lnet", "rx", "lrx"):
        differs = result_folder(changed, method) != result_folder(base, method)
        expected = role == SCENE or role == WEIGHTS and method == "bs3lnet" and not base.checkpoint \
            or role == RESULT and method in applies
        assert differs == expected, (name, method)


def run(config):
    """The run folder below --checkpoints_dir."""
    return os.path.relpath(run_directory(config), config.checkpoints_dir)


def test_the_configuration_is_frozen_and_checked_on_every_variant():
    config = parse_config([])
    with pytest.raises(FrozenInstanceError):
        config.seed = 2
    with pytest.raises(Exception, match="contradict"):
        replace(config, resume=True, overwrite=True)
    assert parse_config(["--seeds", "3,1", "--scoring", "official,blindspot", "--command", "benchmark"]).seeds == (3, 1)


def test_drop_bands_ranges_are_merged_never_expanded():
    config = parse_config(["--drop_bands", "5-9,1-3,4,20-100000000000"])
    assert config.drop_bands == ((1, 9), (20, 100000000000))


@pytest.mark.parametrize("text", ["2-", "-3", "5-2", "0", "a-b"])
def test_open_reversed_or_bad_band_ranges_are_refused(text, capsys):
    assert main(["--drop_bands", text]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: argument --drop_bands") and error.count("\n") == 1


def test_abbreviated_flags_are_refused(capsys):
    assert main(["--epoch", "3"]) == 2
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def flags_for(root, folder, *extra):
    return ["--dataset", str(root / folder / "scene.mat"), "--checkpoints_dir", str(root / "c"),
            "--results_dir", str(root / "r"), *cli_flags(root, "x")[8:], "--epochs", "1", *extra]


def test_two_scenes_with_one_file_name_keep_their_own_runs_and_results(scenes, capsys):
    for folder in ("data", "elsewhere"):
        assert main(["--command", "train", *flags_for(scenes, folder)]) == 0
        assert main(["--command", "predict", *flags_for(scenes, folder)]) == 0
    scene_folders = sorted(os.listdir(scenes / "c"))
    assert len(scene_folders) == 2 and all(name.startswith("scene-") for name in scene_folders)
    metrics = {}
    for name in scene_folders:
        import json
        recorded = json.loads((scenes / "r" / name / "latest" / "metrics.json").read_text())
        metrics[recorded["scene"]["path"]] = recorded["checkpoint"]
    # each scene was scored with the network trained on it
    assert {os.path.dirname(os.path.dirname(c)) for c in metrics.values()} == \
        {str(scenes / "c" / name) for name in scene_folders}
    capsys.readouterr()
    assert main(["--command", "train", *flags_for(scenes, "elsewhere")]) == 2
    error = capsys.readouterr().err
    assert "already holds a run" in error and "scene-" in error


def test_rx_with_and_without_drop_bands_keeps_both_results(scene_dir):
    flags = cli_flags(scene_dir, "tiny")
    assert main(["--command", "rx", *flags, "--drop_bands", "1-3"]) == 0
    assert main(["--command", "rx", *flags]) == 0
    assert main(["--command", "rx", *flags, "--gt_file", "tiny.mat"]) == 0
    results = scene_folder(scene_dir / "results", "tiny")
    folders = sorted(p.name for p in results.iterdir() if p.is_dir() and not p.is_symlink())
    assert folders[:2] == ["rx", "rx_drop1-3"] and folders[2].startswith("rx_gt-tiny-")
    assert all((results / name / "metrics.json").exists() for name in folders)


def test_a_run_of_the_file_name_layout_is_moved_to_its_scene_folder(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    run = run_directory(parse_config(flags))
    earlier = scene_dir / "checkpoints" / "tiny" / os.path.basename(run)
    os.makedirs(earlier.parent)
    os.rename(run, earlier)
    os.rmdir(os.path.dirname(run))
    capsys.readouterr()
    assert main(["--command", "predict", *flags]) == 0
    assert "note: moved the run in" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(run, "epoch_0001.pt")) and not earlier.exists()


def test_a_run_of_the_file_name_layout_from_another_scene_is_left_alone(scene_dir, tmp_path, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags]) == 0
    run = run_directory(parse_config(flags))
    earlier = scene_dir / "checkpoints" / "tiny" / os.path.basename(run)
    shutil.move(run, earlier)
    hsi, gt = tiny_scene(seed=3)  # the file now holds another scene
    scipy.io.savemat(scene_dir / "tiny.mat", {"data": hsi, "map": np.asarray(gt)})
    capsys.readouterr()
    assert main(["--command", "predict", *flags]) == 2
    captured = capsys.readouterr()
    assert "cannot be told to be this scene's" in captured.out and "no checkpoint for epoch 1" in captured.err
    assert (earlier / "epoch_0001.pt").exists()
