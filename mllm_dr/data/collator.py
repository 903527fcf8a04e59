"""From dataset rows to model inputs: tokenize once, then only pad.

:func:`tokenize_rows` runs the processor's :meth:`~MllmDrProcessor.tokenize` over a dataset once
per run (a participant's transcript is encoded once for all its items); :class:`MllmDrCollator`
then pads those ids and reads each row's frames (:func:`~mllm_dr.data.row_features`: the feature
cache, or the raw files through the frame policy), or takes precomputed LQ-former outputs. Training
and evaluation build their batches with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import torch

from processing_mllm_dr import MODALITIES, MllmDrProcessor

from .features import feature_key, row_features
from .tables import replace_columns

TOKEN_COLUMNS = ("input_ids", "labels", "prompt_length", "transcript_truncated")


def _where(row: Mapping[str, Any]) -> str:
    return f"participant {row.get('participant_id')}, item {row.get('item_index')}"


def tokenize_samples(
    rows: Iterable[Mapping[str, Any]],
    processor: MllmDrProcessor,
    mode: str,
    with_targets: bool,
    with_rationale: bool,
) -> list[dict[str, Any]]:
    """:meth:`MllmDrProcessor.tokenize` for each row (``transcript``, ``item_index``, and for targets
    ``label`` and, with ``with_rationale``, ``rationale``); equal transcripts are encoded once.

    Rows that cannot be trained on (no label; no rationale for a stage-2 target) are refused
    together, naming them, before any tokenizing."""
    rows = list(rows)
    if with_targets:
        unlabelled = [_where(r) for r in rows if r.get("label") is None]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} row(s) have no item label (training and validation rows need one): "
                + "; ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else "")
            )
        if with_rationale:
            missing = [_where(r) for r in rows if not r.get("rationale")]
            if missing:
                raise ValueError(
                    f"{len(missing)} row(s) have no rationale (stage-2 targets are rationale + score; "
                    "see --rationales): " + "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                )
    uses_transcript = processor.inputs_for(mode).transcript
    encoded: dict[str, tuple[list[int], int]] = {}
    samples = []
    for row in rows:
        transcript = row.get("transcript")
        transcript_ids = None
        if uses_transcript:
            if not isinstance(transcript, str) or transcript not in encoded:  # a non-string raises here
                encoded[transcript] = processor.encode_transcript(transcript, f"{_where(row)}: transcript")
            transcript_ids = encoded[transcript]
        samples.append(
            processor.tokenize(
                transcript,
                row["item_index"],
                mode,
                score=row["label"] if with_targets else None,
                rationale=row.get("rationale") if with_targets and with_rationale else None,
                with_rationale=with_rationale,
                transcript_ids=transcript_ids,
                field=_where(row),
            )
        )
    return samples


def tokenize_rows(
    dataset: datasets.Dataset,
    processor: MllmDrProcessor,
    mode: str,
    with_targets: bool = True,
    with_rationale: bool = True,
) -> datasets.Dataset:
    """``dataset`` with the columns ``input_ids``, ``labels``, ``prompt_length`` and
    ``transcript_truncated`` (tokens cut from the transcript) added; run once per run, so that the
    collator only pads."""
    columns = [c for c in ("participant_id", "item_index", "transcript", "label", "rationale") if c in dataset.column_names]
    samples = tokenize_samples(dataset.select_columns(columns).to_list(), processor, mode, with_targets, with_rationale)
    ids, number = datasets.List(datasets.Value("int32")), datasets.Value("int32")
    features = dict(zip(TOKEN_COLUMNS, (ids, ids, number, number), strict=True))
    return replace_columns(dataset, {name: ([s[name] for s in samples], features[name]) for name in TOKEN_COLUMNS})


class MllmDrCollator:
    """Turns dataset rows into model inputs.

    Rows tokenized by :func:`tokenize_rows` are only padded; other rows are tokenized here (one
    participant's transcript once per batch). ``with_targets``: append the answer (``label`` and, in
    the stage-2 format, ``rationale``) and return ``labels`` / ``score_labels``. Features come from
    :func:`row_features`; with ``embedding_cache`` (stage 2: frozen LQ-formers) the precomputed
    projector outputs replace them. ``item_scores`` (participant -> every item's label) adds the
    stage-1 alignment probe's targets.
    """

    def __init__(
        self,
        processor: MllmDrProcessor,
        mode: str,
        with_rationale: bool,
        embedding_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] | None = None,
        padding_side: str = "right",
        item_scores: dict[str, list[float]] | None = None,
        with_targets: bool = True,
    ):
        self.processor = processor
        self.mode = mode
        self.with_rationale = with_rationale
        self.with_targets = with_targets
        self.embedding_cache = embedding_cache
        self.padding_side = padding_side
        self.item_scores = item_scores
        self.inputs = processor.inputs_for(mode)

    def samples(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if all(name in row for row in rows for name in TOKEN_COLUMNS):
            return [
                {**{name: row[name] for name in TOKEN_COLUMNS}, "score": row["label"] if self.with_targets else None}
                for row in rows
            ]
        return tokenize_samples(rows, self.processor, self.mode, self.with_targets, self.with_rationale)

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        samples = self.samples(rows)
        features: dict[str, list[Any] | None] = {"audio": None, "video": None}
        embeds: dict[str, torch.Tensor] = {}
        for modality in MODALITIES:
            if not getattr(self.inputs, modality):
                continue
            if self.embedding_cache is not None:
                embeds[modality] = torch.stack([self.embedding_cache[feature_key(row, modality)] for row in rows])
            else:
                features[modality] = [row_features(row, modality, self.processor) for row in rows]
        batch = self.processor.collate(
            samples,
            self.mode,
            audio_features=features["audio"],
            video_features=features["video"],
            padding_side=self.padding_side,
            frames_reduced=True,
            with_labels=self.with_targets,
        )
        data = dict(batch)
        for modality, tensor in embeds.items():
            data.pop(f"{modality}_features", None)
            data.pop(f"{modality}_mask", None)
            data[f"{modality}_embeds"] = tensor
        if self.item_scores is not None:
            data["item_scores"] = torch.tensor([self.item_scores[str(row["participant_id"])] for row in rows])
        return data
