"""Prediction: score each pixel by its reconstruction error, write the results folder; the RX/LRX commands."""
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import scipy.io

from dataset import scene_from_config, scene_name
from evaluation import (auc_undefined, data_pixels, detection_map, format_metrics_table, lrx, lrx_singular_note,
                        meaningless_map, metrics_3d, min_max, plot_detection_map, plot_roc, plot_roc_3d,
                        plot_separation, rx, with_missing)
from imagery import write_cube, write_map
from model import load_checkpoint
from runs import checkpoint_path, run_directory, saved_epochs
from scoring import score_reconstruction, scoring_name, single_scoring
from utils import UserError, atomic_write_text, follow_umask, resolve_device, set_tf32, sync_to_disk

LATEST = "latest"  # <results_dir>/<dataset>/latest: a link to the folder of the latest results


def find_checkpoint(config):
    """--checkpoint if given, else the checkpoint of epoch --epochs of the run these flags describe."""
    if config.checkpoint:
        return config.checkpoint
    run_dir = run_directory(config)
    path = checkpoint_path(run_dir, config.epochs)
    if not os.path.exists(path):
        found = saved_epochs(run_dir)
        hint = (f"it has epochs {', '.join(map(str, found))}: pass one as --epochs" if found
                else "train with the same flags first, or pass --checkpoint PATH")
        raise UserError(f"no checkpoint for epoch {config.epochs} in {run_dir}: {hint}")
    return path


def write_results(config, folder, method, score_map, scene, extra_files=None, info=None):
    """Write a method's score map (NaN at no-data pixels), figures and metrics.json; returns the metrics.

    Files go to <results_dir>/<scene name>/<folder>/ (one folder per configuration), written completely in
    a staging folder first and then moved into place, and <results_dir>/<scene name>/latest is switched to
    that folder in one step: a kill at any moment leaves each view one run's files, never a mixture.
    `extra_files` maps file names to functions writing such a file at a given path.
    """
    dataset_dir = os.path.join(config.results_dir, scene_name(config.dataset))
    out_dir = os.path.join(dataset_dir, folder)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    remove_abandoned_staging(os.path.dirname(out_dir))
    staging = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f".tmp-{os.getpid()}-")
    try:
        metrics = write_result_files(config, staging, method, score_map, scene, extra_files, info)
        metrics["results"] = os.path.abspath(out_dir)
        with open(os.path.join(staging, "metrics.json"), "w") as handle:  # the folder is moved into place whole
            handle.write(json.dumps(metrics, indent=2) + "\n")
        follow_umask(staging, directory=True)
        for name in os.listdir(staging):
            sync_to_disk(os.path.join(staging, name))
        if os.path.exists(out_dir):
            print(f"replacing the earlier results of this configuration in {out_dir}")
            old = staging + "-old"
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sync_to_disk(os.path.dirname(out_dir))
    point_latest_to(dataset_dir, folder)
    if metrics["auc"] is None:
        print(metrics["auc_note"])
    else:
        print(format_metrics_table(metrics["metrics_3d"]))
        print(f"AUC: {metrics['auc']:.4f}")
    print(f"results in {out_dir} (and {os.path.join(dataset_dir, LATEST)})")
    return metrics


def write_result_files(config, out_dir, method, score_map, scene, extra_files, info):
    """The score map, the extra files, the figures into `out_dir`; returns the metrics (not yet written).

    The metrics are over the data pixels: no-data pixels are left out of the AUC.
    """
    scipy.io.savemat(os.path.join(out_dir, "detectmap.mat"), {"detectmap": score_map})
    if scene.raster is not None:
        write_map(out_dir, "detectmap", score_map, scene.raster)
    for name, write in (extra_files or {}).items():
        write(os.path.join(out_dir, name))
    gt, scores = data_pixels(scene.gt, scene.missing), data_pixels(score_map, scene.missing)
    metrics = dict(method=method, dataset=config.dataset, auc=None, auc_note=auc_undefined(gt), metrics_3d=None,
                   **(info or {}))
    if metrics["auc_note"] is None:
        metrics["auc_note"] = meaningless_map(scores)
    if metrics["auc_note"] is None:
        metrics["metrics_3d"] = metrics_3d(gt, scores)
        metrics["auc"] = metrics["metrics_3d"]["AUC(D,F)"]
    name = scene_name(config.dataset)
    title = f"{name}: {method}" + (f", AUC {metrics['auc']:.4f}" if metrics["auc"] is not None else "")
    plot_detection_map(os.path.join(out_dir, "detectmap.png"), score_map, scene.gt, title)
    if metrics["auc"] is not None:
        curves = {method: (gt, scores)}
        plot_roc(os.path.join(out_dir, "roc.png"), curves, log_pf=config.roc_log, title=f"{name}: ROC")
        plot_roc_3d(os.path.join(out_dir, "roc3d.png"), curves, title=f"{name}: 3D ROC")
        plot_separation(os.path.join(out_dir, "separation.png"), {method: scores}, gt,
                        title=f"{name}: score separation")
    return metrics


