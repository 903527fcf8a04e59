"""Building the model a training stage trains: which modules train, which stay frozen, and the
processor that goes with it (paper section 3.4: stage 1 trains the LQ-formers on a frozen LLM;
stage 2 freezes them and trains LoRA on the LLM plus the MAA head)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from configuration_mllm_dr import DEMO_TRANSCRIPT_TOKENS, LQFormerConfig, MllmDrConfig, transcript_budget
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import QUESTIONNAIRES, MllmDrProcessor, prompt_mode

from ..checkpoints import apply_lora, load_adapter_export, read_adapter_manifest
from ..data import feature_shape
from .arguments import PRESETS, ModelArguments, MllmDrTrainingArguments

PRESET_BUILDERS = {"paper": MllmDrConfig.paper_preset, "demo": MllmDrConfig.demo_preset}
assert set(PRESET_BUILDERS) == set(PRESETS)


@dataclass
class StageModel:
    """What a stage trains: ``model`` (a PEFT model in stage 2), its ``processor``, the base model's
    name, the LoRA config (stage 2) and the parameter-name patterns that must be exactly the
    trainable ones (``MllmDrTrainer`` checks them before the first step)."""

    model: torch.nn.Module
    processor: MllmDrProcessor
    base_model: str
    lora_config: Any
    trainable_patterns: list[str]
    mode: str

    @property
    def base(self) -> MllmDrForConditionalGeneration:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model


@dataclass(frozen=True)
class FeatureWidth:
    """The width of one modality's frames in the data, and the file (and participant) it was read from."""

    width: int
    file: str
    participant: str

    def where(self) -> str:
        return f"participant {self.participant}: {self.file}"


def data_feature_widths(
    splits: Iterable[datasets.Dataset], modalities: Iterable[str] = ("audio", "video")
) -> dict[str, FeatureWidth]:
    """Each modality's frame width, read once from the headers of its feature files (``feature_shape``)
    before a model is built; two files of one modality with different widths are refused, naming
    both. A modality without any readable file in ``splits`` is absent; an unreadable file is left to
    the feature check, which names its participant and refuses or skips it (``--on_error``)."""
    widths: dict[str, FeatureWidth] = {}
    for modality in modalities:
        seen: set[str] = set()
        for split in splits:
            if f"{modality}_files" not in split.column_names:
                continue
            for row in split.select_columns(["participant_id", f"{modality}_files"]):
                for file in row[f"{modality}_files"]:
                    if file in seen:
                        continue
                    seen.add(file)
                    try:
                        width = feature_shape(file)[1]
                    except ValueError:  # unreadable: the feature check refuses it, or skips it (--on_error skip)
                        continue
                    found = FeatureWidth(width, file, str(row["participant_id"]))
                    first = widths.setdefault(modality, found)
                    if found.width != first.width:
                        raise ValueError(
                            f"{modality} features differ in width: {first.width} ({first.where()}) and "
                            f"{found.width} ({found.where()})"
                        )
    return widths


def build_config_overrides(
    model_args: ModelArguments, feature_widths: Mapping[str, FeatureWidth] | None = None
) -> dict[str, Any]:
    """``MllmDrConfig`` fields from the preset (its LQ-former and head sizes; the backbone comes from
    ``--backbone``), then ``--model_overrides``, then the modality switches. ``feature_widths``
    (:func:`data_feature_widths`) set each LQ-former's ``feature_dim`` from the data; a
    ``--model_overrides`` ``feature_dim`` that differs from the data is refused."""
    base = PRESET_BUILDERS[model_args.preset]()
    overrides: dict[str, Any] = {
        "audio_config": base.audio_config.to_dict(),
        "video_config": base.video_config.to_dict(),
        "score_head_num_heads": base.score_head_num_heads,
        "score_head_hidden_size": base.score_head_hidden_size,
    }
    given = json.loads(model_args.model_overrides) if model_args.model_overrides else {}
    for key, value in given.items():
        if key in ("audio_config", "video_config") and isinstance(value, dict):
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    for modality, found in (feature_widths or {}).items():
        key = f"{modality}_config"
        explicit = given[key].get("feature_dim") if isinstance(given.get(key), dict) else None
        if explicit is not None and explicit != found.width:
            raise ValueError(
                f"--model_overrides sets {key}.feature_dim {explicit}, but the data's {modality} frames are "
                f"{found.width} wide ({found.where()}); leave feature_dim out: it is read from the data"
            )
        overrides[key] = {**overrides[key], "feature_dim": found.width}
    for key in ("audio_config", "video_config"):
        overrides[key] = LQFormerConfig(**{k: v for k, v in overrides[key].items() if k not in ("model_type", "transformers_version")})
    overrides["use_audio"] = model_args.use_audio
    overrides["use_video"] = model_args.use_video
    return overrides


