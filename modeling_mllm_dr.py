"""MLlm-DR: explainable depression recognition with a multimodal LLM.

Self-contained (torch + transformers only): this file travels inside every checkpoint.

Reads top to bottom as the paper's Figure 2:

* ``LQFormer`` (Eq. 1): learnable queries that self-attend, then cross-attend to a padded,
  masked feature sequence (HuBERT audio or OpenFace/ResNet video).
* ``MllmDrProjector``: the two-layer projection of the query outputs into the LLM's embedding space.
* ``MultiHeadAttentionAggregation`` (MAA, Eq. 2): regresses an item score from the LLM's last
  hidden states over the prompt tokens only (training and inference alike).
* ``MllmDrForConditionalGeneration``: inserts the projected queries at the expanded
  ``<AudioHere>`` / ``<VideoHere>`` tokens with ``masked_scatter``, runs the causal LM, and
  computes the joint loss of Eq. 3 (weighted CE + MSE).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from .configuration_mllm_dr import AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER, LQFormerConfig, MllmDrConfig
except ImportError:  # imported as a top-level module rather than as remote code
    from configuration_mllm_dr import AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER, LQFormerConfig, MllmDrConfig

MODALITIES = ("audio", "video")
# Paper section 4.2: sampling at temperature 0.8 among the top 10 tokens, at most 200 new tokens.
# from_backbone writes it into the model's generation config, so every export's generation_config.json
# carries it and a plain ``model.generate(**batch)`` samples as the paper does.
PAPER_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 10, "max_new_tokens": 200}
_CACHE_FIELDS = ("cache", "past_key_values")  # the KV-cache field was renamed in transformers 5.2x


@dataclass
class MllmDrCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the two parts of the joint loss and the MAA head's score.

    Args:
        lm_loss: Cross-entropy over the answer tokens (``labels != -100``).
        score_loss: MSE between ``score`` and ``score_labels``.
        probe_loss: The stage-1 alignment probe's MSE (only with ``item_scores`` and a probe).
        score: The MAA head's item score per sample, shape ``(batch,)``, read from the prompt tokens.
    """

    lm_loss: torch.FloatTensor | None = None
    score_loss: torch.FloatTensor | None = None
    probe_loss: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class MllmDrGenerateOutput(GenerateDecoderOnlyOutput):
    """What ``generate`` returns: the generated ids and the MAA head's score from the same prefill."""

    head_score: torch.FloatTensor | None = None


def _check_mask(name: str, mask: torch.Tensor, shape: tuple[int, ...], of: str) -> None:
    """A mask argument must have exactly ``shape`` (no broadcasting) and be boolean or hold only 0
    and 1; ``of`` says what fixes the shape. One shape compare, and one reduction for a non-bool mask."""
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, that of {of}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        outside = (mask != 0) & (mask != 1)
        if bool(outside.any()):
            raise ValueError(
                f"{name} must be boolean or hold only 0 and 1, got {mask.dtype} values such as "
                f"{mask[outside][:3].tolist()}"
            )


def sinusoidal_position_encoding(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sin/cos encodings of shape ``(length, dim)`` (works for odd ``dim`` such as 709)."""
    half = (dim + 1) // 2
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / half))
    angles = position * frequency
    encoding = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)[:, :dim]
    return encoding.to(dtype)


class LQFormerAttention(nn.Module):
    """Multi-head attention on SDPA whose keys/values may come from a different width (BLIP-2 style)."""

    def __init__(self, hidden_size: int, num_heads: int, key_value_size: int, attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(key_value_size, hidden_size)
        self.v_proj = nn.Linear(key_value_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``key_mask``: boolean ``(batch, keys)``, True = a real frame; every row has one True."""
        batch, num_queries, _ = query.shape
        num_keys = key.shape[1]

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query), num_queries)
        k = heads(self.k_proj(key), num_keys)
        v = heads(self.v_proj(value), num_keys)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, num_queries, -1))


class LQFormerLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to the frames, feed-forward."""

    def __init__(self, config: LQFormerConfig):
        super().__init__()
        width = config.hidden_size
        self.self_attn = LQFormerAttention(width, config.num_attention_heads, width, config.attention_dropout)
        self.cross_attn = LQFormerAttention(
            width, config.num_attention_heads, config.feature_dim, config.attention_dropout
        )
        self.feed_forward = nn.Sequential(
            nn.Linear(width, config.intermediate_size),
            ACT2FN[config.hidden_act],
            nn.Dropout(config.dropout),
            nn.Linear(config.intermediate_size, width),
        )
        self.self_attn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.cross_attn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.feed_forward_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor | None,
        features: torch.Tensor,
        feature_keys: torch.Tensor,
        key_mask: torch.Tensor,
        has_frames: torch.Tensor,
    ) -> torch.Tensor:
        q = queries if query_pos is None else queries + query_pos
        queries = self.self_attn_norm(queries + self.dropout(self.self_attn(q, q, queries)))
        q = queries if query_pos is None else queries + query_pos
        attended = self.cross_attn(q, feature_keys, features, key_mask)
        # A sample without a single real frame (missing modality) gets no cross-attention update,
        # so its output is defined and independent of whatever the padded frames contain.
        attended = attended * has_frames[:, None, None].to(attended.dtype)
        queries = self.cross_attn_norm(queries + self.dropout(attended))
        return self.feed_forward_norm(queries + self.dropout(self.feed_forward(queries)))


class LQFormer(nn.Module):
    """Lightweight Query transformer (paper Eq. 1): ``num_query_tokens`` learnable queries attend to
    a feature sequence of any length and return a fixed-size ``(batch, num_query_tokens, hidden_size)``.
    """

    def __init__(self, config: LQFormerConfig):
        super().__init__()
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        self.feature_norm = (
            nn.LayerNorm(config.feature_dim, eps=config.layer_norm_eps) if config.normalize_features else None
        )
        self.layers = nn.ModuleList(LQFormerLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_norm else None

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``features``: ``(batch, frames, feature_dim)``; ``feature_mask``: bool, True = real frame."""
        if features.dim() != 3 or features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"LQ-former features must have shape (batch, frames, {self.config.feature_dim}), "
                f"got {tuple(features.shape)}"
            )
        batch, frames, _ = features.shape
        dtype = self.query_tokens.dtype
        features = features.to(dtype)
        if feature_mask is None:
            feature_mask = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        elif feature_mask.shape != (batch, frames):
            raise ValueError(
                f"feature mask must have shape {(batch, frames)} to match the features, got {tuple(feature_mask.shape)}"
            )
        feature_mask = feature_mask.to(device=features.device, dtype=torch.bool)
        has_frames = feature_mask.any(dim=1)
        # Rows without any real frame attend to everything (no NaN); their update is zeroed in the layer.
        key_mask = feature_mask | ~has_frames[:, None]
        # Padded frames are zeroed so nothing about them can leak (e.g. through a NaN times zero).
        features = features.masked_fill(~feature_mask[..., None], 0.0)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        feature_keys = features
        query_pos = None
        if self.config.use_position_encoding:
            feature_keys = features + sinusoidal_position_encoding(frames, features.shape[-1], features.device, dtype)
            query_pos = sinusoidal_position_encoding(
                self.config.num_query_tokens, self.config.hidden_size, features.device, dtype
            )[None]
        queries = self.query_tokens.expand(batch, -1, -1)
        for layer in self.layers:
            queries = layer(queries, query_pos, features, feature_keys, key_mask, has_frames)
        return queries if self.final_norm is None else self.final_norm(queries)


class MllmDrProjector(nn.Module):
    """Two linear layers with an activation between them: LQ-former width -> LLM embedding width."""

    def __init__(self, config: LQFormerConfig, text_hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(config.hidden_size, config.projector_hidden_size)
        self.act = ACT2FN[config.projector_act]
        self.linear_2 = nn.Linear(config.projector_hidden_size, text_hidden_size)

    def forward(self, query_outputs: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(query_outputs)))


