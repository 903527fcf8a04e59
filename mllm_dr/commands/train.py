"""Two-stage MLlm-DR training on the Hugging Face Trainer (paper Figure 2, sections 3.4, 4.2).

    # stage 1: LLM frozen, LQ-formers learn to make it say "Score: N" from the features alone
    mllm-dr-train --stage 1 --backbone BACKBONE --data_dir CORPUS --dataset_format edaic --output_dir runs/s1
    # stage 2: LQ-formers frozen, LoRA (q_proj, v_proj) + MAA head on rationale + score targets
    mllm-dr-train --stage 2 --init_from runs/s1 --data_dir CORPUS --dataset_format edaic \\
        --rationales CORPUS/rationales.jsonl --output_dir runs/s2

``python train.py`` and ``accelerate launch train.py`` take the same flags. Trains on ``train``,
evaluates on ``dev``, never reads ``test``. A corpus without a dev split (CMDC) trains without dev
evaluation, or with ``--dev_fraction F`` of its train participants held out as dev.
``--push_to_hub --hub_model_id OWNER/NAME --i_may_share_weights`` publishes one export at the end
(``--hub_export merged|adapter``, private by default) through ``mllm_dr.hub``, as ``mllm-dr-push``
does for an existing run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import HfArgumentParser, IntervalStrategy, TrainingArguments, set_seed

from ..cards import build_card, is_hub_id
from ..checkpoints import export_adapter, export_merged
from ..data import CorpusArguments, FeatureCacheArguments, MllmDrCollator, data_fingerprint, load_splits, tokenize_rows
from ..hub import LICENCE_GUARD, PublishArguments, PublishError, backbone_hub_id, backbone_license, backbone_lineage, publish
from ..io import write_json_atomic, write_text_atomic
from ..training import (
    MllmDrTrainer,
    MllmDrTrainingArguments,
    ModelArguments,
    TrainDataArguments,
    build_stage_model,
    file_fingerprint,
    git_commit,
    package_versions,
    participant_item_scores,
    precompute_modality_embeddings,
    truncation_summary,
)
from ..training.arguments import apply_preset_recipe, explicit_flags
from ..training.resume import check_checkpoint, check_data, resolve_checkpoint
from ..training.stages import data_feature_widths

logger = logging.getLogger("mllm_dr.train")

ARGUMENTS = (ModelArguments, CorpusArguments, FeatureCacheArguments, TrainDataArguments, MllmDrTrainingArguments, PublishArguments)
_DEFAULT_LEARNING_RATE = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "learning_rate")


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(
    argv: list[str] | None = None,
) -> tuple[
    ModelArguments, CorpusArguments, FeatureCacheArguments, TrainDataArguments, MllmDrTrainingArguments, PublishArguments
]:
    """The argument groups, from ``argv`` or (one ``.json`` argument) a JSON file."""
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) == 1 and arguments[0].endswith(".json"):
        groups = parser.parse_json_file(arguments[0])
        given = set(json.loads(Path(arguments[0]).read_text()))
    else:
        groups = parser.parse_args_into_dataclasses(args=arguments)
        given = explicit_flags(arguments)
    apply_preset_recipe(groups[0], groups[4], given)  # --preset paper: section 4.2's recipe where not given
    return groups


def validate(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: TrainDataArguments,
    args: MllmDrTrainingArguments,
    publish_args: PublishArguments | None = None,
) -> None:
    """Every refusal that needs no data, before anything is loaded."""
    if args.stage not in (1, 2):
        raise SystemExit(f"--stage must be 1 or 2, got {args.stage}")
    if corpus_args.data_dir is None:
        raise SystemExit("--data_dir is required")
    try:
        corpus_args.loader_kwargs()
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.learning_rate != _DEFAULT_LEARNING_RATE:
        raise SystemExit(
            "--learning_rate is not used by MLlm-DR: every trainable parameter belongs to a group with its own "
            "rate. Set --lora_learning_rate, --head_learning_rate (stage 2), --lqformer_learning_rate, "
            "--projector_learning_rate or --alignment_probe_learning_rate (stage 1) instead."
        )
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
    if model_args.load_in_4bit and args.stage != 2:
        raise SystemExit("--load_in_4bit is QLoRA: stage 2 only (stage 1 trains no LLM weights)")
    if model_args.init_from is None and model_args.backbone is None:
        raise SystemExit("--backbone is required unless --init_from gives a stage-1 output")
    if args.alignment_probe_weight < 0:
        raise SystemExit(f"--alignment_probe_weight must be >= 0, got {args.alignment_probe_weight}")
    if args.alignment_probe_weight > 0 and args.stage != 1:
        raise SystemExit("--alignment_probe_weight is a stage-1 objective (stage 2 removes the probe)")
    if args.detach_score_head and not args.trains_score_head:
        raise SystemExit("--detach_score_head keeps the MAA head's MSE out of the LLM: it needs stage 2 with the joint "
                         "loss (not --no_joint_loss, --score_loss_weight > 0)")
    if args.stage == 2 and data_args.rationales is None and corpus_args.spec().name != "prepared":
        raise SystemExit("stage 2 trains on rationale + score targets: pass --rationales FILE")
    if args.push_to_hub:
        if not args.i_may_share_weights:
            raise SystemExit(f"--push_to_hub: {LICENCE_GUARD}")
        validate_publishing(model_args, args, publish_args or PublishArguments())
    out = Path(args.output_dir)
    resuming = args.resume_from_checkpoint is not None
    if out.exists() and any(out.iterdir()) and not args.overwrite_output_dir and not resuming:
        raise SystemExit(f"{out} exists and is not empty: pass --overwrite_output_dir or --resume_from_checkpoint")


def validate_publishing(model_args: ModelArguments, args: MllmDrTrainingArguments, publish_args: PublishArguments) -> None:
    """What the publish step at the end would refuse, refused before training."""
    if not is_hub_id(args.hub_model_id):
        raise SystemExit(f"--push_to_hub needs --hub_model_id OWNER/NAME (got {args.hub_model_id!r})")
    if args.stage == 1 and publish_args.hub_export == "merged":
        raise SystemExit("--push_to_hub: a stage-1 output has no merged export; pass --hub_export adapter")
    if model_args.load_in_4bit and publish_args.hub_export == "merged":
        raise SystemExit("--push_to_hub: a --load_in_4bit run exports no merged model; pass --hub_export adapter")
    if publish_args.base_model_id is not None and not is_hub_id(publish_args.base_model_id):
        raise SystemExit(f"--base_model_id {publish_args.base_model_id!r} is not a Hub id (owner/name)")
    if publish_args.hub_export == "adapter" and publish_args.base_model_id is None and model_args.init_from is None:
        if backbone_hub_id(model_args.backbone) is None:
            raise SystemExit(
                f"--push_to_hub --hub_export adapter: the backbone {model_args.backbone} has no Hub id holding its "
                "weights; pass --base_model_id OWNER/NAME or publish the merged export"
            )


def main(argv: list[str] | None = None) -> int:
    model_args, corpus_args, cache_args, data_args, args, publish_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    validate(model_args, corpus_args, data_args, args, publish_args)
    # The Trainer's own push (its repo at start-up, the whole output folder, its generic card) is
    # replaced by mllm_dr.hub's publish step after the exports.
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    if not args.joint_loss:
        args.score_loss_weight = 0.0
    if args.stage == 1:
        args.score_loss_weight = 0.0  # the head is not part of stage 1
    set_seed(args.seed)
    try:  # a damaged checkpoint is named now, not after the data and the model are loaded
        resume = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        if resume is not None:
            check_checkpoint(resume)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None

    # Rows first (the questionnaire comes from the corpus), then the model, then the feature cache
    # with the model's frame policies. test is never read.
    try:
        corpus = load_splits(corpus_args, ("train", "dev"), rationales=data_args.rationales)
        with_rationale = args.stage == 2
        corpus.check_targets(with_rationale)  # every row labelled (stage 2: a rationale for that label)
        widths = data_feature_widths((corpus["train"], corpus["dev"]))  # the LQ-formers' input widths: the data's
        stage = build_stage_model(model_args, args, corpus.questionnaire, data_args.max_transcript_tokens, widths)
        model, processor, base, mode = stage.model, stage.processor, stage.base, stage.mode
        corpus.cache_features(processor, cache_args.feature_cache_dir)
        train_rows, dev_rows = corpus["train"], corpus["dev"]
        if data_args.max_train_samples:
            train_rows = train_rows.select(range(min(len(train_rows), data_args.max_train_samples)))
        if data_args.max_eval_samples:
            dev_rows = dev_rows.select(range(min(len(dev_rows), data_args.max_eval_samples)))
        fingerprint = data_fingerprint({"train": train_rows, "dev": dev_rows})
        if resume is not None:
            check_data(resume, fingerprint, data_args.allow_data_change)
        # Tokenized once for the whole run (the collator only pads); rows that cannot be trained on are refused here.
        train_rows = tokenize_rows(train_rows, processor, mode, with_targets=True, with_rationale=with_rationale)
        if len(dev_rows):
            dev_rows = tokenize_rows(dev_rows, processor, mode, with_targets=True, with_rationale=with_rationale)
    except ValueError as error:  # broken data, named by the loader, the cache or the tokenizer: before any step
        raise SystemExit(f"error: {error}") from None

    def all_rows(*columns: str) -> list[dict]:
        """Train and dev rows with only ``columns`` (not the token ids)."""
        return [row for split in (train_rows, dev_rows) if len(split)
                for row in split.select_columns([c for c in columns if c in split.column_names]).to_list()]

    dev_source = corpus.dev_source if len(dev_rows) else "none"
    if dev_source == "none":
        without = f"{corpus.spec.title} has no dev split" if not corpus.spec.has_dev_split else "the dev split is empty"
        logger.warning(
            "%s: training without dev evaluation (eval_strategy no, nothing selected on dev); pass --dev_fraction F "
            "to hold out a fraction of the train participants as dev", without,
        )  # fmt: skip
        args.eval_strategy, args.do_eval = IntervalStrategy.NO, False  # --select_on then exports the last step

    embedding_cache = None
    modalities = [m for m in ("audio", "video") if getattr(model_args, f"use_{m}")]
    if args.stage == 2 and modalities:
        # Frozen LQ-formers: their outputs are computed once per participant and reused by every item and epoch.
        feature_columns = [f"{m}_{kind}" for m in modalities for kind in ("files", "cache", "cache_policy")]
        embedding_cache = precompute_modality_embeddings(
            base, processor, all_rows("participant_id", *feature_columns), modalities
        )
    item_scores = None
    if base.alignment_probe is not None:
        item_scores = participant_item_scores(
            all_rows("participant_id", "item_index", "label"), base.config.alignment_probe_items
        )
    collator = MllmDrCollator(
        processor, mode, with_rationale=with_rationale, embedding_cache=embedding_cache, item_scores=item_scores
    )

    head_trained = args.trains_score_head
    selection = args.configure_selection(bool(len(dev_rows)), head_trained)
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
        learning_rates=args.group_learning_rates(),
        expected_trainable=stage.trainable_patterns,
        data_fingerprint=fingerprint,
    )
    trainable = {n: p.numel() for n, p in base.named_parameters() if p.requires_grad}
    logger.info("stage %d, mode %s: %d trainable tensors, %d parameters", args.stage, mode, len(trainable), sum(trainable.values()))

    base_model_id = publish_args.base_model_id or backbone_hub_id(stage.base_model)
    manifest = {
        "stage": args.stage,
        "mode": mode,
        "base_model": stage.base_model,
        "base_model_id": base_model_id,  # a Hub id holding exactly the backbone's weights, or None
        "base_model_lineage": base_model_id or backbone_lineage(stage.base_model),
        "init_from": model_args.init_from,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "seed": args.seed,
        "data_seed": args.data_seed,
        "world_size": args.world_size,
        "arguments": {
            "model": asdict(model_args), "corpus": {**asdict(corpus_args), **asdict(cache_args)},
            "data": asdict(data_args),
            "training": args.to_dict(),
        },  # fmt: skip
        "data": {
            "format": corpus.spec.name,
            "synthetic": (Path(corpus_args.data_dir) / "SYNTHETIC.md").is_file(),
            "questionnaire": corpus.questionnaire,
            "train_fingerprint": getattr(train_rows, "_fingerprint", None),
            "dev_fingerprint": getattr(dev_rows, "_fingerprint", None),
            "train_samples": len(train_rows),
            "dev_samples": len(dev_rows),
            "dev_source": dev_source,  # corpus | held_out_fraction (--dev_fraction) | none (no dev evaluation)
            "dev_held_out": corpus.dev_participants,
            "feature_widths": {modality: found.width for modality, found in widths.items()},
            "rationales_sha256": file_fingerprint(data_args.rationales),
            "transcripts": truncation_summary(train_rows, processor.inputs_for(mode).transcript),
            "max_transcript_tokens": processor.max_transcript_tokens,
            "fingerprint": fingerprint,
            "skipped_participants": corpus.skipped_participants,
            "skipped_items": corpus.skipped_items,
            "left_out": corpus.left_out(modalities),
        },
        "trainable_parameters": sum(trainable.values()),
    }
    if args.should_save:
        write_json_atomic(Path(args.output_dir) / "run_manifest.json", manifest)

    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    manifest["global_step"] = trainer.state.global_step
    if selection["metric"] is not None:  # the weights exported below are the best checkpoint's
        best = trainer.state.best_model_checkpoint
        selection.update(
            best_metric=trainer.state.best_metric,
            best_step=int(Path(best).name.rsplit("-", 1)[-1]) if best else None,
        )
    manifest["selection"] = selection
    manifest["log_history"] = trainer.state.log_history
    out = Path(args.output_dir)

    def write_card_and_manifest(metrics: dict) -> None:
        manifest["final_metrics"] = metrics
        license = publish_args.hub_license or backbone_license(stage.base_model)
        folders = {"adapter": out} if args.stage == 1 else {"adapter": out / "adapter", "merged": out / "merged"}
        if model_args.load_in_4bit:
            folders.pop("merged")
        for kind, folder in folders.items():
            card = build_card(manifest, kind, base_model_id=manifest["base_model_lineage"], license=license)
            write_text_atomic(folder / "README.md", str(card))
        write_json_atomic(out / "run_manifest.json", manifest)

    # What training earned is exported before anything else can fail (the final dev evaluation).
    if args.should_save:
        if args.stage == 1:
            export_adapter(model, processor, out, stage.base_model, None, {"stage": 1, "mode": mode})
        else:
            export_adapter(model, processor, out / "adapter", stage.base_model, stage.lora_config, {"stage": 2, "mode": mode})
            merged_dir = out / "merged"
            if merged_dir.exists():
                shutil.rmtree(merged_dir)
            if not model_args.load_in_4bit:  # a 4-bit base would merge into a quantised copy: the adapter is the export
                export_merged(model, processor, merged_dir)
        write_card_and_manifest(metrics)
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if len(dev_rows) and args.final_dev_eval:
        exported_step = selection.get("best_step") or trainer.state.global_step
        scored = [entry for entry in evaluated if entry.get("step") == exported_step]
        if scored:  # the dev scores of the exported weights (the best checkpoint's, or the last step's)
            metrics.update(scored[-1])
        else:
            try:
                metrics.update(trainer.evaluate())
            except Exception as error:  # the exports above stay; say what failed and where they are
                if args.should_save:
                    manifest["final_dev_eval_error"] = f"{type(error).__name__}: {error}"
                    write_json_atomic(out / "run_manifest.json", manifest)
                raise SystemExit(
                    f"error: the final dev evaluation failed ({type(error).__name__}: {error}); training finished "
                    f"and its exports in {out} are complete (run_manifest.json records the failure)"
                ) from error
        if args.should_save:
            write_card_and_manifest(metrics)
    if args.should_save and push_to_hub:
        try:
            url = publish(
                out, args.hub_model_id, kind=publish_args.hub_export, private=args.hub_private_repo is not False,
                token=args.hub_token, base_model_id=publish_args.base_model_id, license=publish_args.hub_license,
                commit_message=f"MLlm-DR stage {args.stage}",
            )  # fmt: skip
        except PublishError as error:
            raise SystemExit(
                f"error: {error}. Training finished and its exports in {out} are complete; publish them later with "
                f"mllm-dr-push --run_dir {out} --hub_model_id {args.hub_model_id} --hub_export {publish_args.hub_export} "
                "--i_may_share_weights"
            ) from None
        logger.info("published %s: %s", args.hub_model_id, url)
    # Every rank waits for the main one to finish exporting, then the process group is torn down:
    # a rank that exits while another still runs can make gloo abort the survivor (SIGABRT).
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
