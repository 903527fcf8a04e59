"""The PHQ metric (mllm_dr/metrics/phq_score) against independent implementations and hand-worked values.

Independent references: scipy.stats.pearsonr; scikit-learn precision/recall/f1 (zero_division=0),
mean_absolute_error, mean_squared_error, accuracy_score; torchmetrics ConcordanceCorrCoef (test-only
dependency, skipped when absent); plain numpy formulas; fractions worked out by hand.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    recall_score,
)

import mllm_dr.metrics as phq_metrics

SEEDS = range(60)


@pytest.fixture(scope="module")
def metric():
    return phq_metrics.load_phq_metric()


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Totals like a PHQ-8 test set: integer references 0-24, noisy (sometimes rounded) predictions."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    true = rng.integers(0, 25, size=n).astype(np.float64)
    pred = np.clip(rng.uniform(0.3, 1.2) * true + rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 6), n), 0, 24)
    if seed % 2:
        pred = np.round(pred)  # integer totals create exact ties at the cut-off
    return pred, true


def numpy_ccc(pred: np.ndarray, true: np.ndarray, ddof: int) -> float:
    """Lin's CCC with one ddof for variances and covariance alike."""
    cov = np.cov(pred, true, ddof=ddof)[0, 1]
    return 2 * cov / (np.var(pred, ddof=ddof) + np.var(true, ddof=ddof) + (pred.mean() - true.mean()) ** 2)


def reference_band(total: float) -> int:
    """Severity bands written out as in datasets.md (0-4, 5-9, 10-14, 15-19, 20+)."""
    if total < 5:
        return 0
    if total < 10:
        return 1
    if total < 15:
        return 2
    if total < 20:
        return 3
    return 4


# --------------------------------------------------------------------------- CCC


def test_ccc_hand_worked_equal_means():
    # predictions [2, 4, 6], references [1, 4, 7]
    # means: 12/3 = 4 and 12/3 = 4 (difference 0)
    # population variances: ((-2)^2 + 0 + 2^2) / 3 = 8/3 and ((-3)^2 + 0 + 3^2) / 3 = 6
    # population covariance: ((-2)(-3) + 0 + (2)(3)) / 3 = 4
    # CCC = 2*4 / (8/3 + 6 + 0) = 8 / (26/3) = 12/13
    expected = Fraction(2 * 4) / (Fraction(8, 3) + 6 + 0)
    assert expected == Fraction(12, 13)
    assert phq_metrics.concordance_correlation_coefficient([2, 4, 6], [1, 4, 7]) == pytest.approx(12 / 13, abs=1e-15)


def test_ccc_hand_worked_population_not_sample_not_mixed(metric):
    # predictions [1, 2, 3], references [2, 4, 9]; the mean difference makes the convention matter
    # means 2 and 5 -> (mean_p - mean_r)^2 = 9; deviations [-1, 0, 1] and [-3, -1, 4]
    # population: var_p = 2/3, var_r = (9 + 1 + 16)/3 = 26/3, cov = (3 + 0 + 4)/3 = 7/3
    #   CCC = (14/3) / (2/3 + 26/3 + 9) = (14/3) / (55/3) = 14/55
    # sample (ddof 1): var_p = 1, var_r = 13, cov = 7/2 -> CCC = 7 / 23
    # mixed (authors' defect: sample cov, population variances): 7 / (55/3) = 21/55
    population = Fraction(2) * Fraction(7, 3) / (Fraction(2, 3) + Fraction(26, 3) + 9)
    assert population == Fraction(14, 55)
    out = metric.compute(predictions=[1, 2, 3], references=[2, 4, 9], n_bootstrap=0)
    assert out["ccc"] == pytest.approx(14 / 55, abs=1e-15)
    assert out["ccc"] != pytest.approx(7 / 23, abs=1e-3)
    assert out["ccc"] != pytest.approx(21 / 55, abs=1e-3)
    assert out["ccc_ddof"] == 0


