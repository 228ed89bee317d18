"""Prediction: score each pixel of a scene with a trained BS3LNet by its reconstruction error."""
import os
import sys
import time

import numpy as np
import scipy.io

from config import result_folder
from imagery import write_cube
from metrics import detection_map
from model import load_checkpoint
from results import write_results
from runs import find_checkpoint
from scenes import scene_from_config
from scoring import score_reconstruction
from utils import UserError, resolve_device, set_tf32


def load_network(config, path, bands):
    """The network of checkpoint `path` (and the checkpoint), checked against the scene's band count."""
    net, checkpoint = load_checkpoint(path)
    flags = dict(nch_ker=config.nch_ker, nblk=config.nblk, norm=config.norm_mode)
    trained = {key: net.args[key] for key in flags}
    if trained != flags:  # the checkpoint knows its network: trust it
        describe = lambda args: ", ".join(f"{k}={v}" for k, v in args.items())  # noqa: E731
        print(f"note: checkpoint {path} holds a network with {describe(trained)} (the flags say {describe(flags)}): "
              "using the checkpoint's")
    if bands != net.args["bands"]:
        raise UserError(f"checkpoint {path} was trained on {net.args['bands']} bands but {config.dataset} has "
                        f"{bands}: use a checkpoint trained on this scene")
    if config.tile is not None and net.args["norm"] == "inorm":
        print("warning: --tile with an InstanceNorm network: each tile is normalised by its own statistics, "
              "so the tiled map differs from the whole-scene map; leave --tile out if memory allows", file=sys.stderr)
    return net, checkpoint


def predict(config):
    """Score every pixel of `config.dataset` with a trained BS3LNet; returns the metrics dict."""
    device = resolve_device(config.device, config.gpu_ids)
    print(f"device: {device}")
    set_tf32(config.tf32)
    started = time.perf_counter()
    scene = scene_from_config(config)
    hsi = scene.hsi
    path = find_checkpoint(config)
    net, checkpoint = load_network(config, path, hsi.shape[2])
    loaded = time.perf_counter()
    reconstructed = score_reconstruction(net, hsi, device, config, scene.missing)
    inferred = time.perf_counter()
    if not np.isfinite(reconstructed).all():
        raise UserError(f"the network's reconstruction of {config.dataset} holds NaN or infinite values: the scene's "
                        f"values (largest {np.abs(hsi).max():.3g}) are beyond what the float32 network can take; "
                        "rescale the scene (and train on the rescaled scene)")
    scoring = config.single_scoring
    scoring_info = dict(name=scoring) if scoring == "official" else dict(
        name=scoring, repeats=config.score_repeats, seed=config.seed, size_window=config.size_window,
        ratio=config.ratio)
    info = dict(scoring=scoring_info, checkpoint=os.path.abspath(path), epoch=checkpoint.get("epoch"),
                model_args=net.args, train_config=checkpoint.get("config"), predict_config=config.as_dict(),
                device=str(device), scene=scene.describe(),
                seconds=dict(load=round(loaded - started, 4), inference=round(inferred - loaded, 4)))
    method = "BS3LNet" if scoring == "official" else f"BS3LNet (blind-spot scoring, R={config.score_repeats})"
    if scene.raster is None:
        extra_files = {"reconstructed_data.mat":
                       lambda target: scipy.io.savemat(target, {"reconstructed_data": reconstructed})}
    else:  # placed like the scene, and written in blocks: a flight line's reconstruction is as big as the scene
        extra_files = {"reconstructed.tif":
                       lambda target: write_cube(target, reconstructed, scene.raster, scene.missing)}
    return write_results(config, result_folder(config, "bs3lnet"), method,
                         detection_map(hsi, reconstructed, scene.missing), scene, extra_files, info)
