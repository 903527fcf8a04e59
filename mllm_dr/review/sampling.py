"""The review sample and the assessors' ratings files.

The sample is drawn once from an ``mllm-dr-evaluate`` output folder (``predictions.jsonl`` and
``manifest.json``) and kept in ``REVIEWS_DIR/sample.json``, so that every assessor rates the same
items in the same order and a later start reuses it (one drawn with other settings is refused).
Only outputs that kept the required format have a rationale to rate; the format failures are
counted in the sample file for Table 6's metric I.

Ratings go to ``REVIEWS_DIR/<assessor>.jsonl``, one JSON line per saved rating, appended with
:func:`mllm_dr.io.append_jsonl` (whole lines, fsynced): a rating saved is never lost, and the last
line for a sample is the one that counts (an assessor may go back and change it).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from processing_mllm_dr import QUESTIONNAIRES

from ..data.report import natural_key
from ..io import append_jsonl, read_jsonl, write_json_atomic

SAMPLE = "sample.json"
REVIEWS_DIRNAME = "reviews"
SCORE_RANGE = (0, 3)  # a PHQ item's answer: 0 (not at all) .. 3 (nearly every day)
RATING_SCALE: dict[int, str] = {  # paper section 5.6
    3: "Fully agree (I would have made the same assessment)",
    2: "Reasonable (a different perspective, but a similar conclusion)",
    1: "Disagree (the rationale is not acceptable)",
}


def ratable(prediction: Mapping[str, Any]) -> bool:
    """An output that kept the required format: a rationale and a generated score to rate."""
    return prediction.get("parsed_score") is not None and bool((prediction.get("rationale") or "").strip())


def draw_sample(predictions: Sequence[Mapping[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` ratable predictions, stratified by PHQ item: the items take turns (in a seeded order)
    and each gives its next prediction (its own seeded order) until ``size`` are drawn, so every item
    gets ``size // items`` or one more, and an item with too few outputs leaves its share to the others.
    The sample is shown in a seeded order (items interleaved) and numbered from 1."""
    if size < 1:
        raise ValueError(f"the sample size must be at least 1, got {size}")
    rng = random.Random(seed)
    by_item: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for prediction in predictions:
        if ratable(prediction):
            by_item[int(prediction["item_index"])].append(prediction)
    if not by_item:
        raise ValueError(
            "no prediction has a rationale to review (every output broke the format, or this is the train-mean baseline)"
        )
    queues = {}
    for item, group in sorted(by_item.items()):
        group = sorted(group, key=lambda p: natural_key(p["participant_id"]))
        rng.shuffle(group)
        queues[item] = group
    turns = rng.sample(sorted(queues), len(queues))
    drawn: list[Mapping[str, Any]] = []
    while len(drawn) < size and any(queues.values()):
        for item in turns:
            if queues[item] and len(drawn) < size:
                drawn.append(queues[item].pop(0))
    rng.shuffle(drawn)
    return [
        {
            "sample_id": number,
            "participant_id": str(p["participant_id"]),
            "item_index": int(p["item_index"]),
            "item_name": p.get("item_name"),
            "rationale": p["rationale"].strip(),
            "model_score": int(p["parsed_score"]),
            "label": p.get("label"),
        }
        for number, p in enumerate(drawn, start=1)
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(samples: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(samples), sort_keys=True).encode()).hexdigest()[:16]


def prepare_sample(eval_dir: str | Path, reviews_dir: str | Path, size: int = 100, seed: int = 0) -> dict[str, Any]:
    """``reviews_dir/sample.json``: drawn from ``eval_dir`` and written (atomically) on the first call;
    read back on the next ones. A sample drawn with another seed or size, or from predictions that
    have changed since, is refused (``ValueError``) rather than replaced: ratings refer to it."""
    # Imported here: evaluation pulls in the metrics (and numpy) that the review never needs otherwise.
    from ..evaluation import MANIFEST, PREDICTIONS

    eval_dir, reviews_dir = Path(eval_dir), Path(reviews_dir)
    predictions_path, manifest_path = eval_dir / PREDICTIONS, eval_dir / MANIFEST
    for path in (predictions_path, manifest_path):
        if not path.is_file():
            raise ValueError(f"{eval_dir} is not an mllm-dr-evaluate output folder: {path.name} is missing")
    digest = _sha256(predictions_path)
    existing = reviews_dir / SAMPLE
    if existing.is_file():
        sample = read_sample(reviews_dir)
        wanted = {"seed": seed, "size_requested": size, "predictions_sha256": digest}
        differs = sorted(k for k, v in wanted.items() if sample.get(k) != v)
        if differs:
            raise ValueError(
                f"{existing} holds a sample drawn with other settings ({', '.join(differs)}): its ratings refer to "
                "that sample, so keep its --seed and --sample_size, or use another --reviews_dir"
            )
        return sample
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    predictions = [record for _line, record in read_jsonl(predictions_path)]
    samples = draw_sample(predictions, size, seed)
    questionnaire = manifest.get("questionnaire") or "phq8"
    sample = {
        "eval_dir": str(eval_dir.resolve()),
        "predictions_sha256": digest,
        "model": manifest.get("model"),
        "data": {k: manifest.get("data", {}).get(k) for k in ("format", "dir", "split")},
        "questionnaire": questionnaire,
        "seed": seed,
        "size_requested": size,
        "stratified_by": "item_index",
        "score_range": list(SCORE_RANGE),
        "outputs": len(predictions),
        "format_failures": sum(p.get("parsed_score") is None for p in predictions),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": _fingerprint(samples),
        "samples": samples,
    }
    write_json_atomic(existing, sample)
    return sample


