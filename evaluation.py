"""Scoring maps and metrics: the detection map, AUC and the one rule for when it is undefined, RX and LRX,
Chang's 3D-ROC metrics, and the usual figures."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from utils import UserError, atomic_write

LRX_BORDER_NOTE = ("Near the edges both windows are clipped to the scene, so border pixels draw their background "
                   "from fewer pixels (no padding, which would mirror a pixel into its own background).")

METRIC_KEYS = ("AUC(D,F)", "AUC(D,tau)", "AUC(F,tau)", "AUC_TD", "AUC_BS", "AUC_TDBS", "AUC_OD", "AUC_ODP",
               "AUC_SNPR")

PF_FLOOR = 1e-4  # where a log-scale ROC draws P_F = 0
ANOMALY_RED, BACKGROUND_BLUE = "#d62728", "#1f77b4"


def min_max(scores):
    """Scale a score map to [0, 1]; a constant map (no ranking) becomes zeros."""
    low, high = scores.min(), scores.max()
    if high == low:
        return np.zeros_like(scores)
    return (scores - low) / (high - low)


def detection_map(hsi, reconstructed, missing=None, rows_per_block=64):
    """Per-pixel mean squared error over bands (H x W x B inputs), min-max scaled to [0, 1], float32.

    With `missing` (H x W bool), no-data pixels are NaN and the scaling is over the data pixels.

    Computed in float64, where squares of float32 values cannot overflow (in float32 a scene with values
    near 1e20 gave an all-zero map), a block of rows at a time, so a big scene needs no full-size
    temporaries. Equal to the official float32 computation up to rounding.
    """
    error = np.empty(hsi.shape[:2], np.float64)
    for top in range(0, hsi.shape[0], rows_per_block):
        rows = slice(top, top + rows_per_block)
        difference = np.asarray(hsi[rows], np.float64) - np.asarray(reconstructed[rows], np.float64)
        error[rows] = np.mean(difference ** 2, axis=2)
    return with_missing(min_max, error, missing).astype(np.float32)


def with_missing(score, values, missing):
    """`score(values)` (H x W or H x W x B) over the data pixels only: an H x W map, NaN at the `missing`
    ones (H x W bool, or None when all pixels hold data)."""
    if missing is None:
        return score(values)
    result = np.full(missing.shape, np.nan)
    result[~missing] = score(values[~missing])
    return result


def data_pixels(values, missing):
    """An H x W map's values at the data pixels (flat), or the map itself when no pixel is `missing` (None)."""
    if values is None or missing is None:
        return values
    return np.asarray(values)[~missing]


def auc_undefined(gt_map):
    """Why the AUC of a map against `gt_map` is undefined (no map, no anomaly, no background), or None."""
    if gt_map is None:
        return "AUC undefined: the scene file has no ground-truth map"
    anomalies = int(np.sum(gt_map))
    if anomalies in (0, np.size(gt_map)):
        return f"AUC undefined: the map has {'no anomaly' if anomalies == 0 else 'no background'} pixel"
    return None


def auc_score(gt_map, score_map):
    """AUC(D,F) exactly as the official code: sklearn's roc_auc_score over all pixels."""
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.asarray(gt_map).ravel(), np.asarray(score_map).ravel()))


def meaningless_map(score_map):
    """Why a detection map cannot rank pixels (constant or not finite), or None."""
    if not np.isfinite(score_map).all():
        return "AUC not computed: the detection map holds NaN or infinite values"
    if score_map.min() == score_map.max():
        return "AUC not computed: the detection map is constant, so it ranks no pixel above another"
    return None


def _pinv_rcond(bands):
    """Relative cutoff of the pseudo-inverses: numpy's rtol=None rule, max(M, N) * eps.

    np.linalg.pinv's legacy default, 1e-15, lies within a factor of about 3 of the rounding-level
    eigenvalues of rank-deficient window covariances (fewer distinct background pixels than bands) on
    the benchmark scenes, and would invert such noise into huge scores; B * eps (4e-14 for 189 bands)
    leaves a margin.
    """
    return bands * np.finfo(np.float64).eps


