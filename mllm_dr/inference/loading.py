"""Loading a model for inference: a merged checkpoint, a training output, an adapter export, or
(zero-shot) an untrained backbone with the same prompts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from ..checkpoints import is_adapter_export, load_adapter_export

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelLoadArguments:
    """Which model to run, and where."""

    model: str | None = field(
        default=None, metadata={"help": "A checkpoint, a training output folder, an adapter export, or (--zero_shot) a backbone."}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "Weights' dtype for inference (bfloat16 halves memory; on a CPU with AVX512-BF16 it is also "
                  "faster).", "choices": sorted(DTYPES)},
    )
    device: str = field(
        default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu, cuda, cuda:1, ..."}
    )


@dataclass
class LoadedModel:
    model: MllmDrForConditionalGeneration
    processor: MllmDrProcessor
    description: dict[str, Any]


def resolve_checkpoint(path: str | Path) -> Path:
    """A training output's ``merged/`` folder, or ``path`` itself."""
    path = Path(path)
    return path / "merged" if (path / "merged" / "config.json").is_file() else path


def load_model(
    path: str | Path,
    *,
    zero_shot: bool = False,
    questionnaire: str = "phq8",
    max_transcript_tokens: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """``(model, processor, description)`` in eval mode on ``device`` in ``dtype``.

    ``zero_shot``: ``path`` is a plain causal LM, wrapped without LQ-formers (the text prompts, no
    trained head). Otherwise ``path`` is an adapter export (rebuilt on its base model, LoRA merged),
    a training output (its ``merged/`` checkpoint) or a checkpoint folder.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(path)
    if zero_shot:
        model = MllmDrForConditionalGeneration.from_backbone(str(path), use_audio=False, use_video=False)
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone, model.config, questionnaire=questionnaire,
            max_transcript_tokens=max_transcript_tokens or 1536,
        )  # fmt: skip
        description = {"kind": "zero_shot_backbone", "path": str(path)}
    elif is_adapter_export(path):
        model, processor = load_adapter_export(path, merge=True)
        description = {"kind": "adapter_export", "path": str(path)}
    else:
        path = resolve_checkpoint(path)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {path}: no config.json (not a checkpoint, adapter export or training output)")
        if not (path / "processor_config.json").is_file():
            raise SystemExit(
                f"--model {path}: the checkpoint has no processor (processor_config.json is missing); save it with "
                "processor.save_pretrained(...) next to the model"
            )
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(str(path), trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
        description = {"kind": "checkpoint", "path": str(path)}
    if max_transcript_tokens:
        processor.max_transcript_tokens = max_transcript_tokens
    model.to(device=device, dtype=DTYPES[dtype])
    return LoadedModel(model.eval(), processor, description)


def head_is_trained(model: Any, zero_shot: bool = False) -> bool:
    """Head scores count only from a head trained with the joint loss (never a zero-shot backbone's,
    a stage-1 model's or a CE-only model's randomly initialised head)."""
    return not zero_shot and bool(getattr(model.config, "score_head_trained", False))


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
