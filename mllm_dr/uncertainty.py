"""Score probabilities: how sure the model is of each item's score and of the participant's total.

Per item, the language model's own probabilities of the score digits at the step where it wrote
the score (``Score: <d>``), read from the raw logits of that generation step: the generated
rationale is the context and nothing extra is generated. Only the digits of the form the model
emitted (``"2"`` or ``" 2"``, whichever the tokenizer produced) compete; they are renormalised to
sum to 1, and the probability mass they had before (``score_probability_mass``) is kept beside
them. Where the text broke the format (no strict score) there are no probabilities. The logits are
the model's own (temperature 1, before top-k/top-p), whatever the sampling settings. With
``--answer_order score_first`` the digit comes before the rationale, so only the prompt is its context.
Keeping each step's logits costs ``steps x batch x vocab`` floats during ``generate``
(``--no_score_probabilities`` turns it off).

Per participant, the distribution of the total is the convolution of the item distributions:
**items are assumed independent given the interview**. An item without probabilities enters as a
point mass at the score used (a non-integer head score is split between its two neighbouring
integers, keeping its mean). From that distribution: the expected total, an equal-tailed interval
and P(total >= cut-off).

In evaluation, the calibration of the item distributions (top-label expected calibration error,
multiclass Brier score, a reliability table) and the coverage of the total's interval."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import torch

INTERVAL_LEVEL = 0.8
ECE_BINS = 10
INDEPENDENCE = (
    "items are assumed independent given the interview: the total's distribution is the convolution of the "
    "item distributions"
)
MISSING_ITEMS = (
    "such items (format failures, or a score digit not written as a token of its own) enter the total as a point "
    "mass at the score used, a non-integer head score split between its two neighbouring integers"
)
PROBABILITY_FIELDS = ("score_probabilities", "score_probability_mass", "expected_score", "entropy")
_AFTER_SCORE = re.compile(r"Score:[ \t]*\Z")


# ----------------------------------------------------------------------------- per item, at generation
@dataclass(frozen=True)
class DigitTokens:
    """The tokenizer's single-token spellings of the score digits: ``forms`` maps a prefix (``""`` or
    ``" "``) to the token ids of the digits ``low..high``; ``lookup`` maps each such id to its form."""

    low: int
    forms: dict[str, tuple[int, ...]]
    lookup: dict[int, str]

    def digit(self, token_id: int) -> int:
        form = self.lookup[token_id]
        return self.low + self.forms[form].index(token_id)


def digit_tokens(tokenizer, low: int = 0, high: int = 3) -> DigitTokens:
    """The forms (``"2"``, ``" 2"``) in which every digit ``low..high`` is one token that decodes back to itself."""
    forms: dict[str, tuple[int, ...]] = {}
    if 0 <= low <= high <= 9:
        for prefix in ("", " "):
            ids = [tokenizer.encode(f"{prefix}{d}", add_special_tokens=False) for d in range(low, high + 1)]
            if all(len(i) == 1 for i in ids) and all(
                tokenizer.decode(i) == f"{prefix}{d}" for i, d in zip(ids, range(low, high + 1))
            ):
                forms[prefix] = tuple(i[0] for i in ids)
    lookup = {token: prefix for prefix, ids in forms.items() for token in ids}
    return DigitTokens(low, forms, lookup)


def find_score_step(tokenizer, new_ids: Sequence[int], digits: DigitTokens, score: int) -> int | None:
    """The generation step of the digit written after the last ``Score:`` (the digit token must be
    ``score``, the strictly parsed score), or None when no digit token stands there on its own."""
    for step in range(len(new_ids) - 1, -1, -1):
        token = int(new_ids[step])
        if token not in digits.lookup:
            continue
        if _AFTER_SCORE.search(tokenizer.decode(list(new_ids[:step]), skip_special_tokens=True)):
            return step if digits.digit(token) == score else None
    return None


def digit_distribution(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities (rows, K), mass (rows,))`` from raw logits ``(rows, vocab)`` and the candidates'
    ids ``(rows, K)``: the softmax over the K candidates, and the share of the full softmax they hold."""
    logits = logits.float()
    chosen = logits.gather(1, candidates)
    mass = (chosen.logsumexp(dim=1) - logits.logsumexp(dim=1)).exp()
    return chosen.softmax(dim=1), mass