def rx(hsi, missing=None):
    """Global RX: squared Mahalanobis distance of every pixel to the scene mean; H x W x B -> H x W float64.

    The covariance over all pixels is inverted with a pseudo-inverse, as `spectral.rx` does; higher is
    more anomalous. With `missing` (H x W bool), the statistics are the data pixels' and no-data pixels
    score NaN.
    """
    return with_missing(_rx_scores, np.asarray(hsi, np.float64), missing)


def _rx_scores(spectra):
    """RX scores of spectra (... x B), against their own mean and covariance."""
    bands = spectra.shape[-1]
    pixels = spectra.reshape(-1, bands)
    if len(pixels) <= bands + 1:  # then every pixel is equally far from the others: scores are rounding noise
        raise UserError(f"RX needs more pixels than bands + 1, and the scene has {len(pixels)} pixels with data "
                        f"and {bands} bands: with so few pixels RX scores every pixel alike")
    centred = pixels - pixels.mean(axis=0)
    # np.cov's 1/(N-1). 1/N would scale every score by the same factor and leave every AUC as it is.
    covariance = np.atleast_2d(np.cov(pixels, rowvar=False))
    inverse = np.linalg.pinv(covariance, rcond=_pinv_rcond(bands), hermitian=True)
    return np.sum((centred @ inverse) * centred, axis=1).reshape(spectra.shape[:-1])


def lrx_singular_note(win_in, win_out, bands):
    """A note when LRX's background windows hold no more pixels than bands (singular covariances), or None."""
    background = win_out ** 2 - win_in ** 2
    if background > bands:
        return None
    return (f"LRX's windows hold {background} background pixels, not more than the {bands} bands: every local "
            "covariance is singular and only its pseudo-inverse is used; widen --win_out for a full-rank LRX")


