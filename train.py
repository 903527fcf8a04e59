#!/usr/bin/env python
"""Two-stage MLlm-DR training on the Hugging Face Trainer (paper Figure 2, sections 3.4, 4.2).

    # stage 1: LLM frozen, LQ-formers learn to make it say "Score: N" from the features alone
    python train.py --stage 1 --backbone BACKBONE --data_dir CORPUS --dataset_format edaic --output_dir runs/s1
    # stage 2: LQ-formers frozen, LoRA (q_proj, v_proj) + MAA head on rationale + score targets
    python train.py --stage 2 --init_from runs/s1 --data_dir CORPUS --dataset_format edaic \\
        --rationales CORPUS/rationales.jsonl --output_dir runs/s2

The same flags work under ``accelerate launch train.py ...``. Trains on ``train``, selects on
``dev``, never reads ``test``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configuration_mllm_dr import LQFormerConfig, MllmDrConfig  # noqa: E402
from mllm_dr_training import (  # noqa: E402
    DEFAULT_LORA_TARGET,
    MllmDrCollator,
    MllmDrTrainer,
    apply_lora,
    export_adapter,
    export_merged,
    file_fingerprint,
    git_commit,
    load_adapter_export,
    model_card,
    package_versions,
    participant_item_scores,
    precompute_modality_embeddings,
    prompt_mode,
    write_json_atomic,
)
from modeling_mllm_dr import MllmDrForConditionalGeneration  # noqa: E402
from processing_mllm_dr import QUESTIONNAIRES, MllmDrProcessor  # noqa: E402

logger = logging.getLogger("train")


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=None, metadata={"help": "Causal-LM folder or Hub id (stage 1, or stage 2 without --init_from)."}
    )
    init_from: str | None = field(default=None, metadata={"help": "Stage 2: the stage-1 output folder."})
    allow_stage2_without_stage1: bool = field(
        default=False, metadata={"help": "Stage 2 on freshly initialised LQ-formers (normally an error)."}
    )
    preset: str = field(default="paper", metadata={"help": "Hyperparameter preset: paper | demo."})
    model_overrides: str | None = field(
        default=None, metadata={"help": "JSON object of MllmDrConfig fields, e.g. '{\"audio_config\": {\"feature_dim\": 1024}}'."}
    )
    use_audio: bool = field(default=True, metadata={"help": "Use the audio LQ-former (--no_use_audio: 'w/o LQ-A')."})
    use_video: bool = field(default=True, metadata={"help": "Use the visual LQ-former (--no_use_video: 'w/o LQ-V')."})
    text_only: bool = field(default=False, metadata={"help": "The paper's text-only LoRA baseline (stage 2 only)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: str = field(default=DEFAULT_LORA_TARGET, metadata={"help": "Regex over module names."})


@dataclass
class DataArguments:
    data_dir: str = field(default=None, metadata={"help": "Corpus root, or a saved datasets folder for 'prepared'."})
    dataset_format: str = field(default="edaic", metadata={"help": "edaic | daic | cmdc | prepared"})
    rationales: str | None = field(default=None, metadata={"help": "rationales.jsonl (stage 2 targets)."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the per-participant feature cache goes (default DATA_DIR/.mllm_dr_cache)."}
    )
    visual: str = field(default="resnet", metadata={"help": "E-DAIC visual features: resnet | openface."})
    on_error: str = field(default="raise", metadata={"help": "Broken participants: raise | skip."})
    max_transcript_tokens: int = 1536
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    cmdc_split: str = field(default="authors", metadata={"help": "CMDC split: authors | fold1..fold5."})


@dataclass
class MllmDrTrainingArguments(TrainingArguments):
    stage: int = field(default=2, metadata={"help": "1 (LQ-formers) or 2 (LoRA + head)."})
    joint_loss: bool = field(default=True, metadata={"help": "CE + MSE (--no_joint_loss: CE only, 'w/o Joint')."})
    lm_loss_weight: float = 1.0
    score_loss_weight: float = 1.0
    loss_schedule: str = field(default="fixed", metadata={"help": "fixed | linear_blend (the authors' moving blend)."})
    lora_learning_rate: float = 1e-5
    projector_learning_rate: float = 5e-4
    lqformer_learning_rate: float = 1e-4
    head_learning_rate: float = 1e-4
    alignment_probe_weight: float = field(
        default=0.0,
        metadata={"help": "Stage 1: weight of an auxiliary linear probe that regresses every PHQ item's score from "
                  "the projected queries (not in the paper; 0 = off). See README, 'The stage-1 alignment probe'."},
    )
    alignment_probe_learning_rate: float = 1e-2
    final_dev_eval: bool = field(
        default=True,
        metadata={"help": "Score the dev split once after training (--no_final_dev_eval skips it, e.g. for short demo runs)."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    i_may_share_weights: bool = field(
        default=False,
        metadata={"help": "Required with --push_to_hub: you confirm the data licence lets you share these weights."},
    )
    remove_unused_columns: bool = False
    label_names: list[str] | None = field(default_factory=lambda: ["labels", "score_labels"])
    prediction_loss_only: bool = True
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_steps: float = 10
    save_total_limit: int | None = 2


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, MllmDrTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, MllmDrTrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(sys.argv[1])
    return parser.parse_args_into_dataclasses(args=argv)


def validate(model_args: ModelArguments, data_args: DataArguments, args: MllmDrTrainingArguments) -> None:
    if args.stage not in (1, 2):
        raise SystemExit(f"--stage must be 1 or 2, got {args.stage}")
    if data_args.data_dir is None:
        raise SystemExit("--data_dir is required")
    if data_args.dataset_format not in ("edaic", "daic", "cmdc", "prepared"):
        raise SystemExit(f"--dataset_format must be edaic, daic, cmdc or prepared, got {data_args.dataset_format}")
    if model_args.text_only:
        if args.stage == 1:
            raise SystemExit("--text_only is the text-only LoRA baseline: it has no stage 1")
        model_args.use_audio = model_args.use_video = False
    if args.stage == 1 and not (model_args.use_audio or model_args.use_video):
        raise SystemExit("stage 1 trains the LQ-formers: keep at least one of --use_audio / --use_video")
    needs_lqformers = model_args.use_audio or model_args.use_video
    if args.stage == 2 and needs_lqformers and model_args.init_from is None and not model_args.allow_stage2_without_stage1:
        raise SystemExit(
            "stage 2 starts from stage-1 LQ-formers: pass --init_from STAGE1_DIR (or --allow_stage2_without_stage1 "
            "to train on untrained, frozen LQ-formers on purpose, or --text_only for the text-only baseline)"
        )
    if model_args.init_from is None and model_args.backbone is None:
        raise SystemExit("--backbone is required unless --init_from gives a stage-1 output")
    if args.alignment_probe_weight < 0:
        raise SystemExit(f"--alignment_probe_weight must be >= 0, got {args.alignment_probe_weight}")
    if args.alignment_probe_weight > 0 and args.stage != 1:
        raise SystemExit("--alignment_probe_weight is a stage-1 objective (stage 2 removes the probe)")
    if args.stage == 2 and data_args.rationales is None and data_args.dataset_format != "prepared":
        raise SystemExit("stage 2 trains on rationale + score targets: pass --rationales FILE")
    if args.push_to_hub and not args.i_may_share_weights:
        raise SystemExit(
            "--push_to_hub uploads weights trained on licensed data (E-DAIC-WOZ, DAIC-WOZ and CMDC forbid sharing "
            "transcripts and may restrict derived weights). Check your data licence; if it allows sharing, add "
            "--i_may_share_weights."
        )
    out = Path(args.output_dir)
    resuming = args.resume_from_checkpoint is not None
    if out.exists() and any(out.iterdir()) and not args.overwrite_output_dir and not resuming:
        raise SystemExit(f"{out} exists and is not empty: pass --overwrite_output_dir or --resume_from_checkpoint")


def load_data(data_args: DataArguments, processor_settings: dict[str, Any]):
    """DatasetDict with train/dev (test is never read here), feature cache built for corpora."""
    import datasets

    if data_args.dataset_format == "prepared":
        data = datasets.load_from_disk(data_args.data_dir)
        if data_args.rationales:
            from rationales import load_rationales

            table = load_rationales(data_args.rationales)

            def attach(row):
                record = table.get((str(row["participant_id"]), int(row["item_index"])))
                return {"rationale": record.rationale if record else row.get("rationale")}

            data = data.map(attach)
    else:
        from corpora import build_feature_cache, load_corpus

        kwargs: dict[str, Any] = {"on_error": data_args.on_error, "rationales_path": data_args.rationales}
        if data_args.dataset_format == "edaic":
            kwargs["visual"] = data_args.visual
        if data_args.dataset_format == "cmdc":
            kwargs["split"] = data_args.cmdc_split
        data = load_corpus(data_args.data_dir, data_args.dataset_format, **kwargs)
        cache_dir = data_args.feature_cache_dir or os.path.join(data_args.data_dir, ".mllm_dr_cache")
        data = datasets.DatasetDict({k: v for k, v in data.items() if k in ("train", "dev")})
        data = build_feature_cache(data, cache_dir, on_error=data_args.on_error, **processor_settings)
    missing = [split for split in ("train", "dev") if split not in data]
    if missing:
        raise SystemExit(f"{data_args.data_dir}: no {missing} split")
    train, dev = data["train"], data["dev"]
    if data_args.max_train_samples:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples:
        dev = dev.select(range(min(len(dev), data_args.max_eval_samples)))
    return train, dev


def build_config_overrides(model_args: ModelArguments) -> dict[str, Any]:
    preset = {"paper": MllmDrConfig.paper_preset, "demo": MllmDrConfig.demo_preset}.get(model_args.preset)
    if preset is None:
        raise SystemExit(f"--preset must be paper or demo, got {model_args.preset}")
    base = preset()  # only its LQ-former and head settings are used: the backbone comes from --backbone
    overrides: dict[str, Any] = {
        "audio_config": base.audio_config.to_dict(),
        "video_config": base.video_config.to_dict(),
        "score_head_num_heads": base.score_head_num_heads,
        "score_head_hidden_size": base.score_head_hidden_size,
    }
    if model_args.model_overrides:
        for key, value in json.loads(model_args.model_overrides).items():
            if key in ("audio_config", "video_config") and isinstance(value, dict):
                overrides[key] = {**overrides[key], **value}
            else:
                overrides[key] = value
    for key in ("audio_config", "video_config"):
        overrides[key] = LQFormerConfig(**{k: v for k, v in overrides[key].items() if k != "model_type"})
    overrides["use_audio"] = model_args.use_audio
    overrides["use_video"] = model_args.use_video
    return overrides


def build_model(model_args: ModelArguments, data_args: DataArguments, args: MllmDrTrainingArguments):
    """Returns (model to train, processor, base model name, lora config or None, trainable patterns)."""
    from peft import LoraConfig

    questionnaire = "phq9" if data_args.dataset_format == "cmdc" else "phq8"
    if model_args.init_from is not None:
        model, processor = load_adapter_export(model_args.init_from, backbone=model_args.backbone)
        manifest = json.loads((Path(model_args.init_from) / "mllm_dr_adapter.json").read_text())
        base_model = model_args.backbone or manifest["base_model"]
        if manifest.get("lora"):
            raise SystemExit(f"--init_from {model_args.init_from} already holds LoRA weights: give a stage-1 output")
        for name in ("use_audio", "use_video"):
            if getattr(model_args, name) and not getattr(model.config, name):
                raise SystemExit(f"--init_from {model_args.init_from} was trained without {name[4:]}")
        if model.alignment_probe is not None and args.alignment_probe_weight == 0:
            model.remove_alignment_probe()  # stage 2, or a stage 1 continued without the probe
        if args.stage == 1 and args.alignment_probe_weight > 0 and model.alignment_probe is None:
            raise SystemExit(f"--init_from {model_args.init_from} has no alignment probe: start stage 1 from --backbone")
    else:
        overrides = build_config_overrides(model_args)
        if args.stage == 1 and args.alignment_probe_weight > 0:
            overrides["alignment_probe_items"] = len(QUESTIONNAIRES[questionnaire])
        model = MllmDrForConditionalGeneration.from_backbone(model_args.backbone, **overrides)
        processor = MllmDrProcessor.from_config(
            model.tokenizer_for_backbone,
            model.config,
            questionnaire=questionnaire,
            max_transcript_tokens=data_args.max_transcript_tokens,
        )
        base_model = model_args.backbone
    processor.max_transcript_tokens = data_args.max_transcript_tokens
    model.requires_grad_(False)
    lora_config = None
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
        return model, processor, base_model, None, patterns
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        bias="none",
    )
    peft_model = apply_lora(model, lora_config)
    patterns = [r"language_model\..*lora_[AB]\..*"]
    if args.joint_loss and args.score_loss_weight > 0:
        model.score_head.requires_grad_(True)
        model.config.score_head_trained = True  # saved with every export: evaluation may trust the head
        patterns.append(r"score_head\..*")
    return peft_model, processor, base_model, lora_config, patterns


def count_truncated(processor: MllmDrProcessor, rows, mode: str) -> dict[str, int]:
    """How many transcripts exceed the token budget (counted once per participant)."""
    if not processor._mode(mode)[0]:
        return {"participants": 0, "truncated": 0}
    seen: dict[str, int] = {}
    for row in rows:
        pid = str(row["participant_id"])
        if pid not in seen:
            seen[pid] = len(processor._encode(row["transcript"]))
    return {"participants": len(seen), "truncated": sum(n > processor.max_transcript_tokens for n in seen.values())}


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    validate(model_args, data_args, args)
    if not args.joint_loss:
        args.score_loss_weight = 0.0
    if args.stage == 1:
        args.score_loss_weight = 0.0  # the head is not part of stage 1
    set_seed(args.seed)

    model, processor, base_model, lora_config, patterns = build_model(model_args, data_args, args)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    settings = {
        "audio_frame_policy": cfg.audio_config.frame_policy,
        "audio_max_frames": cfg.audio_config.max_frames,
        "video_frame_policy": cfg.video_config.frame_policy,
        "video_max_frames": cfg.video_config.max_frames,
        "truncate_frames": cfg.audio_config.truncate_frames,
        "pool_size": cfg.audio_config.pool_size,
    }
    train_rows, dev_rows = load_data(data_args, settings)
    mode = prompt_mode(args.stage, model_args.use_audio, model_args.use_video, model_args.text_only)
    with_rationale = args.stage == 2

    embedding_cache = None
    modalities = [m for m in ("audio", "video") if getattr(model_args, f"use_{m}")]
    if args.stage == 2 and modalities:
        # Frozen LQ-formers: their outputs are computed once per participant and reused by every item and epoch.
        embedding_cache = precompute_modality_embeddings(
            base, processor, list(train_rows) + list(dev_rows), modalities
        )
    item_scores = None
    if base.alignment_probe is not None:
        item_scores = participant_item_scores(list(train_rows) + list(dev_rows), base.config.alignment_probe_items)
    collator = MllmDrCollator(
        processor, mode, with_rationale=with_rationale, embedding_cache=embedding_cache, item_scores=item_scores
    )

    trainer = MllmDrTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=dev_rows if len(dev_rows) else None,
        data_collator=collator,
        processing_class=processor,
        loss_schedule=args.loss_schedule,
        lm_loss_weight=args.lm_loss_weight,
        score_loss_weight=args.score_loss_weight,
        learning_rates={
            "lora": args.lora_learning_rate,
            "projector": args.projector_learning_rate,
            "lqformer": args.lqformer_learning_rate,
            "head": args.head_learning_rate,
            "probe": args.alignment_probe_learning_rate,
        },
        expected_trainable=patterns,
    )
    trainable = {n: p.numel() for n, p in base.named_parameters() if p.requires_grad}
    logger.info("stage %d, mode %s: %d trainable tensors, %d parameters", args.stage, mode, len(trainable), sum(trainable.values()))

    manifest = {
        "stage": args.stage,
        "mode": mode,
        "base_model": base_model,
        "init_from": model_args.init_from,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "seed": args.seed,
        "data_seed": args.data_seed,
        "world_size": args.world_size,
        "arguments": {"model": asdict(model_args), "data": asdict(data_args), "training": args.to_dict()},
        "data": {
            "format": data_args.dataset_format,
            "train_fingerprint": getattr(train_rows, "_fingerprint", None),
            "dev_fingerprint": getattr(dev_rows, "_fingerprint", None),
            "train_samples": len(train_rows),
            "dev_samples": len(dev_rows),
            "rationales_sha256": file_fingerprint(data_args.rationales),
            "transcripts": count_truncated(processor, train_rows, mode),
            "max_transcript_tokens": processor.max_transcript_tokens,
        },
        "trainable_parameters": sum(trainable.values()),
    }
    if args.should_save:
        write_json_atomic(Path(args.output_dir) / "run_manifest.json", manifest)

    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if len(dev_rows) and args.final_dev_eval:
        metrics.update(evaluated[-1] if evaluated and evaluated[-1].get("step") == trainer.state.global_step else trainer.evaluate())
    manifest["final_metrics"] = metrics
    manifest["global_step"] = trainer.state.global_step
    manifest["log_history"] = trainer.state.log_history

    if args.should_save:
        out = Path(args.output_dir)
        card = model_card(
            args.stage, base_model, data_args.dataset_format, {"train": len(train_rows), "dev": len(dev_rows)},
            {k: v for k, v in metrics.items() if k.startswith("eval_")}, mode,
        )
        if args.stage == 1:
            export_adapter(model, processor, out, base_model, None, {"stage": 1, "mode": mode})
            (out / "README.md").write_text(card)
        else:
            export_adapter(model, processor, out / "adapter", base_model, lora_config, {"stage": 2, "mode": mode})
            (out / "adapter" / "README.md").write_text(card)
            merged_dir = out / "merged"
            if merged_dir.exists():
                shutil.rmtree(merged_dir)
            export_merged(model, processor, merged_dir)
            (merged_dir / "README.md").write_text(card)
        write_json_atomic(out / "run_manifest.json", manifest)
        if args.push_to_hub:
            trainer.push_to_hub(commit_message=f"MLlm-DR stage {args.stage}")
    # Every rank waits for the main one to finish exporting, then the process group is torn down:
    # a rank that exits while another still runs can make gloo abort the survivor (SIGABRT).
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
