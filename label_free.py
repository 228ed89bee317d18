"""Label-free statistics of a run's checkpoints, and the epoch selectors built on them.

A scene without ground truth cannot choose its checkpoint by AUC. Every statistic here is computed
from the scene, the checkpoints' reconstructions and the training log alone; every selector turns a
run's per-checkpoint values into one chosen epoch. Selectors with a threshold are judged
leave-one-scene-out: the threshold is chosen on the other scenes, never on the one reported.
`bench/epoch_curves.py` measures them against the AUC.

Error maps are per-pixel mean squared errors over bands (the detection map before its scaling);
the official map comes from the whole-scene reconstruction, the held-out map from blind-spot
scoring (`scoring.blindspot_reconstruct`, each pixel hidden behind a neighbour's spectrum).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import gammaln, logsumexp
from scipy.stats import rankdata

from metrics import data_pixels

WMV_WINDOW = 3  # checkpoints in the moving-variance window
SUSPECT_FRACTION = 0.01  # share of the pixels taken as the run's suspects (suspect_contrast)
MV_MASSES = np.linspace(0.9, 0.999, 100)  # Goix et al.'s mass range for high-dimensional data
LOSS_CHANGE_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
STABILITY_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
SHORTFALL_LIMIT = 0.005  # the most AUC an offered selector may give up against the official last epoch, per scene
STATISTICS = ("heldout_error", "loss_change", "score_stability", "moving_variance", "consensus",
              "suspect_contrast", "mass_volume")


def pixel_errors(hsi, reconstruction):
    """Per-pixel mean squared error over bands, H x W float64: the detection map before min-max scaling."""
    difference = np.asarray(hsi, np.float64) - np.asarray(reconstruction, np.float64)
    return np.mean(difference ** 2, axis=2)


def heldout_error(errors, missing=None):
    """Held-out prediction error: the mean over data pixels of a blind-spot error map (Noise2Self /
    Noise2Void validation). Each pixel is predicted without its own spectrum, so copying the input
    cannot lower it; lower means a better model of the background (anomalies are few)."""
    return float(np.mean(data_pixels(errors, missing)))


def relative_loss_changes(rows):
    """{epoch: |loss_e - loss_(e-1)| / loss_(e-1)} from a training log's rows (runs.read_log).

    Relative, since the loss is in the scene's own units (raw sensor counts differ between sensors).
    Where an epoch appears twice (a resumed run), its last row counts.
    """
    losses = {row["epoch"]: row["loss"] for row in rows}
    return {epoch: abs(losses[epoch] - losses[epoch - 1]) / losses[epoch - 1]
            for epoch in sorted(losses) if epoch - 1 in losses}


def loss_change_per_checkpoint(rows, epochs):
    """For each checkpoint epoch, the smallest relative loss change of the epochs since the previous
    checkpoint (NaN where none is logged). Auto-AD stops at the first epoch whose change falls below a
    threshold; with checkpoints every few epochs, the first checkpoint at or after it is the one kept."""
    changes = relative_loss_changes(rows)
    values, previous = [], 0
    for epoch in epochs:
        window = [changes[e] for e in range(previous + 1, epoch + 1) if e in changes]
        values.append(min(window) if window else np.nan)
        previous = epoch
    return values


def rank_correlations(error_maps, missing=None):
    """The checkpoints' pairwise Spearman rank correlations of their score maps (over data pixels), and
    each map's ranks (ascending: the most anomalous pixel has the highest rank)."""
    ranks = np.stack([rankdata(data_pixels(errors, missing).ravel()) for errors in error_maps])
    return np.corrcoef(ranks), ranks


def score_stability(correlations):
    """Spearman correlation of each checkpoint's score map with the previous checkpoint's (NaN for the
    first): near 1 once training no longer reorders the pixels."""
    return [np.nan] + [float(value) for value in np.diag(correlations, 1)]


def consensus(correlations):
    """Mean Spearman correlation of each checkpoint's score map with every other checkpoint's map: the
    checkpoint that agrees most with the run as a whole."""
    count = len(correlations)
    return [float(value) for value in (correlations.sum(axis=1) - np.diag(correlations)) / (count - 1)]