def read_sample(reviews_dir: str | Path) -> dict[str, Any]:
    path = Path(reviews_dir) / SAMPLE
    if not path.is_file():
        raise ValueError(f"{reviews_dir} holds no {SAMPLE}: start the review there first (mllm-dr-review)")
    sample = json.loads(path.read_text(encoding="utf-8"))
    if sample.get("questionnaire") not in QUESTIONNAIRES or not isinstance(sample.get("samples"), list):
        raise ValueError(f"{path}: not a review sample (no questionnaire or samples)")
    return sample


def assessor_slug(name: str) -> str:
    """The assessor's file name stem: letters, digits, ``-`` and ``_`` (``"Dr. Ann Lee"`` -> ``"dr_ann_lee"``)."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", name.strip().lower()).strip("_")
    if not slug:
        raise ValueError(f"an assessor's name needs a letter or digit, got {name!r}")
    return slug


def ratings_path(reviews_dir: str | Path, assessor: str) -> Path:
    return Path(reviews_dir) / f"{assessor_slug(assessor)}.jsonl"


def record_rating(
    reviews_dir: str | Path,
    sample: Mapping[str, Any],
    assessor: str,
    sample_id: int,
    rationale_rating: int | None,
    expert_score: int | None,
    blind: bool,
) -> dict[str, Any]:
    """Appends one rating to the assessor's file and returns it. ``blind``: the assessor's own score
    was given before the model's rationale and score were shown."""
    entry = sample["samples"][sample_id - 1]
    record = {
        "sample_id": sample_id,
        "participant_id": entry["participant_id"],
        "item_index": entry["item_index"],
        "assessor": assessor.strip(),
        "rationale_rating": rationale_rating,
        "expert_score": expert_score,
        "blind": bool(blind),
        "sample_fingerprint": sample["fingerprint"],
        "rated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _check(record, sample, "the rating to record")
    append_jsonl(ratings_path(reviews_dir, assessor), [record])
    return record


def _check(record: Any, sample: Mapping[str, Any], where: str) -> None:
    """Refuses a rating that does not belong to ``sample`` or lies off the scales, naming ``where``."""
    if not isinstance(record, dict) or not isinstance(record.get("sample_id"), int):
        raise ValueError(f"{where}: not a rating record (no integer sample_id)")
    number = record["sample_id"]
    if not 1 <= number <= len(sample["samples"]):
        raise ValueError(f"{where}: sample_id {number} is not in the sample (1-{len(sample['samples'])})")
    entry = sample["samples"][number - 1]
    if (str(record.get("participant_id")), record.get("item_index")) != (entry["participant_id"], entry["item_index"]):
        raise ValueError(
            f"{where}: sample {number} is participant {entry['participant_id']}, item {entry['item_index']} in this "
            f"sample, but the rating names participant {record.get('participant_id')}, item {record.get('item_index')}"
            " (a ratings file from another sample?)"
        )
    if record.get("rationale_rating") not in (None, *RATING_SCALE):
        raise ValueError(f"{where}: rationale_rating must be 3, 2, 1 or null, got {record.get('rationale_rating')!r}")
    low, high = sample.get("score_range", SCORE_RANGE)
    score = record.get("expert_score")
    if score is not None and (not isinstance(score, int) or isinstance(score, bool) or not low <= score <= high):
        raise ValueError(f"{where}: expert_score must be an integer {low}-{high} or null, got {score!r}")


def read_ratings(path: str | Path, sample: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``{sample_id: rating}`` of one assessor's file, the last line for a sample winning; a line that
    does not fit ``sample`` raises ``ValueError`` naming file and line (``{}`` when there is no file)."""
    latest: dict[int, dict[str, Any]] = {}
    for number, record in read_jsonl(path):
        _check(record, sample, f"{path}:{number}")
        latest[record["sample_id"]] = record
    return latest
