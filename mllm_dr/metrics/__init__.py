"""The PHQ metric of MLlm-DR (paper section 4.3): an ``evaluate`` module shipped as package data
in ``mllm_dr/metrics/phq_score/``.

``load_phq_metric()`` loads it by a path resolved from this package's location, not the working
directory, so it works from an installed wheel, from anywhere and offline (canonical Hub names such
as ``evaluate.load("mse")`` download a script and fail without internet).

The math lives only in ``phq_score/phq_score.py`` (``evaluate.load`` copies that file alone into its
cache, so it cannot import this package). The plain helpers below are re-exported from that same
file, imported by path, so nothing is duplicated. Conventions: CCC with population moments (ddof 0);
binary label ``total >= cutoff`` with ``cutoff`` defaulting to 10 (the authors' script used 9).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

METRIC_DIR: Path = Path(__file__).resolve().parent / "phq_score"
_MODULE_NAME = "_mllm_dr_phq_score"


def load_phq_metric(**kwargs: Any):
    """The ``phq_score`` evaluate metric (an ``evaluate.EvaluationModule``), loaded from the package by
    absolute path (offline-safe). ``kwargs`` go to ``evaluate.load`` (e.g. ``experiment_id``)."""
    import evaluate

    return evaluate.load(str(METRIC_DIR), **kwargs)


def compute_phq_metrics(predictions: Any, references: Any, **kwargs: Any) -> dict[str, Any]:
    """One-shot ``load_phq_metric().compute(...)``; see the metric's README for the keyword arguments."""
    return load_phq_metric().compute(predictions=predictions, references=references, **kwargs)


def _import_metric_file() -> ModuleType:
    """Import ``phq_score.py`` by path (once) so its pure functions can be used without ``evaluate.load``."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, METRIC_DIR / "phq_score.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


_impl = _import_metric_file()

DEFAULT_CUTOFF = _impl.DEFAULT_CUTOFF
SEVERITY_BANDS = _impl.SEVERITY_BANDS
concordance_correlation_coefficient = _impl.concordance_correlation_coefficient
pearson_r = _impl.pearson_r
binary_label = _impl.binary_label
severity_band = _impl.severity_band
severity_band_name = _impl.severity_band_name
point_metrics = _impl.point_metrics
bootstrap_intervals = _impl.bootstrap_intervals
per_gender_metrics = _impl.per_gender_metrics
per_item_mae = _impl.per_item_mae

__all__ = [
    "METRIC_DIR",
    "DEFAULT_CUTOFF",
    "SEVERITY_BANDS",
    "load_phq_metric",
    "compute_phq_metrics",
    "concordance_correlation_coefficient",
    "pearson_r",
    "binary_label",
    "severity_band",
    "severity_band_name",
    "point_metrics",
    "bootstrap_intervals",
    "per_gender_metrics",
    "per_item_mae",
]
