"""Loading a model for inference: a merged checkpoint, a training output, an adapter export, or
(zero-shot) an untrained backbone with the same prompts."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from ..checkpoints import MODEL_FILES, check_checkpoint_folder, is_adapter_export, load_adapter_export
from ..io import LOCK_NAME

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
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint folder's own modeling/configuration/processing code (default: the "
                  "installed package's classes load it, and no code from the folder runs; an adapter export "
                  "always loads that way)."},
    )


@dataclass
class LoadedModel:
    model: MllmDrForConditionalGeneration
    processor: MllmDrProcessor
    description: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What an output records of the model: its description (kind, path) and :func:`model_fingerprint`."""
        return {**self.description, "fingerprint": model_fingerprint(self.description["path"])}


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
    trust_remote_code: bool = False,
) -> LoadedModel:
    """``(model, processor, description)`` in eval mode on ``device`` in ``dtype``.

    ``zero_shot``: ``path`` is a plain causal LM, wrapped without LQ-formers (the text prompts, no
    trained head). Otherwise ``path`` is an adapter export (rebuilt on its base model, LoRA merged),
    a training output (its ``merged/`` checkpoint) or a checkpoint folder, loaded with the installed
    classes unless ``trust_remote_code`` (then the folder's own code runs).
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
        _check_folder(path)
        warn_if_code_differs(path, folder_code_runs=False, alternative="an adapter export always loads that way")
        model, processor = load_adapter_export(path, merge=True)  # the installed classes only
        description = {"kind": "adapter_export", "path": str(path)}
    else:
        path = resolve_checkpoint(path)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {path}: no config.json (not a checkpoint, adapter export or training output)")
        _check_folder(path)
        if not (path / "processor_config.json").is_file():
            raise SystemExit(
                f"--model {path}: the checkpoint has no processor (processor_config.json is missing); save it with "
                "processor.save_pretrained(...) next to the model"
            )
        warn_if_code_differs(path, folder_code_runs=trust_remote_code)
        if trust_remote_code:
            from transformers import AutoModel, AutoProcessor

            model = AutoModel.from_pretrained(str(path), trust_remote_code=True)
            processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
        else:  # the installed classes: no code from the folder runs
            model = MllmDrForConditionalGeneration.from_pretrained(str(path))
            processor = MllmDrProcessor.from_pretrained(str(path))
        description = {"kind": "checkpoint", "path": str(path), "trust_remote_code": trust_remote_code}
    if max_transcript_tokens:
        processor.max_transcript_tokens = max_transcript_tokens
    model.to(device=device, dtype=DTYPES[dtype])
    return LoadedModel(model.eval(), processor, description)


def head_is_trained(model: Any, zero_shot: bool = False) -> bool:
    """Head scores count only from a head trained with the joint loss (never a zero-shot backbone's,
    a stage-1 model's or a CE-only model's randomly initialised head)."""
    return not zero_shot and bool(getattr(model.config, "score_head_trained", False))


def _check_folder(path: Path) -> None:
    try:
        check_checkpoint_folder(path)
    except ValueError as error:
        raise SystemExit(f"--model: {error}") from None


def warn_if_code_differs(
    path: str | Path, folder_code_runs: bool, alternative: str = "--trust_remote_code would run the folder's"
) -> list[str]:
    """Warns on stderr when the folder's copies of the model files differ from the installed ones,
    naming them and saying whose code runs; returns their names."""
    copies = {installed: Path(path) / installed.name for installed in MODEL_FILES}
    differing = [i.name for i, copy in copies.items() if copy.is_file() and copy.read_bytes() != i.read_bytes()]
    if differing:
        if folder_code_runs:
            runs = "the folder's copy runs (--trust_remote_code)"
        else:
            runs = f"the installed package's code is used ({alternative})"
        names = ", ".join(differing)
        print(f"warning: {path}: {names} differ(s) from the installed MLlm-DR code: {runs}", file=sys.stderr)
    return differing


HASH_CHUNK = 1 << 20  # 1 MiB read into one reused buffer: ~1.4 GB/s here (the SHA-256 itself is the limit)


def model_fingerprint(path: str | Path) -> str:
    """SHA-256 over the names, sizes and bytes of every file of a model folder (``checkpoint-*``
    subfolders and lock files excluded), streamed: any change of any weight changes it. A Hub id
    (not a folder) is its name."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path)
            if not file.is_file() or any(part.startswith(("checkpoint-", LOCK_NAME)) for part in relative.parts):
                continue
            digest.update(f"{relative}:{file.stat().st_size}\n".encode())
            with file.open("rb", buffering=0) as handle:
                while read := handle.readinto(buffer):
                    digest.update(view[:read])
    else:
        digest.update(str(path).encode())
    return digest.hexdigest()[:16]
