"""Table 6 of the paper from the assessors' ratings files (section 5.6).

Per sample, the assessors' ratings are combined by majority vote: the rating given most often; when
two or more ratings share the highest count (a tie: 3/2/1 from three assessors), the median of the
sample's ratings, the lower middle one for an even count, so the label stays on the scale and a tie
never rounds up. The same rule combines the assessors' own item scores. A missing rating (an
assessor skipped the sample) is left out of the vote; a sample nobody rated is left out of II-IV.

* I: the share of the evaluation's outputs that broke the required format (every output of the
  evaluation folder, not only the sample: the paper reports it per model).
* II: agreement rate, the share of samples whose combined expert score equals the model's score.
* III: RMSE and MAE of the combined expert scores against the corpus's item labels (the model's on
  the same samples beside them). Per item, on the 0-3 scale: the paper's 3.25/2.21 and 5.01/3.94 can
  only be on the PHQ total's scale, which a sample stratified by item does not give.
* IV: the shares of the combined rationale labels 3 (fully agree) / 2 (reasonable) / 1 (disagree).

Inter-assessor agreement is Krippendorff's alpha (ordinal), from the ``krippendorff`` package, for the
rationale ratings and the expert scores; it handles missing ratings and is undefined for one assessor.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .sampling import RATING_SCALE, read_ratings

PAPER_TABLE6: dict[str, dict[str, Any]] = {  # the paper's Table 6; I per model, II-IV for MLlm-DR ("Ours")
    "CMDC": {"I": {"LLaMA-3-8B": 0.0926, "LoRA": 0.0061, "Ours": 0.0123}, "II": 0.87, "III": (3.25, 2.21),
             "IV": (0.77, 0.14, 0.09)},
    "E-DAIC-WOZ": {"I": {"LLaMA-3-8B": 0.1852, "LoRA": 0.0432, "Ours": 0.0312}, "II": 0.73, "III": (5.01, 3.94),
                   "IV": (0.64, 0.19, 0.17)},
}  # fmt: skip
LEVELS = tuple(sorted(RATING_SCALE, reverse=True))  # 3, 2, 1


def consensus(values: Sequence[int | None]) -> int | None:
    """Majority vote over the given ratings (``None`` left out), the median on ties (lower middle for
    an even count); ``None`` when nobody rated."""
    given = sorted(v for v in values if v is not None)
    if not given:
        return None
    counts = Counter(given).most_common()
    if len(counts) == 1 or counts[0][1] > counts[1][1]:
        return counts[0][0]
    return statistics.median_low(given)


def krippendorff_alpha(matrix: Sequence[Sequence[int | None]], domain: Sequence[int]) -> dict[str, Any]:
    """Krippendorff's alpha (ordinal) of an assessors x samples matrix (``None``: not rated), with the
    reason when it is undefined."""
    import krippendorff
    import numpy as np

    if len(matrix) < 2:
        return {"alpha": None, "reason": "one assessor: agreement between assessors is undefined"}
    data = np.array([[math.nan if v is None else v for v in row] for row in matrix], dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=list(domain)))
    except ValueError as error:  # e.g. no sample rated by two assessors
        return {"alpha": None, "reason": str(error)}
    if math.isnan(alpha):
        return {"alpha": None, "reason": "every rating is the same value: alpha is undefined (no variation)"}
    return {"alpha": alpha, "reason": None}


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def analyse(sample: Mapping[str, Any], rating_files: Sequence[str | Path]) -> dict[str, Any]:
    """Table 6's metrics I-IV, inter-assessor agreement and the per-sample consensus, from ``sample``
    (``sample.json``) and one ratings file per assessor."""
    from importlib.metadata import version

    if not rating_files:
        raise ValueError("no ratings files: each assessor's <name>.jsonl from the review folder is needed")
    samples = sample["samples"]
    assessors = []
    for path in rating_files:
        ratings = read_ratings(path, sample)
        names = sorted({r["assessor"] for r in ratings.values()})
        assessors.append({"file": str(path), "name": ", ".join(names) or Path(path).stem, "ratings": ratings})
    rows = []
    for entry in samples:
        number = entry["sample_id"]
        given = [a["ratings"].get(number, {}) for a in assessors]
        rows.append(
            {
                "sample_id": number, "participant_id": entry["participant_id"], "item_index": entry["item_index"],
                "model_score": entry["model_score"], "label": entry.get("label"),
                "rationale_ratings": [g.get("rationale_rating") for g in given],
                "expert_scores": [g.get("expert_score") for g in given],
            }
        )  # fmt: skip
        rows[-1]["rationale_label"] = consensus(rows[-1]["rationale_ratings"])
        rows[-1]["expert_score"] = consensus(rows[-1]["expert_scores"])

    scored = [r for r in rows if r["expert_score"] is not None]
    agree = sum(r["expert_score"] == r["model_score"] for r in scored)
    against_labels = [r for r in scored if r["label"] is not None]

    def errors(field: str) -> dict[str, float | None]:
        differences = [r[field] - r["label"] for r in against_labels]
        if not differences:
            return {"rmse": None, "mae": None}
        return {"rmse": math.sqrt(sum(d * d for d in differences) / len(differences)),
                "mae": sum(abs(d) for d in differences) / len(differences)}  # fmt: skip

    labelled = [r["rationale_label"] for r in rows if r["rationale_label"] is not None]
    distribution = {str(level): _share(labelled.count(level), len(labelled)) for level in LEVELS}
    low, high = sample.get("score_range", (0, 3))
    return {
        "samples": len(samples),
        "assessors": [{"name": a["name"], "file": a["file"], "rated": len(a["ratings"]),
                       "blind": sum(bool(r.get("blind")) for r in a["ratings"].values())} for a in assessors],  # fmt: skip
        "I_format_failures": {"rate": _share(sample["format_failures"], sample["outputs"]),
                              "format_failures": sample["format_failures"], "outputs": sample["outputs"]},  # fmt: skip
        "II_agreement": {"rate": _share(agree, len(scored)), "agree": agree, "samples": len(scored)},
        "III_expert_error": {**errors("expert_score"), "samples": len(against_labels),
                             "model": errors("model_score"), "scale": "item (0-3)"},  # fmt: skip
        "IV_rationale_labels": {"shares": distribution, "samples": len(labelled)},
        "inter_assessor": {
            "method": f"Krippendorff's alpha, ordinal (krippendorff {version('krippendorff')})",
            "rationale_rating": krippendorff_alpha([r["rationale_ratings"] for r in _by_assessor(rows)], LEVELS),
            "expert_score": krippendorff_alpha([r["expert_scores"] for r in _by_assessor(rows)], range(low, high + 1)),
        },
        "unrated_samples": [r["sample_id"] for r in rows if r["rationale_label"] is None and r["expert_score"] is None],
        "consensus": rows,
    }


def _by_assessor(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, list]]:
    """The per-sample lists turned around: one row per assessor, one column per sample."""
    count = len(rows[0]["rationale_ratings"]) if rows else 0
    return [
        {"rationale_ratings": [r["rationale_ratings"][i] for r in rows], "expert_scores": [r["expert_scores"][i] for r in rows]}
        for i in range(count)
    ]


def _percent(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _pair(pair: Mapping[str, float | None]) -> str:
    return "n/a" if pair["rmse"] is None else f"{pair['rmse']:.2f}/{pair['mae']:.2f}"


def _alpha(entry: Mapping[str, Any]) -> str:
    return "n/a" if entry["alpha"] is None else f"{entry['alpha']:.2f}"


def table6_markdown(result: Mapping[str, Any], title: str = "Table 6 (human evaluation of the rationales)") -> str:
    """The metrics beside the paper's values for MLlm-DR ("Ours") on CMDC and E-DAIC-WOZ."""
    cmdc, edaic = PAPER_TABLE6["CMDC"], PAPER_TABLE6["E-DAIC-WOZ"]
    first, second = result["I_format_failures"], result["II_agreement"]
    third, fourth = result["III_expert_error"], result["IV_rationale_labels"]
    shares = fourth["shares"]
    alphas = result["inter_assessor"]
    names = ", ".join(f"{a['name']} ({a['rated']} rated)" for a in result["assessors"])

    def paper_iv(values) -> str:
        return "/".join(_percent(v) for v in values)

    lines = [
        f"## {title}",
        "",
        f"{result['samples']} samples; assessors: {names}.",
        "",
        "| | metric | this review | paper, CMDC | paper, E-DAIC-WOZ |",
        "|---|---|---|---|---|",
        f"| I | outputs not in the required format | {_percent(first['rate'], 2)} ({first['format_failures']} of "
        f"{first['outputs']}) | {_percent(cmdc['I']['Ours'], 2)} | {_percent(edaic['I']['Ours'], 2)} |",
        f"| II | agreement of model and expert scores | {_percent(second['rate'])} ({second['agree']} of "
        f"{second['samples']}) | {_percent(cmdc['II'])} | {_percent(edaic['II'])} |",
        f"| III | expert scores vs labels, RMSE/MAE | {_pair(third)} per item (model: {_pair(third['model'])}; "
        f"{third['samples']} samples) | {cmdc['III'][0]:.2f}/{cmdc['III'][1]:.2f} (total scale) | "
        f"{edaic['III'][0]:.2f}/{edaic['III'][1]:.2f} (total scale) |",
        f"| IV | rationales rated 3/2/1 | {'/'.join(_percent(shares[str(level)]) for level in LEVELS)} "
        f"({fourth['samples']} samples) | {paper_iv(cmdc['IV'])} | {paper_iv(edaic['IV'])} |",
        f"| | inter-assessor alpha, rationale / score | {_alpha(alphas['rationale_rating'])} / "
        f"{_alpha(alphas['expert_score'])} | not reported | not reported |",
        "",
        "Majority vote per sample (the median on ties); II-IV over the samples at least one assessor rated, I over "
        "every output of the evaluation. III is per item (0-3): the paper's values can only be on the PHQ total's "
        f"scale. Agreement: {alphas['method']}.",
    ]
    for key, label in (("rationale_rating", "rationale ratings"), ("expert_score", "expert scores")):
        if alphas[key]["reason"]:
            lines.append(f"Alpha of the {label}: n/a ({alphas[key]['reason']}).")
    if result["unrated_samples"]:
        lines.append(f"Not rated by anyone: sample(s) {', '.join(map(str, result['unrated_samples']))}.")
    return "\n".join(lines) + "\n"
