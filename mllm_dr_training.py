"""Training machinery for MLlm-DR on the Hugging Face ``Trainer`` (paper sections 3.4, 4.2).

* ``MllmDrCollator``: builds batches with the processor, reading each participant's cached
  features lazily (memory-mapped ``.npy``), or using precomputed LQ-former outputs in stage 2.
* ``MllmDrTrainer``: the joint loss (Eq. 3) with fixed weights or the authors' blend computed from
  fractional progress, exact under gradient accumulation and several processes; ``lm_loss`` and
  ``score_loss`` logged apart; per-group learning rates; checkpoints that hold only what trains.
* Exports: the small adapter export (LoRA + LQ-formers + projectors + head + the new tokens'
  embedding rows, with the base model recorded) and the merged, self-contained checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from configuration_mllm_dr import MllmDrConfig
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

logger = logging.getLogger(__name__)

TRAINABLE_STATE_FILE = "mllm_dr_trainable.safetensors"
MODULES_FILE = "mllm_dr_modules.safetensors"
ADAPTER_MANIFEST = "mllm_dr_adapter.json"
LORA_CONFIG_FILE = "lora_config.json"
DEFAULT_LORA_TARGET = r"language_model\..*\.(q_proj|v_proj)"
# MllmDrConfig fields that an export carries over to a model rebuilt on its base model.
MLLM_DR_FIELDS = (
    "audio_config", "video_config", "use_audio", "use_video", "score_head_num_heads", "score_head_hidden_size",
    "score_head_dropout", "lm_loss_weight", "score_loss_weight", "score_head_trained", "alignment_probe_items",
    "alignment_probe_weight", "score_min", "score_max", "initializer_range",
)


# ----------------------------------------------------------------------------- prompt modes
def prompt_mode(stage: int, use_audio: bool, use_video: bool, text_only: bool = False) -> str:
    """The processor mode a stage and the modality switches imply."""
    if text_only or (not use_audio and not use_video):
        if stage == 1:
            raise ValueError("stage 1 trains the LQ-formers: it needs at least one of audio or video")
        return "text"
    if stage == 1:
        return "features" if use_audio and use_video else ("audio" if use_audio else "video")
    return "full" if use_audio and use_video else ("text_audio" if use_audio else "text_video")


# ----------------------------------------------------------------------------- features
def read_feature_arrays(paths: Sequence[str]) -> np.ndarray | None:
    """Reads and concatenates feature files along frames; ``.npy`` is memory-mapped (never pickled)."""
    if not paths:
        return None
    arrays = []
    for path in paths:
        if str(path).endswith(".npy"):
            arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
        else:
            from corpora import read_feature_file

            arrays.append(read_feature_file(path))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


def feature_columns(row: dict[str, Any], modality: str) -> list[str]:
    """The cached feature files of a row when a cache was built, else its source files."""
    cached = row.get(f"{modality}_cache")
    if cached is not None:
        return list(cached)
    return list(row.get(f"{modality}_files") or [])


def feature_key(row: dict[str, Any], modality: str) -> tuple[str, tuple[str, ...]]:
    return (modality, tuple(feature_columns(row, modality)))


class MllmDrCollator:
    """Turns dataset rows into model inputs.

    Rows need ``transcript``, ``item_index``, ``label`` and, for stage 2 targets, ``rationale``;
    features come from ``{audio,video}_cache`` (or ``_files``). With ``embedding_cache`` (stage 2:
    frozen LQ-formers), the precomputed projector outputs replace the features.
    """

    def __init__(
        self,
        processor: MllmDrProcessor,
        mode: str,
        with_rationale: bool,
        embedding_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] | None = None,
        padding_side: str = "right",
        item_scores: dict[str, list[float]] | None = None,
    ):
        self.processor = processor
        self.item_scores = item_scores
        self.mode = mode
        self.with_rationale = with_rationale
        self.embedding_cache = embedding_cache
        self.padding_side = padding_side
        self.use_transcript, self.use_audio, self.use_video = processor._mode(mode)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        for row in rows:
            if row.get("label") is None:
                raise ValueError(
                    f"participant {row.get('participant_id')} item {row.get('item_index')}: no item label "
                    "(training and validation rows need one)"
                )
        rationales = None
        if self.with_rationale:
            missing = [(r.get("participant_id"), r.get("item_index")) for r in rows if not r.get("rationale")]
            if missing:
                raise ValueError(f"stage-2 targets need a rationale; missing for (participant, item) {missing}")
            rationales = [row["rationale"] for row in rows]
        features: dict[str, list[Any] | None] = {"audio": None, "video": None}
        embeds: dict[str, torch.Tensor] = {}
        for modality, used in (("audio", self.use_audio), ("video", self.use_video)):
            if not used:
                continue
            if self.embedding_cache is not None:
                embeds[modality] = torch.stack([self.embedding_cache[feature_key(row, modality)] for row in rows])
            else:
                features[modality] = [read_feature_arrays(feature_columns(row, modality)) for row in rows]
        batch = self.processor(
            [row["transcript"] for row in rows],
            [int(row["item_index"]) for row in rows],
            audio_features=features["audio"],
            video_features=features["video"],
            scores=[int(row["label"]) for row in rows],
            rationales=rationales,
            mode=self.mode,
            padding_side=self.padding_side,
            with_rationale=self.with_rationale,
        )
        data = dict(batch)
        for modality, tensor in embeds.items():
            data.pop(f"{modality}_features", None)
            data.pop(f"{modality}_mask", None)
            data[f"{modality}_embeds"] = tensor
        if self.item_scores is not None:
            data["item_scores"] = torch.tensor([self.item_scores[str(row["participant_id"])] for row in rows])
        return data


def participant_item_scores(rows: Iterable[dict[str, Any]], num_items: int) -> dict[str, list[float]]:
    """Participant -> every item's label (NaN where a row is missing): the alignment probe's targets."""
    table: dict[str, list[float]] = {}
    for row in rows:
        item = int(row["item_index"])
        if not 1 <= item <= num_items:
            raise ValueError(f"participant {row['participant_id']}: item_index {item} is outside 1..{num_items}")
        scores = table.setdefault(str(row["participant_id"]), [float("nan")] * num_items)
        if row.get("label") is not None:
            scores[item - 1] = float(row["label"])
    return table


@torch.no_grad()
def precompute_modality_embeddings(
    model: MllmDrForConditionalGeneration,
    processor: MllmDrProcessor,
    rows: Iterable[dict[str, Any]],
    modalities: Sequence[str],
    batch_size: int = 8,
) -> dict[tuple[str, tuple[str, ...]], torch.Tensor]:
    """Frozen LQ-formers + projectors run once per distinct feature sequence (a participant, or a
    CMDC question set), not once per item per epoch. Returns ``{(modality, files): (queries, hidden)}``."""
    was_training = model.training
    model.eval()
    cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
    device = next(model.parameters()).device
    for modality in modalities:
        keys = sorted({feature_key(row, modality) for row in rows})
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            arrays = [read_feature_arrays(list(files)) for _, files in chunk]
            padded, mask = processor._prepare_features(modality, arrays, len(chunk))
            out = model.get_modality_embeddings(modality, padded.to(device), mask.to(device))
            for key, value in zip(chunk, out.float().cpu()):
                cache[key] = value
    model.train(was_training)
    return cache


# ----------------------------------------------------------------------------- loss weights
def loss_weights(
    schedule: str, progress: float, lm_loss_weight: float, score_loss_weight: float
) -> tuple[float, float]:
    """Eq. 3's weights at a point of training.

    ``fixed``: the configured weights. ``linear_blend``: the authors' ``alpha * CE + (1 - alpha) *
    MSE`` with ``alpha`` the fractional progress in [0, 1] (their per-epoch alpha gave the LM loss
    weight 0 for the whole first epoch), scaled by the configured weights.
    """
    if schedule == "fixed":
        return lm_loss_weight, score_loss_weight
    if schedule == "linear_blend":
        alpha = min(max(progress, 0.0), 1.0)
        return alpha * lm_loss_weight, (1.0 - alpha) * score_loss_weight
    raise ValueError(f"loss schedule must be 'fixed' or 'linear_blend', got {schedule!r}")


# ----------------------------------------------------------------------------- parameter groups
PARAMETER_GROUPS = ("lora", "projector", "lqformer", "head", "probe", "other")


def parameter_group(name: str) -> str:
    """Which learning-rate group a trainable parameter belongs to (by its name)."""
    if "lora_" in name:
        return "lora"
    if "_projector." in name:
        return "projector"
    if "_lqformer." in name:
        return "lqformer"
    if "score_head." in name:
        return "head"
    if "alignment_probe." in name:
        return "probe"
    return "other"


def unwrap(model: torch.nn.Module) -> MllmDrForConditionalGeneration:
    """The ``MllmDrForConditionalGeneration`` inside DDP / PEFT wrappers."""
    while True:
        if isinstance(model, MllmDrForConditionalGeneration):
            return model
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            raise TypeError(f"no MllmDrForConditionalGeneration inside {type(model).__name__}")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, named as in the unwrapped model (LoRA names included)."""
    base = unwrap(model)
    return {name: p.detach().cpu().clone() for name, p in base.named_parameters() if p.requires_grad}


