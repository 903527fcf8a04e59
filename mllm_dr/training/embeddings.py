"""Inputs computed once per run: the frozen LQ-formers' outputs (stage 2) and the alignment
probe's per-participant targets (stage 1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from ..data import feature_key, row_features


@torch.no_grad()
def precompute_modality_embeddings(
    model: MllmDrForConditionalGeneration,
    processor: MllmDrProcessor,
    rows: Iterable[Mapping[str, Any]],
    modalities: Sequence[str],
    batch_size: int = 8,
) -> dict[tuple[str, tuple[str, ...]], torch.Tensor]:
    """Frozen LQ-formers + projectors run once per distinct feature sequence (a participant, or a
    CMDC question set), not once per item per epoch. Returns ``{feature_key: (queries, hidden)}``."""
    rows = list(rows)
    was_training = model.training
    model.eval()
    cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
    device = next(model.parameters()).device
    for modality in modalities:
        first: dict[tuple[str, tuple[str, ...]], Mapping[str, Any]] = {}
        for row in rows:
            first.setdefault(feature_key(row, modality), row)
        keys = sorted(first)
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            arrays = [row_features(first[key], modality, processor) for key in chunk]
            padded, mask = processor.pad_features(modality, arrays, len(chunk), frames_reduced=True)
            out = model.get_modality_embeddings(modality, padded.to(device), mask.to(device))
            for key, value in zip(chunk, out.float().cpu()):
                cache[key] = value
    model.train(was_training)
    return cache


def participant_item_scores(rows: Iterable[Mapping[str, Any]], num_items: int) -> dict[str, list[float]]:
    """Participant -> every item's label (NaN where a row is missing): the alignment probe's targets."""
    table: dict[str, list[float]] = {}
    for row in rows:
        item = int(row["item_index"])
        if not 1 <= item <= num_items:
            raise ValueError(f"participant {row['participant_id']}: item_index {item} is outside 1..{num_items}")
        scores = table.setdefault(str(row["participant_id"]), [float("nan")] * num_items)
        if row.get("label") is not None:
            scores[item - 1] = float(row["label"])
    return table
