#!/usr/bin/env python
"""Evaluation throughput of MLlm-DR against the plain backbone's batched ``generate``.

Why: evaluation writes a rationale for every (participant, PHQ item), 8 prompts per participant that
share a long transcript. MLlm-DR's prompts are longer (feature placeholders), its prefill also runs
the two LQ-formers and the MAA head, and the evaluation (``mllm-dr-evaluate``) adds rendering,
feature reading, decoding and strict parsing. Its prefix reuse (prefill the participant's shared
system prompt + features + transcript once, copy the KV cache to the 8 items) should more than pay
for all that.

Compared on the same participants, the same batch size (8 = one participant's items), greedy
decoding and exactly K new tokens per item (``min_new_tokens = max_new_tokens = K``, so both sides
generate the same number of tokens whatever the text):

* ``backbone``: ``AutoModelForCausalLM.from_pretrained(backbone).generate`` on the text-mode prompts
  the processor renders (left padded), timed with the processor call and the decoding;
* ``mllm_dr``: an untrained MLlm-DR (``from_backbone``, demo-preset LQ-formers, mode ``full`` with
  small random features) through ``mllm_dr.inference.generate_items`` (what ``mllm-dr-evaluate``
  runs per batch: feature reading, collator, generate, head score, decode, parse), with
  ``--no_prefix_reuse`` and with prefix reuse (the default of ``mllm-dr-evaluate``).

Reports items/s and new tokens/s per path and their ratios to the backbone, for a prefill-heavy
(K=16) and a decode-heavy (K=64) setting. Goals: at least 0.9 of the backbone without prefix reuse,
above 1.0 with it. The three paths are interleaved batch by batch (rotating order) against drift.

    python benchmarks/eval_throughput.py            # SmolLM2-135M, 2 participants x 8 items, ~1,000-token transcripts
    python benchmarks/eval_throughput.py --quick    # tiny random backbone, 1 participant, K=4: a smoke test

Writes a Markdown report to stdout and JSON to ``benchmarks/results/eval_throughput.json``
(``--quick``: ``eval_throughput.quick.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from mllm_dr.inference import GenerationArguments, generate_items, head_is_trained, make_batches
from mllm_dr.training import ModelArguments, build_config_overrides
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from _common import (
    machine_info,
    markdown_table,
    resolve_device,
    result_path,
    set_threads,
    smollm2_backbone,
    sync,
    synthetic_participant,
    synthetic_transcript,
    tiny_backbone,
    write_features,
    write_json,
)

PATHS = ("backbone", "mllm_dr_no_reuse", "mllm_dr_reuse")
PATH_NAMES = {
    "backbone": "plain backbone `generate` (text prompts)",
    "mllm_dr_no_reuse": "MLlm-DR `generate_items`, no prefix reuse",
    "mllm_dr_reuse": "MLlm-DR `generate_items`, prefix reuse",
}
GOALS = {"mllm_dr_no_reuse": (0.9, ">="), "mllm_dr_reuse": (1.0, ">")}
MODE = "full"  # what mllm-dr-evaluate uses for a stage-2 model with both modalities


# ----------------------------------------------------------------------------- the two sides
def evaluation_args(new_tokens: int, batch_size: int, prefix_reuse: bool) -> GenerationArguments:
    """The evaluation's generation settings (``mllm-dr-evaluate``'s defaults), greedy, K new tokens."""
    return GenerationArguments(greedy=True, max_new_tokens=new_tokens, batch_size=batch_size, prefix_reuse=prefix_reuse)


def force_new_tokens(model: MllmDrForConditionalGeneration, new_tokens: int) -> None:
    """``generate_items`` passes ``max_new_tokens``; the minimum comes from the model's generation
    config, so EOS cannot end an item early and both sides generate exactly K tokens."""
    model.generation_config.min_new_tokens = new_tokens


def run_mllm_dr(model, processor, rows: list[dict[str, Any]], settings: GenerationArguments) -> tuple[int, list[str]]:
    """One batch through ``mllm_dr.inference.generate_items``, as the evaluation runs it:
    (new tokens, generated texts)."""
    records, counted = generate_items(model, processor, rows, MODE, settings, head_is_trained(model))
    return counted, [r["generated_text"] for r in records]


@torch.no_grad()
def run_backbone(lm, processor: MllmDrProcessor, rows: list[dict[str, Any]], new_tokens: int) -> tuple[int, list[str]]:
    """The baseline batch: text-mode prompts (left padded), plain greedy ``generate`` of K tokens, decode."""
    batch = processor(
        [r["transcript"] for r in rows], [int(r["item_index"]) for r in rows], mode="text", padding_side="left"
    )
    device = next(lm.parameters()).device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    tokenizer = processor.tokenizer
    out = lm.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, input_ids.shape[1] :]
    texts = processor.batch_decode(new, skip_special_tokens=True)
    return int(new.numel()), texts


# ----------------------------------------------------------------------------- measurement
def measure(
    runners: dict[str, Any], batches: list[list[dict[str, Any]]], repeats: int, device: torch.device, log: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, list[list[str]]]]:
    """Every batch through every path, the order rotating per batch and repeat; per-path totals."""
    totals: dict[str, dict[str, Any]] = {
        p: {"seconds": 0.0, "items": 0, "new_tokens": 0, "batch_seconds": []} for p in PATHS
    }
    texts: dict[str, list[list[str]]] = defaultdict(list)
    turn = 0
    for repeat in range(repeats):
        for index, rows in enumerate(batches):
            order = PATHS[turn % len(PATHS) :] + PATHS[: turn % len(PATHS)]
            turn += 1
            for path in order:
                sync(device)
                started = time.perf_counter()
                tokens, generated = runners[path](rows)
                sync(device)
                elapsed = time.perf_counter() - started
                entry = totals[path]
                entry["seconds"] += elapsed
                entry["items"] += len(rows)
                entry["new_tokens"] += tokens
                entry["batch_seconds"].append(elapsed)
                if repeat == 0:
                    texts[path].append(generated)
                log(
                    f"repeat {repeat + 1}/{repeats} batch {index + 1}/{len(batches)} {path}: "
                    f"{elapsed:.2f} s, {tokens} tokens"
                )
    return totals, texts


def prompt_lengths(processor: MllmDrProcessor, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Padded prompt widths of one batch in both modes, and the part the items share (prefix reuse)."""
    text = processor([r["transcript"] for r in rows], [int(r["item_index"]) for r in rows], mode="text")
    arrays = {m: [torch.zeros(4, getattr(processor, f"{m}_feature_dim")) for _ in rows] for m in ("audio", "video")}
    full = processor(
        [r["transcript"] for r in rows],
        [int(r["item_index"]) for r in rows],
        audio_features=arrays["audio"],
        video_features=arrays["video"],
        mode=MODE,
    )
    ids = [row[mask.bool()] for row, mask in zip(full["input_ids"], full["attention_mask"], strict=True)]
    common = 0
    shortest = min(len(r) for r in ids)
    while common < shortest - 1 and all(bool(r[common] == ids[0][common]) for r in ids[1:]):
        common += 1
    return {
        "text_mode_padded": int(text["input_ids"].shape[1]),
        "full_mode_padded": int(full["input_ids"].shape[1]),
        "full_mode_shared_prefix": common,
    }