def new_token_rows(model: MllmDrForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The embedding (and untied LM-head) rows of ``<AudioHere>``/``<VideoHere>``: resizing
    initialised them randomly, so an export without them would reload to different outputs."""
    ids = torch.tensor([model.config.audio_token_id, model.config.video_token_id])
    rows = {"new_tokens.ids": ids, "new_tokens.input_embeddings": model.get_input_embeddings().weight[ids]}
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["new_tokens.output_embeddings"] = output.weight[ids]
    return {k: v.detach().cpu().contiguous() for k, v in rows.items()}


def load_new_token_rows(model: MllmDrForConditionalGeneration, state: dict[str, torch.Tensor]) -> None:
    ids = state["new_tokens.ids"].tolist()
    expected = [model.config.audio_token_id, model.config.video_token_id]
    if ids != expected:
        raise ValueError(f"saved placeholder token ids {ids} differ from the model's {expected}")
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = state["new_tokens.input_embeddings"].to(
            model.get_input_embeddings().weight.dtype
        )
        if "new_tokens.output_embeddings" in state:
            model.get_output_embeddings().weight[ids] = state["new_tokens.output_embeddings"].to(
                model.get_output_embeddings().weight.dtype
            )


def load_named_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copies ``state`` into the unwrapped model's parameters by name; refuses unknown names."""
    base = unwrap(model)
    parameters = dict(base.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} saved tensors do not exist in the model, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(f"{where}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(parameters[name].shape)}")
            parameters[name].copy_(tensor.to(parameters[name].dtype))


# ----------------------------------------------------------------------------- the trainer
class MllmDrTrainer(Trainer):
    """``Trainer`` with MLlm-DR's joint loss.

    The loss of a micro-batch is ``w_lm * sum(token CE) / T + w_score * sum(squared error) / S``
    where ``T`` and ``S`` count answer tokens and samples over the whole accumulation window and
    all processes (times the world size, since DDP averages gradients): accumulation 2 at batch 1
    then gives the same update as batch 2.
    """

    loss_is_scaled_for_ga = True  # transformers >= 5.2x reads this; older ones read model_accepts_loss_kwargs

    def __init__(
        self,
        *args: Any,
        loss_schedule: str = "fixed",
        lm_loss_weight: float = 1.0,
        score_loss_weight: float = 1.0,
        learning_rates: dict[str, float] | None = None,
        expected_trainable: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.loss_schedule = loss_schedule
        self.lm_loss_weight = lm_loss_weight
        self.score_loss_weight = score_loss_weight
        self.learning_rates = dict(learning_rates or {})
        self.expected_trainable = list(expected_trainable) if expected_trainable is not None else None
        self.model_accepts_loss_kwargs = True  # our compute_loss normalises over the window itself
        self._window_counts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._component_sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}

    # -- accumulation window
    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[override]
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch_samples)
        samples = sum(int(b["labels"].shape[0]) for b in batch_samples)
        counts = torch.tensor([tokens, samples], dtype=torch.long, device=device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts).view(-1, 2).sum(0)
        self._window_counts = (counts[0].clamp(min=1), counts[1].clamp(min=1))
        return batch_samples, counts[0]

    def current_loss_weights(self) -> tuple[float, float]:
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        return loss_weights(self.loss_schedule, progress, self.lm_loss_weight, self.score_loss_weight)

    # -- the joint loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        w_lm, w_score = self.current_loss_weights()
        labels = inputs["labels"]
        outputs = model(**inputs, logits_to_keep=1, compute_score=w_score > 0 or not model.training)
        n_tokens = (labels[:, 1:] != -100).sum()
        n_samples = labels.shape[0]
        lm_loss = outputs.lm_loss
        # Per-sample terms (the head's MSE, the stage-1 probe's MSE) share one window normalisation.
        per_sample = {
            "score": (w_score, outputs.score_loss),
            "probe": (unwrap(model).config.alignment_probe_weight, outputs.probe_loss),
        }
        token_share = sample_share = 1.0
        if model.training and num_items_in_batch is not None and self._window_counts is not None:
            total_tokens, total_samples = self._window_counts
            token_share = n_tokens / total_tokens * self.args.world_size
            sample_share = n_samples / total_samples * self.args.world_size
        loss = w_lm * (lm_loss * token_share)
        for weight, part in per_sample.values():
            if part is not None and weight > 0:
                loss = loss + weight * (part * sample_share)
        phase = "train" if model.training else "eval"
        sums = self._component_sums[phase]
        sums["lm_loss"] += float(lm_loss.detach()) * n_samples
        for name, (_, part) in per_sample.items():
            if part is not None:
                sums[f"{name}_loss"] += float(part.detach()) * n_samples
                sums[f"{name}_samples"] += n_samples
        sums["samples"] += n_samples
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # type: ignore[override]
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return (loss.detach(), None, None)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        phase = "eval" if "eval_loss" in logs else ("train" if "loss" in logs else None)
        if phase is not None:
            sums = self._component_sums[phase]
            prefix = "eval_" if phase == "eval" else ""
            if sums["samples"]:
                logs[f"{prefix}lm_loss"] = round(sums["lm_loss"] / sums["samples"], 6)
            for name in ("score", "probe"):
                if sums[f"{name}_samples"]:
                    logs[f"{prefix}{name}_loss"] = round(sums[f"{name}_loss"] / sums[f"{name}_samples"], 6)
            if phase == "train":
                w_lm, w_score = self.current_loss_weights()
                logs["lm_loss_weight"], logs["score_loss_weight"] = round(w_lm, 6), round(w_score, 6)
                if self.optimizer is not None:
                    for group in self.optimizer.param_groups:
                        if "group_name" in group:
                            logs[f"learning_rate_{group['group_name']}"] = group["lr"]
            self._component_sums[phase] = defaultdict(float)
        super().log(logs, *args, **kwargs)

    # -- optimizer with per-group learning rates
    def create_optimizer(self, model=None):  # type: ignore[override]
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = defaultdict(list)
        names_in_groups: dict[str, list[str]] = defaultdict(list)
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            group = parameter_group(name)
            groups[(group, name in decay)].append(parameter)
            names_in_groups[group].append(name)
        self.check_trainable(opt_model, names_in_groups)
        param_groups = []
        for (group, decayed), parameters in sorted(groups.items()):
            param_groups.append(
                {
                    "params": parameters,
                    "lr": self.learning_rates.get(group, self.args.learning_rate),
                    "weight_decay": self.args.weight_decay if decayed else 0.0,
                    "group_name": group,
                }
            )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
        summary = {g: len(n) for g, n in names_in_groups.items()}
        logger.info("optimizer groups (tensors per group): %s, learning rates: %s", summary, self.learning_rates)
        return self.optimizer

    def check_trainable(self, model: torch.nn.Module, names_in_groups: dict[str, list[str]]) -> None:
        """The authors' stage 1 silently left the video LQ-former and both query tensors out of the
        optimizer: refuse to start unless exactly the parameters meant to train are in it."""
        if self.expected_trainable is None:
            return
        base_names = {name for name, p in unwrap(model).named_parameters() if p.requires_grad}
        in_optimizer = {n for names in names_in_groups.values() for n in names}
        if len(in_optimizer) != len(base_names):
            raise RuntimeError(f"optimizer holds {len(in_optimizer)} tensors but {len(base_names)} require grad")
        expected = {n for n, _ in unwrap(model).named_parameters() if any(re.fullmatch(p, n) for p in self.expected_trainable)}
        missing, extra = sorted(expected - base_names), sorted(base_names - expected)
        if missing or extra:
            raise RuntimeError(
                f"trainable parameters differ from the plan: missing {missing[:5]} ({len(missing)}), "
                f"unexpected {extra[:5]} ({len(extra)})"
            )

    # -- checkpoints hold only what trains (never a copy of the frozen backbone)
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        base = unwrap(self.model)
        save_file(trainable_state(self.model), os.path.join(output_dir, TRAINABLE_STATE_FILE), metadata={"format": "pt"})
        base.config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE_STATE_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{resume_from_checkpoint} is not an MLlm-DR training checkpoint: {TRAINABLE_STATE_FILE} is missing")
        load_named_state(model if model is not None else self.model, load_file(path), path)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best:
            self._load_from_checkpoint(best)


