"""Results folders: a method's score map, figures and metrics.json written whole in a staging folder, moved
into place in one step, and `latest` switched to it."""
import glob
import json
import os
import shutil
import tempfile

import scipy.io

from figures import plot_detection_map, plot_roc, plot_roc_3d, plot_separation
from imagery import write_map
from metrics import auc_undefined, data_pixels, format_metrics_table, meaningless_map, metrics_3d
from scenes import scene_identity, scene_name
from utils import UserError, atomic_write_text, follow_umask, sync_to_disk

LATEST = "latest"  # <results_dir>/<dataset>/latest: a link to the folder of the latest results


def write_results(config, folder, method, score_map, scene, extra_files=None, info=None):
    """Write a method's score map (NaN at no-data pixels), figures and metrics.json; returns the metrics.

    Files go to <results_dir>/<scene name>/<folder>/ (one folder per configuration), written completely in
    a staging folder first and then moved into place, and <results_dir>/<scene name>/latest is switched to
    that folder in one step: a kill at any moment leaves each view one run's files, never a mixture.
    `extra_files` maps file names to functions writing such a file at a given path.
    """
    dataset_dir = os.path.join(config.results_dir, scene_identity(config.data_dir, config.dataset))
    out_dir = os.path.join(dataset_dir, folder)
    check_latest_is_a_link(dataset_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    for parent in {dataset_dir, os.path.dirname(out_dir)}:
        remove_abandoned_staging(parent)
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
    run = [f"epoch {metrics['epoch']}"] if metrics.get("epoch") is not None else []  # baselines have no epoch
    if (metrics.get("scoring") or {}).get("name") == "official":  # blind-spot scoring is named in `method`
        run.append("official scoring")
    run = f"{name}: {method}" + "".join(f", {part}" for part in run)  # scene, method, epoch, scoring
    title = run + (f"\nAUC(D,F) {metrics['auc']:.4f}" if metrics["auc"] is not None else "")
    plot_detection_map(os.path.join(out_dir, "detectmap.png"), score_map, scene.gt, title)
    if metrics["auc"] is not None:
        curves = {method: (gt, scores)}
        plot_roc(os.path.join(out_dir, "roc.png"), curves, log_pf=config.roc_log, title=f"ROC\n{run}")
        plot_roc_3d(os.path.join(out_dir, "roc3d.png"), curves, title=f"3D ROC\n{run}")
        plot_separation(os.path.join(out_dir, "separation.png"), {method: scores}, gt,
                        title=f"Score separation\n{run}")
    return metrics


def check_latest_is_a_link(dataset_dir):
    """Refuse, before anything is written, a `latest` that is not this tool's link (a folder or file of the
    user's, which is never replaced)."""
    latest = os.path.join(dataset_dir, LATEST)
    if os.path.lexists(latest) and not os.path.islink(latest):
        raise UserError(f"{latest} is a {'folder' if os.path.isdir(latest) else 'file'} of yours, where results "
                        "keep a link to the latest results: rename or move it, then run again (nothing was written)")


def remove_abandoned_staging(folder):
    """Staging folders and `latest` links of processes that no longer run (killed while writing results)."""
    for path in glob.glob(os.path.join(folder, ".tmp-*")):
        try:
            pid = int(os.path.basename(path).split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            if os.path.islink(path):
                os.remove(path)
            else:
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