def test_ccc_matches_numpy_population_formula():
    for seed in SEEDS:
        pred, true = random_case(seed)
        ours = phq_metrics.concordance_correlation_coefficient(pred, true)
        assert ours == pytest.approx(numpy_ccc(pred, true, ddof=0), abs=1e-12), seed


def test_ccc_against_torchmetrics():
    # Finding (torchmetrics 1.9): ConcordanceCorrCoef divides variances AND covariance by (n - 1), i.e. it
    # is consistent but uses the SAMPLE convention: 2*S_xy / (S_x^2 + S_y^2 + (mean_x - mean_y)^2).
    # Ours uses population moments (k = (n-1)/n times the sample ones):
    #   CCC_pop = 2kS / (k(S_x^2 + S_y^2) + d^2) = 2S / (S_x^2 + S_y^2 + d^2 / k).
    # Shifting the predictions leaves S, S_x, S_y unchanged, so CCC_pop(p, r) equals torchmetrics on
    # p + d * (sqrt(n / (n - 1)) - 1): the mean difference scaled by 1/sqrt(k). With equal means both agree.
    torch = pytest.importorskip("torch")
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.regression import ConcordanceCorrCoef

    def tm_ccc(pred: np.ndarray, true: np.ndarray) -> float:
        metric = ConcordanceCorrCoef().set_dtype(torch.float64)  # its states default to float32
        return float(metric(torch.tensor(pred, dtype=torch.float64), torch.tensor(true, dtype=torch.float64)))

    # The documented convention on the hand-worked case: 7/23 (sample), not our 14/55.
    assert tm_ccc(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 9.0])) == pytest.approx(7 / 23, abs=1e-12)
    checked = 0
    for seed in SEEDS:
        pred, true = random_case(seed)
        if np.ptp(pred) == 0 or np.ptp(true) == 0 or pred.size < 3:
            continue  # torchmetrics warns/NaNs on constant inputs; covered by the degenerate tests
        n = pred.size
        ours = phq_metrics.concordance_correlation_coefficient(pred, true)
        assert tm_ccc(pred, true) == pytest.approx(numpy_ccc(pred, true, ddof=1), abs=1e-9), seed
        d = pred.mean() - true.mean()
        assert tm_ccc(pred + d * (math.sqrt(n / (n - 1)) - 1), true) == pytest.approx(ours, abs=1e-9), seed
        centred = pred - d  # equal means: the convention cancels, direct comparison
        assert tm_ccc(centred, true) == pytest.approx(
            phq_metrics.concordance_correlation_coefficient(centred, true), abs=1e-9
        ), seed
        checked += 1
    assert checked > 40
    assert torchmetrics.__version__


# --------------------------------------------------------------------------- other point metrics


