"""Evaluates an MLlm-DR checkpoint: a rationale and a score for every (participant, item), the
head's score from the same prefill, participant totals, metrics with bootstrap intervals, and an
explainable report (paper sections 4.3, 5.2-5.6).

    mllm-dr-evaluate --model runs/s2 --data_dir CORPUS --dataset_format edaic --split test --output_dir runs/eval
    mllm-dr-evaluate --zero_shot --model BACKBONE ...          # the untrained backbone, same prompts
    mllm-dr-evaluate --train_mean --data_dir CORPUS ...        # each item's training-set mean
    mllm-dr-evaluate --aggregate runs/eval1 runs/eval2 ...     # a Table-11-style summary

Writes ``predictions.jsonl``, ``metrics.json``, ``manifest.json``, ``report.md`` and PNG figures into
``--output_dir``; an existing output is resumed only when its manifest matches.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from processing_mllm_dr import prompt_mode

from ..data import CorpusArguments, FeatureCacheArguments, load_splits
from ..evaluation import (
    MANIFEST,
    METRICS,
    PREDICTIONS,
    REPORT,
    aggregate,
    compute_metrics,
    read_predictions,
    train_mean_predictions,
    write_figures,
    write_report,
)
from ..inference import (
    GenerationArguments,
    ModelLoadArguments,
    check_rows,
    generate_items,
    head_is_trained,
    load_model,
    make_batches,
    model_fingerprint,
)
from ..io import LOCK_NAME, FolderInUse, append_jsonl, exclusive_lock, write_json_atomic, write_text_atomic


@dataclass
class EvaluationArguments:
    """What to evaluate, where to write it, and how to score it."""

    output_dir: str | None = field(default=None, metadata={"help": "Folder for predictions, metrics, report, figures."})
    split: str = field(default="test", metadata={"help": "Split to evaluate: train | dev | test."})
    zero_shot: bool = field(default=False, metadata={"help": "Evaluate an untrained backbone (--model) with the same prompts."})
    train_mean: bool = field(default=False, metadata={"help": "Baseline: each item's training-set mean (no model)."})
    aggregate: list[str] | None = field(
        default=None, metadata={"help": "Summarise several evaluation output folders (Table 11: mean and std).", "metavar": "RUN_DIR"}
    )
    cutoff: float = field(default=10.0, metadata={"help": "Binary label: total >= cutoff (the authors used 9)."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the 95%% intervals (0: none)."})
    max_transcript_tokens: int | None = field(
        default=None, metadata={"help": "Transcript budget in tokens (default: the checkpoint's processor's)."}
    )
    limit_participants: int | None = field(default=None, metadata={"help": "Evaluate only the first N participants."})


ARGUMENTS = (ModelLoadArguments, CorpusArguments, FeatureCacheArguments, GenerationArguments, EvaluationArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None):
    return build_parser().parse_args_into_dataclasses(args=argv)


def _rows(
    corpus_args: CorpusArguments, cache_dir: str | None, split: str, processor, limit: int | None,
    modalities: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The split's rows, and what the evaluation leaves out (skipped data; participants scored
    without one of ``modalities``, the ones the model uses)."""
    try:
        corpus = load_splits(corpus_args, (split,), frames=processor, cache_dir=cache_dir)
    except ValueError as error:  # broken data, named by the loader or the cache: before anything is written
        raise SystemExit(f"error: {error}") from None
    rows = [dict(row) for row in corpus[split]]
    if limit:
        keep = sorted({str(r["participant_id"]) for r in rows})[:limit]
        rows = [r for r in rows if str(r["participant_id"]) in keep]
    rows.sort(key=lambda r: (str(r["participant_id"]), int(r["item_index"])))
    left_out = corpus.left_out(modalities)
    kept = {str(r["participant_id"]) for r in rows}  # --limit_participants
    left_out["missing_modality"] = {m: [p for p in ids if p in kept] for m, ids in left_out["missing_modality"].items()}
    return rows, left_out