def check_lrx_windows(win_in, win_out, height, width):
    """Raise UserError unless both windows are odd, 1 <= win_in < win_out, and win_out fits in the scene.

    A window wider than the scene would be clipped for every pixel, leaving a global detector along that side.
    """
    for name, size in (("win_in", win_in), ("win_out", win_out)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
            raise UserError(f"LRX window {name}={size!r} is not allowed: windows are centred on the pixel, "
                            "so use an odd whole number of pixels (1, 3, 5, ...)")
    if win_in >= win_out:
        raise UserError(f"LRX inner window win_in={win_in} is not smaller than the outer window win_out={win_out}: "
                        f"use an odd win_out of at least {win_in + 2}, or a smaller win_in")
    side = min(height, width)
    if win_out > side:
        largest = side if side % 2 else side - 1
        if largest < 3:
            hint = "LRX needs a scene at least 3 pixels high and wide"
        elif largest <= win_in:
            hint = f"use win_out={largest} with an odd win_in below it"
        else:
            hint = f"use an odd win_out from {win_in + 2} to {largest}"
        raise UserError(f"LRX outer window win_out={win_out} is larger than the {height} x {width} scene: {hint}")


def lrx(hsi, win_in, win_out):
    """Local dual-window RX; H x W x B -> H x W float64, higher is more anomalous.

    Each pixel x is scored (x - mu)^T pinv(C) (x - mu), with mu and C (np.cov's 1/(n-1)) taken over the
    pixels of the win_out x win_out window centred on it minus its win_in x win_in inner window.
    Near the edges both windows are clipped to the scene (see LRX_BORDER_NOTE).
    """
    hsi = np.asarray(hsi, np.float64)
    height, width, bands = hsi.shape
    check_lrx_windows(win_in, win_out, height, width)
    outer, inner = win_out // 2, win_in // 2
    rows, cols = np.mgrid[-outer:outer + 1, -outer:outer + 1]
    ring = (np.abs(rows) > inner) | (np.abs(cols) > inner)
    offsets = rows[ring], cols[ring]
    pixels = hsi.reshape(-1, bands)
    batch = max(1, min(256, 2 ** 22 // (int(ring.sum()) * bands)))  # about 32 MB of gathered spectra per batch

    def score(start):
        return _lrx_batch(pixels, height, width, offsets, np.arange(start, min(start + batch, height * width)))

    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # The per-pixel eigendecompositions dominate. numpy releases the GIL during them, and one BLAS thread
    # per batch beats a multi-threaded BLAS, which is slower on matrices this small and thrashes under load.
    with threadpool_limits(limits=1), ThreadPoolExecutor(min(workers, 8)) as pool:
        return np.concatenate(list(pool.map(score, range(0, height * width, batch)))).reshape(height, width)


def _lrx_batch(pixels, height, width, offsets, flat):
    """LRX scores of the pixels whose row-major indices are `flat`."""
    rows = flat[:, None] // width + offsets[0]
    cols = flat[:, None] % width + offsets[1]
    inside = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).astype(np.float64)
    # Offsets that fall outside the scene gather some scene pixel, then weigh 0: clipping without ragged arrays.
    samples = pixels[np.clip(rows, 0, height - 1) * width + np.clip(cols, 0, width - 1)]
    count = inside.sum(axis=1)
    mean = np.einsum("pk,pkb->pb", inside, samples) / count[:, None]
    centred = (samples - mean[:, None]) * inside[..., None]
    covariance = np.matmul(centred.transpose(0, 2, 1), centred) / (count - 1)[:, None, None]
    values, vectors = np.linalg.eigh(covariance)
    # pinv(C) = sum over kept eigenpairs of v v^T / lambda, with np.linalg.pinv(hermitian=True)'s cut on |lambda|.
    projected = np.einsum("pbi,pb->pi", vectors, pixels[flat] - mean)
    keep = np.abs(values) > _pinv_rcond(pixels.shape[1]) * np.abs(values).max(axis=1, keepdims=True)
    return np.sum(np.where(keep, projected ** 2 / np.where(keep, values, 1.0), 0.0), axis=1)


def _labelled_scores(gt, score_map):
    """(anomaly mask, normalised scores), both flat; ValueError when the ROC is undefined or inputs are bad."""
    gt, score_map = np.asarray(gt), np.asarray(score_map)
    if gt.shape != score_map.shape:
        raise ValueError(f"ground truth {gt.shape} and score map {score_map.shape} differ in shape")
    if not np.isin(gt, (0, 1)).all():
        raise ValueError("the ground truth must hold only 0 (background) and 1 (anomaly)")
    if not np.isfinite(score_map).all():
        raise ValueError("the score map holds NaN or infinite values")
    undefined = auc_undefined(gt)
    if undefined:
        raise ValueError(undefined)
    labels = gt.ravel() == 1
    return labels, min_max(score_map.astype(np.float64)).ravel()


def metrics_3d(gt, score_map):
    """Chang's 3D-ROC metrics (IEEE TGRS 59(6), 2021) of a score map against a 0/1 ground truth, as floats.

    The map is min-max normalised; at threshold tau in [0, 1], P_D and P_F are the fractions of anomaly and
    background pixels scoring >= tau. 'AUC_SNPR' is None when AUC(F,tau) is 0 (every background pixel at
    the minimum score), where the ratio is infinite. ValueError when gt lacks anomalies or background.
    """
    labels, scores = _labelled_scores(gt, score_map)
    auc_df = auc_score(gt, score_map)  # on the raw map: normalising could round distinct scores into ties
    # The integral of P(tau) = mean_i [s_i >= tau] over [0, 1] is mean_i s_i, exactly, for scores in [0, 1].
    auc_dt, auc_ft = float(scores[labels].mean()), float(scores[~labels].mean())
    return {"AUC(D,F)": auc_df, "AUC(D,tau)": auc_dt, "AUC(F,tau)": auc_ft,
            "AUC_TD": auc_df + auc_dt, "AUC_BS": auc_df - auc_ft, "AUC_TDBS": auc_dt - auc_ft,
            "AUC_OD": auc_df + auc_dt - auc_ft, "AUC_ODP": auc_dt + 1 - auc_ft,
            "AUC_SNPR": auc_dt / auc_ft if auc_ft > 0 else None}


def format_metrics_table(metrics):
    """Fixed-width text table of `metrics_3d` results: one dict, or {method: dict} for a column per method."""
    columns = metrics if all(isinstance(value, dict) for value in metrics.values()) else {"value": metrics}
    width = max(9, *(len(label) for label in columns)) + 2
    lines = ["metric".ljust(11) + "".join(label.rjust(width) for label in columns)]
    for key in next(iter(columns.values())):
        cells = ("n/a" if column.get(key) is None else f"{column[key]:.4f}" for column in columns.values())
        lines.append(key.ljust(11) + "".join(cell.rjust(width) for cell in cells))
    return "\n".join(lines)


def roc_points(gt, score_map):
    """(thresholds tau, P_D, P_F) of the min-max normalised map, tau falling from 1 to its minimum, 0.

    Every distinct score is a threshold, so P_D and P_F are exact step functions of tau. The first point
    (P_D = P_F = 0) is sklearn's threshold above every score, placed at tau = 1.
    """
    from sklearn.metrics import roc_curve  # imported here: training need not pay for scikit-learn
    labels, scores = _labelled_scores(gt, score_map)
    false_alarm, detection, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return np.minimum(thresholds, 1.0), detection, false_alarm


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(index):
    """Colour and dash for the index-th method: distinct in colour and still apart in greyscale print."""
    return dict(color=f"C{index % 10}", linestyle=("-", "--", "-.", ":")[index % 4], linewidth=1.8)


def _save(fig, path):
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150))
    finally:
        _pyplot().close(fig)