def test_regression_metrics_against_scipy_and_sklearn(metric):
    for seed in range(20):
        pred, true = random_case(seed)
        out = metric.compute(predictions=pred.tolist(), references=true.tolist(), n_bootstrap=0)
        if np.ptp(pred) == 0:
            assert out["pearson_r"] is None
        else:
            assert out["pearson_r"] == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-12), seed
        assert out["mae"] == pytest.approx(mean_absolute_error(true, pred), abs=1e-12), seed
        assert out["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true, pred)), abs=1e-12), seed
        assert out["ccc"] == pytest.approx(numpy_ccc(pred, true, ddof=0), abs=1e-12), seed
        assert out["n_participants"] == pred.size


@pytest.mark.parametrize("cutoff", [9, 10])
def test_classification_metrics_against_sklearn(cutoff):
    for seed in SEEDS:
        pred, true = random_case(seed)
        out = phq_metrics.point_metrics(pred, true, cutoff=cutoff)
        y_true, y_pred = (true >= cutoff).astype(int), (pred >= cutoff).astype(int)
        assert out["precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0), abs=1e-12)
        assert out["recall"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0), abs=1e-12)
        assert out["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0), abs=1e-12)
        bands = accuracy_score([reference_band(t) for t in true], [reference_band(p) for p in pred])
        assert out["severity_accuracy"] == pytest.approx(bands, abs=1e-12)
        assert out["n_positive"] == int(y_true.sum()) and out["n_predicted_positive"] == int(y_pred.sum())


def test_cutoff_changes_f1(metric):
    # refs [8, 12, 3, 5], preds [9.5, 11, 2, 8]
    # cut-off 10: true positives {12}, predicted {11} -> P = R = F1 = 1
    # cut-off 9:  true positives {12}, predicted {9.5, 11} -> P = 1/2, R = 1, F1 = 2*1/(2*1 + 1 + 0) = 2/3
    kwargs = dict(predictions=[9.5, 11, 2, 8], references=[8, 12, 3, 5], n_bootstrap=0)
    at10 = metric.compute(**kwargs)  # default cut-off is 10
    at9 = metric.compute(cutoff=9, **kwargs)
    assert at10["cutoff"] == 10.0 and at9["cutoff"] == 9.0
    assert at10["f1"] == pytest.approx(1.0) and at10["precision"] == pytest.approx(1.0)
    assert at9["f1"] == pytest.approx(2 / 3) and at9["precision"] == pytest.approx(0.5)
    assert at9["recall"] == pytest.approx(1.0)


def test_never_predicted_or_never_present_positive_is_zero_not_nan(metric):
    cases = {
        "never predicted": ([1, 2, 3, 9.9], [2, 12, 15, 4]),
        "never present": ([11, 2, 3, 14], [2, 3, 5, 9]),
        "neither": ([1, 2, 3, 4], [2, 3, 5, 9]),
    }
    for name, (pred, true) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning from a 0/0
            out = metric.compute(predictions=pred, references=true, n_bootstrap=200)
        y_true, y_pred = np.asarray(true) >= 10, np.asarray(pred) >= 10
        for key, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            assert out[key] == 0.0 == fn(y_true, y_pred, zero_division=0), (name, key)
        assert out["f1_ci95"] == [0.0, 0.0], name
        json.dumps(out, allow_nan=False)


def test_severity_band_boundaries():
    totals = [0, 4, 4.99, 5, 9, 9.99, 10, 14, 15, 19, 20, 24, 27]
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert [phq_metrics.severity_band(t) for t in totals] == expected
    assert phq_metrics.severity_band(np.asarray(totals)).tolist() == expected
    assert [phq_metrics.severity_band_name(t) for t in (3, 7, 12, 17, 22)] == list(phq_metrics.SEVERITY_BANDS)
    assert phq_metrics.binary_label(10) is True and phq_metrics.binary_label(9.99) is False
    assert phq_metrics.binary_label(9, cutoff=9) is True
    assert phq_metrics.binary_label([8, 10, 12]).tolist() == [False, True, True]


# --------------------------------------------------------------------------- degenerate inputs


def test_constant_predictions(metric):
    out = metric.compute(predictions=[0.1, 0.1, 0.1, 0.1], references=[3, 8, 12, 20], n_bootstrap=100)
    assert out["ccc"] == 0.0  # covariance 0 -> CCC 0 by the formula
    assert out["pearson_r"] is None
    assert phq_metrics.pearson_r([5, 5, 5], [1, 2, 3]) is None
    # two identical constants: 0/0 in Lin's formula, defined as 0 (covariance 0)
    assert phq_metrics.concordance_correlation_coefficient([7, 7, 7], [7, 7, 7]) == 0.0
    json.dumps(out, allow_nan=False)


def test_invalid_inputs_raise(metric):
    with pytest.raises(ValueError, match="at least 2 participants"):
        metric.compute(predictions=[3.0], references=[4.0])
    with pytest.raises(ValueError, match="at least 2 participants"):
        phq_metrics.concordance_correlation_coefficient([3.0], [4.0])
    with pytest.raises(ValueError):
        phq_metrics.concordance_correlation_coefficient([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        phq_metrics.point_metrics([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="n_bootstrap"):
        phq_metrics.bootstrap_intervals([1, 2, 3], [1, 2, 4], n_bootstrap=-1)
    with pytest.raises(ValueError, match="both"):
        metric.compute(predictions=[1, 2], references=[1, 2], item_predictions=[[1, 2]], n_bootstrap=0)
    with pytest.raises(ValueError, match="genders"):
        metric.compute(predictions=[1, 2], references=[1, 2], genders=["f"], n_bootstrap=0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        metric.compute(predictions=[1, 2], references=[1, 2], n_bootstrap=2.5)
    with pytest.raises(TypeError, match="unknown compute arguments"):
        metric.compute(predictions=[1, 2], references=[1, 2], cut_off=9)
    # errors are raised before evaluate touches its cache, so the module stays usable
    assert metric.compute(predictions=[2, 4, 6], references=[1, 4, 7], n_bootstrap=0)["ccc"] == pytest.approx(12 / 13)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_deterministic_and_contains_point_estimate(metric):
    rng = np.random.default_rng(7)
    true = rng.integers(0, 25, size=60).astype(float)
    pred = np.clip(true + rng.normal(0, 3, size=60), 0, 24)
    first = metric.compute(predictions=pred, references=true, n_bootstrap=500, seed=3)
    again = metric.compute(predictions=pred, references=true, n_bootstrap=500, seed=3)
    other = metric.compute(predictions=pred, references=true, n_bootstrap=500, seed=4)
    for key in ("ccc_ci95", "mae_ci95", "f1_ci95"):
        assert first[key] == again[key]
        low, high = first[key]
        assert low <= first[key.replace("_ci95", "")] <= high, key
        assert low < high, key
    assert first["ccc_ci95"] != other["ccc_ci95"]
    assert first["n_bootstrap"] == 500 and first["seed"] == 3
    assert metric.compute(predictions=pred, references=true, n_bootstrap=0)["ccc_ci95"] is None


def test_bootstrap_matches_loop_reimplementation():
    # The vectorised bootstrap equals a per-resample loop over the same index matrix (same generator).
    pred, true = random_case(11)
    cutoff, n_boot, seed = 10, 300, 5
    out = phq_metrics.bootstrap_intervals(pred, true, cutoff=cutoff, n_bootstrap=n_boot, seed=seed)
    index = np.random.default_rng(seed).integers(0, pred.size, size=(n_boot, pred.size))
    ccc, mae, f1 = [], [], []
    for row in index:
        p, t = pred[row], true[row]
        cov = np.cov(p, t, ddof=0)[0, 1]
        ccc.append(0.0 if abs(cov) < 1e-12 else numpy_ccc(p, t, ddof=0))
        mae.append(mean_absolute_error(t, p))
        f1.append(f1_score(t >= cutoff, p >= cutoff, zero_division=0))
    for key, values in (("ccc_ci95", ccc), ("mae_ci95", mae), ("f1_ci95", f1)):
        assert out[key] == pytest.approx(np.percentile(values, [2.5, 97.5]).tolist(), abs=1e-10), key


# --------------------------------------------------------------------------- per gender, per item


def test_per_gender(metric):
    pred, true = random_case(4)
    genders = np.where(np.arange(pred.size) % 3 == 0, "female", "male").tolist()
    out = metric.compute(predictions=pred, references=true, genders=genders, n_bootstrap=0)
    assert set(out["per_gender"]) == {"female", "male"}
    for gender, values in out["per_gender"].items():
        mask = np.asarray(genders) == gender
        assert values["n_participants"] == int(mask.sum())
        assert values["mae"] == pytest.approx(mean_absolute_error(true[mask], pred[mask]))
        assert values["ccc"] == pytest.approx(numpy_ccc(pred[mask], true[mask], ddof=0))
        assert values["f1"] == pytest.approx(f1_score(true[mask] >= 10, pred[mask] >= 10, zero_division=0))
    # integer labels become string keys; a group of one has no CCC or r
    single = metric.compute(predictions=[1, 5, 12], references=[2, 6, 10], genders=[0, 0, 1], n_bootstrap=0)
    assert set(single["per_gender"]) == {"0", "1"}
    assert single["per_gender"]["1"]["ccc"] is None and single["per_gender"]["1"]["mae"] == 2.0
    json.dumps(single, allow_nan=False)


def test_per_item_mae(metric):
    rng = np.random.default_rng(2)
    item_true = rng.integers(0, 4, size=(30, 8))
    item_pred = np.clip(item_true + rng.integers(-1, 2, size=(30, 8)), 0, 3)
    out = metric.compute(
        predictions=item_pred.sum(1),
        references=item_true.sum(1),
        item_predictions=item_pred.tolist(),
        item_references=item_true.tolist(),
        n_bootstrap=0,
    )
    assert list(out["per_item_mae"]) == list(range(1, 9))
    for item in range(1, 9):
        expected = mean_absolute_error(item_true[:, item - 1], item_pred[:, item - 1])
        assert out["per_item_mae"][item] == pytest.approx(expected, abs=1e-12)
    # the flat layout with one item label per entry gives the same result
    flat = phq_metrics.per_item_mae(
        item_pred.reshape(-1), item_true.reshape(-1), item_indices=np.tile(np.arange(1, 9), 30)
    )
    assert flat == pytest.approx(out["per_item_mae"])
    named = phq_metrics.per_item_mae([[1, 2], [0, 3]], [[0, 2], [0, 1]], item_indices=["Sleep", "Tired"])
    assert named == {"Sleep": 0.5, "Tired": 1.0}
    with pytest.raises(ValueError):
        phq_metrics.per_item_mae([1, 2, 3], [1, 2, 3])  # flat without labels
    assert json.loads(json.dumps(out, allow_nan=False))["per_item_mae"]["1"] == out["per_item_mae"][1]


# --------------------------------------------------------------------------- module and loading


def test_evaluate_module_equals_pure_function(metric):
    pred, true = random_case(8)
    genders = ["a", "b"] * (pred.size // 2) + ["a"] * (pred.size % 2)
    via_evaluate = metric.compute(predictions=pred, references=true, genders=genders, n_bootstrap=100, seed=1)
    direct = phq_metrics._impl.compute_phq_metrics(pred, true, genders=genders, n_bootstrap=100, seed=1)
    assert via_evaluate == direct
    assert json.loads(json.dumps(via_evaluate, allow_nan=False)) == via_evaluate


def test_metric_file_imports_one_per_line_and_installed():
    # evaluate parses the module's import lines to check dependencies: one import per line, no local imports.
    from evaluate.loading import get_imports

    source = (phq_metrics.METRIC_DIR / "phq_score.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            assert len(node.names) == 1, ast.unparse(node)
    kinds = {(kind, name) for kind, name, _, _ in get_imports(str(phq_metrics.METRIC_DIR / "phq_score.py"))}
    assert {kind for kind, _ in kinds} == {"library"}
    allowed = {"__future__", "collections", "math", "typing", "datasets", "evaluate", "numpy"}
    assert {name for _, name in kinds} <= allowed


def test_load_from_other_directory_offline(tmp_path):
    script = (
        "import json\n"
        "from mllm_dr.metrics import load_phq_metric\n"
        "m = load_phq_metric()\n"
        "print(json.dumps(m.compute(predictions=[2, 4, 6], references=[1, 4, 7], n_bootstrap=50)))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # empty cache: nothing pre-downloaded to fall back on
        "HF_ENDPOINT": "http://127.0.0.1:9",  # any network attempt would fail
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ccc"] == pytest.approx(12 / 13)
    assert not (tmp_path / "metrics").exists()