def window_variance(reconstructions):
    """Variance of a window of reconstructions about their mean, averaged over pixels and bands (ES-WMV,
    the windowed moving variance of early stopping for deep image prior)."""
    stack = np.stack([np.asarray(r, np.float64) for r in reconstructions])
    return float(np.mean(np.var(stack, axis=0)))


def moving_variances(reconstructions, window=WMV_WINDOW):
    """window_variance of the `window` reconstructions ending at each checkpoint (NaN before a full
    window). ES-WMV stops at the minimum: the outputs have stopped moving before noise is fitted."""
    return [window_variance(reconstructions[end + 1 - window:end + 1]) if end + 1 >= window else np.nan
            for end in range(len(reconstructions))]


def suspect_contrast(error_maps, ranks, missing=None, fraction=SUSPECT_FRACTION):
    """Per checkpoint, the mean error of the run's suspects over the mean error of the other pixels.

    The suspects are the `fraction` of data pixels ranked highest on average over all checkpoints: the
    pixels the run as a whole calls anomalous, a pseudo-label that no single checkpoint sets. Training
    first fits the background, which raises the contrast; a network that starts to reconstruct the
    anomalies themselves (large targets whose own pixels fill each other's blind spots) lowers the
    suspects' error faster than the background's, and the contrast falls: the AUC's own mechanism,
    seen through pseudo-labels. Higher is better. Ranking by the mean over checkpoints rather than
    by one map keeps a single checkpoint's noise out of the suspect set.
    """
    mean_rank = ranks.mean(axis=0)
    count = max(1, int(round(fraction * len(mean_rank))))
    suspects = np.zeros(len(mean_rank), bool)
    suspects[np.argsort(mean_rank)[-count:]] = True
    values = [data_pixels(errors, missing).ravel() for errors in error_maps]
    return [float(v[suspects].mean() / v[~suspects].mean()) for v in values]


def log_mass_volume(errors, bands, missing=None, masses=MV_MASSES):
    """Natural log of the area under the Mass-Volume curve (Goix et al.) of a blind-spot error map.

    With blind-spot scoring a pixel p's score of a spectrum x is |x - r_p|^2 / B, where r_p, predicted
    from the neighbours, does not depend on x; the spectra scoring at most u at p form a ball of
    radius sqrt(B u) about r_p, of the same volume at every pixel. So MV(alpha) is exactly the volume
    of the ball at the alpha-quantile of the errors, with no Monte-Carlo sampling, and the area over
    `masses` (the mean volume times the mass range) is taken in log space, as volumes grow as u^(B/2).
    Lower is better.
    """
    quantiles = np.quantile(data_pixels(errors, missing), masses)
    log_unit_ball = 0.5 * bands * np.log(np.pi) - gammaln(0.5 * bands + 1)
    log_volumes = log_unit_ball + 0.5 * bands * np.log(bands * quantiles)
    return float(logsumexp(log_volumes) - np.log(len(masses)) + np.log(masses[-1] - masses[0]))


def run_statistics(epochs, official_errors, heldout_errors, variances, log_rows, bands, missing=None):
    """{statistic: per-checkpoint values} for one run; epochs ascending, one map per checkpoint."""
    correlations, ranks = rank_correlations(official_errors, missing)
    return dict(heldout_error=[heldout_error(e, missing) for e in heldout_errors],
                loss_change=loss_change_per_checkpoint(log_rows, epochs),
                score_stability=score_stability(correlations),
                moving_variance=list(variances),
                consensus=consensus(correlations),
                suspect_contrast=suspect_contrast(official_errors, ranks, missing),
                mass_volume=[log_mass_volume(e, bands, missing) for e in heldout_errors])


def select_min(epochs, values):
    """The epoch of the smallest value (the earliest on ties; NaN ignored; the last if all are NaN)."""
    values = np.asarray(values, np.float64)
    return epochs[-1] if np.isnan(values).all() else epochs[int(np.nanargmin(values))]


def select_max(epochs, values):
    """The epoch of the largest value (the earliest on ties; NaN ignored; the last if all are NaN)."""
    return select_min(epochs, -np.asarray(values, np.float64))


