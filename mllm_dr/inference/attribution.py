"""Modality attribution (issue 16, part 2): how much the audio, the video, or both moved an item's
score, through the model's own missing-modality path.

For each item whose score digit was found (see :mod:`mllm_dr.uncertainty`), the prompt and the
generated tokens up to the digit are run once more per condition, with a modality withheld: its
feature mask set all-False, which is exactly how a participant without that modality is scored (the
placeholders stay; the LQ-former's cross-attention adds nothing). Nothing is generated: one forward
per condition reads the LM's distribution over the score digits at the digit's position and the MAA
head's score from the prompt. The attribution of a modality is the expected score with everything
minus the expected score without it (``+0.8``: the audio raised this item by 0.8), and the same for
the head. For one participant's items (generation's shared-prefix batches) the shared prefix (system
prompt, placeholders, transcript) runs once per withheld condition and each item only its own
suffix. The condition with every modality is generation's own digit probabilities and head's score
in float32 (no forward), and a forward against generation's own prefill in bf16.

That is the *direct* effect at the digit: the rationale, written with every modality, is held fixed,
and a score that follows its rationale barely moves. ``--attribution_effect total`` measures the
*total* effect instead: each withheld condition generates the answer again (the same per-item random
streams, so sampling noise cancels), and the change of the score that counts, of the expected score
and of the head's score is recorded with the rationale written without the modality
(:func:`total_effect`; the loop is :func:`mllm_dr.inference.generation.total_attribution`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..uncertainty import digit_distribution
from .prefix import Prefill, cache_kwarg, features_of, left_padded, prefill, real_prompts

CONDITIONS = {"audio": ("audio",), "video": ("video",), "both": ("audio", "video")}
ATTRIBUTION_EFFECTS = ("direct", "total")
# Where generation's own digit probabilities and head's score stand in for the "every modality" forward:
# float32 decoding and a float32 forward agree to ~1e-5; in bf16 they differ by ~0.03 (BENCHMARKS.md §9),
# the size of the attribution itself, so there the forward runs.
EXACT_REUSE_DTYPES = (torch.float32, torch.float64)


def attribution_conditions(batch: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, ...]]:
    """The withheld conditions a collated ``batch`` allows: those whose modalities its prompt uses."""
    present = {m for m in ("audio", "video") if f"{m}_mask" in batch}
    return {name: mods for name, mods in CONDITIONS.items() if set(mods) <= present}


def _change(with_all: float | None, without: float | None) -> float | None:
    return None if with_all is None or without is None else float(with_all) - float(without)


def total_effect(with_all: Mapping[str, Any], without: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One row's total-effect attribution from its outcomes (``parsed_score``, ``rationale``, ``head``,
    ``expected``, ``score``: :meth:`mllm_dr.inference.generation.Answers.outcome`) with every modality
    and per withheld condition: ``{"with_all": {"score", "expected", "head"}, name: {"score": change,
    "expected": change, "head": change, "parsed_score", "rationale"}}`` (a change is with - without;
    None where a side lacks it, e.g. no digit found; the condition's own parsed score and rationale
    are what the model wrote without the modality)."""
    keys = ("score", "expected", "head")
    return {
        "with_all": {key: with_all[key] for key in keys},
        **{name: {**{key: _change(with_all[key], other[key]) for key in keys},
                  "parsed_score": other["parsed_score"], "rationale": other["rationale"]}
           for name, other in without.items()},
    }  # fmt: skip


