"""Modality attribution (issue 16, part 2): how much the audio, the video, or both moved an item's
score, through the model's own missing-modality path.

For each item whose score digit was found (see :mod:`mllm_dr.uncertainty`), the prompt and the
generated tokens up to the digit are run once more per condition, with a modality withheld: its
feature mask set all-False, which is exactly how a participant without that modality is scored (the
placeholders stay; the LQ-former's cross-attention adds nothing). Nothing is generated: one forward
per condition reads the LM's distribution over the score digits at the digit's position and the MAA
head's score from the prompt. The attribution of a modality is the expected score with everything
minus the expected score without it (``+0.8``: the audio raised this item by 0.8), and the same for
the head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..uncertainty import digit_distribution

CONDITIONS = {"audio": ("audio",), "video": ("video",), "both": ("audio", "video")}


def withheld(batch: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """``batch`` with ``modalities`` withheld: their feature masks all False (the missing-modality path)."""
    out = dict(batch)
    for modality in modalities:
        if f"{modality}_mask" in out:
            out[f"{modality}_mask"] = torch.zeros_like(out[f"{modality}_mask"], dtype=torch.bool)
    return out


def _expected_and_head(model, inputs: Mapping[str, torch.Tensor], candidates: torch.Tensor, low: int):
    out = model(**inputs, use_cache=False, logits_to_keep=1)
    probabilities, _ = digit_distribution(out.logits[:, -1], candidates)
    scores = torch.arange(low, low + candidates.shape[1], dtype=probabilities.dtype, device=probabilities.device)
    expected = (probabilities * scores).sum(dim=1)
    head = out.score.float() if getattr(out, "score", None) is not None else None
    return expected, head


@torch.no_grad()
def modality_attribution(
    model,
    processor,
    batch: Mapping[str, torch.Tensor],
    new_tokens: torch.Tensor,
    steps: Sequence[tuple[int, int, tuple[int, ...]]],
    use_head: bool,
) -> list[dict[str, Any] | None]:
    """Per row: ``{"with_all": {"expected": e, "head": h}, "audio"|"video"|"both": {"expected": d,
    "head": d}}`` (e, h: with every modality; d = with - without; the head's only for a trained head), or None
    where the score digit was not found or the prompt uses neither modality. ``batch`` is the
    collated left-padded prompts the rows were generated from; ``new_tokens`` their generated ids;
    ``steps`` where each row wrote its score digit (:func:`mllm_dr.uncertainty.score_steps`)."""
    present = [m for m in ("audio", "video") if f"{m}_mask" in batch]
    conditions = {name: mods for name, mods in CONDITIONS.items() if set(mods) <= set(present)}
    result: list[dict[str, Any] | None] = [None] * len(new_tokens)
    found = list(steps)
    if not conditions or not found:
        return result
    tokenizer = processor.tokenizer
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    # Each row's real prompt, then its answer up to (not including) the digit; left-padded, so the
    # last position predicts the digit. The head pools the prompt only (prompt_mask).
    sequences = [torch.cat([ids[row][mask[row]], new_tokens[row, :step]]) for row, step, _ in found]
    prompt_lengths = [int(mask[row].sum()) for row, _, _ in found]
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(found), width), pad, dtype=ids.dtype, device=ids.device)
    attention = torch.zeros((len(found), width), dtype=batch["attention_mask"].dtype, device=ids.device)
    prompt_mask = torch.zeros((len(found), width), dtype=torch.bool, device=ids.device)
    for i, (sequence, length) in enumerate(zip(sequences, prompt_lengths)):
        start = width - len(sequence)
        input_ids[i, start:], attention[i, start:] = sequence, 1
        prompt_mask[i, start : start + length] = True
    rows = torch.tensor([row for row, _, _ in found], device=ids.device)
    inputs = {"input_ids": input_ids, "attention_mask": attention, "prompt_mask": prompt_mask}
    inputs.update({k: v.index_select(0, rows) for k, v in batch.items() if k.startswith(("audio_", "video_"))})
    candidates = torch.tensor([c for _, _, c in found], device=ids.device)
    low = processor.score_min
    full_expected, full_head = _expected_and_head(model, inputs, candidates, low)
    changes = {}
    for name, modalities in conditions.items():
        expected, head = _expected_and_head(model, withheld(inputs, modalities), candidates, low)
        changes[name] = (full_expected - expected, None if full_head is None or not use_head else full_head - head)
    for i, (row, _, _) in enumerate(found):
        result[row] = {
            "with_all": {"expected": float(full_expected[i]),
                         "head": None if full_head is None or not use_head else float(full_head[i])},
            **{name: {"expected": float(d_expected[i]), "head": None if d_head is None else float(d_head[i])}
               for name, (d_expected, d_head) in changes.items()},
        }  # fmt: skip
    return result


def mean_absolute_attribution(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Per item and condition, the mean absolute change of the expected score (evaluation's summary)."""
    sums: dict[int, dict[str, list[float]]] = {}
    for record in records:
        attribution = record.get("attribution")
        if not attribution:
            continue
        for name, change in attribution.items():
            if name == "with_all":
                continue
            sums.setdefault(int(record["item_index"]), {}).setdefault(name, []).append(abs(change["expected"]))
    if not sums:
        return None
    return {
        str(item): {name: sum(values) / len(values) for name, values in conditions.items()}
        for item, conditions in sorted(sums.items())
    }


def attribution_lines(summary: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    """The evaluation report's table of :func:`mean_absolute_attribution` (nothing when it was off)."""
    if not summary:
        return []
    names = [name for name in CONDITIONS if any(name in row for row in summary.values())]
    lines = [
        "## Modality attribution",
        "",
        "Mean absolute change of each item's expected score when a modality is withheld through the "
        "missing-modality path (the rationale kept as context; `--modality_attribution`).",
        "",
        "| item | " + " | ".join(f"{name} withheld" for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {item} | " + " | ".join(f"{row[name]:.3f}" if name in row else "n/a" for name in names) + " |"
              for item, row in summary.items()]  # fmt: skip
    return lines + [""]


def describe_attribution(attribution: Mapping[str, Any] | None) -> str:
    """One cell of the prediction report: ``audio +0.80, video -0.10, both +0.65`` (changes of the expected score)."""
    if not attribution:
        return "n/a"
    return ", ".join(f"{name} {attribution[name]['expected']:+.2f}" for name in CONDITIONS if name in attribution)