def remove_abandoned_staging(folder):
    """Staging folders of processes that no longer run (killed while writing results)."""
    for path in glob.glob(os.path.join(folder, ".tmp-*")):
        try:
            pid = int(os.path.basename(path).split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def point_latest_to(dataset_dir, folder):
    """Switch <dataset_dir>/latest to `folder` in one step (a symbolic link replaced atomically).

    Where links cannot be made (some Windows set-ups), latest.txt names the folder instead.
    """
    link = os.path.join(dataset_dir, LATEST)
    temporary = os.path.join(dataset_dir, f".tmp-{os.getpid()}-latest")
    if os.path.lexists(temporary):  # left by a killed process that had this process id
        os.remove(temporary)
    try:
        os.symlink(folder, temporary, target_is_directory=True)
    except (OSError, NotImplementedError):
        atomic_write_text(os.path.join(dataset_dir, LATEST + ".txt"), folder + "\n")
        return
    os.replace(temporary, link)


def predict(config):
    """Score every pixel of `config.dataset` with a trained BS3LNet; returns the metrics dict."""
    scoring = single_scoring(config)
    device = resolve_device(config.device, config.gpu_ids)
    print(f"device: {device}")
    set_tf32(config.tf32)
    started = time.perf_counter()
    scene = scene_from_config(config)
    hsi = scene.hsi
    path = find_checkpoint(config)
    net, checkpoint = load_checkpoint(path)
    flags = dict(nch_ker=config.nch_ker, nblk=config.nblk, norm=config.norm_mode)
    trained = {key: net.args[key] for key in flags}
    if trained != flags:  # the checkpoint knows its network: trust it
        describe = lambda args: ", ".join(f"{k}={v}" for k, v in args.items())  # noqa: E731
        print(f"note: checkpoint {path} holds a network with {describe(trained)} (the flags say {describe(flags)}): "
              "using the checkpoint's")
    if hsi.shape[2] != net.args["bands"]:
        raise UserError(f"checkpoint {path} was trained on {net.args['bands']} bands but {config.dataset} has "
                        f"{hsi.shape[2]}: use a checkpoint trained on this scene")
    if config.tile is not None and net.args["norm"] == "inorm":
        print("warning: --tile with an InstanceNorm network: each tile is normalised by its own statistics, "
              "so the tiled map differs from the whole-scene map; leave --tile out if memory allows", file=sys.stderr)
    loaded = time.perf_counter()
    reconstructed = score_reconstruction(net, hsi, device, config, scene.missing)
    inferred = time.perf_counter()
    if not np.isfinite(reconstructed).all():
        raise UserError(f"the network's reconstruction of {config.dataset} holds NaN or infinite values: the scene's "
                        f"values (largest {np.abs(hsi).max():.3g}) are beyond what the float32 network can take; "
                        "rescale the scene (and train on the rescaled scene)")
    score_map = detection_map(hsi, reconstructed, scene.missing)
    if config.checkpoint:  # named by the file and a digest of its full path: two runs' epoch_0003.pt differ
        digest = hashlib.sha1(os.path.abspath(config.checkpoint).encode()).hexdigest()[:8]
        folder = f"checkpoint_{os.path.splitext(os.path.basename(config.checkpoint))[0]}_{digest}"
    else:
        folder = os.path.join(os.path.basename(run_directory(config)), f"epoch_{config.epochs:04d}")
    folder = "_".join(filter(None, [folder, scoring_name(config)]))
    scoring_info = dict(name=scoring) if scoring == "official" else dict(
        name=scoring, repeats=config.score_repeats, seed=config.seed, size_window=config.size_window,
        ratio=config.ratio)
    info = dict(scoring=scoring_info, checkpoint=os.path.abspath(path), epoch=checkpoint.get("epoch"),
                model_args=net.args, train_config=checkpoint.get("config"), predict_config=vars(config),
                device=str(device), scene=scene.describe(),
                seconds=dict(load=round(loaded - started, 4), inference=round(inferred - loaded, 4)))
    method = "BS3LNet" if scoring == "official" else f"BS3LNet (blind-spot scoring, R={config.score_repeats})"
    if scene.raster is None:
        extra_files = {"reconstructed_data.mat":
                       lambda target: scipy.io.savemat(target, {"reconstructed_data": reconstructed})}
    else:  # placed like the scene, and written in blocks: a flight line's reconstruction is as big as the scene
        extra_files = {"reconstructed.tif":
                       lambda target: write_cube(target, reconstructed, scene.raster, scene.missing)}
    return write_results(config, folder, method, score_map, scene, extra_files, info)


def detect_with_baseline(config, method):
    """Global RX (`rx`) or dual-window local RX (`lrx`) on `config.dataset`; writes what `predict` writes."""
    scene = scene_from_config(config)
    started = time.perf_counter()
    if method == "rx":
        scores, folder, label = rx(scene.hsi, scene.missing), "rx", "RX"
    else:  # windows reaching into no-data see its fill (the nearest data spectra); its own scores are dropped below
        scores = lrx(scene.hsi, config.win_in, config.win_out)
        folder, label = f"lrx_{config.win_in}_{config.win_out}", f"LRX {config.win_in}/{config.win_out}"
    info = dict(predict_config=vars(config), scene=scene.describe(),
                seconds=dict(inference=round(time.perf_counter() - started, 4)))
    note = lrx_singular_note(config.win_in, config.win_out, scene.hsi.shape[2]) if method == "lrx" else None
    if note:
        print(f"note: {note}")
        info["note"] = note
    return write_results(config, folder, label, with_missing(min_max, scores, scene.missing).astype(np.float32),
                         scene, None, info)
