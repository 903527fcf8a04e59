"""The Hugging Face ``Trainer`` for MLlm-DR (paper sections 3.4, 4.2): the joint loss (Eq. 3) with
fixed weights or the authors' blend computed from fractional progress, exact under gradient
accumulation and several processes; ``lm_loss`` / ``score_loss`` / ``probe_loss`` logged apart;
per-group learning rates; checkpoints that hold only what trains."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from ..checkpoints import TRAINABLE_STATE_FILE, load_named_state, trainable_state, unwrap
from ..io import write_json_atomic
from .resume import DATA_FILE

logger = logging.getLogger("mllm_dr.training")


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
        data_fingerprint: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.data_fingerprint = data_fingerprint
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
        # --detach_score_head: the head's MSE trains the head only (passed only when set: models without the option load too)
        detached = {"detach_score_head": True} if getattr(self.args, "detach_score_head", False) else {}
        outputs = model(**inputs, logits_to_keep=1, compute_score=w_score > 0 or not model.training, **detached)
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
        if self.data_fingerprint is not None:  # a resume compares it (mllm_dr.training.resume.check_data)
            write_json_atomic(os.path.join(output_dir, DATA_FILE), {"data_fingerprint": self.data_fingerprint})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE_STATE_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{resume_from_checkpoint} is not an MLlm-DR training checkpoint: {TRAINABLE_STATE_FILE} is missing")
        load_named_state(model if model is not None else self.model, load_file(path), path)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best:
            self._load_from_checkpoint(best)
