"""The usual figures: ROC and 3D ROC curves, score separation, the detection map, the training curve."""
import numpy as np

from metrics import auc_score, labelled_scores, metrics_3d, roc_points
from utils import atomic_write

PF_FLOOR = 1e-4  # where a log-scale ROC draws P_F = 0
ANOMALY_RED, BACKGROUND_BLUE = "#d62728", "#1f77b4"


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

    Two panels side by side: a linear P_F axis and a logarithmic one from PF_FLOOR (where P_F = 0 is
    drawn), which shows the low false-alarm rates detectors are judged by. With log_pf only the latter.
    """
    plt = _pyplot()
    scales = (True,) if log_pf else (False, True)
    fig, axes = plt.subplots(1, len(scales), figsize=(5.4 * len(scales), 4.6), constrained_layout=True,
                             squeeze=False)
    for axis, log in zip(axes[0], scales):
        _roc_panel(axis, curves, log)
    if len(scales) == 1:
        axes[0, 0].set_title(title, fontsize=10)
    else:
        fig.suptitle(title)
        for axis, scale in zip(axes[0], ("linear", "log")):
            axis.set_title(f"{scale} $P_F$ axis", fontsize=10)
    _save(fig, path)


def _roc_panel(axis, curves, log):
    """One ROC panel on `axis`, its P_F axis linear or logarithmic."""
    for index, (label, (gt, score_map)) in enumerate(curves.items()):
        _, detection, false_alarm = roc_points(gt, score_map)
        if log:
            false_alarm = np.maximum(false_alarm, PF_FLOOR)
        axis.plot(false_alarm, detection, label=f"{label} (AUC = {auc_score(gt, score_map):.4f})", **_style(index))
    if log:
        axis.set_xscale("log")
        axis.set_xlim(PF_FLOOR, 1)
    else:
        axis.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle=":")
        axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set(xlabel="false alarm rate $P_F$" + (" (log scale)" if log else ""), ylabel="detection probability $P_D$")
    axis.grid(True, which="major", alpha=0.5)
    axis.legend(loc="upper left" if log else "lower right", fontsize=9)  # where ROC curves seldom run


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
    fig, axis = plt.subplots(figsize=(max(5.2, 1.3 * len(maps) + 1.8), 4.6), constrained_layout=True)
    for index, score_map in enumerate(maps.values()):
        labels, scores = labelled_scores(gt, score_map)
        boxes = axis.boxplot([scores[labels], scores[~labels]], positions=[index - 0.18, index + 0.18],
                             widths=0.3, whis=(10, 90), showfliers=False, patch_artist=True,
                             medianprops=dict(color="black", linewidth=1.5))
        for box, colour in zip(boxes["boxes"], (ANOMALY_RED, BACKGROUND_BLUE)):
            box.set(facecolor=colour, edgecolor="black", alpha=0.85)
    axis.set_xticks(range(len(maps)), list(maps))
    axis.set(xlim=(-0.6, len(maps) - 0.4), ylim=(-0.02, 1.02), ylabel="normalised detection score")
    axis.set_title(title, fontsize=10)
    axis.grid(True, axis="y", alpha=0.5)
    axis.legend(handles=[Patch(facecolor=ANOMALY_RED, edgecolor="black", label="anomaly"),
                         Patch(facecolor=BACKGROUND_BLUE, edgecolor="black", label="background")],
                loc="upper right", fontsize=9)
    _save(fig, path)


def plot_detection_map(path, score_map, gt, title):
    """Write a PNG of the detection map (jet, with a colour bar) beside the ground truth, if there is one,
    on pixel axes (column, row)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    panels = 1 if gt is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 4.6), constrained_layout=True, squeeze=False)
    shown = axes[0, 0].imshow(score_map, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set_title(title, fontsize=10)
    fig.colorbar(shown, ax=axes[0, 0], fraction=0.046, pad=0.04, label="normalised detection score")
    if gt is not None:
        axes[0, 1].imshow(gt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, 1].set_title(f"ground truth ({int(gt.sum())} anomaly pixels)", fontsize=10)
    for axis in axes.ravel():  # pixel coordinates, counted from 0 at the top left as in the arrays
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set(xlabel="column (pixel)", ylabel="row (pixel)")
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


def plot_sensitivity(path, flag, values, lines):
    """Write a PNG of AUC against a flag's values: {label: [(value index, mean AUC, std over seeds), ...]}."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6, 4.4), constrained_layout=True)
    for index, (label, points) in enumerate(lines.items()):
        where, means, spreads = zip(*points)
        axis.errorbar(where, means, yerr=spreads, label=label, capsize=3, marker="o", markersize=4, **_style(index))
    axis.set_xticks(range(len(values)), values)
    axis.set(xlabel=f"--{flag}", ylabel="AUC(D,F) (mean ± std over seeds)", title=f"Sensitivity to --{flag}")
    axis.grid(True, alpha=0.5)
    axis.legend(fontsize=8, loc="best")
    _save(fig, path)