# ----------------------------------------------------------------------------- exports
def lora_config_to_dict(lora_config: Any) -> dict[str, Any]:
    data = lora_config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def export_adapter(
    model: torch.nn.Module,
    processor: MllmDrProcessor,
    output_dir: str | Path,
    base_model: str,
    lora_config: Any = None,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """The small export: LoRA (when present) + LQ-formers + projectors + head + the new tokens'
    embedding rows, the config and the processor, with the base model recorded. Reload with
    ``load_adapter_export``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = unwrap(model)
    state = {
        name: p.detach().cpu().contiguous()
        for name, p in base.named_parameters()
        if not name.startswith("language_model.") or "lora_" in name
    }
    state.update(new_token_rows(base))
    save_file(state, str(output_dir / MODULES_FILE), metadata={"format": "pt"})
    base.config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    for module in ("configuration_mllm_dr.py", "modeling_mllm_dr.py", "processing_mllm_dr.py"):
        shutil.copyfile(Path(__file__).resolve().parent / module, output_dir / module)
    if lora_config is not None:
        (output_dir / LORA_CONFIG_FILE).write_text(json.dumps(lora_config_to_dict(lora_config), indent=2))
    record = {"base_model": base_model, "lora": lora_config is not None, **(manifest or {})}
    (output_dir / ADAPTER_MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    return output_dir


def apply_lora(model: MllmDrForConditionalGeneration, lora_config: Any) -> Any:
    """LoRA on the LLM's modules only (a regex that cannot hit the LQ-formers' own q/v projections)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config)


