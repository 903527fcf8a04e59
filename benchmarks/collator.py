#!/usr/bin/env python
"""What building stage-2 batches costs at E-DAIC size, next to a stage-2 training step.

Stage 2 trains on one row per (participant, PHQ item): 275 participants x 8 items, each prompt
holding the participant's whole transcript (~2,000 SmolLM2 tokens for a 20-minute interview). The
frozen LQ-formers' outputs are precomputed once per participant (as ``mllm-dr-train`` does), so a
batch is tokenization and padding only. Measured in one run, on the same rows:

* ``per batch (before)``: every batch tokenizes each of its rows from scratch: the chat template is
  rendered and the transcript encoded per row, as the collator did before rows were tokenized once
  (re-enacted here with the processor's own steps: ``render_prompt``, ``encode_text``,
  ``encode_transcript``, then ``collate``);
* ``tokenize once``: ``mllm_dr.data.tokenize_rows`` over all rows (once per run; a participant's
  transcript is encoded once for its 8 items);
* ``pad only (after)``: ``MllmDrCollator`` over the tokenized rows (every batch of every epoch);
* ``stage-2 step``: one LoRA + MAA-head training step of SmolLM2 (forward, backward, AdamW) on rows of
  the same length, per sample.

Goal: building a batch costs under 5% of the training step it feeds.

    python benchmarks/collator.py            # 275 x 8 rows, ~1,930-token transcripts, SmolLM2-135M
    python benchmarks/collator.py --quick    # 20 participants, tiny tokenizer and backbone: a smoke test

Writes a Markdown table to stdout and ``benchmarks/results/collator.json`` (``--quick``: ``collator.quick.json``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch

from mllm_dr.data import MllmDrCollator, feature_key, tokenize_rows
from mllm_dr.training import ModelArguments, build_config_overrides
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor, format_target

from _common import (
    machine_info,
    markdown_table,
    result_path,
    set_threads,
    smollm2_backbone,
    synthetic_participant,
    synthetic_rationale,
    synthetic_transcript,
    tiny_backbone,
    write_json,
)

MODE = "full"


def build_rows(participants: int, turns: int, seed: int) -> datasets.Dataset:
    """``participants`` x 8 stage-2 rows of synthetic interviews (feature files named, never read)."""
    rows = []
    for number in range(participants):
        pid = str(300 + number)
        participant = synthetic_participant(300 + number, seed)
        transcript = synthetic_transcript(participant, turns, seed)
        for item in range(1, 9):
            rows.append({
                "participant_id": pid, "item_index": item, "item_name": str(item), "transcript": transcript,
                "label": participant.score(item), "rationale": synthetic_rationale(participant, item),
                "audio_files": [f"{pid}_audio.npy"], "video_files": [f"{pid}_video.npy"],
            })  # fmt: skip
    return datasets.Dataset.from_list(rows)


def tokenize_per_row(processor: MllmDrProcessor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pre-restructure collator's tokenization: everything from scratch for every row."""
    samples = []
    for row in rows:
        before, after = processor.render_prompt(row["item_index"], MODE, with_rationale=True)
        ids = processor.expand_placeholders(processor.encode_text(before), MODE)
        ids += processor.encode_transcript(row["transcript"])[0] + processor.encode_text(after)
        answer = processor.encode_text(format_target(row["label"], row["rationale"])) + [processor.tokenizer.eos_token_id]
        samples.append({"input_ids": ids + answer, "labels": [-100] * len(ids) + answer, "prompt_length": len(ids),
                        "transcript_truncated": 0, "score": row["label"]})
    return samples