# ----------------------------------------------------------------------------- report
def render(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    where = (
        m.get("gpu") or f"CPU {m['cpu_model']} ({m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads)"
    )
    start = m.get("load_average_at_start") or []
    load = f"load average at start {', '.join(f'{x:.2f}' for x in start)}"
    if m["device"] == "cpu" and start and start[0] > 0.5:
        load += " (**other processes were running: CPU timings are unreliable, rerun on a quiet machine**)"
    p = c["prompt_lengths"]
    rows = []
    for setting in result["settings"]:
        for path in PATHS:
            r = setting["paths"][path]
            goal = GOALS.get(path)
            verdict = ""
            if goal is not None:
                ok = r["ratio_to_backbone"] >= goal[0] if goal[1] == ">=" else r["ratio_to_backbone"] > goal[0]
                verdict = f"{goal[1]} {goal[0]}: **{'met' if ok else 'NOT met'}**"
            rows.append(
                [
                    setting["new_tokens"],
                    PATH_NAMES[path],
                    r["items"],
                    r["new_tokens"],
                    r["seconds"],
                    r["items_per_s"],
                    r["new_tokens_per_s"],
                    f"**{r['ratio_to_backbone']:.3f}**",
                    verdict,
                ]
            )
    agreement = ", ".join(f"K={s['new_tokens']}: {s['reuse_matches_no_reuse']:.0%}" for s in result["settings"])
    lines = [
        "## Evaluation throughput: MLlm-DR vs the plain backbone"
        + (" (--quick smoke configuration)" if c["quick"] else ""),
        "",
        (
            f"Backbone: {c['backbone']}; {c['dtype']} on {where}; {load}. {c['participants']} participant(s) x "
            f"{c['items_per_participant']} PHQ items, batch {c['batch_size']}, transcript ~{c['transcript_tokens']} "
            f"tokens (budget {c['max_transcript_tokens']}); prompt widths: text mode {p['text_mode_padded']}, "
            "full mode "
            f"{p['full_mode_padded']} (shared prefix {p['full_mode_shared_prefix']}); random features "
            f"{c['audio_frames']} audio / {c['video_frames']} video frames; greedy, exactly K new tokens per item; "
            f"{c['repeats']} repeat(s) after a short warm-up, paths interleaved."
        ),
        "",
        markdown_table(
            ["K", "path", "items", "new tokens", "seconds", "items/s", "new tokens/s", "ratio to backbone", "goal"],
            rows,
        ),
        "",
        (
            "Times include everything the evaluation does per batch (MLlm-DR: feature reading, processor, LQ-formers, "
            "generate, head score, decoding, parsing; backbone: processor, generate, decoding). Equal token counts "
            "make "
            "the items/s and tokens/s ratios the same number. Greedy texts with and without prefix reuse agree on "
            f"{agreement} of items (float differences between a batched and a cached prefill can flip a token)."
        ),
    ]
    if c["quick"]:
        lines += ["", "A --quick run uses a tiny random backbone and a short transcript: its numbers test nothing."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny random backbone, 1 participant, short transcript, K=4"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--backbone", default=None, help="causal-LM folder (default: the prepared SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--participants", type=int, default=None, help="default 2 (--quick 1)")
    parser.add_argument(
        "--turns", type=int, default=None, help="synthetic transcript turns (default 74 = ~1,000 SmolLM2 tokens)"
    )
    parser.add_argument("--max_transcript_tokens", type=int, default=None, help="default 1024")
    parser.add_argument("--new_tokens", type=int, nargs="+", default=None, help="K values (default 16 64; --quick 4)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="passes over all batches per K")
    parser.add_argument(
        "--audio_frames", type=int, default=None, help="random HuBERT frames per participant (default 200)"
    )
    parser.add_argument(
        "--video_frames", type=int, default=None, help="random ResNet frames per participant (default 120)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/eval_throughput.json)")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {
            "participants": 1,
            "turns": 8,
            "max_transcript_tokens": 64,
            "new_tokens": [4],
            "audio_frames": 32,
            "video_frames": 32,
        }
    else:
        defaults = {
            "participants": 2,
            "turns": 74,
            "max_transcript_tokens": 1024,
            "new_tokens": [16, 64],
            "audio_frames": 200,
            "video_frames": 120,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.participants < 1 or args.batch_size < 2 or args.repeats < 1 or min(args.new_tokens) < 1:
        parser.error(
            "--participants, --repeats and --new_tokens must be >= 1, --batch_size >= 2 (prefix reuse needs 2+)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    machine = machine_info(device)

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mllm-dr-eval-throughput-") as tmp:
        tmp_dir = Path(tmp)
        if args.quick:
            backbone, backbone_name = (
                str(tiny_backbone(tmp_dir / "backbone", args.seed)),
                "tiny random Llama (hidden 64, 2 layers)",
            )
        else:
            backbone = str(args.backbone or smollm2_backbone())
            backbone_name = backbone if args.backbone else "SmolLM2-135M-Instruct"

        from transformers import AutoModelForCausalLM

        log("building the untrained MLlm-DR (demo preset) and the plain backbone")
        model = MllmDrForConditionalGeneration.from_backbone(
            backbone, **build_config_overrides(ModelArguments(preset="demo"))
        )
        model.to(device).eval()
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone, model.config, max_transcript_tokens=args.max_transcript_tokens
        )
        lm = AutoModelForCausalLM.from_pretrained(backbone).to(device).eval()
        dtype = next(lm.parameters()).dtype

        rows: list[dict[str, Any]] = []
        transcript_tokens = []
        for number in range(args.participants):
            pid = 300 + number
            participant = synthetic_participant(pid, args.seed)
            transcript = synthetic_transcript(participant, args.turns, args.seed)
            transcript_tokens.append(len(processor.encode_text(transcript)))
            audio = write_features(
                tmp_dir, f"{pid}_audio", args.audio_frames, processor.audio_feature_dim, args.seed + 2 * number
            )
            video = write_features(
                tmp_dir, f"{pid}_video", args.video_frames, processor.video_feature_dim, args.seed + 2 * number + 1
            )
            for item in processor.items[:8]:
                rows.append(
                    {
                        "participant_id": str(pid),
                        "item_index": item.index,
                        "item_name": item.name,
                        "transcript": transcript,
                        "audio_files": [audio],
                        "video_files": [video],
                        "label": participant.score(item.index),
                        "total": participant.total,
                        "gender": participant.gender,
                    }
                )
        # With prefix reuse the evaluation never mixes participants in a batch; at 8 items per
        # participant and batch 8 both groupings coincide, and every path sees the same batches.
        batches = make_batches(rows, args.batch_size, by_participant=True)
        lengths = prompt_lengths(processor, batches[0])

        def runners_for(new_tokens: int) -> dict[str, Any]:
            no_reuse = evaluation_args(new_tokens, args.batch_size, prefix_reuse=False)
            reuse = evaluation_args(new_tokens, args.batch_size, prefix_reuse=True)
            force_new_tokens(model, new_tokens)
            return {
                "backbone": lambda batch: run_backbone(lm, processor, batch, new_tokens),
                "mllm_dr_no_reuse": lambda batch: run_mllm_dr(model, processor, batch, no_reuse),
                "mllm_dr_reuse": lambda batch: run_mllm_dr(model, processor, batch, reuse),
            }

        # Warm-up: every path once on a short-prompt batch (allocator, kernels, generation plumbing).
        log("warm-up: every path on a short-prompt batch, K=2")
        budget = processor.max_transcript_tokens
        processor.max_transcript_tokens = min(budget, 32)
        try:
            warm = runners_for(2)
            for path in PATHS:
                warm[path](batches[0])
        finally:
            processor.max_transcript_tokens = budget

        settings = []
        for new_tokens in args.new_tokens:
            log(f"K={new_tokens}: {len(batches)} batch(es) x {len(PATHS)} paths x {args.repeats} repeat(s)")
            totals, texts = measure(runners_for(new_tokens), batches, args.repeats, device, log)
            expected = new_tokens * len(rows) * args.repeats
            for path, entry in totals.items():
                if entry["new_tokens"] != expected:
                    raise RuntimeError(
                        f"{path} generated {entry['new_tokens']} tokens, expected {expected}: K was not forced"
                    )
                entry["items_per_s"] = entry["items"] / entry["seconds"]
                entry["new_tokens_per_s"] = entry["new_tokens"] / entry["seconds"]
            for entry in totals.values():
                entry["ratio_to_backbone"] = entry["items_per_s"] / totals["backbone"]["items_per_s"]
            pairs = [
                (a, b)
                for batch_a, batch_b in zip(texts["mllm_dr_reuse"], texts["mllm_dr_no_reuse"], strict=True)
                for a, b in zip(batch_a, batch_b, strict=True)
            ]
            settings.append(
                {
                    "new_tokens": new_tokens,
                    "paths": totals,
                    "goals": {
                        path: {
                            "threshold": threshold,
                            "comparison": comparison,
                            "met": (totals[path]["ratio_to_backbone"] >= threshold)
                            if comparison == ">="
                            else (totals[path]["ratio_to_backbone"] > threshold),
                        }
                        for path, (threshold, comparison) in GOALS.items()
                    },
                    "reuse_matches_no_reuse": sum(a == b for a, b in pairs) / len(pairs),
                }
            )

    result = {
        "benchmark": "eval_throughput",
        "config": {
            "quick": args.quick,
            "backbone": backbone_name,
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(device),
            "participants": args.participants,
            "items_per_participant": 8,
            "batch_size": args.batch_size,
            "turns": args.turns,
            "transcript_tokens": round(sum(transcript_tokens) / len(transcript_tokens)),
            "max_transcript_tokens": args.max_transcript_tokens,
            "prompt_lengths": lengths,
            "audio_frames": args.audio_frames,
            "video_frames": args.video_frames,
            "lqformer_preset": "demo",
            "decoding": "greedy (evaluate_mllm_dr.py --greedy), min_new_tokens = max_new_tokens = K",
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "seed": args.seed,
        },
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "settings": settings,
        "wall_s": time.perf_counter() - began,
    }
    output = result_path("eval_throughput", args.quick, args.output)
    write_json(output, result)
    print(render(result))
    print(f"\n(JSON: {output}; wall time {result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