def load_adapter_export(
    directory: str | Path, backbone: str | None = None, merge: bool = False, dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, MllmDrProcessor]:
    """Rebuilds a model from an adapter export (or a stage-1 output) on its recorded base model
    (or ``backbone``). Returns ``(model, processor)``; with LoRA, a PEFT model unless ``merge``."""
    directory = Path(directory)
    manifest_path = directory / ADAPTER_MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{directory} is not an MLlm-DR adapter export: {ADAPTER_MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text())
    base_model = backbone or manifest["base_model"]
    config = MllmDrConfig.from_pretrained(directory)
    # The tokenizer loader consults the folder's config.json, whose auto_map names our own code.
    processor = MllmDrProcessor.from_pretrained(directory, trust_remote_code=True)
    overrides = {name: getattr(config, name) for name in MLLM_DR_FIELDS}
    model = MllmDrForConditionalGeneration.from_backbone(base_model, tokenizer=processor.tokenizer, dtype=dtype, **overrides)
    if (model.config.audio_token_id, model.config.video_token_id) != (config.audio_token_id, config.video_token_id):
        raise ValueError(
            f"{directory}: the base model {base_model} gives placeholder ids "
            f"{(model.config.audio_token_id, model.config.video_token_id)}, the export used "
            f"{(config.audio_token_id, config.video_token_id)}"
        )
    state = load_file(str(directory / MODULES_FILE))
    load_new_token_rows(model, state)
    state = {k: v for k, v in state.items() if not k.startswith("new_tokens.")}
    result: torch.nn.Module = model
    if manifest.get("lora"):
        from peft import LoraConfig

        lora_config = LoraConfig(**json.loads((directory / LORA_CONFIG_FILE).read_text()))
        result = apply_lora(model, lora_config)
    load_named_state(result, state, str(directory / MODULES_FILE))
    if merge and manifest.get("lora"):
        result = result.merge_and_unload()
    result.eval()
    return result, processor