def withheld(batch: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """``batch`` with ``modalities`` withheld: their feature masks all False (the missing-modality path)."""
    out = dict(batch)
    for modality in modalities:
        if f"{modality}_mask" in out:
            out[f"{modality}_mask"] = torch.zeros_like(out[f"{modality}_mask"], dtype=torch.bool)
    return out


def _expected_and_head(out, candidates: torch.Tensor, low: int):
    probabilities, _ = digit_distribution(out.logits[:, -1], candidates)
    scores = torch.arange(low, low + candidates.shape[1], dtype=probabilities.dtype, device=probabilities.device)
    expected = (probabilities * scores).sum(dim=1)
    head = out.score.float() if getattr(out, "score", None) is not None else None
    return expected, head


def _generated_reference(model, generated, found, use_head: bool, device):
    """``(expected, head)`` tensors of the found rows from generation's own measurements where they
    are exact (see :func:`modality_attribution`), else ``(None, None)``."""
    if generated is None or next(model.parameters()).dtype not in EXACT_REUSE_DTYPES:
        return None, None
    expected, heads = ([values[row] for row, _, _ in found] for values in generated)
    if any(value is None for value in expected) or (use_head and any(value is None for value in heads)):
        return None, None
    return (torch.tensor(expected, device=device),
            torch.tensor(heads, device=device) if use_head else None)  # fmt: skip


class _AnswerInputs:
    """The rows' prompts followed by their answers up to (not including) the score digit, left-padded,
    so that the last position predicts the digit; the head pools the prompt only (``prompt_mask``).

    Without ``shared`` each condition runs the whole sequence. With ``shared`` (the rows are one
    participant's items, whose prompts begin with the same prefix) the prefix is prefilled once per
    condition (batch 1) and only the rows' suffixes (item instruction + answer) run against copies of
    its cache, exactly as generation prefills them."""

    def __init__(self, batch, new_tokens, found, pad_id: int, shared: Prefill | None):
        self.batch, self.shared = batch, shared
        prompts = real_prompts(batch)
        self.rows = torch.tensor([row for row, _, _ in found], device=batch["input_ids"].device)
        common = 0 if shared is None else len(shared.ids)
        suffixes = [torch.cat([prompts[row][common:], new_tokens[row, :step]]) for row, step, _ in found]
        self.ids, mask = left_padded(suffixes, pad_id, batch["attention_mask"].dtype)
        width = self.ids.shape[1]
        prompt_mask = torch.zeros_like(self.ids, dtype=torch.bool)
        for i, ((row, _, _), suffix) in enumerate(zip(found, suffixes)):
            start = width - len(suffix)
            prompt_mask[i, start : start + len(prompts[row]) - common] = True
        if common:
            ones = torch.ones((len(found), common), dtype=mask.dtype, device=mask.device)
            mask, prompt_mask = torch.cat([ones, mask], dim=1), torch.cat([ones.bool(), prompt_mask], dim=1)
        self.mask, self.prompt_mask = mask, prompt_mask

    def forward(self, model, modalities: Sequence[str] = ()):
        """The model's output at the digit with ``modalities`` withheld (the missing-modality path)."""
        inputs = {"input_ids": self.ids, "attention_mask": self.mask, "prompt_mask": self.prompt_mask}
        if self.shared is None:
            features = withheld(features_of(self.batch, self.rows), modalities)
            return model(**inputs, **features, use_cache=False, logits_to_keep=1)
        shared = self.shared
        if modalities:  # the prefix holds the placeholders: it runs again with the modality withheld
            features = withheld(features_of(self.batch, slice(0, 1)), modalities)
            shared = prefill(model, shared.ids, features)
            cache = shared.repeated(len(self.rows), copy=False)
        else:
            cache = shared.repeated(len(self.rows))  # generation's prefill: left intact
        positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)[:, -self.ids.shape[1] :]
        return model(
            **inputs, position_ids=positions, use_cache=True, logits_to_keep=1,
            prefix_hidden_states=shared.hidden, **{cache_kwarg(): cache},
        )  # fmt: skip


