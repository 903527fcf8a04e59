"""Configuration of MLlm-DR (paper sections 3.2-3.4 and 4.2).

Self-contained (torch + transformers only): this file travels inside every checkpoint.

``MllmDrConfig`` is a composite config in the style of LLaVA's: the causal-LM backbone lives
in ``text_config``; each modality has an ``LQFormerConfig``; every other number the model uses
is a named field whose default is the paper's value.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

FRAME_POLICIES = ("uniform", "truncate_maxpool", "none")
AUDIO_PLACEHOLDER = "<AudioHere>"
VIDEO_PLACEHOLDER = "<VideoHere>"


def frame_policy_settings(policy: str, max_frames: int, truncate_frames: int, pool_size: int) -> dict[str, Any]:
    """A frame policy with only the settings it uses: ``{"policy": "uniform", "max_frames": 7000}``,
    ``{"policy": "truncate_maxpool", "truncate_frames": 21000, "pool_size": 3}`` or ``{"policy": "none"}``
    (changing ``pool_size`` never changes what ``uniform`` does, so it is not part of its key)."""
    if policy not in FRAME_POLICIES:
        raise ValueError(f"frame policy must be one of {FRAME_POLICIES}, got {policy!r}")
    if policy == "uniform":
        return {"policy": policy, "max_frames": int(max_frames)}
    if policy == "truncate_maxpool":
        return {"policy": policy, "truncate_frames": int(truncate_frames), "pool_size": int(pool_size)}
    return {"policy": policy}


class LQFormerConfig(PreTrainedConfig):
    r"""One modality's Lightweight Query transformer (LQ-former, paper Eq. 1) and its projector.

    The query width (``hidden_size``) is independent of ``feature_dim``: keys and values of the
    cross-attention are projected from ``feature_dim`` as in BLIP-2's Q-Former (the authors' code
    tied the width to the feature dimension, which forced 5 heads on 710-dim video).

    Args:
        feature_dim: Width of one pre-extracted feature frame (768 HuBERT-base, 1024 HuBERT-large,
            709 OpenFace, 2048 ResNet-50).
        num_query_tokens: Learnable queries, i.e. embeddings inserted per placeholder (paper: 32).
        hidden_size: Query width (paper: 768).
        num_attention_heads: Heads of the self- and cross-attention (8).
        num_hidden_layers: Decoder layers (4).
        intermediate_size: Feed-forward width (paper: "hidden layer dimension of 1024").
        hidden_act: Activation of the feed-forward blocks (``"gelu"``, as in BLIP-2's Q-Former; the
            paper does not say; the authors' DETR-style decoder used ``"relu"``).
        dropout: Dropout of attention outputs and feed-forward blocks (0.3).
        attention_dropout: Dropout on the attention probabilities.
        use_position_encoding: Add sinusoidal position encodings to queries and to frames (DETR-style).
        normalize_features: LayerNorm over each input frame before the cross-attention keys/values
            (raw OpenFace/ResNet features differ in scale by orders of magnitude).
        final_norm: A LayerNorm on the LQ-former's output (the authors' DETR decoder has one; off by
            default: every post-norm layer already ends in a LayerNorm, so it would normalise twice).
        layer_norm_eps: Epsilon of every LayerNorm.
        projector_hidden_size: Hidden width of the two-layer projector to the LLM (1024).
        projector_act: Activation between the projector's two layers.
        frame_policy: How to shorten long inputs: ``"uniform"`` keeps ``max_frames`` frames spread
            evenly over the whole interview; ``"truncate_maxpool"`` is the authors' policy (keep the
            first ``truncate_frames`` frames, then max-pool by ``pool_size``: everything after ~7 min
            of 50 Hz audio is lost); ``"none"`` keeps every frame.
        max_frames: Frame budget of the ``"uniform"`` policy.
        truncate_frames: Frames kept by ``"truncate_maxpool"`` before pooling (authors: 21000).
        pool_size: Max-pooling window of ``"truncate_maxpool"`` (authors: 3).
    """

    model_type = "mllm_dr_lqformer"

    feature_dim: int = 768
    num_query_tokens: int = 32
    hidden_size: int = 768
    num_attention_heads: int = 8
    num_hidden_layers: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    dropout: float = 0.3
    attention_dropout: float = 0.0
    use_position_encoding: bool = True
    normalize_features: bool = True
    final_norm: bool = False
    layer_norm_eps: float = 1e-5
    projector_hidden_size: int = 1024
    projector_act: str = "relu"
    frame_policy: str = "uniform"
    max_frames: int = 7000
    truncate_frames: int = 21000
    pool_size: int = 3

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LQ-former hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.frame_policy not in FRAME_POLICIES:
            raise ValueError(f"frame_policy must be one of {FRAME_POLICIES}, got {self.frame_policy!r}")
        for name in ("feature_dim", "num_query_tokens", "max_frames", "truncate_frames", "pool_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LQ-former {name} must be >= 1, got {getattr(self, name)}")

    def frame_settings(self) -> dict[str, Any]:
        """This modality's frame policy with only the settings it uses (see ``frame_policy_settings``)."""
        return frame_policy_settings(self.frame_policy, self.max_frames, self.truncate_frames, self.pool_size)