def select_first_below(epochs, values, threshold):
    """The first epoch whose value is below `threshold`, else the last epoch."""
    return next((e for e, v in zip(epochs, values) if v < threshold), epochs[-1])


def select_first_above(epochs, values, threshold):
    """The first epoch whose value is at least `threshold`, else the last epoch."""
    return next((e for e, v in zip(epochs, values) if v >= threshold), epochs[-1])


@dataclass(frozen=True)
class Selector:
    """An epoch selector: `rule` applied to a run's `statistic`; `grid` holds a threshold's candidates."""
    name: str
    statistic: str
    rule: Callable
    grid: tuple = ()

    def choose(self, rows, threshold=None):
        """The epoch chosen among a run's rows (dicts with `epoch` and the statistic, epochs ascending)."""
        epochs = [row["epoch"] for row in rows]
        values = [row[self.statistic] for row in rows]
        return self.rule(epochs, values) if not self.grid else self.rule(epochs, values, threshold)


SELECTORS = (
    Selector("held-out error minimum", "heldout_error", select_min),
    Selector("loss plateau (Auto-AD)", "loss_change", select_first_below, LOSS_CHANGE_GRID),
    Selector("score-map stability", "score_stability", select_first_above, STABILITY_GRID),
    Selector("moving variance minimum (ES-WMV)", "moving_variance", select_min),
    Selector("consensus maximum", "consensus", select_max),
    Selector("suspect contrast maximum", "suspect_contrast", select_max),
    Selector("mass-volume minimum", "mass_volume", select_min),
)


def regret(rows, epoch, target="auc"):
    """The best checkpoint's `target` minus the chosen `epoch`'s."""
    chosen = next(row[target] for row in rows if row["epoch"] == epoch)
    return max(row[target] for row in rows) - chosen


def mean_scene_regret(runs_by_scene, selector, threshold, target="auc"):
    """Mean over scenes of each scene's mean regret over its runs (seeds)."""
    return float(np.mean([np.mean([regret(rows, selector.choose(rows, threshold), target) for rows in runs])
                          for runs in runs_by_scene.values()]))


def leave_one_scene_out(runs_by_scene, selector, target="auc"):
    """{scene: (threshold, mean regret over the scene's runs)}, the threshold chosen on the other scenes.

    `runs_by_scene` maps a scene to its runs, each a list of rows. Without a grid the threshold is None;
    with one, it is the candidate of least mean_scene_regret over the other scenes (the first on ties),
    and a scene with no other scene to learn from gets (None, None).
    """
    result = {}
    for scene, runs in runs_by_scene.items():
        others = {name: other for name, other in runs_by_scene.items() if name != scene}
        if selector.grid and not others:
            result[scene] = (None, None)
            continue
        threshold = (min(selector.grid, key=lambda t: mean_scene_regret(others, selector, t, target))
                     if selector.grid else None)
        result[scene] = (threshold, float(np.mean([regret(rows, selector.choose(rows, threshold), target)
                                                   for rows in runs])))
    return result


def judge_selector(regrets, fixed_regrets, last_epoch_regrets):
    """(mean regret, worst regret, worst shortfall, offered) of a selector over scenes.

    Each argument maps a scene to a regret (None where none could be judged); `fixed_regrets` maps each
    fixed epoch's name to such a dict, `last_epoch_regrets` is the official last epoch's. The shortfall on a
    scene is how far the chosen checkpoint's AUC lies below the last epoch's (the selector's regret minus
    the last epoch's). A selector is worth offering only if its mean regret is below every fixed epoch's
    and its shortfall is at most SHORTFALL_LIMIT on every scene; one not judged on every scene is not.
    """
    values = list(regrets.values())
    if not values or any(v is None for v in values):
        return None, None, None, False
    mean, worst = float(np.mean(values)), float(max(values))
    shortfall = float(max(regrets[scene] - last_epoch_regrets[scene] for scene in regrets))
    offered = (all(mean < np.mean(list(fixed.values())) for fixed in fixed_regrets.values())
               and shortfall <= SHORTFALL_LIMIT)
    return mean, worst, shortfall, offered