def entropy_bits(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits along the last axis (0 log 0 = 0); 2 bits is uniform over four scores."""
    p = np.asarray(probabilities, dtype=float)
    logs = np.log2(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1)


def item_fields(probabilities: np.ndarray | None, mass: float | None, low: int = 0) -> dict[str, Any]:
    """The prediction record's fields: ``score_probabilities`` [p_low..p_high], ``score_probability_mass``,
    ``expected_score`` and ``entropy`` (bits); all None without probabilities."""
    if probabilities is None:
        return dict.fromkeys(PROBABILITY_FIELDS)
    p = np.asarray(probabilities, dtype=float)
    return {
        "score_probabilities": [float(v) for v in p],
        "score_probability_mass": float(mass),
        "expected_score": float(p @ np.arange(low, low + len(p))),
        "entropy": float(entropy_bits(p)),
    }


def score_steps(
    tokenizer, new_tokens: torch.Tensor, parsed: Sequence[int | None], low: int = 0, high: int = 3
) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(row, step, candidate ids)`` of each generated row whose score digit was found
    (:func:`find_score_step`): read once per batch by the probabilities and the attribution."""
    digits = digit_tokens(tokenizer, low, high)
    ids = new_tokens.tolist()
    found = []
    for row, score in enumerate(parsed):
        if score is None or not digits.forms:
            continue
        step = find_score_step(tokenizer, ids[row], digits, int(score))
        if step is not None:
            found.append((row, step, digits.forms[digits.lookup[ids[row][step]]]))
    return found


def score_probabilities(
    tokenizer, new_tokens: torch.Tensor, logits: Sequence[torch.Tensor], parsed: Sequence[int | None],
    low: int = 0, high: int = 3, steps: Sequence[tuple[int, int, tuple[int, ...]]] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """:func:`item_fields` for each generated row: ``new_tokens`` ``(rows, steps)``, ``logits`` the raw
    logits of each step (``generate(output_logits=True)``), ``parsed`` the strict scores; ``steps``
    :func:`score_steps`' result when the caller has it."""
    found = score_steps(tokenizer, new_tokens, parsed, low, high) if steps is None else steps
    out = [item_fields(None, None, low) for _ in parsed]
    if found:
        rows = torch.stack([logits[step][row] for row, step, _ in found])
        candidates = torch.tensor([c for _, _, c in found], device=rows.device)
        probabilities, mass = digit_distribution(rows, candidates)
        for (row, _, _), p, m in zip(found, probabilities.cpu().numpy(), mass.cpu().numpy()):
            out[row] = item_fields(p, float(m), low)
    return out


# ----------------------------------------------------------------------------- per participant
def item_distribution(record: Mapping[str, Any], low: int = 0, high: int = 3) -> tuple[np.ndarray, bool]:
    """``(p over low..high, from the model?)``: the record's probabilities, else a point mass at its
    score used (a non-integer score split between the two integers around it, keeping its mean)."""
    probabilities = record.get("score_probabilities")
    if probabilities is not None:
        return np.asarray(probabilities, dtype=float), True
    score = float(min(max(float(record["score"]), low), high))
    below = int(np.floor(score))
    p = np.zeros(high - low + 1)
    weight = score - below
    p[below - low] = 1.0 - weight
    if weight > 0:
        p[below - low + 1] = weight
    return p, False


def total_distribution(distributions: Sequence[np.ndarray]) -> np.ndarray:
    """P(total = t) for t = 0, 1, ... (shifted by the items' lowest scores) under independence: the
    convolution of the item distributions."""
    return reduce(np.convolve, distributions, np.ones(1))


def equal_tailed_interval(distribution: np.ndarray, level: float = INTERVAL_LEVEL, offset: int = 0) -> tuple[int, int]:
    """The smallest ``lo`` with P(T <= lo) >= (1 - level)/2 and the smallest ``hi`` with P(T <= hi) >=
    (1 + level)/2: P(lo <= T <= hi) >= level (a discrete distribution reaches at least, not exactly, level)."""
    cdf = np.cumsum(distribution)
    tail = (1.0 - level) / 2
    lo = int(np.searchsorted(cdf, tail - 1e-12, side="left"))
    hi = int(np.searchsorted(cdf, 1.0 - tail - 1e-12, side="left"))
    return offset + lo, offset + min(hi, len(distribution) - 1)


def total_summary(
    records: Sequence[Mapping[str, Any]], cutoff: float, low: int = 0, high: int = 3, level: float = INTERVAL_LEVEL
) -> dict[str, Any]:
    """One participant's total under independence: expected total, ``level`` interval, P(total >=
    cutoff), the full distribution and how many items entered as point masses."""
    pairs = [item_distribution(r, low, high) for r in records]
    distribution = total_distribution([p for p, _ in pairs])
    offset = low * len(records)
    support = np.arange(offset, offset + len(distribution))
    lo, hi = equal_tailed_interval(distribution, level, offset)
    return {
        "expected_total": float(distribution @ support),
        "interval": [lo, hi],
        "interval_level": level,
        "p_at_or_above_cutoff": float(distribution[support >= cutoff].sum()),
        "cutoff": cutoff,
        "distribution": [float(v) for v in distribution],
        "items_without_probabilities": sum(not from_model for _, from_model in pairs),
        "items": len(records),
    }


# ----------------------------------------------------------------------------- evaluation
def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, low: int = 0) -> dict[str, Any]:
    """Calibration of item distributions ``(n, K)`` against integer labels ``(n,)``.

    ``ece``: top-label expected calibration error, sum over bins of (share of items) x |accuracy -
    mean confidence|, where confidence is the largest probability and the ``bins`` bins split [0, 1]
    into equal widths, right-closed ((0.1, 0.2], ...; the first also holds 0). ``brier``: the
    multiclass Brier score, the mean over items of sum_k (p_k - [label = k])^2 (0 best, 2 worst).
    ``bins``: per bin its edges, item count, mean confidence and accuracy (None when empty)."""
    p = np.asarray(probabilities, dtype=float)
    classes = np.asarray(labels, dtype=int) - low
    onehot = np.eye(p.shape[1])[classes]
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == classes).astype(float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    filled = counts > 0
    mean_conf = np.divide(conf_sum, counts, out=np.zeros(bins), where=filled)
    mean_acc = np.divide(acc_sum, counts, out=np.zeros(bins), where=filled)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "n_items": int(len(p)),
        "ece": float(np.sum(counts / len(p) * np.abs(mean_acc - mean_conf))),
        "ece_bins": bins,
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "bins": [
            {"lower": round(float(edges[b]), 9), "upper": round(float(edges[b + 1]), 9), "count": int(counts[b]),
             "confidence": float(mean_conf[b]) if filled[b] else None,
             "accuracy": float(mean_acc[b]) if filled[b] else None}
            for b in range(bins)
        ],  # fmt: skip
    }


