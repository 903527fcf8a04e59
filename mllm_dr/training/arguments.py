"""Command-line arguments of ``train.py`` / ``mllm-dr-train`` (``HfArgumentParser`` dataclasses; the
corpus options are :class:`mllm_dr.data.CorpusArguments`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..checkpoints import DEFAULT_LORA_TARGET

PRESETS = ("paper", "demo")
# What --preset paper sets besides the model sizes (configuration_mllm_dr.MllmDrConfig.paper_preset),
# each overridable by passing the flag: section 4.2 of the paper and, where the paper is silent, the
# authors' code (prior art: per-group learning rates, gradient clipping at 1.0). The paper does not
# state the batch size; the sampling settings are evaluation's (GenerationArguments).
PAPER_RECIPE = {
    "num_train_epochs": 10.0,         # "trained for 10 epochs"
    "lora_learning_rate": 1e-5,       # "the learning rate is set to 0.00001"
    "projector_learning_rate": 5e-4,  # authors' code
    "lqformer_learning_rate": 1e-4,   # authors' code
    "head_learning_rate": 1e-4,       # authors' code
    "max_grad_norm": 1.0,             # authors' code
    "lora_r": 16,                     # "r = 16"
    "lora_alpha": 32,                 # "alpha = 32"
    "lora_dropout": 0.1,              # "dropout = 0.1"
    "lora_target_modules": DEFAULT_LORA_TARGET,  # "the query and value projection matrices"
}


@dataclass
class ModelArguments:
    """What model to train: the backbone or a stage-1 output, the preset and the modality switches."""

    backbone: str | None = field(
        default=None, metadata={"help": "Causal-LM folder or Hub id (stage 1, or stage 2 without --init_from)."}
    )
    init_from: str | None = field(default=None, metadata={"help": "Stage 2: the stage-1 output folder."})
    allow_stage2_without_stage1: bool = field(
        default=False, metadata={"help": "Stage 2 on freshly initialised LQ-formers (normally an error)."}
    )
    preset: str = field(
        default="paper",
        metadata={"help": "paper: the section 4.2 sizes and recipe (10 epochs, the per-group learning rates, LoRA "
                  "r 16 / alpha 32 / dropout 0.1 on q/v, clipping 1.0; each flag you pass wins) | demo: small "
                  "LQ-formers and head only.", "choices": list(PRESETS)},
    )
    model_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of MllmDrConfig fields, e.g. '{\"audio_config\": {\"feature_dim\": 1024}}'."},
    )
    use_audio: bool = field(default=True, metadata={"help": "Use the audio LQ-former (--no_use_audio: 'w/o LQ-A')."})
    use_video: bool = field(default=True, metadata={"help": "Use the visual LQ-former (--no_use_video: 'w/o LQ-V')."})
    text_only: bool = field(default=False, metadata={"help": "The paper's text-only LoRA baseline (stage 2 only)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (stage 2)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (stage 2)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (stage 2)."})
    answer_order: str = field(
        default="reason_first",
        metadata={"help": "Stage 2 targets: reason_first (paper Table 1: 'Evaluation Reason: ...' then 'Score: N') "
                  "or score_first (the authors' code: the score, then the reason).",
                  "choices": ["reason_first", "score_first"]},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Stage 2 as QLoRA: the backbone loaded in 4-bit NF4 (bitsandbytes, `pip install "
                  "mllm-dr[qlora]`), LoRA and the head trained on top; exports the adapter only (apply it to "
                  "the full-precision backbone with mllm_dr.load_adapter_export)."},
    )
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGET, metadata={"help": "Regex over module names that get LoRA (the LLM's q/v projections)."}
    )


@dataclass
class TrainDataArguments:
    """Training targets and sizes (the corpus itself is chosen by the corpus options)."""

    rationales: str | None = field(
        default=None, metadata={"help": "rationales.jsonl (stage-2 targets; written by mllm-dr-distill)."}
    )
    max_transcript_tokens: int | None = field(
        default=None,
        metadata={"help": "Transcript budget in tokens (only the transcript is ever truncated). Default: with "
                  "--preset paper the complete interview as far as the backbone's context window allows (the "
                  "window less 768 tokens of prompt and answer); with --preset demo 1536."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many dev rows."})
    allow_data_change: bool = field(
        default=False,
        metadata={"help": "Resume a checkpoint on data other than it was trained on (normally refused: labels, "
                  "rationales, transcripts or feature files changed)."},
    )


@dataclass
class MllmDrTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus MLlm-DR's stages, joint loss and per-group learning rates.

    ``--learning_rate`` is not used: every trainable parameter belongs to a group with its own rate.
    """

    stage: int = field(default=2, metadata={"help": "1 (LQ-formers) or 2 (LoRA + head).", "choices": [1, 2]})
    joint_loss: bool = field(default=True, metadata={"help": "CE + MSE (--no_joint_loss: CE only, 'w/o Joint')."})
    lm_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the answer cross-entropy in Eq. 3."})
    score_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the MAA head's MSE in Eq. 3."})
    detach_score_head: bool = field(
        default=False,
        metadata={"help": "Stage 2: the MAA head's MSE trains the head only, not the LoRA weights (the LLM then learns "
                  "from the cross-entropy alone; not in the paper, whose joint loss trains both)."},
    )
    loss_schedule: str = field(
        default="fixed",
        metadata={"help": "fixed | linear_blend (the authors' moving blend, from fractional progress).",
                  "choices": ["fixed", "linear_blend"]},
    )
    lora_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the LoRA weights (stage 2)."})
    projector_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the projectors (stage 1)."})
    lqformer_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the LQ-formers (stage 1)."})
    head_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the MAA head (stage 2)."})
    alignment_probe_weight: float = field(
        default=0.0,
        metadata={"help": "Stage 1: weight of an auxiliary linear probe that regresses every PHQ item's score from "
                  "the projected queries (not in the paper; 0 = off). See README, 'The stage-1 alignment probe'."},
    )
    alignment_probe_learning_rate: float = field(
        default=1e-2, metadata={"help": "Learning rate of the stage-1 alignment probe."}
    )
    select_on: str = field(
        default="auto",
        metadata={"help": "Which dev evaluation's weights are exported: auto (the MAA head's dev MSE, score_loss, "
                  "when stage 2 trains the head; else the answer cross-entropy, lm_loss), score_loss, lm_loss, "
                  "loss (the weighted sum), or last (the last step; also used when there is no dev evaluation).",
                  "choices": ["auto", "score_loss", "lm_loss", "loss", "last"]},
    )
    final_dev_eval: bool = field(
        default=True,
        metadata={"help": "Score the dev split once after training (--no_final_dev_eval skips it, e.g. for short demo runs)."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    i_may_share_weights: bool = field(
        default=False,
        metadata={"help": "Required with --push_to_hub: you confirm the data licence lets you share these weights."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator reads id columns."})
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels", "score_labels"], metadata={"help": "Target fields of a batch."}
    )
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes losses only."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to score the dev split: no | steps | epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no | steps | epoch."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})

    def __post_init__(self):
        # `accelerate launch --multi_gpu` (and a config file with `distributed_type: MULTI_GPU`, the only
        # way accelerate starts several local processes) runs torchrun, which sets WORLD_SIZE but never
        # ACCELERATE_USE_CPU. Without an accelerator, TrainingArguments then builds a non-distributed
        # state in every process: independent single-process trainings into one output folder. Several
        # processes and no accelerator can only mean CPU ranks, so ask for them (gloo) before the parent
        # sets the state up.
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True
        super().__post_init__()

    @property
    def trains_score_head(self) -> bool:
        """Stage 2 with the joint loss and a positive MSE weight: the MAA head is trained."""
        return self.stage == 2 and self.joint_loss and self.score_loss_weight > 0

    def configure_selection(self, has_dev: bool, head_trained: bool) -> dict[str, object]:
        """Sets the Trainer's best-checkpoint selection from ``--select_on`` (lower is better for every
        choice) and returns what the manifest records about it."""
        metric = self.select_on
        if metric == "auto":
            metric = "score_loss" if head_trained else "lm_loss"
        if metric == "score_loss" and not head_trained:
            raise SystemExit("--select_on score_loss: this run trains no score head (stage 1, or --no_joint_loss)")
        if metric == "last" or not has_dev or self.eval_strategy == "no":
            reason = "asked" if metric == "last" else "no dev split" if not has_dev else "--eval_strategy no"
            self.load_best_model_at_end = False
            return {"metric": None, "exported": "last step", "reason": reason}
        if self.save_strategy != self.eval_strategy or (
            self.eval_strategy == "steps" and (self.save_steps or 0) % (self.eval_steps or self.logging_steps or 1)
        ):
            raise SystemExit(
                f"--select_on {self.select_on}: checkpoints must be saved where the dev split is scored "
                f"(--save_strategy {self.save_strategy} vs --eval_strategy {self.eval_strategy}); align them, or "
                "pass --select_on last"
            )
        self.load_best_model_at_end, self.metric_for_best_model, self.greater_is_better = True, metric, False
        return {"metric": f"eval_{metric}", "exported": "best dev evaluation"}

    def group_learning_rates(self) -> dict[str, float]:
        """Learning rate per parameter group (``mllm_dr.training.parameter_group``)."""
        return {
            "lora": self.lora_learning_rate,
            "projector": self.projector_learning_rate,
            "lqformer": self.lqformer_learning_rate,
            "head": self.head_learning_rate,
            "probe": self.alignment_probe_learning_rate,
        }


def explicit_flags(argv: list[str]) -> set[str]:
    """Field names given on a command line (``--name value``, ``--name=value``, ``--no_name``)."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names |= {name, name[3:]} if name.startswith("no_") else {name}
    return names


def apply_preset_recipe(model_args: ModelArguments, args: MllmDrTrainingArguments, given: set[str]) -> dict[str, object]:
    """Sets :data:`PAPER_RECIPE` on the parsed arguments for ``--preset paper``, except the fields in
    ``given`` (what the user passed); returns the values it set."""
    if model_args.preset != "paper":
        return {}
    applied = {}
    for name, value in PAPER_RECIPE.items():
        if name in given:
            continue
        target = model_args if hasattr(model_args, name) and not hasattr(args, name) else args
        setattr(target, name, value)
        applied[name] = value
    return applied
