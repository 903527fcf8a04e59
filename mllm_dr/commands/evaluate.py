"""Evaluates an MLlm-DR checkpoint: a rationale and a score for every (participant, item), the
head's score from the same prefill, participant totals, metrics with bootstrap intervals, and an
explainable report (paper sections 4.3, 5.2-5.6).

    mllm-dr-evaluate --model runs/s2 --data_dir CORPUS --dataset_format edaic --split test --output_dir runs/eval
    mllm-dr-evaluate --zero_shot --model BACKBONE ...          # the untrained backbone, same prompts
    mllm-dr-evaluate --train_mean --data_dir CORPUS ...        # each item's training-set mean
    mllm-dr-evaluate --aggregate runs/eval1 runs/eval2 ...     # a Table-11-style summary (one model, one setting)
    mllm-dr-evaluate --aggregate runs/*/eval --group_by kind   # one summary per kind of model

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

from ..data import CorpusArguments, FeatureCacheArguments, LoadedCorpus, load_splits
from ..evaluation import (
    MANIFEST,
    METRICS,
    PREDICTIONS,
    REPORT,
    RUN_FIELDS,
    aggregate,
    check_known_totals,
    compute_metrics,
    fit_text_weight,
    read_predictions,
    train_mean_predictions,
    write_figures,
    write_report,
)
from ..evidence import attach_quotes, evidence_summary, interview_texts
from ..inference import (
    GenerationArguments,
    ModelLoadArguments,
    check_rows,
    generate_batches,
    head_is_trained,
    load_model,
)
from ..io import LOCK_NAME, FolderInUse, append_jsonl, exclusive_lock, read_jsonl, write_json_atomic, write_text_atomic
from ..provenance import transcript_cuts


@dataclass
class EvaluationArguments:
    """What to evaluate, where to write it, and how to score it."""

    output_dir: str | None = field(default=None, metadata={"help": "Folder for predictions, metrics, report, figures."})
    split: str = field(default="test", metadata={"help": "Split to evaluate: train | dev | test."})
    zero_shot: bool = field(default=False, metadata={"help": "Evaluate an untrained backbone (--model) with the same prompts."})
    train_mean: bool = field(default=False, metadata={"help": "Baseline: each item's training-set mean (no model)."})
    aggregate: list[str] | None = field(
        default=None,
        metadata={"help": "Summarise several evaluation output folders (Table 11: mean and std); they must be runs "
                  "of one model and one setting, or say how to group them with --group_by.", "metavar": "RUN_DIR"}
    )
    group_by: str | None = field(
        default=None,
        metadata={"help": "With --aggregate: comma-separated run fields (" + ", ".join(RUN_FIELDS) + ") that may "
                  "differ between the runs; each combination of their values is summarised on its own. Without it, "
                  "runs that differ in any of these fields are refused (seeds may always differ).",
                  "metavar": "FIELD[,FIELD]"},
    )
    cutoff: float = field(default=10.0, metadata={"help": "Binary label: total >= cutoff (the authors used 9)."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the 95%% intervals (0: none)."})
    max_transcript_tokens: int | None = field(
        default=None, metadata={"help": "Transcript budget in tokens (default: the checkpoint's processor's)."}
    )
    limit_participants: int | None = field(default=None, metadata={"help": "Evaluate only the first N participants."})
    fit_text_weight_on: str | None = field(
        default=None,
        metadata={"help": "Fit --text_weight (for --score_source combined, and the combined row of the report) on "
                  "this folder's predictions: an evaluation of the same model on another, non-test split (dev); "
                  "the weight is never fitted on the outputs it then scores.", "metavar": "EVAL_DIR"},
    )


def fitted_text_weight(folder: str, data_dir: str | None, split: str) -> dict[str, Any]:
    """``--fit_text_weight_on``: the least-squares text weight of an earlier evaluation (dev), refusing
    a test split and the split being evaluated; the model's fingerprint is checked once it loads."""
    path = Path(folder)
    if not (path / MANIFEST).is_file() or not (path / PREDICTIONS).is_file():
        raise SystemExit(f"--fit_text_weight_on {folder}: not an evaluation folder (no {MANIFEST} or {PREDICTIONS})")
    manifest = json.loads((path / MANIFEST).read_text())
    fitted_split = manifest.get("data", {}).get("split")
    if fitted_split == "test":
        raise SystemExit(f"--fit_text_weight_on {folder}: it evaluated the test split; fit the weight on a dev evaluation")
    same_data = data_dir is not None and manifest.get("data", {}).get("dir") == str(Path(data_dir).resolve())
    if same_data and fitted_split == split:
        raise SystemExit(f"--fit_text_weight_on {folder}: it evaluated split {split!r}, the one evaluated now; "
                         "fit the weight on another split (dev)")  # fmt: skip
    try:
        fit = fit_text_weight([record for _, record in read_jsonl(path / PREDICTIONS)])
    except (ValueError, KeyError) as error:
        raise SystemExit(f"--fit_text_weight_on {folder}: {error}") from None
    return {"value": fit["text_weight"], "fitted_on": str(path.resolve()), "split": fitted_split,
            "model_fingerprint": manifest.get("model", {}).get("fingerprint"),
            **{k: fit[k] for k in ("n_items", "mse", "mse_text", "mse_head")}}  # fmt: skip