def interval_coverage(summaries: Sequence[Mapping[str, Any]], truths: Sequence[float]) -> dict[str, Any]:
    """The share of participants whose true total lies in their interval (inclusive), and the mean width."""
    lo = np.array([s["interval"][0] for s in summaries], dtype=float)
    hi = np.array([s["interval"][1] for s in summaries], dtype=float)
    true = np.asarray(truths, dtype=float)
    inside = (lo <= true) & (true <= hi)
    return {
        "n_participants": int(len(true)),
        "coverage": float(inside.mean()) if len(true) else None,
        "mean_width": float(np.mean(hi - lo)) if len(true) else None,
    }


def probability_metrics(
    predictions: Sequence[Mapping[str, Any]], cutoff: float, low: int = 0, high: int = 3, level: float = INTERVAL_LEVEL
) -> dict[str, Any] | None:
    """``metrics.json``'s ``score_probabilities``: the item calibration (labelled items with
    probabilities), the totals' interval coverage and binary-screen Brier score (participants with a
    known total), and the per-participant summaries; None when no record has probabilities."""
    with_p = [p for p in predictions if p.get("score_probabilities") is not None]
    if not with_p:
        return None
    labelled = [p for p in with_p if p.get("label") is not None]
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for record in predictions:
        grouped.setdefault(str(record["participant_id"]), []).append(record)
    participants, covered, truths = [], [], []
    for pid, records in sorted(grouped.items()):
        summary = total_summary(records, cutoff, low, high, level)
        summary.pop("distribution")
        truth = records[0].get("total")
        if truth is None and all(r.get("label") is not None for r in records):
            truth = sum(r["label"] for r in records)
        participants.append({"participant_id": pid, **summary, "true_total": truth})
        if truth is not None:
            covered.append(summary)
            truths.append(float(truth))
    screen = np.array([s["p_at_or_above_cutoff"] for s in covered])
    positive = np.array(truths) >= cutoff
    return {
        "n_items": len(predictions),
        "n_items_with_probabilities": len(with_p),
        "n_items_without_probabilities": len(predictions) - len(with_p),
        "mean_candidate_mass": float(np.mean([p["score_probability_mass"] for p in with_p])),
        "mean_entropy_bits": float(np.mean([p["entropy"] for p in with_p])),
        "calibration": None
        if not labelled
        else calibration(
            np.array([p["score_probabilities"] for p in labelled]), np.array([int(p["label"]) for p in labelled]), low=low
        ),
        "total_interval": {"level": level, **interval_coverage(covered, truths)},
        "screen_brier": float(np.mean((screen - positive) ** 2)) if truths else None,
        "independence": INDEPENDENCE,
        "missing_items": MISSING_ITEMS,
        "participants": participants,
    }


BAR = "▁▂▃▄▅▆▇█"


def text_bar(probabilities: Sequence[float] | None) -> str:
    """One block character per score, its height the probability (``▁█▂▁``: lowest ~0, highest ~1), or ``n/a``."""
    if probabilities is None:
        return "n/a"
    return "".join(BAR[int(round(float(p) * (len(BAR) - 1)))] for p in probabilities)