def export_merged(model: torch.nn.Module, processor: MllmDrProcessor, output_dir: str | Path) -> Path:
    """A self-contained checkpoint (LoRA merged): ``AutoModel.from_pretrained(dir, trust_remote_code=True)``."""
    output_dir = Path(output_dir)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged = unwrap(merged)
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


# ----------------------------------------------------------------------------- manifest and card
def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "safetensors", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_fingerprint(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def model_card(
    stage: int,
    base_model: str,
    dataset_format: str,
    split_sizes: dict[str, int],
    metrics: dict[str, Any] | None,
    mode: str,
) -> str:
    """README.md for a checkpoint. Built from names and numbers only: it never holds training text."""
    metric_lines = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in (metrics or {}).items())
    metrics_block = (
        f"| metric | value |\n|---|---|\n{metric_lines}" if metric_lines else "No metrics were measured for this checkpoint."
    )
    sizes = ", ".join(f"{k}: {v} samples" for k, v in split_sizes.items())
    return f"""---
library_name: transformers
base_model: {base_model}
tags: [mllm-dr, depression-recognition, explainability, research-only]
---

# MLlm-DR checkpoint (stage {stage})

An MLlm-DR model (LQ-formers over pre-extracted audio/visual features, a causal LM with LoRA, and
a multi-head attention aggregation score head) for explainable PHQ item scoring.

- **Base model:** `{base_model}`
- **Training stage:** {stage} ({"LQ-former alignment, LLM frozen" if stage == 1 else "LoRA + score head, LQ-formers frozen"})
- **Prompt mode:** `{mode}`
- **Data:** `{dataset_format}` corpus ({sizes}). No transcript or rationale text is included here.

## Metrics

{metrics_block}

## Intended use and limitations

Research use only. **This is not a diagnostic device** and must not be used to diagnose, screen or
treat anyone. Scores and rationales can be wrong, biased by the small training corpora
(E-DAIC-WOZ: 275 participants, CMDC: 78), and sensitive to recording conditions. Weights trained
on licensed corpora may be subject to those corpora's licence terms: check before sharing.

Load with:

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("<this folder>", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("<this folder>", trust_remote_code=True)
```
"""


__all__ = [
    "MllmDrCollator",
    "MllmDrTrainer",
    "PARAMETER_GROUPS",
    "DEFAULT_LORA_TARGET",
    "export_adapter",
    "export_merged",
    "load_adapter_export",
    "loss_weights",
    "model_card",
    "precompute_modality_embeddings",
    "prompt_mode",
    "read_feature_arrays",
]
