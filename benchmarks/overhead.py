#!/usr/bin/env python
"""Overhead of MLlm-DR over the paper's text-only LoRA baseline, at realistic prompt length.

Why: E-DAIC transcripts run to thousands of tokens, and MLlm-DR adds to the LLM two LQ-formers,
two projectors, an MAA score head, the placeholder tokens and a joint (CE + MSE) loss. The method
is only worth its extra modalities if that costs little next to the LLM itself. Two measurements:

1. **Step-time ratio**: one stage-2 training step (LoRA r=16 on q_proj/v_proj + the MAA head, frozen
   LQ-formers whose outputs are cached per participant as ``train.py`` does, prompt mode ``full``,
   joint loss) divided by one step of the text-only LoRA baseline (no LQ-formers, mode ``text``,
   LoRA only, LM loss only) on the same backbone, transcript, batch size and rationale target.
   A step is forward + backward + gradient clipping + AdamW (the Trainer's default, fused) in
   ``model.train()``. Warm-up steps, then the median of N timed steps per model, the two models
   interleaved (A B, B A, ...) so that drift of a shared machine hits both alike.
   Goal: at most 1.10 (the paper's own figure: 3.0 h vs 2.5 h = 1.2).
2. **Forward-time share** of the LQ-formers, projectors and MAA head when they do run (features
   passed, no cache), timed per module with forward hooks (synchronised on CUDA), in the stage-2
   training configuration (train mode, autograd on, joint loss) and as an inference prefill (eval,
   ``inference_mode``, prompt only). Cross-check: the same forward with cached embeddings; the
   difference is what the LQ-formers + projectors cost end to end. Goal: under 5% at LLaMA-3-8B
   geometry on a GPU (``--device cuda --paper_geometry``); the CPU figure for SmolLM2 is reported too.

    python benchmarks/overhead.py                                   # SmolLM2-135M, CPU, ~2,000-token transcript
    python benchmarks/overhead.py --quick                           # tiny random backbone: a smoke test
    python benchmarks/overhead.py --device cuda --paper_geometry    # random LLaMA-3-8B geometry, bf16, one GPU

Writes a Markdown report to stdout and JSON to ``benchmarks/results/overhead.json`` (``--quick``:
``overhead.quick.json``; ``--paper_geometry``: ``overhead_paper_geometry.json``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from configuration_mllm_dr import MllmDrConfig
from mllm_dr.checkpoints import DEFAULT_LORA_TARGET, apply_lora
from mllm_dr.data import MllmDrCollator, read_features
from mllm_dr.training import ModelArguments, build_config_overrides, parameter_group, precompute_modality_embeddings
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from _common import (
    machine_info,
    make_tokenizer,
    markdown_table,
    resolve_device,
    result_path,
    set_threads,
    smollm2_backbone,
    smollm2_dir,
    summary,
    sync,
    synthetic_participant,
    synthetic_rationale,
    synthetic_transcript,
    tiny_backbone,
    write_features,
    write_json,
)

GOAL_RATIO = 1.10
PAPER_RATIO = 3.0 / 2.5
GOAL_SHARE = 0.05
PARTS = ("audio_lqformer", "video_lqformer", "audio_projector", "video_projector", "score_head")
LEARNING_RATES = {"lora": 1e-5, "head": 1e-4}  # train.py's defaults (the authors' values)


# ----------------------------------------------------------------------------- models
def build_language_model_from_config(device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A random-weight causal LM with the paper's LLaMA-3-8B geometry, built directly on ``device``
    in ``dtype`` (no download; timing does not depend on the weights' values)."""
    from transformers import AutoModelForCausalLM

    text_config = MllmDrConfig.paper_preset().text_config
    with torch.device(device):
        return AutoModelForCausalLM.from_config(text_config, dtype=dtype)


def paper_tokenizer(path: str | None):
    """Any tokenizer serves the paper-geometry run: the prompt length is set by ``max_transcript_tokens``,
    not by the vocabulary. SmolLM2's (49k ids, inside LLaMA-3's 128k) when present, else a tiny one."""
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path), str(path)
    smollm2 = smollm2_dir()
    if (smollm2 / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(smollm2)), str(smollm2)
    return make_tokenizer(), "in-process byte-level BPE (~400 tokens)"


