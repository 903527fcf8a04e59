"""Table 6 from hand-made rating files whose answers are worked out by hand in the comments: three
assessors with ties and missing ratings, an even-count tie, a sample nobody rated, one assessor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mllm_dr.commands import analyse_reviews
from mllm_dr.io import append_jsonl, write_json_atomic
from mllm_dr.review import analyse, consensus, read_ratings, table6_markdown
from mllm_dr.review.analysis import krippendorff_alpha

# sample_id: (participant, item, model_score, label)
SAMPLES = {1: ("301", 1, 2, 2), 2: ("301", 2, 1, 0), 3: ("302", 3, 3, 3), 4: ("302", 4, 0, 1),
           5: ("303", 5, 2, None), 6: ("303", 6, 1, 1), 7: ("304", 7, 0, 0)}  # fmt: skip
# assessor: {sample_id: (rationale rating, own score)}; absent: not rated
RATINGS = {
    "Ann": {1: (3, 2), 2: (2, 1), 3: (3, 3), 4: (1, 1), 5: (3, 2), 6: (3, 3)},
    "Bo": {1: (3, 2), 2: (1, 0), 3: (2, 3), 4: (2, 0), 5: (3, 2), 6: (2, 1)},
    "Cy": {1: (2, 1), 2: (3, 2), 3: (3, 2), 4: (3, 2)},
}
# Consensus, sample by sample (majority vote; tie -> median, lower middle for an even count):
#   rationale: 1 [3,3,2]->3  2 [2,1,3]->2 (tie)  3 [3,2,3]->3  4 [1,2,3]->2 (tie)  5 [3,3]->3  6 [3,2]->2 (tie)  7 none
#   own score: 1 [2,2,1]->2  2 [1,0,2]->1 (tie)  3 [3,3,2]->3  4 [1,0,2]->1 (tie)  5 [2,2]->2  6 [3,1]->1 (tie)  7 none
# II: model 2,1,3,0,2,1 vs experts 2,1,3,1,2,1 -> 5 of 6 agree
# III (labelled: 1,2,3,4,6): experts - labels = 0,1,0,0,0 -> RMSE sqrt(1/5), MAE 1/5;
#                             model - labels   = 0,1,0,-1,0 -> RMSE sqrt(2/5), MAE 2/5
# IV: labels 3,2,3,2,3,2 -> 3/6, 3/6, 0/6
OUTPUTS, FAILURES = 40, 2  # I: 5%


def sample_fixture() -> dict:
    samples = [
        {"sample_id": n, "participant_id": p, "item_index": i, "item_name": f"item{i}", "rationale": f"Reason {n}.",
         "model_score": m, "label": label}
        for n, (p, i, m, label) in SAMPLES.items()
    ]  # fmt: skip
    return {"questionnaire": "phq8", "score_range": [0, 3], "outputs": OUTPUTS, "format_failures": FAILURES,
            "fingerprint": "f" * 16, "seed": 0, "data": {"format": "edaic", "split": "test"}, "samples": samples}  # fmt: skip


def write_review(folder: Path, assessors: dict) -> list[Path]:
    write_json_atomic(folder / "sample.json", sample_fixture())
    files = []
    for name, given in assessors.items():
        path = folder / f"{name.lower()}.jsonl"
        append_jsonl(path, [
            {"sample_id": n, "participant_id": SAMPLES[n][0], "item_index": SAMPLES[n][1], "assessor": name,
             "rationale_rating": r, "expert_score": s, "blind": True}
            for n, (r, s) in given.items()
        ])  # fmt: skip
        files.append(path)
    return files


@pytest.mark.parametrize(
    ("values", "expected"),
    [([3, 3, 2], 3), ([1, 2, 3], 2), ([3, 2], 2), ([1, 3], 1), ([3, 3, 2, 2], 2), ([3, 3, 2, 1], 3),
     ([None, 2, None], 2), ([None, None], None), ([], None), ([0, 1, 2, 3], 1)],
)  # fmt: skip
def test_majority_vote_with_the_median_on_ties(values, expected):
    assert consensus(values) == expected


def test_three_assessors_with_ties_and_missing_ratings_give_the_hand_computed_table(tmp_path):
    result = analyse(sample_fixture(), write_review(tmp_path, RATINGS))
    assert [r["rationale_label"] for r in result["consensus"]] == [3, 2, 3, 2, 3, 2, None]
    assert [r["expert_score"] for r in result["consensus"]] == [2, 1, 3, 1, 2, 1, None]
    assert result["I_format_failures"] == {"rate": 0.05, "format_failures": 2, "outputs": 40}
    assert result["II_agreement"] == {"rate": pytest.approx(5 / 6), "agree": 5, "samples": 6}
    third = result["III_expert_error"]
    assert (third["rmse"], third["mae"], third["samples"]) == (pytest.approx(math.sqrt(1 / 5)), pytest.approx(0.2), 5)
    assert (third["model"]["rmse"], third["model"]["mae"]) == (pytest.approx(math.sqrt(2 / 5)), pytest.approx(0.4))
    assert result["IV_rationale_labels"] == {"shares": {"3": 0.5, "2": 0.5, "1": 0.0}, "samples": 6}
    assert result["unrated_samples"] == [7]
    assert [(a["name"], a["rated"]) for a in result["assessors"]] == [("Ann", 6), ("Bo", 6), ("Cy", 4)]


def test_agreement_is_krippendorffs_alpha_over_the_assessor_by_sample_matrix(tmp_path):
    import krippendorff
    import numpy as np

    alphas = analyse(sample_fixture(), write_review(tmp_path, RATINGS))["inter_assessor"]
    nan = np.nan
    rationale = [[3, 2, 3, 1, 3, 3, nan], [3, 1, 2, 2, 3, 2, nan], [2, 3, 3, 3, nan, nan, nan]]
    expected = krippendorff.alpha(reliability_data=rationale, level_of_measurement="ordinal", value_domain=[1, 2, 3])
    assert alphas["rationale_rating"] == {"alpha": pytest.approx(expected), "reason": None}
    assert alphas["expert_score"]["alpha"] is not None and "Krippendorff" in alphas["method"]
    assert krippendorff_alpha([[1, 2, 3, None], [1, 2, 3, 3]], [1, 2, 3])["alpha"] == pytest.approx(1.0)
    assert krippendorff_alpha([[3, 3], [3, 3]], [1, 2, 3])["reason"].startswith("every rating is the same")


def test_one_assessor_gives_their_own_labels_and_no_agreement(tmp_path):
    result = analyse(sample_fixture(), write_review(tmp_path, {"Ann": RATINGS["Ann"]}))
    assert [r["rationale_label"] for r in result["consensus"]] == [3, 2, 3, 1, 3, 3, None]
    assert result["IV_rationale_labels"]["shares"] == {"3": pytest.approx(4 / 6), "2": pytest.approx(1 / 6),
                                                       "1": pytest.approx(1 / 6)}  # fmt: skip
    assert result["II_agreement"]["agree"] == 4  # 2,1,3,1,2,3 vs model 2,1,3,0,2,1
    for key in ("rationale_rating", "expert_score"):
        assert result["inter_assessor"][key] == {"alpha": None, "reason": "one assessor: agreement between assessors is undefined"}
    assert "n/a (one assessor" in table6_markdown(result)


def test_the_last_rating_of_a_sample_counts_and_foreign_lines_are_named(tmp_path):
    sample = sample_fixture()
    path = tmp_path / "ann.jsonl"
    base = {"participant_id": "301", "item_index": 1, "assessor": "Ann", "blind": True}
    append_jsonl(path, [{**base, "sample_id": 1, "rationale_rating": None, "expert_score": 2},
                        {**base, "sample_id": 1, "rationale_rating": 3, "expert_score": 2}])  # fmt: skip
    assert read_ratings(path, sample)[1]["rationale_rating"] == 3
    with path.open("a") as handle:
        handle.write('{"sample_id": 1, "partic')  # a torn last line (killed writer) is dropped
    assert len(read_ratings(path, sample)) == 1
    for bad, message in (({**base, "sample_id": 2}, "another sample"), ({**base, "sample_id": 9}, "not in the sample"),
                         ({**base, "sample_id": 1, "rationale_rating": 4}, "rationale_rating"),
                         ({**base, "sample_id": 1, "expert_score": 5}, "expert_score")):  # fmt: skip
        other = tmp_path / "other.jsonl"
        other.unlink(missing_ok=True)
        append_jsonl(other, [bad])
        with pytest.raises(ValueError, match=message) as caught:
            read_ratings(other, sample)
        assert f"{other}:1" in str(caught.value)


def test_the_command_writes_the_table_beside_the_papers_values(tmp_path, capsys):
    write_review(tmp_path, RATINGS)
    assert analyse_reviews.main(["--reviews_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "table6.md").read_text()
    assert "| I | outputs not in the required format | 5.00% (2 of 40) | 1.23% | 3.12% |" in markdown
    assert "| II | agreement of model and expert scores | 83% (5 of 6) | 87% | 73% |" in markdown
    assert "0.45/0.20 per item (model: 0.63/0.40; 5 samples)" in markdown
    assert "| IV | rationales rated 3/2/1 | 50%/50%/0% (6 samples) | 77%/14%/9% | 64%/19%/17% |" in markdown
    assert "Not rated by anyone: sample(s) 7." in markdown
    saved = json.loads((tmp_path / "out" / "table6.json").read_text())
    assert saved["II_agreement"]["agree"] == 5 and "samples" not in saved["sample"]
    assert markdown in capsys.readouterr().out
    only = analyse_reviews.main(["--reviews_dir", str(tmp_path), "--ratings", str(tmp_path / "ann.jsonl")])
    assert only == 0 and "n/a (one assessor" in (tmp_path / "table6.md").read_text()
    with pytest.raises(SystemExit, match="holds no sample.json"):
        analyse_reviews.main(["--reviews_dir", str(tmp_path / "out")])
    write_json_atomic(tmp_path / "out" / "sample.json", sample_fixture())
    with pytest.raises(SystemExit, match="no ratings files"):
        analyse_reviews.main(["--reviews_dir", str(tmp_path / "out")])  # table6.json is not a ratings file