def main(argv: list[str] | None = None) -> int:
    model_args, corpus_args, cache_args, generation, args = parse_args(argv)
    if args.aggregate:
        try:
            table = aggregate(args.aggregate)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        print(table)
        if args.output_dir:
            write_text_atomic(Path(args.output_dir) / "aggregate.md", table + "\n")
        return 0
    for name, value in (("data_dir", corpus_args.data_dir), ("output_dir", args.output_dir)):
        if value is None:
            raise SystemExit(f"--{name} is required")
    try:
        corpus_args.loader_kwargs()
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.zero_shot:
        generation.score_source = "generated"
    out = Path(args.output_dir)

    if args.train_mean:
        model = processor = None
        description: dict[str, Any] = {"kind": "train_mean_baseline", "path": None}
        mode = "none"
        rows, left_out = _rows(corpus_args, None, args.split, None, args.limit_participants)
    else:
        if model_args.model is None:
            raise SystemExit("--model is required")
        loaded = load_model(
            model_args.model, zero_shot=args.zero_shot, questionnaire=corpus_args.spec().questionnaire or "phq8",
            max_transcript_tokens=args.max_transcript_tokens, dtype=model_args.dtype, device=model_args.device,
            trust_remote_code=model_args.trust_remote_code,
        )  # fmt: skip
        model, processor, description = loaded.model, loaded.processor, loaded.description
        mode = prompt_mode(2, bool(model.config.use_audio), bool(model.config.use_video))
        used = tuple(m for m in ("audio", "video") if getattr(processor.inputs_for(mode), m))
        rows, left_out = _rows(corpus_args, cache_args.feature_cache_dir, args.split, processor, args.limit_participants, used)
        check_rows(rows, processor, mode)
        if generation.score_source == "head" and not head_is_trained(model, args.zero_shot):
            raise SystemExit(
                f"--score_source head: {model_args.model} has no trained score head (zero-shot, stage 1, or trained "
                "without the joint loss); use --score_source generated"
            )
    if not rows:
        raise SystemExit(f"{corpus_args.data_dir}: split {args.split!r} has no rows")

    manifest = {
        "model": {**description, "fingerprint": model_fingerprint(description["path"]) if description["path"] else None},
        "data": {"format": corpus_args.dataset_format, "dir": str(Path(corpus_args.data_dir).resolve()), "split": args.split,
                 "items": len(rows), "participants": len({r["participant_id"] for r in rows}), "left_out": left_out},
        "generation": generation.describe(),
        "max_new_tokens": generation.max_new_tokens,
        "dtype": None if model is None else model_args.dtype,
        "prefix_reuse": generation.prefix_reuse,
        "seed": generation.seed,
        "score_source": generation.score_source,
        "unparsed_score": generation.unparsed_score,
        "mode": mode,
        "max_transcript_tokens": None if processor is None else processor.max_transcript_tokens,
    }  # fmt: skip
    try:
        with exclusive_lock(out, "evaluation"):
            return _evaluate_into(out, manifest, rows, left_out, model, processor, mode, model_args, corpus_args,
                                  generation, args)  # fmt: skip
    except FolderInUse as error:
        raise SystemExit(f"error: {error}") from None


def _evaluate_into(out, manifest, rows, left_out, model, processor, mode, model_args, corpus_args, generation, args) -> int:
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        expected = json.loads(json.dumps(manifest, default=str))
        if existing != expected:
            changed = sorted(k for k in set(existing) | set(expected) if existing.get(k) != expected.get(k))
            raise SystemExit(f"{out} holds an evaluation with different settings ({', '.join(changed)}): use another --output_dir")
    elif any(not p.name.startswith(LOCK_NAME) for p in out.iterdir()):
        raise SystemExit(f"{out} is not empty and holds no {MANIFEST}: use another --output_dir")
    else:
        write_json_atomic(manifest_path, manifest)

    predictions_path = out / PREDICTIONS
    try:
        done_keys = {(str(p["participant_id"]), int(p["item_index"])) for p in read_predictions(predictions_path, rows)}
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    todo = [r for r in rows if (str(r["participant_id"]), int(r["item_index"])) not in done_keys]
    started, new_tokens, generated_items = time.perf_counter(), 0, 0
    if args.train_mean:
        if todo:
            train_rows, _ = _rows(corpus_args, None, "train", None, None)
            try:
                append_jsonl(predictions_path, train_mean_predictions(train_rows, todo))
            except ValueError as error:
                raise SystemExit(str(error)) from None
    elif todo:
        from tqdm.auto import tqdm

        use_head = head_is_trained(model, args.zero_shot)
        batches = make_batches(todo, generation.batch_size, by_participant=generation.prefix_reuse)
        for batch_rows in tqdm(batches, desc="generating", unit="batch"):
            records, counted = generate_items(model, processor, batch_rows, mode, generation, use_head)
            append_jsonl(predictions_path, records)
            new_tokens += counted
            generated_items += len(records)
    elapsed = time.perf_counter() - started

    try:
        predictions = read_predictions(predictions_path, rows)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    order = {(str(r["participant_id"]), int(r["item_index"])): i for i, r in enumerate(rows)}
    predictions.sort(key=lambda p: order.get((p["participant_id"], p["item_index"]), len(order)))
    try:
        metrics = compute_metrics(
            predictions, cutoff=args.cutoff, seed=generation.seed, n_bootstrap=args.n_bootstrap,
            score_source=generation.score_source, baseline=args.train_mean,
            score_range=(0, 3) if processor is None else (processor.score_min, processor.score_max),
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(str(error)) from None
    metrics["throughput"] = {
        "items": generated_items,
        "seconds": round(elapsed, 3),
        "items_per_second": generated_items / elapsed if generated_items and elapsed else None,
        "new_tokens_per_second": new_tokens / elapsed if new_tokens and elapsed else None,
        "device": str(model_args.device),
    }
    metrics["left_out"] = left_out
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