class AlignmentProbe(nn.Module):
    """Stage-1 auxiliary objective (``config.alignment_probe_items``; not in the paper): a linear
    readout of every PHQ item's score from the mean-pooled projected queries of each modality.

    The frozen LLM's answer loss alone lets the LQ-formers settle on one soft prompt that fits the
    score marginals for everyone; regressing the participant's item scores from the same embeddings
    makes them carry the evidence. Training only: stage 2 removes it.
    """

    def __init__(self, input_size: int, num_items: int):
        super().__init__()
        # Own parameters rather than an nn.Linear, so that its initialisation (bias at mid-scale) is
        # not overwritten by the generic Linear one.
        self.weight = nn.Parameter(torch.zeros(num_items, input_size))
        self.bias = nn.Parameter(torch.zeros(num_items))

    def readout(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.linear(pooled.to(self.weight.dtype), self.weight, self.bias)

    def forward(self, modality_embeds: list[torch.Tensor], item_scores: torch.Tensor) -> torch.Tensor:
        """MSE over the known entries of ``item_scores`` ``(batch, num_items)`` (NaN = unknown)."""
        pooled = torch.cat([embeds.float().mean(dim=1) for embeds in modality_embeds], dim=-1)
        predicted = self.readout(pooled).float()
        if item_scores.shape != predicted.shape:
            raise ValueError(
                f"item_scores must have shape {tuple(predicted.shape)} (batch, alignment_probe_items), "
                f"got {tuple(item_scores.shape)}"
            )
        item_scores = item_scores.to(device=predicted.device, dtype=torch.float32)
        known = ~torch.isnan(item_scores)
        if not bool(known.any()):
            return predicted.sum() * 0.0
        return F.mse_loss(predicted[known], item_scores[known])


class MultiHeadAttentionAggregation(nn.Module):
    """MAA (paper Eq. 2): split the hidden size into heads; per head, a learned vector scores each
    token, a softmax over the (unmasked) tokens weights them, the weighted sums of all heads are
    concatenated and a two-layer MLP regresses one score.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.token_scorer = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.regressor = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden_size, 1),
        )

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """``hidden_states``: ``(batch, seq, hidden)``; ``token_mask``: bool, True = pool this token."""
        batch, length, _ = hidden_states.shape
        hidden_states = hidden_states.to(self.token_scorer.dtype).view(batch, length, self.num_heads, self.head_dim)
        logits = torch.einsum("blhd,hd->blh", hidden_states, self.token_scorer) / math.sqrt(self.head_dim)
        logits = logits.float().masked_fill(~token_mask[..., None], torch.finfo(torch.float32).min)
        weights = logits.softmax(dim=1).to(hidden_states.dtype)
        pooled = torch.einsum("blh,blhd->bhd", weights, hidden_states).reshape(batch, -1)
        return self.regressor(pooled).squeeze(-1)


class MllmDrPreTrainedModel(PreTrainedModel):
    config_class = MllmDrConfig
    config: MllmDrConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["LQFormerLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialises the new modules only; the backbone is a sub-model with its own initialiser."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, LQFormer):
            module.query_tokens.normal_(mean=0.0, std=std)
        elif isinstance(module, MultiHeadAttentionAggregation):
            module.token_scorer.normal_(mean=0.0, std=std)
        elif isinstance(module, AlignmentProbe):
            # PHQ items average around the middle of the scale: start the readout there.
            module.weight.normal_(mean=0.0, std=std)
            module.bias.fill_((self.config.score_min + self.config.score_max) / 2)


class MllmDrForConditionalGeneration(MllmDrPreTrainedModel, GenerationMixin):
    """The MLlm-DR model: a causal LM with audio/video LQ-formers and an MAA score head.

    ``forward(input_ids, attention_mask, audio_features, audio_mask, video_features, video_mask,
    labels, score_labels)`` returns ``loss`` (Eq. 3), ``lm_loss``, ``score_loss``, ``logits`` and
    ``score``. ``generate`` takes the same feature inputs (consumed on the prefill only) and returns
    the generated ids with the MAA head's score from that prefill.
    """

    def __init__(self, config: MllmDrConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        text_hidden = config.text_config.hidden_size
        if config.use_audio:
            self.audio_lqformer = LQFormer(config.audio_config)
            self.audio_projector = MllmDrProjector(config.audio_config, text_hidden)
        if config.use_video:
            self.video_lqformer = LQFormer(config.video_config)
            self.video_projector = MllmDrProjector(config.video_config, text_hidden)
        self.score_head = MultiHeadAttentionAggregation(
            text_hidden, config.score_head_num_heads, config.score_head_hidden_size, config.score_head_dropout
        )
        self.alignment_probe = None
        if config.alignment_probe_items:
            modalities = int(config.use_audio) + int(config.use_video)
            self.alignment_probe = AlignmentProbe(modalities * text_hidden, config.alignment_probe_items)
        self._captured_head_scores: list[torch.Tensor] | None = None
        self.post_init()

    def remove_alignment_probe(self) -> None:
        """Stage 2 starts here: the stage-1 probe is not part of the trained model."""
        self.alignment_probe = None
        self.config.alignment_probe_items = 0

    # ----------------------------------------------------------------- backbone plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        """The backbone without its LM head (e.g. ``LlamaModel``), which gives the last hidden states."""
        return self.language_model.base_model

    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel,
        tokenizer: Any = None,
        config: MllmDrConfig | None = None,
        dtype: torch.dtype | str | None = None,
        quantization_config: Any = None,
        **overrides: Any,
    ) -> MllmDrForConditionalGeneration:
        """Builds a fresh MLlm-DR on a pretrained causal LM (a folder, Hub id or loaded model).

        Adds ``<AudioHere>`` / ``<VideoHere>`` to the tokenizer (loaded from ``backbone`` when not
        given; retrievable as ``model.tokenizer_for_backbone``), resizes the embeddings and keeps
        every backbone weight. ``overrides`` set ``MllmDrConfig`` fields (or pass ``config`` whole;
        its ``text_config`` is replaced by the backbone's). ``quantization_config`` (e.g. a
        ``BitsAndBytesConfig`` for QLoRA) goes to the backbone's ``from_pretrained``.
        """
        from transformers import AutoTokenizer

        if isinstance(backbone, PreTrainedModel):
            language_model = backbone
        else:
            kwargs = {"dtype": dtype} if dtype is not None else {}
            if quantization_config is not None:
                kwargs["quantization_config"] = quantization_config
            language_model = AutoModelForCausalLM.from_pretrained(backbone, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(language_model.config.name_or_path or backbone)
        placeholders = [AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER]
        tokenizer.add_tokens(placeholders, special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # the paper's setting: pad = EOS
        audio_id, video_id = tokenizer.convert_tokens_to_ids(placeholders)
        if len(tokenizer) > language_model.get_input_embeddings().weight.shape[0]:
            language_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        attn_implementation = language_model.config._attn_implementation
        if config is None:
            config = MllmDrConfig(text_config=language_model.config, **overrides)
        else:
            config = MllmDrConfig(**{**config.to_dict(), **overrides, "text_config": language_model.config})
        config.audio_token_id, config.video_token_id = audio_id, video_id
        model = cls(config, language_model=language_model)
        # Building the composite config resets the shared text config's attention choice.
        language_model.config._attn_implementation = attn_implementation
        # The backbone's generation config (its EOS ids) with the paper's sampling on top.
        model.generation_config = copy.deepcopy(language_model.generation_config)
        model.generation_config.update(**PAPER_SAMPLING, pad_token_id=tokenizer.pad_token_id)
        model.generation_config._from_model_config = False  # ours, not derived from config.json
        model.tokenizer_for_backbone = tokenizer
        return model

    # ----------------------------------------------------------------- the encoder path
    def get_modality_embeddings(
        self, modality: str, features: torch.Tensor, feature_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LQ-former then projector: ``(batch, frames, feature_dim)`` -> ``(batch, queries, llm_hidden)``."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if not getattr(self.config, f"use_{modality}"):
            raise ValueError(f"this model was built with use_{modality}=False: it has no {modality} LQ-former")
        lqformer: LQFormer = getattr(self, f"{modality}_lqformer")
        projector: MllmDrProjector = getattr(self, f"{modality}_projector")
        if features.dim() != 3 or features.shape[-1] != lqformer.config.feature_dim:
            raise ValueError(
                f"{modality}_features must have shape (batch, frames, {lqformer.config.feature_dim}), "
                f"got {tuple(features.shape)}"
            )
        if feature_mask is not None:
            frames = tuple(features.shape[:2])
            _check_mask(f"{modality}_mask", feature_mask, frames, f"{modality}_features (batch, frames)")
        return projector(lqformer(features, feature_mask))

    def get_placeholder_mask(self, modality: str, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Where the ``modality``'s embeddings go; one clear error when counts disagree."""
        token_id = getattr(self.config, f"{modality}_token_id")
        if token_id is None:
            raise ValueError(f"config.{modality}_token_id is not set: build the model with from_backbone()")
        mask = input_ids == token_id
        per_sample = mask.sum(dim=1)
        expected = embeds.shape[1]
        if embeds.shape[0] != input_ids.shape[0] or bool((per_sample != expected).any()):
            raise ValueError(
                f"{modality} placeholder tokens and {modality} embeddings do not match: each of the "
                f"{input_ids.shape[0]} prompts needs exactly {expected} placeholder tokens for "
                f"{embeds.shape[0]} feature sequences, found {per_sample.tolist()} per prompt; expand the "
                "placeholders with MllmDrProcessor"
            )
        return mask

    def _insert_modalities(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, modality_inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scatters each given modality's projected queries into its placeholders; returns the new
        input embeddings and the projected queries per modality."""
        inserted: dict[str, torch.Tensor] = {}
        for modality in MODALITIES:
            features = modality_inputs.get(f"{modality}_features")
            embeds = modality_inputs.get(f"{modality}_embeds")
            token_id = getattr(self.config, f"{modality}_token_id")
            has_placeholders = (
                input_ids is not None and token_id is not None and bool((input_ids == token_id).any())
            )
            if features is None and embeds is None:
                if has_placeholders:
                    raise ValueError(
                        f"the prompt holds {modality} placeholder tokens but no {modality}_features were given "
                        f"(for a missing {modality} recording pass a fully masked {modality}_mask)"
                    )
                continue
            if input_ids is None:
                raise ValueError(f"{modality} inputs need input_ids to locate the {modality} placeholders")
            if embeds is None:
                embeds = self.get_modality_embeddings(modality, features, modality_inputs.get(f"{modality}_mask"))
            mask = self.get_placeholder_mask(modality, input_ids, embeds)
            inputs_embeds = inputs_embeds.masked_scatter(
                mask[..., None], embeds.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
            )
            inserted[modality] = embeds
        return inputs_embeds, inserted

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        score_labels: torch.Tensor | None = None,
        item_scores: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        compute_score: bool = True,
        detach_score_head: bool = False,
        lm_loss_weight: float | None = None,
        score_loss_weight: float | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        prefix_hidden_states: torch.Tensor | None = None,
        return_last_hidden_state: bool = False,
        cache: Any = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> MllmDrCausalLMOutput:
        r"""
        Args:
            audio_features / video_features: ``(batch, frames, feature_dim)`` padded feature sequences.
            audio_mask / video_mask: boolean ``(batch, frames)``, True = a real frame. A fully masked
                row is a missing recording: its placeholders stay and get the queries-only output.
            labels: Token targets, -100 everywhere except the answer (the processor builds them).
            score_labels: The item's true score, ``(batch,)``, for the MSE term.
            item_scores: Every PHQ item's score of the sample's participant, ``(batch, items)``, NaN
                where unknown: the target of the stage-1 alignment probe (when the config has one).
            prompt_mask: Tokens the MAA head pools over; defaults to the real tokens whose label is
                -100 (the prompt), or all real tokens when there are no labels.
            audio_embeds / video_embeds: Precomputed projector outputs ``(batch, queries, hidden)``
                (the frozen LQ-formers of stage 2 need to run once per participant only).
            logits_to_keep: As in transformers: 0 keeps all positions; the loss never depends on it.
            compute_score: Run the MAA head (``generate`` sets it on the prefill only).
            detach_score_head: The head reads the hidden states without passing its MSE back into the
                LLM (the MSE then trains the head only; the LLM learns from the cross-entropy alone).
            lm_loss_weight / score_loss_weight: Override the config's Eq. 3 weights (for schedules).
            num_items_in_batch: Answer tokens over the whole accumulated batch; when given, the CE
                is a sum divided by it (exact under gradient accumulation).
            prefix_hidden_states: Last hidden states of a cached, shared prompt prefix ``(1 or batch,
                past_length, hidden)``: with them the head also scores a prompt whose prefix came from
                the cache (prefix reuse across a participant's items).
            return_last_hidden_state: Also return the backbone's last hidden states (to cache a prefix).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if score_labels is not None:  # a shape compare: MSE would broadcast a wrong batch size silently
            name, given = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
            if tuple(score_labels.shape) != (given.shape[0],):
                raise ValueError(
                    f"score_labels must have shape ({given.shape[0]},), one score per prompt: {name} has batch size "
                    f"{given.shape[0]}, score_labels has shape {tuple(score_labels.shape)}"
                )
        # The KV cache under whichever name this transformers version uses (`cache` from 5.2x on).
        cache_kwargs = {k: v for k, v in (("cache", cache), ("past_key_values", past_key_values)) if v is not None}
        past_length = _past_length(cache_kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds, modality_embeds = self._insert_modalities(
            input_ids,
            inputs_embeds,
            {
                "audio_features": audio_features,
                "audio_mask": audio_mask,
                "audio_embeds": audio_embeds,
                "video_features": video_features,
                "video_mask": video_mask,
                "video_embeds": video_embeds,
            },
        )
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2 and past_length == 0:
            # Left padding: positions count real tokens only (the same rule as generate()).
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            position_ids = position_ids[:, -inputs_embeds.shape[1] :]

        decoder_outputs = self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache_kwargs,
            **kwargs,
        )
        hidden_states = decoder_outputs[0]
        lm_head = self.get_output_embeddings()

        lm_loss = None
        if labels is not None:
            lm_loss = self.answer_cross_entropy(hidden_states, labels, num_items_in_batch)

        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = lm_head(hidden_states[:, keep, :])

        score = score_loss = None
        head_hidden = hidden_states
        if past_length and prefix_hidden_states is not None:
            if prefix_hidden_states.shape[1] != past_length:
                raise ValueError(
                    f"prefix_hidden_states cover {prefix_hidden_states.shape[1]} tokens, the cache {past_length}"
                )
            prefix = prefix_hidden_states.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            head_hidden = torch.cat([prefix, hidden_states], dim=1)
        if compute_score and (past_length == 0 or prefix_hidden_states is not None):
            covers = "the cached prefix + input_ids" if head_hidden is not hidden_states else "input_ids"
            token_mask = self._head_token_mask(head_hidden, attention_mask, labels, prompt_mask, covers)
            score = self.score_head(head_hidden.detach() if detach_score_head else head_hidden, token_mask)
            if self._captured_head_scores is not None:
                self._captured_head_scores.append(score.detach())
            if score_labels is not None:
                score_loss = F.mse_loss(score.float(), score_labels.to(score.device).float())

        probe_loss = None
        if item_scores is not None and self.alignment_probe is not None:
            used = [m for m in MODALITIES if getattr(self.config, f"use_{m}")]
            missing = [m for m in used if m not in modality_embeds]
            if missing:
                raise ValueError(f"the alignment probe reads every modality of the model; no {missing} inputs were given")
            probe_loss = self.alignment_probe([modality_embeds[m] for m in used], item_scores)

        loss = None
        if lm_loss is not None or score_loss is not None or probe_loss is not None:
            w_lm = self.config.lm_loss_weight if lm_loss_weight is None else lm_loss_weight
            w_score = self.config.score_loss_weight if score_loss_weight is None else score_loss_weight
            parts = ((w_lm, lm_loss), (w_score, score_loss), (self.config.alignment_probe_weight, probe_loss))
            loss = sum(w * part for w, part in parts if part is not None)

        output = MllmDrCausalLMOutput(
            loss=loss,
            logits=logits,
            lm_loss=lm_loss,
            score_loss=score_loss,
            probe_loss=probe_loss,
            score=score,
            hidden_states=getattr(decoder_outputs, "hidden_states", None),
            attentions=getattr(decoder_outputs, "attentions", None),
            last_hidden_state=hidden_states if return_last_hidden_state else None,
        )
        own_fields = {f.name for f in fields(output)}
        for name in _CACHE_FIELDS:
            if name in own_fields and getattr(decoder_outputs, name, None) is not None:
                output[name] = getattr(decoder_outputs, name)
        return output

    def answer_cross_entropy(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal-LM cross-entropy on the answer tokens only (the LM head runs on those positions
        alone, not on thousands of prompt tokens)."""
        shift_labels = labels[:, 1:].to(hidden_states.device)
        answer = shift_labels != -100
        answer_hidden = hidden_states[:, :-1][answer]
        answer_logits = self.get_output_embeddings()(answer_hidden).float()
        total = F.cross_entropy(answer_logits, shift_labels[answer], reduction="sum")
        if num_items_in_batch is None:
            return total / answer.sum().clamp(min=1)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    @staticmethod
    def _head_token_mask(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
        covers: str = "input_ids",
    ) -> torch.Tensor:
        batch, length = hidden_states.shape[:2]
        if prompt_mask is not None:
            _check_mask("prompt_mask", prompt_mask, (batch, length), covers)
            mask = prompt_mask.to(hidden_states.device, torch.bool)
        else:
            mask = torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)
            if labels is not None:
                mask = mask & (labels.to(hidden_states.device) == -100)
        if attention_mask is not None and attention_mask.dim() == 2:
            mask = mask & attention_mask.to(hidden_states.device).bool()
        if mask.shape != (batch, length):
            raise ValueError(
                f"the score head's token mask must have shape {(batch, length)} (check attention_mask), "
                f"got {tuple(mask.shape)}"
            )
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every sample needs at least one prompt token for the score head")
        return mask

    # ----------------------------------------------------------------- generation
    def prepare_inputs_for_generation(self, *args: Any, is_first_iteration: bool | None = False, **kwargs: Any):
        """Features are consumed on the prefill only; the MAA head runs on the prefill only."""
        modality_inputs = {
            name: kwargs.pop(name)
            for name in (
                "audio_features",
                "audio_mask",
                "video_features",
                "video_mask",
                "audio_embeds",
                "video_embeds",
                "prompt_mask",
                "prefix_hidden_states",
            )
            if name in kwargs
        }
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        without_cache = kwargs.get("use_cache") is False
        if is_first_iteration or without_cache:
            model_inputs.update(modality_inputs)
        model_inputs["compute_score"] = bool(is_first_iteration)
        return model_inputs

    def generate(self, *args: Any, **kwargs: Any) -> MllmDrGenerateOutput:
        """``GenerationMixin.generate`` plus the MAA head's score from the prefill.

        Returns ``MllmDrGenerateOutput`` with ``sequences`` (prompt + new tokens, as usual) and
        ``head_score`` ``(batch * num_return_sequences,)``; other fields as with
        ``return_dict_in_generate=True``.
        """
        self._captured_head_scores = []
        try:
            result = super().generate(*args, **kwargs)
            scores = self._captured_head_scores
        finally:
            self._captured_head_scores = None
        head_score = scores[0] if scores else None
        if isinstance(result, torch.Tensor):
            return MllmDrGenerateOutput(sequences=result, head_score=head_score)
        values = {f.name: getattr(result, f.name, None) for f in fields(MllmDrGenerateOutput) if hasattr(result, f.name)}
        values["head_score"] = head_score
        return MllmDrGenerateOutput(**values)


def _past_length(cache_kwargs: dict[str, Any]) -> int:
    for cache in cache_kwargs.values():
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            return int(cache[0][0].shape[-2])
    return 0

MllmDrForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "LQFormer",
    "MllmDrProjector",
    "MultiHeadAttentionAggregation",
    "MllmDrPreTrainedModel",
    "MllmDrForConditionalGeneration",
    "MllmDrCausalLMOutput",
    "MllmDrGenerateOutput",
]