def quantization(model_args: ModelArguments, args: MllmDrTrainingArguments) -> Any:
    """The 4-bit NF4 ``BitsAndBytesConfig`` of ``--load_in_4bit`` (QLoRA, stage 2), else None."""
    if not model_args.load_in_4bit:
        return None
    if args.stage != 2:
        raise SystemExit("--load_in_4bit is QLoRA: stage 2 only (stage 1 trains no LLM weights)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SystemExit("--load_in_4bit needs bitsandbytes: pip install 'mllm-dr[qlora]'") from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def build_stage_model(
    model_args: ModelArguments,
    args: MllmDrTrainingArguments,
    questionnaire: str,
    max_transcript_tokens: int | None,
    feature_widths: Mapping[str, FeatureWidth] | None = None,
) -> StageModel:
    """The model of ``args.stage``: stage 1 from ``--backbone`` (or a stage-1 output), stage 2 from
    ``--init_from`` (or the backbone, for the text-only baseline); everything frozen except what the
    stage trains. ``feature_widths`` (:func:`data_feature_widths`) size a fresh model's LQ-formers;
    a trained one (``--init_from``) must take the data's widths for the modalities it uses."""
    from peft import LoraConfig

    if model_args.init_from is not None:
        model, processor = load_adapter_export(
            model_args.init_from, backbone=model_args.backbone, quantization_config=quantization(model_args, args)
        )
        manifest = read_adapter_manifest(model_args.init_from)
        base_model = model_args.backbone or manifest["base_model"]
        if manifest.get("lora"):
            raise SystemExit(f"--init_from {model_args.init_from} already holds LoRA weights: give a stage-1 output")
        for name in ("use_audio", "use_video"):
            if getattr(model_args, name) and not getattr(model.config, name):
                raise SystemExit(f"--init_from {model_args.init_from} was trained without {name[4:]}")
        for modality, found in (feature_widths or {}).items():
            expected = getattr(model.config, f"{modality}_config").feature_dim
            if getattr(model_args, f"use_{modality}") and found.width != expected:
                raise SystemExit(
                    f"--init_from {model_args.init_from} takes {modality} frames {expected} wide, but the data's are "
                    f"{found.width} wide ({found.where()}): use features of the width it was trained on"
                )
        if processor.questionnaire != questionnaire:
            raise SystemExit(
                f"--init_from {model_args.init_from} was trained on {processor.questionnaire.upper()} items, "
                f"this corpus has {questionnaire.upper()}"
            )
        if model.alignment_probe is not None and args.alignment_probe_weight == 0:
            model.remove_alignment_probe()  # stage 2, or a stage 1 continued without the probe
        if args.stage == 1 and args.alignment_probe_weight > 0 and model.alignment_probe is None:
            raise SystemExit(f"--init_from {model_args.init_from} has no alignment probe: start stage 1 from --backbone")
    else:
        overrides = build_config_overrides(model_args, feature_widths)
        if args.stage == 1 and args.alignment_probe_weight > 0:
            overrides["alignment_probe_items"] = len(QUESTIONNAIRES[questionnaire])
        model = MllmDrForConditionalGeneration.from_backbone(
            model_args.backbone, quantization_config=quantization(model_args, args), **overrides
        )
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone, model.config, questionnaire=questionnaire,
            max_transcript_tokens=max_transcript_tokens or DEMO_TRANSCRIPT_TOKENS,
        )  # fmt: skip
        base_model = model_args.backbone
    if max_transcript_tokens is None:  # the preset's budget, from the backbone's context window
        window = getattr(model.config.text_config, "max_position_embeddings", None)
        max_transcript_tokens = transcript_budget(window, model_args.preset)
    processor.max_transcript_tokens = max_transcript_tokens
    processor.answer_order = model_args.answer_order  # saved with the processor: evaluation prompts the same way
    mode = prompt_mode(args.stage, model_args.use_audio, model_args.use_video, model_args.text_only)
    model.requires_grad_(False)
    if args.stage == 1:
        patterns = []
        for modality in ("audio", "video"):
            if getattr(model_args, f"use_{modality}"):
                getattr(model, f"{modality}_lqformer").requires_grad_(True)
                getattr(model, f"{modality}_projector").requires_grad_(True)
                patterns += [rf"{modality}_lqformer\..*", rf"{modality}_projector\..*"]
        if args.alignment_probe_weight > 0:
            model.config.alignment_probe_weight = args.alignment_probe_weight
            model.alignment_probe.requires_grad_(True)
            patterns.append(r"alignment_probe\..*")
        return StageModel(model, processor, base_model, None, patterns, mode)
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        bias="none",
    )
    if model_args.load_in_4bit:  # QLoRA: norms in fp32, the quantised weights frozen (PEFT's recipe)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    peft_model = apply_lora(model, lora_config)
    patterns = [r"language_model\..*lora_[AB]\..*"]
    if args.trains_score_head:
        model.score_head.requires_grad_(True)
        model.config.score_head_trained = True  # saved with every export: evaluation may trust the head
        patterns.append(r"score_head\..*")
    return StageModel(peft_model, processor, base_model, lora_config, patterns, mode)
