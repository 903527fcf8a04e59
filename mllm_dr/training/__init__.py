"""Training MLlm-DR on the Hugging Face ``Trainer`` (paper sections 3.4, 4.2).

* :class:`MllmDrTrainer`: the joint loss (Eq. 3), per-group learning rates, trainable-only checkpoints.
* :func:`build_stage_model`: the model a stage trains, everything else frozen.
* :func:`precompute_modality_embeddings`: stage 2's frozen LQ-former outputs, once per participant.
* The argument dataclasses of ``train.py`` / ``mllm-dr-train``; the run manifest.

Batches come from :class:`mllm_dr.data.MllmDrCollator`; exports are :mod:`mllm_dr.checkpoints`.
"""

from .arguments import ModelArguments, MllmDrTrainingArguments, TrainDataArguments
from .embeddings import participant_item_scores, precompute_modality_embeddings
from .manifest import file_fingerprint, git_commit, package_versions, truncation_summary
from .stages import StageModel, build_config_overrides, build_stage_model
from .trainer import PARAMETER_GROUPS, MllmDrTrainer, loss_weights, parameter_group

__all__ = [
    "MllmDrTrainer",
    "MllmDrTrainingArguments",
    "ModelArguments",
    "PARAMETER_GROUPS",
    "StageModel",
    "TrainDataArguments",
    "build_config_overrides",
    "build_stage_model",
    "file_fingerprint",
    "git_commit",
    "loss_weights",
    "package_versions",
    "parameter_group",
    "participant_item_scores",
    "precompute_modality_embeddings",
    "truncation_summary",
]