def plot_roc(path, curves, log_pf=False, title="ROC curves"):
    """Write a PNG of P_D against P_F for {label: (gt, score_map)}, AUC(D,F) in the legend.

    With log_pf the P_F axis is logarithmic from PF_FLOOR, where P_F = 0 is drawn.
    """
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.4, 4.6), constrained_layout=True)
    for index, (label, (gt, score_map)) in enumerate(curves.items()):
        _, detection, false_alarm = roc_points(gt, score_map)
        if log_pf:
            false_alarm = np.maximum(false_alarm, PF_FLOOR)
        axis.plot(false_alarm, detection, label=f"{label} (AUC = {auc_score(gt, score_map):.4f})", **_style(index))
    if log_pf:
        axis.set_xscale("log")
        axis.set_xlim(PF_FLOOR, 1)
    else:
        axis.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle=":")
        axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set(xlabel="false alarm rate $P_F$" + (" (log scale)" if log_pf else ""),
             ylabel="detection probability $P_D$", title=title)
    axis.grid(True, which="major", alpha=0.5)
    axis.legend(loc="upper left" if log_pf else "lower right", fontsize=9)  # where ROC curves seldom run
    _save(fig, path)


def plot_roc_3d(path, curves, title="3D ROC curves", projections=True):
    """Write a PNG of the 3D ROC curve (P_F, tau, P_D) for {label: (gt, score_map)}.

    With projections, three panels beside it show P_D against P_F, P_D against tau and P_F against tau,
    each with its area in the legend, as Chang's 3D-ROC papers do.
    """
    plt = _pyplot()
    fig = plt.figure(figsize=(12, 10) if projections else (7, 6), constrained_layout=True)
    axis3d = fig.add_subplot(2, 2, 1, projection="3d") if projections else fig.add_subplot(projection="3d")
    panels = [fig.add_subplot(2, 2, index) for index in (2, 3, 4)] if projections else []
    for index, (label, (gt, score_map)) in enumerate(curves.items()):
        thresholds, detection, false_alarm = roc_points(gt, score_map)
        # P_D and P_F hold their value at tau = thresholds[k] down to the next threshold: draw them as stairs.
        tau = np.repeat(thresholds, 2)[1:]
        stair_d, stair_f = np.repeat(detection, 2)[:-1], np.repeat(false_alarm, 2)[:-1]
        style = _style(index)
        axis3d.plot(stair_f, tau, stair_d, label=label, **style)
        if projections:
            metrics = metrics_3d(gt, score_map)
            panels[0].plot(false_alarm, detection, label=f"{label} ({metrics['AUC(D,F)']:.4f})", **style)
            panels[1].plot(tau, stair_d, label=f"{label} ({metrics['AUC(D,tau)']:.4f})", **style)
            panels[2].plot(tau, stair_f, label=f"{label} ({metrics['AUC(F,tau)']:.4f})", **style)
    axis3d.set(xlabel="$P_F$", ylabel=r"$\tau$", xlim=(0, 1), ylim=(0, 1), zlim=(0, 1))
    axis3d.zaxis.set_rotate_label(False)  # matplotlib would turn the P_D label upside down in this view
    axis3d.set_zlabel("$P_D$", rotation=90)
    axis3d.view_init(elev=22, azim=-130)
    axis3d.set_box_aspect(None, zoom=1.05)
    axis3d.legend(loc="upper left", fontsize=9)
    if projections:
        fig.suptitle(title, fontsize=14)
        axis3d.set_title("3D ROC")
    else:
        axis3d.set_title(title)
    for axis, (xlabel, ylabel, area, where) in zip(panels, (
            ("$P_F$", "$P_D$", "AUC$_{(D,F)}$", "lower right"),
            (r"$\tau$", "$P_D$", r"AUC$_{(D,\tau)}$", "upper right"),
            (r"$\tau$", "$P_F$", r"AUC$_{(F,\tau)}$", "upper right"))):
        axis.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f"{ylabel} vs {xlabel}")
        axis.grid(True, alpha=0.5)
        axis.legend(loc=where, fontsize=9, title=area, title_fontsize=9)
    _save(fig, path)


