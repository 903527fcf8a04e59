#!/usr/bin/env python
"""Evaluates an MLlm-DR checkpoint: a rationale and a score for every (participant, item), the
head's score from the same prefill, participant totals, metrics with bootstrap intervals, and an
explainable report (paper sections 4.3, 5.2-5.6).

    python evaluate_mllm_dr.py --model runs/s2/merged --data_dir CORPUS --dataset_format edaic \\
        --split test --output_dir runs/eval
    python evaluate_mllm_dr.py --zero_shot --model BACKBONE ...          # the untrained backbone, same prompts
    python evaluate_mllm_dr.py --train_mean --data_dir CORPUS ...        # each item's training-set mean
    python evaluate_mllm_dr.py --aggregate runs/eval1 runs/eval2 ...     # a Table-11-style summary

Writes ``predictions.jsonl``, ``metrics.json``, ``manifest.json``, ``report.md`` and PNG figures into
``--output_dir``; an existing output is resumed only when its manifest matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mllm_dr_training import (  # noqa: E402
    feature_columns,
    prompt_mode,
    read_feature_arrays,
    write_json_atomic,
)
from processing_mllm_dr import MllmDrProcessor  # noqa: E402

SCORE_SOURCES = ("generated", "head", "generated_with_head_fallback")
PREDICTIONS = "predictions.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
REPORT = "report.md"
DISCLAIMER = (
    "MLlm-DR is a research tool, not a diagnostic device: these scores and rationales are not a clinical "
    "assessment and must not be used to diagnose, screen or treat anyone."
)


# ----------------------------------------------------------------------------- sampling with a seed per item
class PerItemSampler(LogitsProcessor):
    """A logits processor that samples each row with its own ``torch.Generator`` (temperature,
    top-k) and turns the row into a one-hot, so greedy decoding then emits the sampled token. Each
    item's randomness is its own: a resumed run, or a different batch composition, gives the same text."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: int):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature = temperature
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / max(self.temperature, 1e-6)
        if self.top_k and self.top_k < logits.shape[-1]:
            threshold = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        probs = logits.softmax(dim=-1).cpu()
        chosen = torch.stack(
            [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(self.generators)]
        ).to(scores.device)
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter(1, chosen, 0.0)