ARGUMENTS = (ModelLoadArguments, CorpusArguments, FeatureCacheArguments, GenerationArguments, EvaluationArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None):
    return build_parser().parse_args_into_dataclasses(args=argv)


def _load(corpus_args: CorpusArguments, split: str) -> LoadedCorpus:
    try:
        return load_splits(corpus_args, (split,))
    except ValueError as error:  # broken data, named by the loader: before a model loads or anything is written
        raise SystemExit(f"error: {error}") from None


def _rows(
    corpus: LoadedCorpus, split: str, limit: int | None, modalities: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The split's rows (the first ``limit`` participants), and what the evaluation leaves out
    (skipped data; participants scored without one of ``modalities``, the ones the model uses)."""
    rows = [dict(row) for row in corpus[split]]
    if limit:
        keep = sorted({str(r["participant_id"]) for r in rows})[:limit]
        rows = [r for r in rows if str(r["participant_id"]) in keep]
    rows.sort(key=lambda r: (str(r["participant_id"]), int(r["item_index"])))
    left_out = corpus.left_out(modalities)
    kept = {str(r["participant_id"]) for r in rows}  # --limit_participants
    left_out["missing_modality"] = {m: [p for p in ids if p in kept] for m, ids in left_out["missing_modality"].items()}
    return rows, left_out


def _check_evaluable(rows: list[dict[str, Any]], corpus_args: CorpusArguments, split: str) -> None:
    """What the metrics need of the rows, refused before any model loads or generates."""
    where = f"{corpus_args.data_dir}: split {split!r}"
    if not rows:
        raise SystemExit(f"{where} has no rows")
    try:
        check_known_totals(rows, where)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    model_args, corpus_args, cache_args, generation, args = parse_args(argv)
    if args.group_by and not args.aggregate:
        raise SystemExit("--group_by groups the runs of --aggregate: give the evaluation folders with --aggregate")
    if args.aggregate:
        group_by = [name.strip() for name in (args.group_by or "").split(",") if name.strip()]
        try:
            table = aggregate(args.aggregate, group_by)
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
    try:
        generation.check(weight_to_fit=bool(args.fit_text_weight_on))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    text_weight = None
    if args.fit_text_weight_on:
        if generation.text_weight is not None:
            raise SystemExit("give --text_weight or --fit_text_weight_on, not both")
        text_weight = fitted_text_weight(args.fit_text_weight_on, corpus_args.data_dir, args.split)
        generation.text_weight = text_weight["value"]
    elif generation.text_weight is not None:
        text_weight = {"value": generation.text_weight, "fitted_on": None}
    out = Path(args.output_dir)

    corpus = _load(corpus_args, args.split)
    rows, left_out = _rows(corpus, args.split, args.limit_participants)
    _check_evaluable(rows, corpus_args, args.split)  # before a model loads: the labels are known now
    baseline: list[dict[str, Any]] = []
    if args.train_mean:
        model = processor = None
        description: dict[str, Any] = {"kind": "train_mean_baseline", "path": None, "fingerprint": None}
        mode = "none"
        questionnaire = corpus.questionnaire
        try:
            baseline = train_mean_predictions(_load(corpus_args, "train")["train"], rows)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    else:
        if model_args.model is None:
            raise SystemExit("--model is required")
        loaded = load_model(
            model_args.model, zero_shot=args.zero_shot, questionnaire=corpus_args.spec().questionnaire or "phq8",
            max_transcript_tokens=args.max_transcript_tokens, dtype=model_args.dtype, device=model_args.device,
            trust_remote_code=model_args.trust_remote_code,
        )  # fmt: skip
        model, processor, description = loaded.model, loaded.processor, loaded.record()
        fitted_for = (text_weight or {}).get("model_fingerprint")
        if fitted_for is not None and fitted_for != description.get("fingerprint"):
            raise SystemExit(f"--fit_text_weight_on {args.fit_text_weight_on}: it evaluated another model "
                             f"(fingerprint {fitted_for}, this one {description.get('fingerprint')})")  # fmt: skip
        if generation.score_source in ("head", "combined") and not head_is_trained(model, args.zero_shot):
            raise SystemExit(
                f"--score_source {generation.score_source}: {model_args.model} has no trained score head (zero-shot, "
                "stage 1, or trained without the joint loss); use --score_source generated or expected"
            )
        try:
            generation = generation.for_model(model)  # top_p from the model's generation config unless given
        except ValueError as error:
            raise SystemExit(str(error)) from None
        questionnaire = processor.questionnaire
        mode = prompt_mode(2, bool(model.config.use_audio), bool(model.config.use_video))
        used = tuple(m for m in ("audio", "video") if getattr(processor.inputs_for(mode), m))
        try:
            corpus.cache_features(processor, cache_args.feature_cache_dir)
        except ValueError as error:  # unreadable or non-finite features, named by the cache: before generating
            raise SystemExit(f"error: {error}") from None
        rows, left_out = _rows(corpus, args.split, args.limit_participants, used)
        _check_evaluable(rows, corpus_args, args.split)  # --on_error skip may have dropped participants
        check_rows(rows, processor, mode)

    manifest = {
        "model": description,
        "data": {"format": corpus_args.dataset_format, "dir": str(Path(corpus_args.data_dir).resolve()), "split": args.split,
                 "items": len(rows), "participants": len({r["participant_id"] for r in rows}), "left_out": left_out,
                 "transcripts": transcript_cuts_of(rows, processor, mode)},
        "generation": generation.describe(),
        "max_new_tokens": generation.max_new_tokens,
        "dtype": None if model is None else model_args.dtype,
        "prefix_reuse": generation.prefix_reuse,
        "seed": generation.seed,
        "score_source": generation.score_source,
        "unparsed_score": generation.unparsed_score,
        **({"text_weight": text_weight} if text_weight else {}),
        **({"modality_attribution": True} if generation.modality_attribution else {}),
        **({"attribution_effect": generation.attribution_effect} if generation.attribution_effect != "direct" else {}),
        "mode": mode,
        "max_transcript_tokens": None if processor is None else processor.max_transcript_tokens,
        "questionnaire": questionnaire,
    }  # fmt: skip
    try:
        with exclusive_lock(out, "evaluation"):
            return _evaluate_into(out, manifest, rows, left_out, model, processor, mode, baseline, model_args,
                                  generation, args)  # fmt: skip
    except FolderInUse as error:
        raise SystemExit(f"error: {error}") from None


def transcript_cuts_of(rows, processor, mode: str) -> dict[str, Any] | None:
    """How many participants' transcripts exceed the model's budget, and by how many tokens (each
    transcript tokenized once); None when the prompt has no transcript (baselines, feature modes)."""
    if processor is None or not processor.inputs_for(mode).transcript:
        return None
    by_text: dict[str, int] = {}
    for row in rows:
        if row["transcript"] not in by_text:
            by_text[row["transcript"]] = processor.encode_transcript(row["transcript"])[1]
    return transcript_cuts(((row["participant_id"], by_text[row["transcript"]]) for row in rows),
                           budget=processor.max_transcript_tokens)


def _evaluate_into(
    out, manifest, rows, left_out, model, processor, mode, baseline, model_args, generation, args
) -> int:
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
            keys = {(str(r["participant_id"]), int(r["item_index"])) for r in todo}
            append_jsonl(predictions_path, [p for p in baseline if (p["participant_id"], p["item_index"]) in keys])
    elif todo:
        use_head = head_is_trained(model, args.zero_shot)
        try:
            for records, counted in generate_batches(model, processor, todo, mode, generation, use_head):
                append_jsonl(predictions_path, records)
                new_tokens += counted
                generated_items += len(records)
        except ValueError as error:  # features the checks could not see (read in full only now), named by the reader
            raise SystemExit(f"error: {error} (the items done so far are kept: rerun to resume)") from None
    elapsed = time.perf_counter() - started

    try:
        predictions = read_predictions(predictions_path, rows)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    order = {(str(r["participant_id"]), int(r["item_index"])): i for i, r in enumerate(rows)}
    predictions.sort(key=lambda p: order.get((p["participant_id"], p["item_index"]), len(order)))
    attach_quotes(predictions, interview_texts(rows))  # each rationale's quotes, looked up in its interview
    try:
        metrics = compute_metrics(
            predictions, cutoff=args.cutoff, seed=generation.seed, n_bootstrap=args.n_bootstrap,
            score_source=generation.score_source, baseline=args.train_mean, text_weight=generation.text_weight,
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
    metrics["evidence"] = None if args.train_mean else evidence_summary(predictions)
    write_json_atomic(out / METRICS, metrics)
    figures = write_figures(predictions, metrics, out, args.cutoff)
    write_report(predictions, metrics, manifest, out, figures)
    print(
        f"CCC {metrics['ccc']:.3f}  RMSE {metrics['rmse']:.3f}  MAE {metrics['mae']:.3f}  "
        f"P/R/F1 {metrics['precision']:.3f}/{metrics['recall']:.3f}/{metrics['f1']:.3f}  "
        f"format failures {metrics['format_failure_rate'] if metrics['format_failure_rate'] is not None else 'n/a'}"
    )
    spread = metrics.get("score_probabilities")
    if spread and spread["calibration"]:
        print(f"score probabilities: ECE {spread['calibration']['ece']:.3f}  Brier {spread['calibration']['brier']:.3f}  "
              f"{spread['total_interval']['level']:.0%} interval coverage {spread['total_interval']['coverage'] or 0:.2f}")
    if generated_items:
        print(f"throughput: {metrics['throughput']['items_per_second']:.2f} items/s, "
              f"{(metrics['throughput']['new_tokens_per_second'] or 0):.1f} new tokens/s")
    if metrics["evidence"] and metrics["evidence"]["quotes"]:
        print(f"evidence quotes: {metrics['evidence']['found']} of {metrics['evidence']['quotes']} found in the "
              f"transcripts; {metrics['evidence']['with_quote']} of {metrics['evidence']['rationales']} rationales quote")
    print(f"report: {out / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
