"""Inference: loading a model (:func:`load_model`) and the one generate-parse-score loop
(:func:`generate_items`, batched by :func:`generate_batches`, with the per-item sampler and
shared-prefix prefill) that evaluation and prediction share. Never imports :mod:`mllm_dr.training`."""

from .generation import (
    SCORE_SOURCES,
    GenerationArguments,
    PerItemSampler,
    check_rows,
    choose_score,
    generate_batches,
    generate_items,
    generate_with_shared_prefix,
    item_seed,
    make_batches,
    shares_prefix,
)
from .loading import DTYPES, LoadedModel, ModelLoadArguments, head_is_trained, load_model, model_fingerprint, resolve_checkpoint

__all__ = [
    "DTYPES",
    "GenerationArguments",
    "LoadedModel",
    "ModelLoadArguments",
    "PerItemSampler",
    "SCORE_SOURCES",
    "check_rows",
    "choose_score",
    "generate_batches",
    "generate_items",
    "generate_with_shared_prefix",
    "head_is_trained",
    "item_seed",
    "load_model",
    "make_batches",
    "model_fingerprint",
    "resolve_checkpoint",
    "shares_prefix",
]