def plot_separation(path, maps, gt, title="Anomaly-background separation"):
    """Write a PNG of box plots of normalised scores, anomaly (red) beside background (blue), per method.

    `maps` is {label: score_map}. Boxes span the quartiles with the median marked, whiskers reach the 10th
    and 90th percentiles, outliers are not drawn: the usual HAD separation figure.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch
    fig, axis = plt.subplots(figsize=(max(4.5, 1.3 * len(maps) + 1.8), 4.4), constrained_layout=True)
    for index, score_map in enumerate(maps.values()):
        labels, scores = _labelled_scores(gt, score_map)
        boxes = axis.boxplot([scores[labels], scores[~labels]], positions=[index - 0.18, index + 0.18],
                             widths=0.3, whis=(10, 90), showfliers=False, patch_artist=True,
                             medianprops=dict(color="black", linewidth=1.5))
        for box, colour in zip(boxes["boxes"], (ANOMALY_RED, BACKGROUND_BLUE)):
            box.set(facecolor=colour, edgecolor="black", alpha=0.85)
    axis.set_xticks(range(len(maps)), list(maps))
    axis.set(xlim=(-0.6, len(maps) - 0.4), ylim=(-0.02, 1.02), ylabel="normalised detection score", title=title)
    axis.grid(True, axis="y", alpha=0.5)
    axis.legend(handles=[Patch(facecolor=ANOMALY_RED, edgecolor="black", label="anomaly"),
                         Patch(facecolor=BACKGROUND_BLUE, edgecolor="black", label="background")],
                loc="upper right", fontsize=9)
    _save(fig, path)


def plot_detection_map(path, score_map, gt, title):
    """Write a PNG of the detection map (jet, with a colour bar) beside the ground truth, if there is one."""
    plt = _pyplot()
    panels = 1 if gt is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.2), constrained_layout=True, squeeze=False)
    shown = axes[0, 0].imshow(score_map, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set_title(title)
    fig.colorbar(shown, ax=axes[0, 0], fraction=0.046, pad=0.04)
    if gt is not None:
        axes[0, 1].imshow(gt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, 1].set_title(f"ground truth ({int(gt.sum())} anomaly pixels)")
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    _save(fig, path)


def plot_training_curve(path, losses, aucs, title):
    """Write a PNG of the training loss per epoch and, on a second axis, the recorded AUCs {epoch: auc}."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, loss_axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    loss_axis.plot(range(1, len(losses) + 1), losses, color="C0", label="training loss")
    loss_axis.set(xlabel="epoch", ylabel="mean training loss", title=f"{title}: training")
    loss_axis.set_yscale("log")
    loss_axis.grid(True, alpha=0.5)
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    auc_axis = loss_axis.twinx()
    epochs = sorted(aucs)
    auc_axis.plot(epochs, [aucs[e] for e in epochs], color="C3", marker="o", markersize=3, label="AUC(D,F)")
    auc_axis.set_ylabel("AUC(D,F)")
    handles = loss_axis.get_legend_handles_labels()[0] + auc_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, loc="center right", fontsize=9)
    _save(fig, path)