def item_seed(seed: int, participant_id: str, item_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{participant_id}:{item_index}".encode()).hexdigest()
    return int(digest[:12], 16)


# ----------------------------------------------------------------------------- model loading
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def head_is_trained(model: Any, args: argparse.Namespace) -> bool:
    """Head scores count only from a head trained with the joint loss (never a zero-shot backbone's,
    a stage-1 model's or a CE-only model's randomly initialised head)."""
    return not getattr(args, "zero_shot", False) and bool(getattr(model.config, "score_head_trained", False))


def load_model(args: argparse.Namespace):
    """(model, processor, description) for a checkpoint, an adapter export, a training output, or
    (``--zero_shot``) an untrained backbone with the same text prompts."""
    from modeling_mllm_dr import MllmDrForConditionalGeneration

    path = Path(args.model)
    if args.zero_shot:
        model = MllmDrForConditionalGeneration.from_backbone(str(args.model), use_audio=False, use_video=False)
        questionnaire = "phq9" if args.dataset_format == "cmdc" else "phq8"
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone, model.config, questionnaire=questionnaire,
            max_transcript_tokens=args.max_transcript_tokens or 1536,
        )
        return model.eval(), processor, {"kind": "zero_shot_backbone", "path": str(path)}
    if (path / "mllm_dr_adapter.json").is_file():
        from mllm_dr_training import load_adapter_export

        model, processor = load_adapter_export(path, merge=True)
        return model.eval(), processor, {"kind": "adapter_export", "path": str(path)}
    if (path / "merged" / "config.json").is_file():
        path = path / "merged"
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json (not a checkpoint, adapter export or training output)")
    if not (path / "processor_config.json").is_file():
        raise SystemExit(
            f"--model {path}: the checkpoint has no processor (processor_config.json is missing); save it with "
            "processor.save_pretrained(...) next to the model"
        )
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(str(path), trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
    return model.eval(), processor, {"kind": "checkpoint", "path": str(path)}


def model_fingerprint(path: str | Path) -> str:
    """Names, sizes and config contents of a model folder (cheap for 16 GB checkpoints)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file() and "checkpoint-" not in str(file.relative_to(path)):
                digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
                if file.suffix == ".json":
                    digest.update(file.read_bytes())
    else:
        digest.update(str(path).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- data
def load_rows(args: argparse.Namespace, split: str, processor: MllmDrProcessor | None) -> list[dict[str, Any]]:
    import datasets

    if args.dataset_format == "prepared":
        data = datasets.load_from_disk(args.data_dir)
        if split not in data:
            raise SystemExit(f"{args.data_dir}: no split {split!r}")
        rows = data[split]
    else:
        from corpora import build_feature_cache, load_corpus

        kwargs: dict[str, Any] = {"on_error": args.on_error}
        if args.dataset_format == "edaic":
            kwargs["visual"] = args.visual
        if args.dataset_format == "cmdc":
            kwargs["split"] = args.cmdc_split
        data = load_corpus(args.data_dir, args.dataset_format, **kwargs)
        rows = datasets.DatasetDict({split: data[split]})
        if processor is not None:
            cache_dir = args.feature_cache_dir or os.path.join(args.data_dir, ".mllm_dr_cache")
            rows = build_feature_cache(
                rows, cache_dir, on_error=args.on_error,
                audio_frame_policy=processor.audio_frame_policy, audio_max_frames=processor.audio_max_frames,
                video_frame_policy=processor.video_frame_policy, video_max_frames=processor.video_max_frames,
                truncate_frames=processor.truncate_frames, pool_size=processor.pool_size,
            )
        rows = rows[split]
    rows = [dict(row) for row in rows]
    if args.limit_participants:
        keep = sorted({str(r["participant_id"]) for r in rows})[: args.limit_participants]
        rows = [r for r in rows if str(r["participant_id"]) in keep]
    rows.sort(key=lambda r: (str(r["participant_id"]), int(r["item_index"])))
    return rows


def preflight(rows: list[dict[str, Any]], processor: MllmDrProcessor, mode: str) -> None:
    """Checks every input before anything is written: empty transcripts, feature widths."""
    use_transcript, use_audio, use_video = processor._mode(mode)
    checked: set[tuple[str, str]] = set()
    for row in rows:
        pid = str(row["participant_id"])
        if use_transcript and not str(row.get("transcript") or "").strip():
            raise SystemExit(f"participant {pid}, item {row['item_index']}: the transcript is empty")
        for modality, used in (("audio", use_audio), ("video", use_video)):
            if not used:
                continue
            expected = getattr(processor, f"{modality}_feature_dim")
            for file in feature_columns(row, modality):
                if (modality, file) in checked:
                    continue
                checked.add((modality, file))
                array = read_feature_arrays([file])
                if array.ndim != 2 or array.shape[1] != expected:
                    raise SystemExit(
                        f"participant {pid}: {modality} features {file} have shape {tuple(array.shape)}, "
                        f"the model expects (frames, {expected})"
                    )


# ----------------------------------------------------------------------------- output files
def read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == len(lines) and not line.endswith("\n"):
            break  # a line torn by a kill: redone on resume
        records.append(json.loads(line))
    return records


def append_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """One write of whole lines, flushed and fsynced: a kill loses at most the batch in flight."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())


def choose_score(parsed: int | None, head: float | None, source: str, unparsed: float, lo: int, hi: int):
    """(score used, fell back?) for one item; the head's score is clipped to the item range."""
    clipped = None if head is None else float(min(max(head, lo), hi))
    if source == "head":
        if clipped is None:
            raise ValueError("--score_source head needs a trained score head")
        return clipped, False
    if parsed is not None:
        return float(parsed), False
    if source == "generated_with_head_fallback" and clipped is not None:
        return clipped, True
    return float(unparsed), False


# ----------------------------------------------------------------------------- generation
def _cache_kwarg() -> str:
    """``generate``'s name for a ready KV cache: ``cache`` in transformers >= 5.2x, else ``past_key_values``."""
    from dataclasses import fields

    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def shares_prefix(rows: list[dict[str, Any]]) -> bool:
    """Items of one participant with one transcript and one set of feature files (E-DAIC, DAIC-WOZ)."""
    first = rows[0]
    return len(rows) > 1 and all(
        r["participant_id"] == first["participant_id"]
        and r["transcript"] == first["transcript"]
        and feature_columns(r, "audio") == feature_columns(first, "audio")
        and feature_columns(r, "video") == feature_columns(first, "video")
        for r in rows
    )


@torch.no_grad()
def generate_with_shared_prefix(model, batch: dict[str, torch.Tensor], **generate_kwargs: Any):
    """Generation for prompts that share a prefix (a participant's system prompt, features and
    transcript come before the item instruction): the prefix is prefilled once, its KV cache and
    last hidden states are copied to every item, and only the item-specific suffixes are prefilled.
    The head still pools the whole prompt (prefix hidden states + suffix hidden states)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    real = [row[m] for row, m in zip(ids, mask)]
    shortest = min(len(r) for r in real)
    stacked = torch.stack([r[:shortest] for r in real])
    differs = (~(stacked == stacked[0]).all(dim=0)).nonzero()
    # the longest common prefix, leaving every item at least one token of its own to prefill
    common = min(int(differs[0]) if len(differs) else shortest, shortest - 1)
    prefix = real[0][:common].unsqueeze(0)
    features = {k: v[:1] for k, v in batch.items() if k.startswith(("audio_", "video_"))}
    prefill = model(
        input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, compute_score=False,
        logits_to_keep=1, return_last_hidden_state=True, **features,
    )
    cache = next(prefill[name] for name in ("cache", "past_key_values") if name in prefill.keys())
    cache.batch_repeat_interleave(len(real))
    suffixes = [r[common:] for r in real]
    width = max(len(s) for s in suffixes)
    pad_id = generate_kwargs.get("pad_token_id", 0)
    suffix_ids = torch.full((len(real), width), pad_id, dtype=ids.dtype, device=ids.device)
    suffix_mask = torch.zeros((len(real), width), dtype=batch["attention_mask"].dtype, device=ids.device)
    for i, suffix in enumerate(suffixes):  # left-pad the suffixes: padding sits between prefix and suffix
        suffix_ids[i, width - len(suffix) :] = suffix
        suffix_mask[i, width - len(suffix) :] = 1
    full_ids = torch.cat([prefix.expand(len(real), -1), suffix_ids], dim=1)
    full_mask = torch.cat([torch.ones_like(prefix).expand(len(real), -1), suffix_mask], dim=1)
    out = model.generate(
        input_ids=full_ids, attention_mask=full_mask, prefix_hidden_states=prefill.last_hidden_state,
        **{_cache_kwarg(): cache}, **generate_kwargs,
    )
    return out, full_ids.shape[1]


@torch.no_grad()
def generate_batch(model, processor, rows, mode, args) -> tuple[list[dict[str, Any]], int]:
    use_transcript, use_audio, use_video = processor._mode(mode)
    features = {
        modality: [read_feature_arrays(feature_columns(r, modality)) for r in rows] if used else None
        for modality, used in (("audio", use_audio), ("video", use_video))
    }
    batch = processor(
        [r["transcript"] for r in rows], [int(r["item_index"]) for r in rows],
        audio_features=features["audio"], video_features=features["video"], mode=mode, padding_side="left",
    )
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    if not args.greedy:
        seeds = [item_seed(args.seed, str(r["participant_id"]), int(r["item_index"])) for r in rows]
        kwargs["logits_processor"] = [PerItemSampler(seeds, args.temperature, args.top_k)]
    tokenizer = processor.tokenizer
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    kwargs["eos_token_id"] = tokenizer.eos_token_id
    if args.prefix_reuse and shares_prefix(rows):
        out, prompt_length = generate_with_shared_prefix(model, batch, **kwargs)
    else:
        out = model.generate(**batch, **kwargs)
        prompt_length = batch["input_ids"].shape[1]
    new_tokens = out.sequences[:, prompt_length:]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    eos = tokenizer.eos_token_id
    counted = int(sum(int((row != eos).sum()) + int((row == eos).any()) for row in new_tokens.cpu()))
    records = []
    use_head = head_is_trained(model, args) and out.head_score is not None
    for i, (row, text) in enumerate(zip(rows, texts)):
        parsed, rationale = processor.parse_output(text)
        head = float(out.head_score[i]) if use_head else None
        score, fell_back = choose_score(parsed, head, args.score_source, args.unparsed_score, 0, 3)
        records.append(
            {
                "participant_id": str(row["participant_id"]),
                "item_index": int(row["item_index"]),
                "item_name": row["item_name"],
                "generated_text": text,
                "rationale": rationale,
                "parsed_score": parsed,
                "head_score": head,
                "score": score,
                "label": row.get("label"),
                "fell_back": fell_back,
                "total": row.get("total"),
                "gender": row.get("gender"),
            }
        )
    return records, counted


def make_batches(rows: list[dict[str, Any]], batch_size: int, by_participant: bool) -> list[list[dict[str, Any]]]:
    """Fixed-size batches; with prefix reuse, a batch never mixes participants (their prompts share
    a prefix only within a participant)."""
    if not by_participant:
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row["participant_id"])].append(row)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def train_mean_predictions(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What 'learned nothing' scores: every item predicted as its training-set mean."""
    train_rows = load_rows(args, "train", None)
    sums: dict[int, list[float]] = defaultdict(list)
    for row in train_rows:
        if row.get("label") is not None:
            sums[int(row["item_index"])].append(float(row["label"]))
    if not sums:
        raise SystemExit("--train_mean needs item labels in the train split")
    means = {item: float(np.mean(values)) for item, values in sums.items()}
    return [
        {
            "participant_id": str(r["participant_id"]), "item_index": int(r["item_index"]), "item_name": r["item_name"],
            "generated_text": "", "rationale": "", "parsed_score": None, "head_score": None,
            "score": means[int(r["item_index"])], "label": r.get("label"), "fell_back": False,
            "total": r.get("total"), "gender": r.get("gender"),
        }
        for r in rows
    ]


# ----------------------------------------------------------------------------- metrics and report
def participant_totals(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_participant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in predictions:
        by_participant[record["participant_id"]].append(record)
    out = []
    for pid, records in sorted(by_participant.items()):
        true_total = records[0].get("total")
        if true_total is None and all(r.get("label") is not None for r in records):
            true_total = sum(r["label"] for r in records)
        out.append(
            {
                "participant_id": pid,
                "predicted_total": float(sum(r["score"] for r in records)),
                "true_total": None if true_total is None else float(true_total),
                "gender": records[0].get("gender"),
                "items": len(records),
            }
        )
    return out


def _phq_metrics(predictions: list[dict[str, Any]], args: argparse.Namespace, n_bootstrap: int, with_genders: bool):
    """PHQ metrics of the predictions' ``score`` fields: participant totals plus per-item errors."""
    from phq_metrics import compute_phq_metrics

    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    genders = [t["gender"] for t in totals]
    labelled = [p for p in predictions if p.get("label") is not None]
    return compute_phq_metrics(
        [t["predicted_total"] for t in totals],
        [t["true_total"] for t in totals],
        cutoff=args.cutoff,
        genders=genders if with_genders and all(g is not None for g in genders) else None,
        item_predictions=[p["score"] for p in labelled] or None,
        item_references=[p["label"] for p in labelled] or None,
        item_indices=[p["item_index"] for p in labelled] or None,
        n_bootstrap=n_bootstrap,
        seed=args.seed,
    )


def compute_metrics(predictions: list[dict[str, Any]], args: argparse.Namespace, baseline: bool) -> dict[str, Any]:
    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    if len(totals) < 2:
        raise SystemExit("fewer than 2 participants with a known PHQ total: nothing to evaluate")
    metrics = _phq_metrics(predictions, args, args.n_bootstrap, with_genders=True)
    labelled = any(p.get("label") is not None for p in predictions)
    if not baseline and args.score_source != "head" and labelled and all(p["head_score"] is not None for p in predictions):
        # The MAA head's own scores, whatever the text said: how far the regression path alone gets.
        head_scored = [{**p, "score": choose_score(None, p["head_score"], "head", 0.0, 0, 3)[0]} for p in predictions]
        head_metrics = _phq_metrics(head_scored, args, n_bootstrap=0, with_genders=False)
        metrics["head_only"] = {k: v for k, v in head_metrics.items() if not k.endswith("_ci95")}
    n_items = len(predictions)
    failures = sum(p["parsed_score"] is None for p in predictions)
    both = [p for p in predictions if p["parsed_score"] is not None and p["head_score"] is not None]
    metrics.update(
        {
            "n_items": n_items,
            "format_failures": None if baseline else failures,
            "format_failure_rate": None if baseline else failures / n_items,
            "fallback_count": sum(bool(p["fell_back"]) for p in predictions),
            "score_source": args.score_source,
            "generated_head_agreement": None
            if not both
            else {
                "n_items": len(both),
                "mean_absolute_difference": float(np.mean([abs(p["parsed_score"] - p["head_score"]) for p in both])),
                "exact_agreement_rate": float(np.mean([p["parsed_score"] == round(min(max(p["head_score"], 0), 3)) for p in both])),
            },
        }
    )
    return metrics


def write_figures(predictions: list[dict[str, Any]], metrics: dict[str, Any], out: Path, cutoff: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    true = np.array([t["true_total"] for t in totals])
    pred = np.array([t["predicted_total"] for t in totals])
    files = []

    def save(fig, name):
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, out / name)
        files.append(name)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max(24.0, float(true.max(initial=0)), float(pred.max(initial=0)))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="identity")
    ax.scatter(true, pred, alpha=0.7)
    ax.axvline(cutoff, color="red", linewidth=0.8)
    ax.axhline(cutoff, color="red", linewidth=0.8)
    ax.set(xlabel="true PHQ total", ylabel="predicted PHQ total", xlim=(0, top), ylim=(0, top),
           title=f"CCC {metrics['ccc']:.2f}, MAE {metrics['mae']:.2f}")
    ax.legend(loc="upper left")
    save(fig, "totals_scatter.png")

    y_true, y_pred = true >= cutoff, pred >= cutoff
    matrix = np.array([[np.sum(~y_true & ~y_pred), np.sum(~y_true & y_pred)], [np.sum(y_true & ~y_pred), np.sum(y_true & y_pred)]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=[f"< {cutoff:g}", f">= {cutoff:g}"],
           yticklabels=[f"< {cutoff:g}", f">= {cutoff:g}"], xlabel="predicted", ylabel="true",
           title=f"Binary screen at cut-off {cutoff:g}")
    save(fig, "confusion_matrix.png")

    per_item = metrics.get("per_item_mae") or {}
    if per_item:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = {p["item_index"]: p["item_name"] for p in predictions}
        keys = sorted(per_item, key=int)
        ax.bar([names.get(int(k), str(k)) for k in keys], [per_item[k] for k in keys])
        ax.set(ylabel="MAE (item score)", title="Per-item error")
        ax.tick_params(axis="x", rotation=45)
        save(fig, "per_item_mae.png")
    return files


def write_report(predictions, metrics, manifest, out: Path, figures: list[str]) -> None:
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    ci = lambda key: "" if not metrics.get(key) else f" [{metrics[key][0]:.3f}, {metrics[key][1]:.3f}]"  # noqa: E731
    lines = [
        "# MLlm-DR evaluation report",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Model: `{manifest['model']['path']}` ({manifest['model']['kind']})",
        f"- Data: `{manifest['data']['format']}`, split `{manifest['data']['split']}`, "
        f"{metrics['n_participants']} participants, {metrics['n_items']} items",
        f"- Score source: `{metrics['score_source']}`; binary cut-off: total >= {metrics['cutoff']:g}",
        f"- Generation: {manifest['generation']}",
        "",
        "| metric | value (95% bootstrap interval) |",
        "|---|---|",
        f"| CCC | {fmt(metrics['ccc'])}{ci('ccc_ci95')} |",
        f"| Pearson r | {fmt(metrics.get('pearson_r'))} |",
        f"| RMSE | {fmt(metrics['rmse'])} |",
        f"| MAE | {fmt(metrics['mae'])}{ci('mae_ci95')} |",
        f"| Precision / Recall / F1 | {fmt(metrics['precision'])} / {fmt(metrics['recall'])} / {fmt(metrics['f1'])}{ci('f1_ci95')} |",
        f"| Severity-band accuracy | {fmt(metrics.get('severity_accuracy'))} |",
        f"| Format failures (Table 6, I) | {fmt(metrics['format_failure_rate'])} ({fmt(metrics['format_failures'])} items) |",
        f"| Head fallbacks | {metrics['fallback_count']} |",
        "",
    ]
    head = metrics.get("head_only")
    if head:
        lines += [
            f"The MAA head's scores alone (no text): CCC {fmt(head['ccc'])}, RMSE {fmt(head['rmse'])}, "
            f"MAE {fmt(head['mae'])}, F1 {fmt(head['f1'])}.",
            "",
        ]
    lines += [f"![{name}]({name})" for name in figures]
    example = next((p for p in predictions if p.get("rationale")), None)
    if example is not None:
        lines += [
            "",
            "## One explainable prediction",
            "",
            f"Participant {example['participant_id']}, item {example['item_index']} ({example['item_name']}): "
            f"score {example['score']:g} (generated {fmt(example['parsed_score'])}, head {fmt(example['head_score'])}, "
            f"true {fmt(example['label'])})",
            "",
            f"> {example['rationale']}",
            "",
            "This report contains text generated from licensed interview data: keep it local.",
        ]
    tmp = out / f".{REPORT}.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out / REPORT)


# ----------------------------------------------------------------------------- aggregate
AGGREGATE_METRICS = ("ccc", "precision", "recall", "f1", "rmse", "mae", "format_failure_rate")


def aggregate(run_dirs: Sequence[str]) -> str:
    """Table 11: each metric per run, then the mean and the (sample) standard deviation."""
    rows = []
    for run in run_dirs:
        path = Path(run) / METRICS
        if not path.is_file():
            raise SystemExit(f"{run}: no {METRICS}")
        rows.append((Path(run).name, json.loads(path.read_text())))
    header = "| run | " + " | ".join(AGGREGATE_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(AGGREGATE_METRICS) + 1)]
    for name, metrics in rows:
        cells = [("n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}") for k in AGGREGATE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)):
        cells = []
        for key in AGGREGATE_METRICS:
            values = [m[key] for _, m in rows if m.get(key) is not None]
            cells.append("n/a" if not values else f"{fn(values):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint, training output, adapter export, or (--zero_shot) a backbone")
    parser.add_argument("--data_dir")
    parser.add_argument("--dataset_format", default="edaic", choices=["edaic", "daic", "cmdc", "prepared"])
    parser.add_argument("--split", default="test")
    parser.add_argument("--output_dir")
    parser.add_argument("--score_source", default="generated_with_head_fallback", choices=SCORE_SOURCES)
    parser.add_argument("--greedy", action="store_true", help="deterministic greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--no_prefix_reuse", dest="prefix_reuse", action="store_false",
                        help="prefill each item's whole prompt (default: a participant's shared prefix is prefilled once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cutoff", type=float, default=10.0, help="binary label: total >= cutoff (authors used 9)")
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--unparsed_score", type=float, default=0.0,
                        help="item score used when the text breaks format and no head can stand in (zero-shot, "
                        "--score_source generated); default 0: a failure scores nothing. The authors' code put in "
                        "1.5, a filler that hides failures")
    parser.add_argument("--zero_shot", action="store_true", help="evaluate an untrained backbone with the same prompts")
    parser.add_argument("--train_mean", action="store_true", help="baseline: each item's training-set mean")
    parser.add_argument("--aggregate", nargs="+", metavar="RUN_DIR", help="summarise several evaluation outputs")
    parser.add_argument("--max_transcript_tokens", type=int, default=None)
    parser.add_argument("--feature_cache_dir", default=None)
    parser.add_argument("--visual", default="resnet")
    parser.add_argument("--on_error", default="raise", choices=["raise", "skip"])
    parser.add_argument("--cmdc_split", default="authors")
    parser.add_argument("--limit_participants", type=int, default=None, help="evaluate only the first N participants")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="weights' dtype for inference (bfloat16 halves memory; on a CPU with AVX512-BF16 it is also faster)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.aggregate:
        table = aggregate(args.aggregate)
        print(table)
        if args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / "aggregate.md").write_text(table + "\n")
        return 0
    for name in ("data_dir", "output_dir"):
        if getattr(args, name) is None:
            raise SystemExit(f"--{name} is required")
    if args.zero_shot:
        args.score_source = "generated"
    out = Path(args.output_dir)

    if args.train_mean:
        model = processor = None
        description = {"kind": "train_mean_baseline", "path": None}
        mode = "none"
        rows = load_rows(args, args.split, None)
    else:
        if args.model is None:
            raise SystemExit("--model is required")
        model, processor, description = load_model(args)
        model.to(device=args.device, dtype=DTYPES[args.dtype])
        if args.max_transcript_tokens:
            processor.max_transcript_tokens = args.max_transcript_tokens
        mode = prompt_mode(2, bool(model.config.use_audio), bool(model.config.use_video))
        rows = load_rows(args, args.split, processor)
        preflight(rows, processor, mode)
        if args.score_source == "head" and not head_is_trained(model, args):
            raise SystemExit(
                f"--score_source head: {args.model} has no trained score head (zero-shot, stage 1, or trained "
                "without the joint loss); use --score_source generated"
            )
    if not rows:
        raise SystemExit(f"{args.data_dir}: split {args.split!r} has no rows")

    manifest = {
        "model": {**description, "fingerprint": model_fingerprint(description["path"]) if description["path"] else None},
        "data": {"format": args.dataset_format, "dir": str(Path(args.data_dir).resolve()), "split": args.split,
                 "items": len(rows), "participants": len({r["participant_id"] for r in rows})},
        "generation": "greedy" if args.greedy else f"sampling, temperature {args.temperature}, top_k {args.top_k}, a seed per item",
        "max_new_tokens": args.max_new_tokens,
        "dtype": None if model is None else args.dtype,
        "prefix_reuse": args.prefix_reuse,
        "seed": args.seed,
        "score_source": args.score_source,
        "unparsed_score": args.unparsed_score,
        "mode": mode,
        "max_transcript_tokens": None if processor is None else processor.max_transcript_tokens,
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if existing != json.loads(json.dumps(manifest, default=str)):
            changed = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != json.loads(json.dumps(manifest.get(k), default=str)))
            raise SystemExit(f"{out} holds an evaluation with different settings ({', '.join(changed)}): use another --output_dir")
    elif any(out.iterdir()):
        raise SystemExit(f"{out} is not empty and holds no {MANIFEST}: use another --output_dir")
    else:
        write_json_atomic(manifest_path, manifest)

    predictions_path = out / PREDICTIONS
    done = read_predictions(predictions_path)
    done_keys = {(p["participant_id"], p["item_index"]) for p in done}
    todo = [r for r in rows if (str(r["participant_id"]), int(r["item_index"])) not in done_keys]
    started, new_tokens, generated_items = time.perf_counter(), 0, 0
    if args.train_mean:
        if todo:
            append_predictions(predictions_path, train_mean_predictions(args, todo))
    elif todo:
        from tqdm.auto import tqdm

        batches = make_batches(todo, args.batch_size, by_participant=args.prefix_reuse)
        for batch_rows in tqdm(batches, desc="generating", unit="batch"):
            records, counted = generate_batch(model, processor, batch_rows, mode, args)
            append_predictions(predictions_path, records)
            new_tokens += counted
            generated_items += len(records)
    elapsed = time.perf_counter() - started

    predictions = read_predictions(predictions_path)
    order = {(str(r["participant_id"]), int(r["item_index"])): i for i, r in enumerate(rows)}
    predictions.sort(key=lambda p: order.get((p["participant_id"], p["item_index"]), len(order)))
    metrics = compute_metrics(predictions, args, baseline=args.train_mean)
    metrics["throughput"] = {
        "items": generated_items,
        "seconds": round(elapsed, 3),
        "items_per_second": generated_items / elapsed if generated_items and elapsed else None,
        "new_tokens_per_second": new_tokens / elapsed if new_tokens and elapsed else None,
        "device": str(args.device),
    }
    write_json_atomic(out / METRICS, metrics)
    figures = write_figures(predictions, metrics, out, args.cutoff)
    write_report(predictions, metrics, manifest, out, figures)
    print(
        f"CCC {metrics['ccc']:.3f}  RMSE {metrics['rmse']:.3f}  MAE {metrics['mae']:.3f}  "
        f"P/R/F1 {metrics['precision']:.3f}/{metrics['recall']:.3f}/{metrics['f1']:.3f}  "
        f"format failures {metrics['format_failure_rate'] if metrics['format_failure_rate'] is not None else 'n/a'}"
    )
    if generated_items:
        print(f"throughput: {metrics['throughput']['items_per_second']:.2f} items/s, "
              f"{(metrics['throughput']['new_tokens_per_second'] or 0):.1f} new tokens/s")
    print(f"report: {out / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
