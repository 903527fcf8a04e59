"""Tiny stand-ins built in-process (never downloaded) for tests, smoke runs and ``--quick`` benchmarks:
a ~400-token byte-level BPE tokenizer with a ChatML template, a tiny random Llama backbone, tiny
LQ-former configs and a tiny MLlm-DR model on that backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AUDIO_DIM, VIDEO_DIM = 12, 20  # feature widths of the tiny models (the real ones are 768 and 2048)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "You are a psychiatrist, assessing the participant's mental health in certain aspects.",
    "Interview transcript: I have been sleeping badly and I feel tired most days.",
    "Evaluation Reason: The participant reports poor sleep. Score: 0 1 2 3",
    "Please evaluate the participant's interest or pleasure in doing things over the last two weeks.",
    "Audio features of the interview. Visual features of the interview. The output format is as follows.",
    "hello how are you doing today I am fine thanks, work family friends appetite energy mood",
]


def make_tokenizer(chat_template: bool = True):
    """A small byte-level BPE tokenizer trained in-process (vocab ~400; pad = EOS, the paper's setting)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<|im_end|>"
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_text_config(vocab_size: int, tie: bool = True, max_positions: int = 4096):
    """A 2-layer, 64-wide Llama config."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )


def save_tiny_backbone(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random Llama + tokenizer saved like a pretrained backbone folder."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    directory = Path(directory)
    LlamaForCausalLM(tiny_text_config(len(tokenizer))).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_lqformer(feature_dim: int, queries: int = 4, **overrides: Any):
    """A 2-layer, 32-wide LQ-former config with ``queries`` queries (frame budget 64)."""
    from configuration_mllm_dr import LQFormerConfig

    settings = dict(
        feature_dim=feature_dim, num_query_tokens=queries, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
        intermediate_size=48, dropout=0.0, projector_hidden_size=40, max_frames=64,
    )  # fmt: skip
    settings.update(overrides)
    return LQFormerConfig(**settings)


def build_tiny(backbone_dir: str | Path, seed: int = 0, max_transcript_tokens: int = 48, **overrides: Any):
    """``(model, processor)``: a tiny MLlm-DR (tiny LQ-formers over ``AUDIO_DIM``/``VIDEO_DIM`` features, a
    4-head MAA) on the backbone saved at ``backbone_dir``, in eval mode."""
    import torch

    from modeling_mllm_dr import MllmDrForConditionalGeneration
    from processing_mllm_dr import MllmDrProcessor

    torch.manual_seed(seed)
    overrides.setdefault("audio_config", tiny_lqformer(AUDIO_DIM))
    overrides.setdefault("video_config", tiny_lqformer(VIDEO_DIM))
    overrides.setdefault("score_head_num_heads", 4)
    overrides.setdefault("score_head_hidden_size", 16)
    model = MllmDrForConditionalGeneration.from_backbone(str(backbone_dir), **overrides)
    processor = MllmDrProcessor.from_config(
        model.tokenizer_for_backbone, model.config, max_transcript_tokens=max_transcript_tokens
    )
    model.eval()
    return model, processor


def random_features(rng, frames: int, dim: int):
    """A float32 ``(frames, dim)`` standard-normal array from a ``numpy.random.Generator``."""
    return rng.standard_normal((frames, dim)).astype("float32")
