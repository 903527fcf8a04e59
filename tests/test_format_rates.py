"""Issue 14: the strict parser decides which score counts; a permissive reading gives the
paper-comparable format-failure rate (Table 6, metric I) beside it."""

from __future__ import annotations

import pytest

from mllm_dr.evaluation import compute_metrics
from processing_mllm_dr import parse_output, parse_score_permissive


@pytest.mark.parametrize(
    "text, strict, lenient",
    [
        ("Evaluation Reason: sleeps badly.\nScore: 2", 2, 2),
        ("Evaluation Reason: sleeps badly. Score: 2", None, 2),          # same line
        ("Evaluation Reason: sleeps badly.\n**Score:** 2", None, 2),     # bold
        ("evaluation reason: sleeps badly.\nscore: 2", None, 2),         # lower case
        ("The score is 1 because she naps.", None, 1),
        ("Score: 1 ... on reflection Score: 3", None, None),             # two scores that disagree
        ("Score: 2\nScore: 2", None, 2),                                 # repeated, the same number
        ("Score: 7", None, None),                                        # out of range
        ("She slept 8 hours.", None, None),                              # a digit is not a score
        ("Scores vary: 2", None, None),                                  # not the word "score"
    ],
)
def test_strict_and_permissive_readings(text, strict, lenient):
    assert parse_output(text)[0] == strict
    assert parse_score_permissive(text) == lenient


def _record(pid, item, text, parsed, label):
    return {"participant_id": pid, "item_index": item, "generated_text": text, "parsed_score": parsed,
            "head_score": 1.0, "score": float(parsed if parsed is not None else 1.0), "fell_back": parsed is None,
            "label": label, "true_total": None, "gender": None}  # fmt: skip


def test_metrics_report_both_rates_and_score_with_the_strict_one():
    texts = [("a", 1, "Evaluation Reason: x\nScore: 2", 2), ("a", 2, "Evaluation Reason: x. **Score:** 3", None),
             ("b", 1, "nothing here", None), ("b", 2, "Evaluation Reason: y\nScore: 0", 0)]  # fmt: skip
    records = [_record(pid, item, text, parsed, label=1) for pid, item, text, parsed in texts]
    for r in records:
        r["true_total"] = 2
    metrics = compute_metrics(records, cutoff=10, seed=0, n_bootstrap=0, score_source="generated_with_head_fallback",
                              baseline=False)  # fmt: skip
    assert metrics["format_failure_rate"] == 0.5 and metrics["format_failure_rate_permissive"] == 0.25
    assert metrics["fallback_count"] == 2  # the permissive reading never changes the score used