def _as_lqformer_config(value: Any, feature_dim: int) -> LQFormerConfig:
    if isinstance(value, LQFormerConfig):
        return value
    if value is None:
        return LQFormerConfig(feature_dim=feature_dim)
    if isinstance(value, PreTrainedConfig):
        value = value.to_dict()
    value = {k: v for k, v in dict(value).items() if k not in ("model_type", "transformers_version")}
    return LQFormerConfig(**value)


def _as_text_config(value: Any) -> PreTrainedConfig:
    if isinstance(value, PreTrainedConfig):
        return value
    if value is None:
        return CONFIG_MAPPING["llama"]()
    value = dict(value)
    model_type = value.pop("model_type", "llama")
    return CONFIG_MAPPING[model_type](**value)


class MllmDrConfig(PreTrainedConfig):
    r"""Configuration of ``MllmDrForConditionalGeneration``.

    Args:
        text_config: The causal-LM backbone's config (any ``AutoModelForCausalLM`` config).
        audio_config: ``LQFormerConfig`` of the audio branch (HuBERT, 768-dim by default).
        video_config: ``LQFormerConfig`` of the visual branch (ResNet, 2048-dim by default).
        use_audio / use_video: Modality switches; a switched-off modality has no LQ-former at all.
        score_head_num_heads: Heads of the multi-head attention aggregation (MAA, Eq. 2): 8.
        score_head_hidden_size: Hidden width of the MAA's two-layer regressor: 1024.
        score_head_dropout: Dropout inside the MAA regressor.
        lm_loss_weight / score_loss_weight: Eq. 3's weights: loss = w_lm * CE + w_score * MSE.
        score_head_trained: Whether the MAA head was trained (stage 2 with the joint loss sets it).
            Evaluation and prediction use head scores only when it is True: an untrained head (a
            fresh model, stage 1, or "w/o Joint" CE-only training) must never stand in for a score.
        audio_token_id / video_token_id: Ids of ``<AudioHere>`` / ``<VideoHere>`` (set by ``from_backbone``).
        alignment_probe_items: Stage-1 auxiliary objective, not in the paper (0 = off, the paper's
            setting): a linear readout of this many PHQ item scores from the mean-pooled projected
            queries of the modalities. Its MSE makes the LQ-formers encode item evidence rather
            than one constant soft prompt (BLIP-2's Q-Former stage 1 likewise trains on auxiliary
            objectives). Stage 2 removes it; it never takes part in generation or scoring.
        alignment_probe_weight: Weight of that MSE in the stage-1 loss.
        score_min / score_max: Range of one PHQ item score (0-3).
        initializer_range: Std of the normal init of the new (non-backbone) weights.
    """

    model_type = "mllm_dr"
    # The backbone's config is nested; transformers uses this to dispatch attention implementations.
    sub_configs = {"text_config": AutoConfig}

    text_config: Any = None
    audio_config: Any = None
    video_config: Any = None
    use_audio: bool = True
    use_video: bool = True
    score_head_num_heads: int = 8
    score_head_hidden_size: int = 1024
    score_head_dropout: float = 0.0
    lm_loss_weight: float = 1.0
    score_loss_weight: float = 1.0
    score_head_trained: bool = False
    alignment_probe_items: int = 0
    alignment_probe_weight: float = 1.0
    audio_token_id: int | None = None
    video_token_id: int | None = None
    score_min: int = 0
    score_max: int = 3
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        self.text_config = _as_text_config(self.text_config)
        self.audio_config = _as_lqformer_config(self.audio_config, feature_dim=768)
        self.video_config = _as_lqformer_config(self.video_config, feature_dim=2048)
        # Like LLaVA: tying is the backbone's decision (SmolLM2 ties, LLaMA-3-8B does not).
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        super().__post_init__(**kwargs)
        hidden = self.text_config.hidden_size
        if hidden % self.score_head_num_heads:
            raise ValueError(
                f"The backbone's hidden_size ({hidden}) must be divisible by "
                f"score_head_num_heads ({self.score_head_num_heads})"
            )
        if self.alignment_probe_items < 0:
            raise ValueError(f"alignment_probe_items must be >= 0, got {self.alignment_probe_items}")
        if self.alignment_probe_items and not (self.use_audio or self.use_video):
            raise ValueError("alignment_probe_items > 0 reads the LQ-former outputs: keep use_audio or use_video")
        if not self.score_min < self.score_max:
            raise ValueError(f"score_min ({self.score_min}) must be < score_max ({self.score_max})")

    def get_text_config(self, *args: Any, **kwargs: Any) -> PreTrainedConfig:
        return self.text_config

    @classmethod
    def paper_preset(cls, text_config: PreTrainedConfig | dict | None = None, **overrides: Any) -> MllmDrConfig:
        """The paper's section 4.2 setting on LLaMA-3-8B geometry (hidden 4096, 32 layers, 8 KV heads)."""
        if text_config is None:
            text_config = CONFIG_MAPPING["llama"](
                vocab_size=128256,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                max_position_embeddings=8192,
                rope_theta=500000.0,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
            )
        overrides.setdefault("audio_config", LQFormerConfig(feature_dim=768))
        overrides.setdefault("video_config", LQFormerConfig(feature_dim=2048))
        return cls(text_config=text_config, **overrides)

    @classmethod
    def demo_preset(cls, text_config: PreTrainedConfig | dict | None = None, **overrides: Any) -> MllmDrConfig:
        """A small setting for SmolLM2-135M on a 2-core CPU: fewer, narrower queries and layers.

        Feature dims stay the corpora's (768 HuBERT-base audio, 2048 ResNet video).
        """
        small = dict(
            num_query_tokens=8,
            hidden_size=256,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=512,
            dropout=0.1,
            projector_hidden_size=512,
            max_frames=2000,
        )
        overrides.setdefault("audio_config", LQFormerConfig(feature_dim=768, **small))
        overrides.setdefault("video_config", LQFormerConfig(feature_dim=2048, **small))
        overrides.setdefault("score_head_hidden_size", 256)
        return cls(text_config=text_config, **overrides)


# Tokens a prompt needs beside the transcript: the system prompt and item instruction (~250), the
# 2 x 32 placeholders of the paper's geometry and the 200-token answer, with a margin.
PROMPT_RESERVE_TOKENS = 768
DEMO_TRANSCRIPT_TOKENS = 1536


def transcript_budget(context_window: int | None, preset: str = "paper") -> int:
    """Default transcript budget in tokens. ``paper``: the complete interview as far as the backbone's
    context window allows (the window less :data:`PROMPT_RESERVE_TOKENS`: 7,424 for LLaMA-3-8B's
    8,192; the authors' code kept about 2,800); ``demo``: 1,536, for 2-core CPUs."""
    if preset == "demo" or not context_window:
        return DEMO_TRANSCRIPT_TOKENS
    return max(256, int(context_window) - PROMPT_RESERVE_TOKENS)


MllmDrConfig.register_for_auto_class()

__all__ = [
    "LQFormerConfig",
    "MllmDrConfig",
    "FRAME_POLICIES",
    "AUDIO_PLACEHOLDER",
    "VIDEO_PLACEHOLDER",
    "frame_policy_settings",
    "transcript_budget",
]
