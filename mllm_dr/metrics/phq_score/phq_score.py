"""PHQ-8/PHQ-9 participant-level metrics for MLlm-DR (paper section 4.3, Eq. 4).

Everything is computed on participant TOTALS (item scores 0-3 summed per participant), as in the
paper: CCC, Pearson r, RMSE, MAE; precision / recall / F1 of the binary label ``total >= cutoff``;
severity-band accuracy; participant-level bootstrap 95% percentile intervals; optional per-gender
point metrics and per-item MAE.

Conventions (one each, used everywhere in this file):

* CCC (Lin, 1989) uses POPULATION moments (ddof = 0) for the variances AND the covariance:
  ``2 * cov / (var_p + var_r + (mean_p - mean_r) ** 2)``. The authors' code mixed a sample
  covariance with population variances, which inflates CCC on small test sets.
* Binary label: ``total >= cutoff`` on the raw (unrounded) value; ``cutoff`` defaults to 10 (the
  standard PHQ cut-off and the paper's text); the authors' evaluation script used 9.
* Severity bands on the raw value: [0, 5) none/minimal, [5, 10) mild, [10, 15) moderate,
  [15, 20) moderately severe, [20, inf) severe.
* Undefined ratios are 0.0, never NaN (as scikit-learn's ``zero_division=0``); Pearson r of a
  constant input is reported as ``None``.

The module is self-contained (numpy, datasets, evaluate and the standard library) because ``evaluate.load`` copies this
file alone into its cache. Each import sits on its own line: evaluate parses them.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

ArrayLike = Sequence[float] | np.ndarray

DEFAULT_CUTOFF: float = 10.0
CCC_DDOF: int = 0
SEVERITY_BANDS: tuple[str, ...] = ("none/minimal", "mild", "moderate", "moderately severe", "severe")
SEVERITY_LOWER_BOUNDS: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
_OPTION_NAMES = frozenset(
    {"cutoff", "genders", "item_predictions", "item_references", "item_indices", "n_bootstrap", "seed"}
)
# Upper bound on the number of resampled values held at once (rows * participants) in the bootstrap.
_BOOTSTRAP_CHUNK_VALUES = 4_000_000

_CITATION = """\
@article{mllmdr2025,
  title={MLlm-DR: Towards Explainable Depression Recognition with Multimodal Large Language Models},
  year={2025}
}
@article{lin1989ccc,
  title={A concordance correlation coefficient to evaluate reproducibility},
  author={Lin, Lawrence I-Kuei},
  journal={Biometrics},
  volume={45},
  number={1},
  pages={255--268},
  year={1989}
}
"""

_DESCRIPTION = """\
Participant-level PHQ-8/PHQ-9 evaluation as in MLlm-DR section 4.3: CCC (Eq. 4, population
moments, ddof 0), Pearson r, RMSE and MAE on totals; precision, recall and F1 of the binary label
total >= cutoff (default 10); severity-band accuracy; participant bootstrap 95% percentile intervals
for CCC, MAE and F1; optional per-gender point metrics and per-item MAE.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted PHQ totals, one per participant.
    references (`list` of `float`): true PHQ totals, same participants, same order.
    cutoff (`float`, defaults to 10): binary label is total >= cutoff (the authors' script used 9).
    genders (`list`, optional): one label per participant; adds `per_gender` point metrics.
    item_predictions, item_references (optional): item-level scores, either 2-D
        (participants x items, columns are PHQ items 1..K unless `item_indices` names them) or
        1-D flat lists with `item_indices` giving each entry's item. Adds `per_item_mae`.
    item_indices (optional): column labels (2-D inputs) or per-entry item labels (1-D inputs).
    n_bootstrap (`int`, defaults to 1000): participant resamples; 0 disables the intervals.
    seed (`int` or None, defaults to 0): bootstrap seed; the same seed gives the same intervals.
Returns:
    dict of plain Python values: ccc, pearson_r (None if an input is constant), rmse, mae,
    precision, recall, f1, severity_accuracy, n_positive, n_predicted_positive, ccc_ci95, mae_ci95,
    f1_ci95 ([low, high] or None), cutoff, n_participants, n_bootstrap, seed, ccc_ddof,
    per_gender ({str(gender): point metrics} or None), per_item_mae ({item: mae} or None).
Examples:
    >>> metric = evaluate.load("mllm_dr/metrics/phq_score")  # or mllm_dr.metrics.load_phq_metric()
    >>> out = metric.compute(predictions=[2, 4, 6], references=[1, 4, 7], n_bootstrap=0)
    >>> round(out["ccc"], 4)
    0.9231
"""


# --------------------------------------------------------------------------- validation


def _as_1d_float(name: str, values: Any) -> np.ndarray:
    """A finite 1-D float64 array, or a clear ValueError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_pair(predictions: Any, references: Any, min_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate two aligned participant vectors (CCC and r need at least two participants)."""
    pred = _as_1d_float("predictions", predictions)
    true = _as_1d_float("references", references)
    if pred.shape != true.shape:
        raise ValueError(f"predictions ({pred.size}) and references ({true.size}) differ in length")
    if pred.size < min_size:
        raise ValueError(f"need at least {min_size} participants, got {pred.size}")
    return pred, true


def _check_cutoff(cutoff: Any) -> float:
    value = float(cutoff)
    if not math.isfinite(value):
        raise ValueError(f"cutoff must be finite, got {cutoff!r}")
    return value


def _check_n_bootstrap(n_bootstrap: Any) -> int:
    if isinstance(n_bootstrap, (bool, np.bool_)) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    return int(n_bootstrap)


def _check_options(
    n_participants: int | None,
    cutoff: Any = DEFAULT_CUTOFF,
    genders: Sequence[Hashable] | None = None,
    item_predictions: Any = None,
    item_references: Any = None,
    item_indices: Sequence[Hashable] | None = None,
    n_bootstrap: Any = 1000,
    seed: Any = 0,
) -> None:
    """Validate every compute option up front (all checks are cheap; item inputs are checked by a dry run)."""
    _check_cutoff(cutoff)
    _check_n_bootstrap(n_bootstrap)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if genders is not None and n_participants is not None and len(genders) != n_participants:
        raise ValueError(f"genders ({len(genders)}) and predictions ({n_participants}) differ in length")
    if (item_predictions is None) != (item_references is None):
        raise ValueError("pass both item_predictions and item_references, or neither")
    if item_predictions is not None:
        per_item_mae(item_predictions, item_references, item_indices)


# --------------------------------------------------------------------------- row-wise kernels


def _centered(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row means and deviations; constant rows get exact zero deviations (no rounding residue)."""
    means = rows.mean(axis=1)
    constant = np.all(rows == rows[:, :1], axis=1)
    means[constant] = rows[constant, 0]
    deviations = rows - means[:, None]
    deviations[constant] = 0.0
    return means, deviations


def _ccc_rows(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Lin's CCC for each row of two (rows, n) arrays, population moments (ddof 0).

    CCC is 0.0 wherever the covariance is 0 (e.g. constant predictions), including the 0/0 case of
    two identical constants, so bootstrap resamples never yield NaN.
    """
    mean_p, dev_p = _centered(pred)
    mean_t, dev_t = _centered(true)
    var_p = np.mean(dev_p * dev_p, axis=1)
    var_t = np.mean(dev_t * dev_t, axis=1)
    cov = np.mean(dev_p * dev_t, axis=1)
    denominator = var_p + var_t + (mean_p - mean_t) ** 2
    out = np.zeros(pred.shape[0], dtype=np.float64)
    nonzero = cov != 0.0
    out[nonzero] = 2.0 * cov[nonzero] / denominator[nonzero]
    return out


def _mae_rows(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(pred - true), axis=1)


def _prf_rows(pred: np.ndarray, true: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 of ``total >= cutoff`` per row; 0.0 where a denominator is 0."""
    pred_pos = pred >= cutoff
    true_pos = true >= cutoff
    tp = np.sum(pred_pos & true_pos, axis=1).astype(np.float64)
    fp = np.sum(pred_pos & ~true_pos, axis=1).astype(np.float64)
    fn = np.sum(~pred_pos & true_pos, axis=1).astype(np.float64)
    return _safe_ratio(tp, tp + fp), _safe_ratio(tp, tp + fn), _safe_ratio(2.0 * tp, 2.0 * tp + fp + fn)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


# --------------------------------------------------------------------------- public helpers


def concordance_correlation_coefficient(predictions: ArrayLike, references: ArrayLike) -> float:
    """Lin's CCC (Eq. 4) with population moments (ddof 0); 0.0 when the covariance is 0."""
    pred, true = _check_pair(predictions, references)
    return float(_ccc_rows(pred[None, :], true[None, :])[0])


def pearson_r(predictions: ArrayLike, references: ArrayLike) -> float | None:
    """Pearson correlation; ``None`` (not NaN) when either input is constant."""
    pred, true = _check_pair(predictions, references)
    _, dev_p = _centered(pred[None, :])
    _, dev_t = _centered(true[None, :])
    ss_p = float(np.sum(dev_p * dev_p))
    ss_t = float(np.sum(dev_t * dev_t))
    if ss_p == 0.0 or ss_t == 0.0:
        return None
    r = float(np.sum(dev_p * dev_t)) / math.sqrt(ss_p * ss_t)
    return max(-1.0, min(1.0, r))


def binary_label(total: float | ArrayLike, cutoff: float = DEFAULT_CUTOFF) -> bool | np.ndarray:
    """Depressed label ``total >= cutoff`` (PHQ_Binary convention); bool for a scalar, else an array."""
    result = np.asarray(total, dtype=np.float64) >= _check_cutoff(cutoff)
    return bool(result) if result.ndim == 0 else result


def severity_band(total: float | ArrayLike) -> int | np.ndarray:
    """Severity band index 0-4 (see ``SEVERITY_BANDS``): 0-4 none, 5-9 mild, 10-14, 15-19, 20+."""
    result = np.searchsorted(np.asarray(SEVERITY_LOWER_BOUNDS), np.asarray(total, dtype=np.float64), side="right")
    return int(result) if np.ndim(result) == 0 else result.astype(np.int64)


def severity_band_name(total: float) -> str:
    """Name of the severity band of one total."""
    return SEVERITY_BANDS[int(severity_band(float(total)))]


def point_metrics(predictions: ArrayLike, references: ArrayLike, cutoff: float = DEFAULT_CUTOFF) -> dict[str, Any]:
    """All point metrics on totals; with a single participant CCC and r are ``None`` (undefined)."""
    pred, true = _check_pair(predictions, references, min_size=1)
    cutoff = _check_cutoff(cutoff)
    rows_p, rows_t = pred[None, :], true[None, :]
    errors = pred - true
    precision, recall, f1 = (float(v[0]) for v in _prf_rows(rows_p, rows_t, cutoff))
    enough = pred.size >= 2
    return {
        "ccc": float(_ccc_rows(rows_p, rows_t)[0]) if enough else None,
        "pearson_r": pearson_r(pred, true) if enough else None,
        "rmse": float(math.sqrt(np.mean(errors * errors))),
        "mae": float(np.mean(np.abs(errors))),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "severity_accuracy": float(np.mean(severity_band(pred) == severity_band(true))),
        "n_positive": int(np.sum(true >= cutoff)),
        "n_predicted_positive": int(np.sum(pred >= cutoff)),
        "n_participants": int(pred.size),
    }


def bootstrap_intervals(
    predictions: ArrayLike,
    references: ArrayLike,
    cutoff: float = DEFAULT_CUTOFF,
    n_bootstrap: int = 1000,
    seed: int | None = 0,
) -> dict[str, list[float] | None]:
    """Participant-level bootstrap 95% percentile intervals for CCC, MAE and F1.

    Participants are resampled with replacement (``numpy.random.default_rng(seed)``, an index matrix
    of shape (n_bootstrap, n)); each metric is computed on every resample at once; the interval is
    the 2.5th and 97.5th percentiles (linear interpolation). Deterministic for an integer seed.
    """
    pred, true = _check_pair(predictions, references)
    cutoff = _check_cutoff(cutoff)
    n_bootstrap = _check_n_bootstrap(n_bootstrap)
    if n_bootstrap == 0:
        return {"ccc_ci95": None, "mae_ci95": None, "f1_ci95": None}
    rng = np.random.default_rng(seed)
    n = pred.size
    chunk = max(1, _BOOTSTRAP_CHUNK_VALUES // n)
    ccc, mae, f1 = [], [], []
    for start in range(0, n_bootstrap, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        rows_p, rows_t = pred[index], true[index]
        ccc.append(_ccc_rows(rows_p, rows_t))
        mae.append(_mae_rows(rows_p, rows_t))
        f1.append(_prf_rows(rows_p, rows_t, cutoff)[2])

    def interval(samples: list[np.ndarray]) -> list[float]:
        low, high = np.percentile(np.concatenate(samples), [2.5, 97.5])
        return [float(low), float(high)]

    return {"ccc_ci95": interval(ccc), "mae_ci95": interval(mae), "f1_ci95": interval(f1)}


def per_gender_metrics(
    predictions: ArrayLike, references: ArrayLike, genders: Sequence[Hashable], cutoff: float = DEFAULT_CUTOFF
) -> dict[str, dict[str, Any]]:
    """Point metrics per gender label; keys are ``str(label)`` so the result is JSON-serialisable."""
    pred, true = _check_pair(predictions, references, min_size=1)
    labels = [str(g) for g in genders]
    if len(labels) != pred.size:
        raise ValueError(f"genders ({len(labels)}) and predictions ({pred.size}) differ in length")
    label_array = np.asarray(labels, dtype=object)
    return {
        label: point_metrics(pred[label_array == label], true[label_array == label], cutoff)
        for label in sorted(set(labels))
    }


def _item_key(value: Any) -> int | str:
    """Item labels as JSON-friendly keys: integers stay ``int`` (PHQ item number), others ``str``."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return str(value)


def per_item_mae(
    item_predictions: Any, item_references: Any, item_indices: Sequence[Hashable] | None = None
) -> dict[int | str, float]:
    """MAE per PHQ item.

    Two layouts: 2-D (participants x items), columns labelled 1..K or by ``item_indices`` (length K);
    or 1-D flat lists with ``item_indices`` giving each entry's item. Integer labels stay ``int``
    (``json.dumps`` writes them as strings).
    """
    pred = np.asarray(item_predictions, dtype=np.float64)
    true = np.asarray(item_references, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"item_predictions {pred.shape} and item_references {true.shape} differ in shape")
    if pred.size == 0 or not (np.all(np.isfinite(pred)) and np.all(np.isfinite(true))):
        raise ValueError("item-level inputs must be non-empty and finite")
    if pred.ndim == 2:
        columns = list(range(1, pred.shape[1] + 1)) if item_indices is None else list(item_indices)
        if len(columns) != pred.shape[1]:
            raise ValueError(f"item_indices ({len(columns)}) must label the {pred.shape[1]} item columns")
        labels = np.tile(np.asarray([_item_key(c) for c in columns], dtype=object), pred.shape[0])
        pred, true = pred.reshape(-1), true.reshape(-1)
    elif pred.ndim == 1:
        if item_indices is None or len(item_indices) != pred.size:
            raise ValueError("1-D item-level inputs need item_indices with one item label per entry")
        labels = np.asarray([_item_key(i) for i in item_indices], dtype=object)
    else:
        raise ValueError(f"item-level inputs must be 1-D or 2-D, got shape {pred.shape}")
    keys = list(dict.fromkeys(labels.tolist()))
    if all(isinstance(k, int) for k in keys):
        keys.sort()
    group = np.empty(labels.size, dtype=np.int64)
    for position, key in enumerate(keys):
        group[labels == key] = position
    sums = np.bincount(group, weights=np.abs(pred - true), minlength=len(keys))
    counts = np.bincount(group, minlength=len(keys))
    return {key: float(sums[i] / counts[i]) for i, key in enumerate(keys)}


def compute_phq_metrics(
    predictions: ArrayLike,
    references: ArrayLike,
    cutoff: float = DEFAULT_CUTOFF,
    genders: Sequence[Hashable] | None = None,
    item_predictions: Any = None,
    item_references: Any = None,
    item_indices: Sequence[Hashable] | None = None,
    n_bootstrap: int = 1000,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Every metric of the module as one JSON-serialisable dict (see ``_KWARGS_DESCRIPTION``)."""
    pred, true = _check_pair(predictions, references)
    _check_options(pred.size, cutoff, genders, item_predictions, item_references, item_indices, n_bootstrap, seed)
    cutoff = _check_cutoff(cutoff)
    result: dict[str, Any] = point_metrics(pred, true, cutoff)
    result.update(bootstrap_intervals(pred, true, cutoff, n_bootstrap, seed))
    result.update(
        {
            "cutoff": cutoff,
            "n_bootstrap": int(n_bootstrap),
            "seed": None if seed is None else int(seed),
            "ccc_ddof": CCC_DDOF,
            "per_gender": None if genders is None else per_gender_metrics(pred, true, genders, cutoff),
            "per_item_mae": None
            if item_predictions is None
            else per_item_mae(item_predictions, item_references, item_indices),
        }
    )
    return result


# --------------------------------------------------------------------------- evaluate module


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PhqScore(evaluate.Metric):
    """PHQ totals metric; per-participant inputs are the features, everything else is a compute kwarg."""

    def _info(self) -> evaluate.MetricInfo:
        # No ``format="numpy"``: datasets' numpy formatter casts float64 columns to float32.
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            reference_urls=["https://doi.org/10.2307/2532051"],
        )

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        """Validate before ``evaluate`` writes its cache: an error raised inside ``_compute`` leaves the
        cache lock held, and the next call then stalls for a second waiting on it."""
        unknown = sorted(set(kwargs) - _OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown compute arguments {unknown}; accepted: {sorted(_OPTION_NAMES)}")
        n_participants = None
        if predictions is not None or references is not None:
            n_participants = _check_pair(predictions, references)[0].size
        _check_options(n_participants, **kwargs)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions: list[float],
        references: list[float],
        cutoff: float = DEFAULT_CUTOFF,
        genders: Sequence[Hashable] | None = None,
        item_predictions: Any = None,
        item_references: Any = None,
        item_indices: Sequence[Hashable] | None = None,
        n_bootstrap: int = 1000,
        seed: int | None = 0,
    ) -> dict[str, Any]:
        return compute_phq_metrics(
            predictions,
            references,
            cutoff=cutoff,
            genders=genders,
            item_predictions=item_predictions,
            item_references=item_references,
            item_indices=item_indices,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