@torch.no_grad()
def modality_attribution(
    model,
    processor,
    batch: Mapping[str, torch.Tensor],
    new_tokens: torch.Tensor,
    steps: Sequence[tuple[int, int, tuple[int, ...]]],
    use_head: bool,
    shared: Prefill | None = None,
    generated: tuple[Sequence[float | None], Sequence[float | None]] | None = None,
) -> list[dict[str, Any] | None]:
    """Per row: ``{"with_all": {"expected": e, "head": h}, "audio"|"video"|"both": {"expected": d,
    "head": d}}`` (e, h: with every modality; d = with - without; the head's only for a trained head), or None
    where the score digit was not found or the prompt uses neither modality. ``batch`` is the
    collated left-padded prompts the rows were generated from; ``new_tokens`` their generated ids;
    ``steps`` where each row wrote its score digit (:func:`mllm_dr.uncertainty.score_steps`).
    ``shared``: the rows' common prompt prefix as generation prefilled it (one participant's items):
    the prefix then runs once per withheld condition and the rows only their own suffixes.
    ``generated``: every row's expected score and head's score as generation measured them; where its
    incremental decoding and a forward agree (the model's dtype in :data:`EXACT_REUSE_DTYPES`) and
    every found row has its expected score, they are the "every modality" condition and its forward
    is skipped."""
    conditions = attribution_conditions(batch)
    result: list[dict[str, Any] | None] = [None] * len(new_tokens)
    found = list(steps)
    if not conditions or not found:
        return result
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    inputs = _AnswerInputs(batch, new_tokens, found, pad, shared)
    candidates = torch.tensor([c for _, _, c in found], device=new_tokens.device)
    low = processor.score_min
    full_expected, full_head = _generated_reference(model, generated, found, use_head, candidates.device)
    if full_expected is None:
        full_expected, full_head = _expected_and_head(inputs.forward(model), candidates, low)
    changes = {}
    for name, modalities in conditions.items():
        expected, head = _expected_and_head(inputs.forward(model, modalities), candidates, low)
        changes[name] = (full_expected - expected, None if full_head is None or not use_head else full_head - head)
    for i, (row, _, _) in enumerate(found):
        result[row] = {
            "with_all": {"expected": float(full_expected[i]),
                         "head": None if full_head is None or not use_head else float(full_head[i])},
            **{name: {"expected": float(d_expected[i]), "head": None if d_head is None else float(d_head[i])}
               for name, (d_expected, d_head) in changes.items()},
        }  # fmt: skip
    return result


def mean_absolute_attribution(records: Sequence[Mapping[str, Any]], of: str = "expected") -> dict[str, dict[str, float]] | None:
    """Per item and condition, the mean absolute change of the expected score (``of="expected"``), of
    the MAA head's score (``of="head"``; items without a trained head are left out) or, for the total
    effect only, of the score that counts (``of="score"``): evaluation's summary."""
    sums: dict[int, dict[str, list[float]]] = {}
    for record in records:
        attribution = record.get("attribution")
        if not attribution:
            continue
        for name, change in attribution.items():
            if name == "with_all" or change.get(of) is None:
                continue
            sums.setdefault(int(record["item_index"]), {}).setdefault(name, []).append(abs(change[of]))
    if not sums:
        return None
    return {
        str(item): {name: sum(values) / len(values) for name, values in conditions.items()}
        for item, conditions in sorted(sums.items())
    }


ATTRIBUTION_OF = {
    "score": ("the score", "each item's score that counts"),
    "expected": ("the expected score", "each item's expected score"),
    "head": ("the MAA head", "the MAA head's score of each item"),
}
EFFECT_WORDS = {
    "direct": "the rationale kept as context: the direct effect at the score digit",
    "total": "the answer generated again without it: the total effect, through the rationale too",
}


def attribution_lines(
    summary: Mapping[str, Mapping[str, float]] | None, of: str = "expected", effect: str = "direct"
) -> list[str]:
    """The evaluation report's table of :func:`mean_absolute_attribution` (nothing when it was off)."""
    if not summary:
        return []
    names = [name for name in CONDITIONS if any(name in row for row in summary.values())]
    title, what = ATTRIBUTION_OF[of]
    lines = [
        f"## Modality attribution ({effect} effect): {title}",
        "",
        f"Mean absolute change of {what} when a modality is withheld through the "
        f"missing-modality path ({EFFECT_WORDS[effect]}; `--modality_attribution"
        + ("" if effect == "direct" else f" --attribution_effect {effect}") + "`).",
        "",
        "| item | " + " | ".join(f"{name} withheld" for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {item} | " + " | ".join(f"{row[name]:.3f}" if name in row else "n/a" for name in names) + " |"
              for item, row in summary.items()]  # fmt: skip
    return lines + [""]


def describe_attribution(attribution: Mapping[str, Any] | None) -> str:
    """One cell of the prediction report: ``audio +0.80, video -0.10, both +0.65``: the changes of the
    expected score (direct effect), or of the score that counts (total effect, whose records carry it)."""
    if not attribution:
        return "n/a"
    of = "score" if "score" in attribution.get("with_all", {}) else "expected"
    changes = {name: attribution[name][of] for name in CONDITIONS if name in attribution}
    # rounded first, so that float noise below the shown precision reads +0.00, not -0.00
    return ", ".join(f"{name} {'n/a' if change is None else f'{round(change, 2) + 0.0:+.2f}'}" for name, change in changes.items())
