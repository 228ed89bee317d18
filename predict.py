"""Prediction: reconstruct the whole scene, score each pixel by its reconstruction error, write results."""
import json
import os
import shutil
import sys
import time

import numpy as np
import scipy.io

from dataset import load_scene
from evaluation import (format_metrics_table, lrx, metrics_3d, plot_detection_map, plot_roc, plot_roc_3d,
                        plot_separation, rx)
from model import load_checkpoint
from runs import checkpoint_path, run_directory, saved_epochs
from scoring import score_reconstruction, scoring_name, single_scoring
from utils import (UserError, atomic_write, atomic_write_text, auc_undefined, detection_map, min_max, resolve_device,
                   set_tf32)

RESULT_FILES = ("detectmap.mat", "reconstructed_data.mat", "detectmap.png", "roc.png", "roc3d.png",
                "separation.png", "metrics.json")


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


def write_results(config, folder, method, score_map, gt, arrays=None, info=None):
    """Write a method's score map, figures and metrics.json; returns the metrics.

    Files go to <results_dir>/<dataset>/<folder>/ (one folder per configuration) and are copied to
    <results_dir>/<dataset>/, which so always holds the latest results.
    """
    latest_dir = os.path.join(config.results_dir, config.dataset)
    out_dir = os.path.join(latest_dir, folder)
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        print(f"replacing the earlier results of this configuration in {out_dir}")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def output(name, write):
        atomic_write(os.path.join(out_dir, name), write)
        written.append(name)

    output("detectmap.mat", lambda tmp: scipy.io.savemat(tmp, {"detectmap": score_map}))
    for name, (key, value) in (arrays or {}).items():
        output(name, lambda tmp, key=key, value=value: scipy.io.savemat(tmp, {key: value}))
    metrics = dict(method=method, dataset=config.dataset, auc=None, auc_note=auc_undefined(gt), metrics_3d=None,
                   **(info or {}))
    if metrics["auc_note"] is None:
        metrics["metrics_3d"] = metrics_3d(gt, score_map)
        metrics["auc"] = metrics["metrics_3d"]["AUC(D,F)"]
    title = f"{config.dataset}: {method}" + (f", AUC {metrics['auc']:.4f}" if metrics["auc"] is not None else "")
    figures = {"detectmap.png": lambda path: plot_detection_map(path, score_map, gt, title)}
    if metrics["auc"] is not None:
        curves = {method: (gt, score_map)}
        figures.update({
            "roc.png": lambda path: plot_roc(path, curves, log_pf=config.roc_log, title=f"{config.dataset}: ROC"),
            "roc3d.png": lambda path: plot_roc_3d(path, curves, title=f"{config.dataset}: 3D ROC"),
            "separation.png": lambda path: plot_separation(path, {method: score_map}, gt,
                                                           title=f"{config.dataset}: score separation")})
    for name, plot in figures.items():  # each plot writes its file atomically
        plot(os.path.join(out_dir, name))
        written.append(name)
    metrics["results"] = os.path.abspath(out_dir)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    written.append("metrics.json")
    for name in written:
        atomic_write(os.path.join(latest_dir, name), lambda tmp, name=name: shutil.copyfile(
            os.path.join(out_dir, name), tmp))
    for stale in set(RESULT_FILES) - set(written):  # the latest folder holds one method's files, no mixture
        if os.path.exists(os.path.join(latest_dir, stale)):
            os.remove(os.path.join(latest_dir, stale))
    if metrics["auc"] is None:
        print(metrics["auc_note"])
    else:
        print(format_metrics_table(metrics["metrics_3d"]))
        print(f"AUC: {metrics['auc']:.4f}")
    print(f"results in {out_dir} (and {latest_dir})")
    return metrics


def scene_info(hsi, gt):
    return dict(height=hsi.shape[0], width=hsi.shape[1], bands=hsi.shape[2],
                anomaly_pixels=None if gt is None else int(gt.sum()))


def predict(config):
    """Score every pixel of `config.dataset` with a trained BS3LNet; returns the metrics dict."""
    scoring = single_scoring(config)
    device = resolve_device(config.device, config.gpu_ids)
    print(f"device: {device}")
    set_tf32(config.tf32)
    path = find_checkpoint(config)
    started = time.perf_counter()
    net, checkpoint = load_checkpoint(path)
    hsi, gt = load_scene(config.data_dir, config.dataset, config.data_key, config.gt_key)
    flags = dict(nch_ker=config.nch_ker, nblk=config.nblk, norm=config.norm_mode)
    trained = {key: net.args[key] for key in flags}
    if trained != flags:
        describe = lambda args: ", ".join(f"{k}={v}" for k, v in args.items())  # noqa: E731
        raise UserError(f"checkpoint {path} holds a network with {describe(trained)} but the flags say "
                        f"{describe(flags)}: pass the flags it was trained with (--nch_ker, --nblk, --norm_mode)")
    if hsi.shape[2] != net.args["bands"]:
        raise UserError(f"checkpoint {path} was trained on {net.args['bands']} bands but {config.dataset} has "
                        f"{hsi.shape[2]}: use a checkpoint trained on this scene")
    if config.tile is not None and net.args["norm"] == "inorm":
        print("warning: --tile with an InstanceNorm network: each tile is normalised by its own statistics, "
              "so the tiled map differs from the whole-scene map; leave --tile out if memory allows", file=sys.stderr)
    loaded = time.perf_counter()
    reconstructed = score_reconstruction(net, hsi, device, config)
    inferred = time.perf_counter()
    score_map = detection_map(hsi, reconstructed)
    if config.checkpoint:
        folder = "checkpoint_" + os.path.splitext(os.path.basename(config.checkpoint))[0]
    else:
        folder = os.path.join(os.path.basename(run_directory(config)), f"epoch_{config.epochs:04d}")
    folder = "_".join(filter(None, [folder, scoring_name(config)]))
    scoring_info = dict(name=scoring) if scoring == "official" else dict(
        name=scoring, repeats=config.score_repeats, seed=config.seed, size_window=config.size_window,
        ratio=config.ratio)
    info = dict(scoring=scoring_info, checkpoint=os.path.abspath(path), epoch=checkpoint.get("epoch"), model_args=net.args,
                train_config=checkpoint.get("config"), predict_config=vars(config), device=str(device),
                scene=scene_info(hsi, gt),
                seconds=dict(load=round(loaded - started, 4), inference=round(inferred - loaded, 4)))
    method = "BS3LNet" if scoring == "official" else f"BS3LNet (blind-spot scoring, R={config.score_repeats})"
    return write_results(config, folder, method, score_map, gt,
                         {"reconstructed_data.mat": ("reconstructed_data", reconstructed)}, info)


def detect_with_baseline(config, method):
    """Global RX (`rx`) or dual-window local RX (`lrx`) on `config.dataset`; writes what `predict` writes."""
    hsi, gt = load_scene(config.data_dir, config.dataset, config.data_key, config.gt_key)
    started = time.perf_counter()
    if method == "rx":
        scores, folder, label = rx(hsi), "rx", "RX"
    else:
        scores = lrx(hsi, config.win_in, config.win_out)
        folder, label = f"lrx_{config.win_in}_{config.win_out}", f"LRX {config.win_in}/{config.win_out}"
    info = dict(predict_config=vars(config), scene=scene_info(hsi, gt),
                seconds=dict(inference=round(time.perf_counter() - started, 4)))
    return write_results(config, folder, label, min_max(scores).astype(np.float32), gt, None, info)