def timed(function, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 participants, tiny tokenizer and backbone")
    parser.add_argument("--participants", type=int, default=None, help="default 275 (E-DAIC), 20 with --quick")
    parser.add_argument("--turns", type=int, default=140, help="answers per transcript (140: ~1,930 SmolLM2 tokens)")
    parser.add_argument("--batch_size", type=int, default=8, help="collator batch size")
    parser.add_argument("--step_batch_size", type=int, default=2, help="rows per timed training step")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--max_transcript_tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/collator[.quick].json)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    participants = args.participants or (20 if args.quick else 275)
    machine = machine_info(torch.device("cpu"))

    with tempfile.TemporaryDirectory(prefix="mllm-dr-collator-") as tmp:
        backbone = str(tiny_backbone(Path(tmp) / "backbone", args.seed)) if args.quick else str(smollm2_backbone())
        overrides = build_config_overrides(ModelArguments(preset="demo"))
        torch.manual_seed(args.seed)
        model = MllmDrForConditionalGeneration.from_backbone(backbone, **overrides)
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone, model.config, max_transcript_tokens=args.max_transcript_tokens
        )
        dataset = build_rows(participants, args.turns, args.seed)
        rows = dataset.to_list()
        hidden = model.config.text_config.hidden_size
        cache = {feature_key(r, m): torch.zeros(getattr(processor, f"num_{m}_tokens"), hidden)
                 for r in rows for m in ("audio", "video")}  # stage 2: the LQ-formers' outputs, precomputed
        collator = MllmDrCollator(processor, MODE, with_rationale=True, embedding_cache=cache)
        batches = [list(range(i, min(i + args.batch_size, len(rows)))) for i in range(0, len(rows), args.batch_size)]
        tokens = [len(ids) for ids in processor.tokenizer([rows[i * 8]["transcript"] for i in range(participants)],
                                                          add_special_tokens=False)["input_ids"]]
        print(f"{len(rows)} rows, {len(batches)} batches of {args.batch_size}; transcripts "
              f"{min(tokens)}-{max(tokens)} tokens", file=sys.stderr, flush=True)

        def before() -> None:  # every batch, every epoch, from scratch
            for batch in batches:
                samples = tokenize_per_row(processor, [rows[i] for i in batch])
                processor.collate(samples, MODE, padding_side="right", frames_reduced=True, with_labels=True)

        before_s, _ = timed(before)
        print(f"per batch (before): {before_s:.1f} s", file=sys.stderr, flush=True)
        once_s, tokenized = timed(tokenize_rows, dataset, processor, MODE, True, True)
        tokenized_rows = tokenized.to_list()

        def after() -> None:
            for batch in batches:
                collator([tokenized_rows[i] for i in batch])

        after_s, _ = timed(after)
        check = collator([tokenized_rows[i] for i in batches[0]])
        expected = processor.collate(tokenize_per_row(processor, [rows[i] for i in batches[0]]), MODE,
                                     padding_side="right", frames_reduced=True, with_labels=True)
        for key in ("input_ids", "labels", "attention_mask", "prompt_mask", "score_labels"):
            if not torch.equal(check[key], expected[key]):
                raise SystemExit(f"the tokenized rows give another {key} than tokenizing per row")
        print(f"tokenize once: {once_s:.1f} s, pad only (after): {after_s:.1f} s", file=sys.stderr, flush=True)

        # One stage-2 training step on rows of this length (LoRA on q/v + the head, as mllm-dr-train).
        from peft import LoraConfig

        from mllm_dr.checkpoints import DEFAULT_LORA_TARGET, apply_lora

        model.requires_grad_(False)
        peft_model = apply_lora(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                                  target_modules=DEFAULT_LORA_TARGET, bias="none"))
        model.score_head.requires_grad_(True)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        step_batch = collator([tokenized_rows[i * 8] for i in range(args.step_batch_size)])  # different participants
        peft_model.train()
        step_times = []
        for index in range(1 + args.steps):
            started = time.perf_counter()
            out = peft_model(**step_batch, logits_to_keep=1)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if index:
                step_times.append(time.perf_counter() - started)
            print(f"step {index + 1}/{1 + args.steps}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        step_per_sample = statistics.median(step_times) / args.step_batch_size

    per_batch = {"before": before_s / len(batches), "after": after_s / len(batches)}
    step_per_batch = step_per_sample * args.batch_size
    result = {
        "command": " ".join(["python benchmarks/collator.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "date": time.strftime("%Y-%m-%d"),
        "rows": len(rows),
        "participants": participants,
        "batch_size": args.batch_size,
        "transcript_tokens": {"min": min(tokens), "max": max(tokens), "median": statistics.median(tokens)},
        "sequence_length_of_step_batch": int(step_batch["input_ids"].shape[1]),
        "seconds": {"pass_before": before_s, "tokenize_once": once_s, "pass_after": after_s,
                    "step_median": statistics.median(step_times), "steps": step_times},
        "per_batch_seconds": per_batch,
        "step_seconds_per_batch": step_per_batch,
        "share_of_step": {k: v / step_per_batch for k, v in per_batch.items()},
        "tokenize_once_share_of_one_epoch_of_steps": once_s / (step_per_sample * len(rows)),
        "speedup_per_pass": before_s / after_s,
    }
    table = markdown_table(
        ["what", "seconds", "per batch of 8 (s)", "share of a stage-2 step of 8"],
        [
            ["collator pass, tokenizing every batch (before)", before_s, per_batch["before"], result["share_of_step"]["before"]],
            ["tokenize once per run (`tokenize_rows`)", once_s, None, None],
            ["collator pass over tokenized rows (after)", after_s, per_batch["after"], result["share_of_step"]["after"]],
            ["stage-2 step (median)", statistics.median(step_times), step_per_batch, 1.0],
        ],
    )
    print(table)
    print(f"\none pass: {result['speedup_per_pass']:.0f}x faster; tokenizing once costs "
          f"{result['tokenize_once_share_of_one_epoch_of_steps']:.2%} of one epoch of steps")
    write_json(result_path("collator", args.quick, args.output), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