def build_model(
    args: argparse.Namespace, backbone: str | None, multimodal: bool, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, MllmDrForConditionalGeneration, MllmDrProcessor, list[nn.Parameter]]:
    """(PEFT model, unwrapped model, processor, trainable parameters) as ``train.py --stage 2`` builds
    them: MLlm-DR (multimodal) or the text-only LoRA baseline (``--text_only``, LM loss only)."""
    from peft import LoraConfig

    torch.manual_seed(args.seed)  # both models get the same LoRA initialisation
    preset = "paper" if args.paper_geometry else "demo"
    overrides = build_config_overrides(ModelArguments(preset=preset, use_audio=multimodal, use_video=multimodal))
    if args.paper_geometry:
        tokenizer, _ = paper_tokenizer(args.tokenizer)
        language_model = build_language_model_from_config(device, dtype)
        with torch.device(device):
            model = MllmDrForConditionalGeneration.from_backbone(language_model, tokenizer=tokenizer, **overrides)
    else:
        model = MllmDrForConditionalGeneration.from_backbone(backbone, **overrides)
    model.to(device=device, dtype=dtype)
    processor = MllmDrProcessor.from_config(
        model.tokenizer_for_backbone, model.config, max_transcript_tokens=args.max_transcript_tokens
    )
    model.requires_grad_(False)
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=DEFAULT_LORA_TARGET,
        bias="none",
    )
    peft_model = apply_lora(model, lora)
    if multimodal:
        model.score_head.requires_grad_(True)  # stage 2 trains the MAA head (joint loss)
    check_trainable(model, multimodal)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, model, processor, trainable


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The Trainer's default optimizer (class and kwargs from ``TrainingArguments``) with
    ``MllmDrTrainer``'s per-group learning rates."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(output_dir=tmp, report_to=[])
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    kwargs.pop("lr", None)
    groups: dict[str, list[nn.Parameter]] = defaultdict(list)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[parameter_group(name)].append(parameter)
    param_groups = [{"params": ps, "lr": LEARNING_RATES.get(g, 1e-5), "weight_decay": 0.0} for g, ps in groups.items()]
    return optimizer_cls(param_groups, **kwargs)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    fused = optimizer.defaults.get("fused")
    return f"{type(optimizer).__name__}{' (fused)' if fused else ''}, the Trainer's default, clip-norm 1.0"


def check_trainable(base: MllmDrForConditionalGeneration, multimodal: bool) -> None:
    """Exactly what train.py's stage 2 trains (LoRA A/B of the LLM, plus the head with the joint loss)."""
    import re

    patterns = [r"language_model\..*lora_[AB]\..*"] + ([r"score_head\..*"] if multimodal else [])
    names = [n for n, p in base.named_parameters() if p.requires_grad]
    stray = [n for n in names if not any(re.fullmatch(pattern, n) for pattern in patterns)]
    if stray or not names:
        raise RuntimeError(f"unexpected trainable parameters: {stray[:5]} ({len(stray)} of {len(names)})")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- measurement 1: step time
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainable: list[nn.Parameter],
    batch: dict[str, Any],
    compute_score: bool,
) -> torch.Tensor:
    """One optimisation step as ``MllmDrTrainer`` takes it (``logits_to_keep=1``: the CE runs on the
    answer tokens only; the head only where its loss is trained), clipping at the Trainer's 1.0."""
    out = model(**batch, logits_to_keep=1, compute_score=compute_score)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


