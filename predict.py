"""Prediction: reconstruct the whole scene, score each pixel by its reconstruction error, write results."""
import json
import os
import time

import numpy as np
import scipy.io
import torch

from dataset import load_scene
from model import load_checkpoint
from train import checkpoint_path, run_directory, saved_epochs
from utils import UserError, atomic_write, auc_score, detection_map, resolve_device


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


def reconstruct(net, hsi, device):
    """Run the whole H x W x B scene through `net` in eval mode; returns the H x W x B reconstruction."""
    scene = torch.from_numpy(np.ascontiguousarray(hsi.transpose(2, 0, 1)))[None].to(device)
    with torch.no_grad():
        output = net.to(device).eval()(scene)
    return output[0].permute(1, 2, 0).cpu().numpy()


def auc_or_reason(gt, score_map):
    """(AUC, None), or (None, why) when the map lacks anomalies or background."""
    anomalies = int(gt.sum())
    if anomalies == 0 or anomalies == gt.size:
        return None, f"AUC undefined: the map has {'no anomaly' if anomalies == 0 else 'no background'} pixel"
    return auc_score(gt, score_map), None


def save_map_figure(path, score_map, gt, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), constrained_layout=True)
    shown = axes[0].imshow(score_map, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(title)
    fig.colorbar(shown, ax=axes[0], fraction=0.046, pad=0.04)
    axes[1].imshow(gt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"ground truth ({int(gt.sum())} anomaly pixels)")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def save_roc_figure(path, score_map, gt, auc, label, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve
    false_alarm, detection, _ = roc_curve(gt.ravel(), score_map.ravel())
    fig, axis = plt.subplots(figsize=(4.8, 4.2), constrained_layout=True)
    axis.plot(false_alarm, detection, lw=2, label=f"{label} (AUC = {auc:.4f})")
    axis.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
    axis.set(xlabel="false alarm rate $P_F$", ylabel="detection probability $P_D$", xlim=(0, 1), ylim=(0, 1.01),
             title=title)
    axis.legend(loc="lower right")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def predict(config):
    """Score every pixel of `config.dataset` with a trained BS3LNet; returns the metrics dict."""
    device = resolve_device(config.device, config.gpu_ids)
    print(f"device: {device}")
    path = find_checkpoint(config)
    started = time.perf_counter()
    net, checkpoint = load_checkpoint(path)
    hsi, gt = load_scene(config.data_dir, config.dataset)
    if hsi.shape[2] != net.args["bands"]:
        raise UserError(f"checkpoint {path} was trained on {net.args['bands']} bands but {config.dataset} has "
                        f"{hsi.shape[2]}: use a checkpoint trained on this scene")
    loaded = time.perf_counter()
    reconstructed = reconstruct(net, hsi, device)
    inferred = time.perf_counter()
    score_map = detection_map(hsi, reconstructed)
    auc, auc_note = auc_or_reason(gt, score_map)

    out_dir = os.path.join(config.results_dir, config.dataset)
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        print(f"replacing the earlier results in {out_dir}")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "detectmap.mat"),
                 lambda tmp: scipy.io.savemat(tmp, {"detectmap": score_map}))
    atomic_write(os.path.join(out_dir, "reconstructed_data.mat"),
                 lambda tmp: scipy.io.savemat(tmp, {"reconstructed_data": reconstructed}))
    title = f"{config.dataset}: BS3LNet detection map" + (f", AUC {auc:.4f}" if auc is not None else "")
    save_map_figure(os.path.join(out_dir, "detectmap.png"), score_map, gt, title)
    if auc is not None:
        save_roc_figure(os.path.join(out_dir, "roc.png"), score_map, gt, auc, "BS3LNet",
                        f"{config.dataset}: ROC curve")
    metrics = dict(
        dataset=config.dataset, auc=auc, auc_note=auc_note, checkpoint=os.path.abspath(path),
        epoch=checkpoint.get("epoch"), model_args=net.args, train_config=checkpoint.get("config"),
        predict_config=vars(config), device=str(device),
        scene=dict(height=hsi.shape[0], width=hsi.shape[1], bands=hsi.shape[2], anomaly_pixels=int(gt.sum())),
        seconds=dict(load=round(loaded - started, 4), inference=round(inferred - loaded, 4),
                     total=round(time.perf_counter() - started, 4)))
    atomic_write(os.path.join(out_dir, "metrics.json"),
                 lambda tmp: open(tmp, "w").write(json.dumps(metrics, indent=2) + "\n"))
    print(f"AUC: {auc:.4f}" if auc is not None else auc_note)
    print(f"inference {metrics['seconds']['inference']:.2f} s; results in {out_dir}")
    return metrics
