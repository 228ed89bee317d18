"""Scores and their figures of merit: the detection map, AUC and the one rule for when it is undefined,
and Chang's 3D-ROC metrics."""
import numpy as np

METRIC_KEYS = ("AUC(D,F)", "AUC(D,tau)", "AUC(F,tau)", "AUC_TD", "AUC_BS", "AUC_TDBS", "AUC_OD", "AUC_ODP",
               "AUC_SNPR")


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
    """Why the AUC of a map against `gt_map` is undefined (no map, no anomaly, no background), or None.

    `gt_map` is the H x W map, or the values at its data pixels only (flat, as `data_pixels` gives them).
    """
    if gt_map is None:
        return "AUC undefined: the scene file has no ground-truth map"
    anomalies = int(np.sum(gt_map))
    if anomalies in (0, np.size(gt_map)):
        where = " among the data pixels (no-data pixels are not scored)" if np.ndim(gt_map) == 1 else ""
        return f"AUC undefined: the map has {'no anomaly' if anomalies == 0 else 'no background'} pixel{where}"
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


def labelled_scores(gt, score_map):
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
    labels, scores = labelled_scores(gt, score_map)
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
    labels, scores = labelled_scores(gt, score_map)
    false_alarm, detection, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return np.minimum(thresholds, 1.0), detection, false_alarm