def time_steps(
    runners: dict[str, Any], warmup: int, steps: int, device: torch.device, log: Any
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Warm-up then timed steps, the two models interleaved (A B, B A, A B, ...)."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    for index in range(warmup + steps):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            sync(device)
            started = time.perf_counter()
            loss = runners[name]()
            sync(device)
            elapsed = time.perf_counter() - started
            losses[name].append(float(loss))
            phase = "warm-up" if index < warmup else "timed"
            log(f"step {index + 1}/{warmup + steps} ({phase}) {name}: {elapsed:.3f} s, loss {float(loss):.4f}")
            if index >= warmup:
                times[name].append(elapsed)
    return times, losses


# ----------------------------------------------------------------------------- measurement 2: forward share
class ModuleTimer:
    """Wall time spent inside given modules, from forward pre-/post-hooks (synchronised on CUDA so a
    module's time is its own kernels', not whatever was queued before it)."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            sync(self.device)
            self._started[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            sync(self.device)
            self.totals[name] += time.perf_counter() - self._started.pop(name)

        return hook

    def reset(self) -> None:
        self.totals = defaultdict(float)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure_share(
    peft_model: nn.Module,
    base: MllmDrForConditionalGeneration,
    batches: dict[str, dict[str, Any]],
    train_mode: bool,
    repeats: int,
    device: torch.device,
    log: Any,
) -> dict[str, Any]:
    """Forward with features (LQ-formers run) under hooks, and the same forward with cached embeddings."""
    peft_model.train(train_mode)
    modules = {name: getattr(base, name) for name in PARTS}
    context = torch.enable_grad if train_mode else torch.inference_mode
    label = "train" if train_mode else "inference"

    def forward(batch: dict[str, Any]) -> None:
        with context():  # train mode: the joint loss is part of the forward; no backward here
            out = peft_model(**batch, logits_to_keep=1, compute_score=True)
        del out

    totals, parts, cached = [], defaultdict(list), []
    timer = ModuleTimer(modules, device)
    try:
        for index in range(repeats + 1):  # the first pass is a warm-up
            timer.reset()
            sync(device)
            started = time.perf_counter()
            forward(batches["features"])
            sync(device)
            total = time.perf_counter() - started
            if index:
                totals.append(total)
                for name in PARTS:
                    parts[name].append(timer.totals.get(name, 0.0))
            log(f"share ({label}) {'timed' if index else 'warm-up'} forward with features: {total:.3f} s")
    finally:
        timer.remove()
    for index in range(repeats + 1):
        sync(device)
        started = time.perf_counter()
        forward(batches["cached"])
        sync(device)
        elapsed = time.perf_counter() - started
        if index:
            cached.append(elapsed)
        log(f"share ({label}) {'timed' if index else 'warm-up'} forward with cached embeddings: {elapsed:.3f} s")
    total_median = statistics.median(totals)
    part_medians = {name: statistics.median(values) for name, values in parts.items()}
    # Share per repeat, then its median (robust to one slow repeat on a shared machine).
    per_repeat_share = [sum(parts[n][i] for n in PARTS) / totals[i] for i in range(len(totals))]
    groups = {
        "lqformers": ("audio_lqformer", "video_lqformer"),
        "projectors": ("audio_projector", "video_projector"),
        "score_head": ("score_head",),
    }
    cached_median = statistics.median(cached)
    return {
        "mode": label,
        "forward_with_features_s": summary(totals),
        "forward_with_cached_embeddings_s": summary(cached),
        "part_s_median": part_medians,
        "part_share": {name: part_medians[name] / total_median for name in PARTS},
        "group_share": {g: sum(part_medians[n] for n in ns) / total_median for g, ns in groups.items()},
        "total_share": sum(part_medians.values()) / total_median,
        "total_share_median_per_repeat": statistics.median(per_repeat_share),
        "cross_check_share_by_difference": (total_median - cached_median) / total_median,
        "sequence_length": int(batches["features"]["input_ids"].shape[1]),
    }


# ----------------------------------------------------------------------------- report
MODEL_NAMES = {
    "stage2": "MLlm-DR stage 2 (cached LQ outputs, joint loss)",
    "text_lora": "text-only LoRA (LM loss)",
}
SHARE_NAMES = {"train": "train (train mode, joint loss, autograd)", "inference": "inference (eval prefill)"}


def load_note(machine: dict[str, Any], at_end: list[float] | None) -> str:
    """Load averages at start and end, with a warning when other work competed for the CPU."""
    start = machine.get("load_average_at_start") or []

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    text = f"load average at start {fmt(start)}, at end {fmt(at_end or [])}"
    if machine["device"] == "cpu" and start and start[0] > 0.5:
        text += " (**other processes were running: CPU timings are unreliable, rerun on a quiet machine**)"
    return text


def render(result: dict[str, Any]) -> str:
    m, c, st = result["machine"], result["config"], result["step_time"]
    where = (
        m.get("gpu") or f"CPU {m['cpu_model']} ({m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads)"
    )
    ratio = st["ratio_of_medians"]
    step_rows = [
        [
            MODEL_NAMES[key],
            st[key]["sequence_length"],
            st[key]["answer_tokens"],
            f"{st[key]['trainable_parameters']:,}",
            st[key]["seconds"]["median"],
            st[key]["seconds"]["min"],
            st[key]["seconds"]["max"],
        ]
        for key in ("stage2", "text_lora")
    ]
    share_rows = [
        [
            SHARE_NAMES[s["mode"]],
            s["sequence_length"],
            s["forward_with_features_s"]["median"],
            f"{s['group_share']['lqformers']:.2%}",
            f"{s['group_share']['projectors']:.2%}",
            f"{s['group_share']['score_head']:.2%}",
            f"**{s['total_share']:.2%}**",
            f"{s['cross_check_share_by_difference']:.2%}",
            s["forward_with_cached_embeddings_s"]["median"],
        ]
        for s in result["forward_share"]
    ]
    if c["paper_geometry"]:
        worst = max(s["total_share"] for s in result["forward_share"])
        share_goal = f": **{'met' if worst < GOAL_SHARE else 'NOT met'}** here (largest share {worst:.2%})."
    else:
        share_goal = " (not this configuration: see `--device cuda --paper_geometry`)."
    lines = [
        "## Overhead of MLlm-DR over text-only LoRA" + (" (--quick smoke configuration)" if c["quick"] else ""),
        "",
        (
            f"Backbone: {c['backbone']}; {c['dtype']} on {where}; {load_note(m, result['load_average_at_end'])}. "
            f"Batch {c['batch_size']}; transcript {c['transcript_tokens']} tokens "
            f"(budget {c['max_transcript_tokens']}); "
            f"LQ-formers: {c['lqformer_preset']} preset, {c['audio_frames']} audio / {c['video_frames']} video frames "
            f"(after the frame policy). LoRA r={c['lora_r']}, alpha {c['lora_alpha']}, dropout {c['lora_dropout']} on "
            f"`{DEFAULT_LORA_TARGET}`; {c['optimizer']}; {c['warmup']} warm-up + {c['steps']} timed steps per model, "
            "interleaved."
        ),
        "",
        markdown_table(
            ["model", "sequence (tokens)", "answer tokens", "trainable params", "step s (median)", "min", "max"],
            step_rows,
        ),
        "",
        (
            f"**Step-time ratio (stage 2 / text-only LoRA): {ratio:.3f}** (median of per-pair ratios "
            f"{st['paired_ratio_median']:.3f}); goal <= {GOAL_RATIO}: "
            f"**{'met' if ratio <= GOAL_RATIO else 'NOT met'}**; "
            f"the paper's 3.0 h / 2.5 h = {PAPER_RATIO:.2f}. The frozen LQ-formers' outputs were computed once per "
            f"participant in {result['precompute_s']:.3f} s (outside the steps, as train.py does)."
        ),
        "",
        markdown_table(
            [
                "forward",
                "sequence",
                "with features s",
                "LQ-formers",
                "projectors",
                "MAA head",
                "total share",
                "share by difference",
                "cached s",
            ],
            share_rows,
        ),
        "",
        (
            "Shares are of the whole forward (LLM included) with features passed, timed with forward hooks; 'share by "
            "difference' = 1 - (forward with cached embeddings) / (forward with features), a hook-free cross-check "
            "(it also counts the feature padding and placeholder insertion, and is noisier). "
            f"Goal: under {GOAL_SHARE:.0%} at LLaMA-3-8B geometry on a GPU{share_goal}"
        ),
    ]
    if result.get("peak_gpu_memory_gib") is not None:
        lines += ["", f"Peak GPU memory: {result['peak_gpu_memory_gib']:.1f} GiB."]
    if c["quick"]:
        lines += ["", "A --quick run uses a tiny random backbone and a short transcript: its numbers test nothing."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny random backbone, short transcript, 1 warm-up + 2 steps"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--paper_geometry",
        action="store_true",
        help="random-weight LLaMA-3-8B geometry + the paper's LQ-formers, bf16 (needs --device cuda)",
    )
    parser.add_argument(
        "--backbone", default=None, help="causal-LM folder (default: the prepared SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="--paper_geometry only: tokenizer folder (default: SmolLM2's)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="auto: float32 on CPU (the demo's), bfloat16 with --paper_geometry",
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument(
        "--turns", type=int, default=None, help="synthetic transcript turns (default 140 = ~1,930 SmolLM2 tokens)"
    )
    parser.add_argument("--max_transcript_tokens", type=int, default=None, help="default 2048")
    parser.add_argument(
        "--audio_frames",
        type=int,
        default=None,
        help="default: the preset's max_frames (what the uniform policy keeps)",
    )
    parser.add_argument("--video_frames", type=int, default=None, help="default: the preset's max_frames")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per model (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 8)")
    parser.add_argument(
        "--share_repeats", type=int, default=None, help="timed forwards per share configuration (default 3)"
    )
    parser.add_argument("--share_modes", nargs="+", default=["train", "inference"], choices=["train", "inference"])
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--lora_alpha", type=int, default=32)
    parser.add_argument("--lora_dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/overhead*.json)")
    args = parser.parse_args(argv)
    if args.paper_geometry and args.quick:
        parser.error("--paper_geometry and --quick exclude each other")
    if args.paper_geometry and args.device != "cuda":
        parser.error(
            "--paper_geometry builds two random 8B LLaMA-3-geometry models in bf16 (~16 GB each) and trains them: "
            "it needs --device cuda (one GPU with ~60 GB free)"
        )
    if args.quick:
        defaults = {
            "turns": 8,
            "max_transcript_tokens": 96,
            "audio_frames": 64,
            "video_frames": 64,
            "warmup": 1,
            "steps": 2,
            "share_repeats": 1,
        }
    else:
        defaults = {"turns": 140, "max_transcript_tokens": 2048, "warmup": 2, "steps": 8, "share_repeats": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.share_repeats < 1:
        parser.error("--batch_size, --steps and --share_repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if args.paper_geometry else torch.float32
    )
    machine = machine_info(device)

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mllm-dr-overhead-") as tmp:
        tmp_dir = Path(tmp)
        tokenizer_name = None
        if args.paper_geometry:
            backbone, backbone_name = None, "random-weight LLaMA-3-8B geometry (paper_preset text_config)"
            tokenizer_name = paper_tokenizer(args.tokenizer)[1]
        elif args.quick:
            backbone = str(tiny_backbone(tmp_dir / "backbone", args.seed))
            backbone_name = "tiny random Llama (hidden 64, 2 layers)"
        else:
            backbone = str(args.backbone or smollm2_backbone())
            backbone_name = backbone if args.backbone else "SmolLM2-135M-Instruct"

        log("building MLlm-DR (stage 2) and the text-only LoRA baseline")
        stage2, stage2_base, processor, stage2_trainable = build_model(args, backbone, True, device, dtype)
        text_lora, text_base, text_processor, text_trainable = build_model(args, backbone, False, device, dtype)
        audio_cfg, video_cfg = stage2_base.config.audio_config, stage2_base.config.video_config
        audio_frames = args.audio_frames or audio_cfg.max_frames
        video_frames = args.video_frames or video_cfg.max_frames

        participant = synthetic_participant(300, args.seed)
        transcript = synthetic_transcript(participant, args.turns, args.seed)
        transcript_tokens = len(processor.encode_text(transcript))
        audio_path = write_features(tmp_dir, "300_audio", audio_frames, audio_cfg.feature_dim, args.seed)
        video_path = write_features(tmp_dir, "300_video", video_frames, video_cfg.feature_dim, args.seed + 1)
        items = [(i % 8) + 1 for i in range(args.batch_size)]
        rows = [
            {
                "participant_id": "300",
                "item_index": item,
                "item_name": str(item),
                "transcript": transcript,
                "label": participant.score(item),
                "rationale": synthetic_rationale(participant, item),
                "audio_files": [audio_path],
                "video_files": [video_path],
            }
            for item in items
        ]

        # Stage 2 as train.py runs it: frozen LQ-formers run once per participant, outputs cached.
        precompute_s = -time.perf_counter()
        cache = precompute_modality_embeddings(stage2_base, processor, rows, ["audio", "video"])
        sync(device)
        precompute_s += time.perf_counter()
        stage2_batch = to_device(MllmDrCollator(processor, "full", True, embedding_cache=cache)(rows), device)
        text_batch = to_device(MllmDrCollator(text_processor, "text", True)(rows), device)
        optimizers = {"stage2": make_optimizer(stage2), "text_lora": make_optimizer(text_lora)}
        optimizer_name = describe_optimizer(optimizers["stage2"])
        stage2.train()
        text_lora.train()
        runners = {
            "stage2": partial(train_step, stage2, optimizers["stage2"], stage2_trainable, stage2_batch, True),
            "text_lora": partial(train_step, text_lora, optimizers["text_lora"], text_trainable, text_batch, False),
        }
        log(f"step timing: {args.warmup} warm-up + {args.steps} timed steps per model, interleaved")
        times, losses = time_steps(runners, args.warmup, args.steps, device, log)
        step_time: dict[str, Any] = {}
        for key, batch, trainable in (
            ("stage2", stage2_batch, stage2_trainable),
            ("text_lora", text_batch, text_trainable),
        ):
            step_time[key] = {
                "seconds": summary(times[key]),
                "all_seconds": times[key],
                "losses": losses[key],
                "sequence_length": int(batch["input_ids"].shape[1]),
                "answer_tokens": int((batch["labels"][:, 1:] != -100).sum()),
                "trainable_parameters": sum(p.numel() for p in trainable),
            }
        medians = {key: step_time[key]["seconds"]["median"] for key in ("stage2", "text_lora")}
        step_time["ratio_of_medians"] = medians["stage2"] / medians["text_lora"]
        step_time["paired_ratio_median"] = statistics.median(
            a / b for a, b in zip(times["stage2"], times["text_lora"], strict=True)
        )
        step_time["goal_max_ratio"] = GOAL_RATIO
        step_time["goal_met"] = step_time["ratio_of_medians"] <= GOAL_RATIO
        step_time["paper_ratio"] = PAPER_RATIO

        # Forward share: the text-only model and the optimizers are no longer needed.
        del runners, optimizers, text_lora, text_base, text_trainable, text_batch, batch, trainable
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        feature_rows_batch = MllmDrCollator(processor, "full", True)(rows)  # reads the features: no cache
        cached_rows_batch = MllmDrCollator(processor, "full", True, embedding_cache=cache)(rows)
        prompt_features = processor(  # an evaluation prefill: the prompt only, left padded
            [r["transcript"] for r in rows],
            items,
            audio_features=[read_features(r["audio_files"]) for r in rows],
            video_features=[read_features(r["video_files"]) for r in rows],
            mode="full",
            padding_side="left",
        )
        prompt_cached = {k: v for k, v in prompt_features.items() if not k.startswith(("audio_", "video_"))}
        for modality in ("audio", "video"):
            prompt_cached[f"{modality}_embeds"] = cached_rows_batch[f"{modality}_embeds"]
        share_batches = {
            "train": {
                "features": to_device(feature_rows_batch, device),
                "cached": to_device(cached_rows_batch, device),
            },
            "inference": {
                "features": to_device(dict(prompt_features), device),
                "cached": to_device(prompt_cached, device),
            },
        }
        forward_share = []
        for mode in args.share_modes:
            log(f"forward share ({mode}): 1 warm-up + {args.share_repeats} timed forwards, with features then cached")
            forward_share.append(
                measure_share(
                    stage2, stage2_base, share_batches[mode], mode == "train", args.share_repeats, device, log
                )
            )

    result = {
        "benchmark": "overhead",
        "config": {
            "quick": args.quick,
            "paper_geometry": args.paper_geometry,
            "backbone": backbone_name,
            "tokenizer": tokenizer_name or backbone_name,
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(device),
            "batch_size": args.batch_size,
            "items": items,
            "turns": args.turns,
            "transcript_tokens": transcript_tokens,
            "max_transcript_tokens": args.max_transcript_tokens,
            "lqformer_preset": "paper" if args.paper_geometry else "demo",
            "audio_frames": audio_frames,
            "video_frames": video_frames,
            "lora_r": args.lora_r,
            "lora_alpha": args.lora_alpha,
            "lora_dropout": args.lora_dropout,
            "lora_target": DEFAULT_LORA_TARGET,
            "learning_rates": LEARNING_RATES,
            "optimizer": optimizer_name,
            "warmup": args.warmup,
            "steps": args.steps,
            "share_repeats": args.share_repeats,
            "seed": args.seed,
        },
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "precompute_s": precompute_s,
        "step_time": step_time,
        "forward_share": forward_share,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "wall_s": time.perf_counter() - began,
    }
    name = "overhead_paper_geometry" if args.paper_geometry else "overhead"
    output = result_path(name, args.quick, args.output)
    write_json(output, result)
    print(render(result))
    print(f"\n(JSON: {output}; wall time {result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
