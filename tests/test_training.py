"""Two-stage training on the Trainer (tiny random backbone, tiny prepared corpus)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import common_args, make_prepared_corpus

from mllm_dr.checkpoints import DEFAULT_LORA_TARGET, apply_lora, load_adapter_export, trainable_state
from mllm_dr.commands import train
from mllm_dr.data import MllmDrCollator
from mllm_dr.provenance import transcript_cuts
from mllm_dr.testing import build_tiny, make_tokenizer, tiny_text_config
from mllm_dr.training import MllmDrTrainer, build_stage_model, loss_weights, participant_item_scores
from processing_mllm_dr import prompt_mode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_prepared_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, backbone_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("runs") / "s1"
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(out), *common_args(corpus)])
    return out


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, corpus) -> Path:
    out = tmp_path_factory.mktemp("runs") / "s2"
    train.main(["--stage", "2", "--init_from", str(stage1), "--output_dir", str(out), *common_args(corpus)])
    return out


def test_stage1_output_holds_modules_and_a_reference_not_the_backbone(stage1, backbone_dir):
    files = {p.name for p in stage1.iterdir()}
    assert {"mllm_dr_modules.safetensors", "mllm_dr_adapter.json", "config.json", "README.md", "run_manifest.json"} <= files
    assert "model.safetensors" not in files
    state = load_file(str(stage1 / "mllm_dr_modules.safetensors"))
    assert not any(k.startswith("language_model.") for k in state)
    assert {"audio_lqformer.query_tokens", "video_lqformer.query_tokens", "new_tokens.input_embeddings"} <= set(state)
    assert json.loads((stage1 / "mllm_dr_adapter.json").read_text())["base_model"] == str(backbone_dir)
    checkpoint = stage1 / "checkpoint-4"
    assert (checkpoint / "mllm_dr_trainable.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    manifest = json.loads((stage1 / "run_manifest.json").read_text())
    assert manifest["stage"] == 1 and manifest["mode"] == "features" and manifest["global_step"] == 4
    assert {"git_commit", "packages", "seed", "arguments", "data"} <= set(manifest)
    assert manifest["data"]["transcripts"]["participants"] == 0  # stage 1 shows no transcript


def test_trainable_parameters_per_stage(backbone_dir, corpus, stage1):
    model_args, _, _, data_args, args, _ = train.parse_args(
        ["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", "unused", *common_args(corpus)]
    )
    model = build_stage_model(model_args, args, "phq8", data_args.max_transcript_tokens).model
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith(("audio_lq", "video_lq", "audio_proj", "video_proj"))}
    assert names == expected and "audio_lqformer.query_tokens" in names and "video_lqformer.query_tokens" in names

    model_args, _, _, data_args, args, _ = train.parse_args(
        ["--stage", "2", "--init_from", str(stage1), "--output_dir", "unused", *common_args(corpus)]
    )
    peft_model = build_stage_model(model_args, args, "phq8", data_args.max_transcript_tokens).model
    base = peft_model.get_base_model()
    names = {n for n, p in base.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n and n.startswith("language_model.")) or n.startswith("score_head.") for n in names)
    assert any(n.startswith("score_head.") for n in names)
    assert not any("lqformer" in n or "projector" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names if "lora_" in n} == {"q_proj", "v_proj"}
    # the stage-1 weights were loaded, not re-initialised
    saved = load_file(str(stage1 / "mllm_dr_modules.safetensors"))
    torch.testing.assert_close(base.audio_lqformer.query_tokens, saved["audio_lqformer.query_tokens"])


def test_stage2_exports_reload_to_identical_outputs(stage2, corpus, tmp_path):
    import datasets

    rows = list(datasets.load_from_disk(str(corpus))["dev"])[:2]
    merged_dir, adapter_dir = stage2 / "merged", stage2 / "adapter"
    adapter_model, processor = load_adapter_export(adapter_dir)
    collator = MllmDrCollator(processor, "full", with_rationale=True)
    batch = collator(rows)
    with torch.no_grad():
        reference = adapter_model(**batch)
    merged_model, merged_processor = load_adapter_export(adapter_dir, merge=True)
    with torch.no_grad():
        merged = merged_model(**batch)
    torch.testing.assert_close(merged.logits, reference.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.score, reference.score, atol=1e-5, rtol=1e-5)

    # the merged, self-contained checkpoint in a fresh process from another directory (inputs travel as safetensors)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "batch.safetensors"))
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "batch = load_file(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    out = model(**batch)\n"
        "save_file({'score': out.score, 'loss': out.loss.reshape(1), 'logits': out.logits.contiguous()}, sys.argv[3])\n"
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", code, str(merged_dir), str(tmp_path / "batch.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_file(str(tmp_path / "out.safetensors"))
    torch.testing.assert_close(got["score"], reference.score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["logits"], reference.logits, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(got["loss"]).all()
    card = (merged_dir / "README.md").read_text()
    assert "not a diagnostic device" in card and "stage 2" in card
    for row in rows:  # no training text in the card
        assert row["transcript"] not in card and row["rationale"] not in card


def test_stage2_without_stage1_is_an_error_unless_asked(backbone_dir, corpus, tmp_path):
    with pytest.raises(SystemExit, match="--init_from"):
        train.main(["--stage", "2", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "x"), *common_args(corpus)])
    out = tmp_path / "y"
    train.main(
        ["--stage", "2", "--backbone", str(backbone_dir), "--allow_stage2_without_stage1", "--output_dir", str(out),
         *common_args(corpus, steps=1)]
    )
    assert (out / "merged" / "model.safetensors").is_file()


def test_guards_push_to_hub_and_existing_output(stage1, corpus, backbone_dir):
    with pytest.raises(SystemExit, match="i_may_share_weights"):
        train.main(
            ["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(stage1.parent / "hub"),
             "--push_to_hub", "--hub_model_id", "me/x", *common_args(corpus)]
        )
    with pytest.raises(SystemExit, match="not empty"):
        train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(stage1), *common_args(corpus)])


def test_no_use_video_switch(backbone_dir, corpus, tmp_path):
    out = tmp_path / "s1_audio"
    train.main(
        ["--stage", "1", "--backbone", str(backbone_dir), "--no_use_video", "--output_dir", str(out), *common_args(corpus, steps=1)]
    )
    state = load_file(str(out / "mllm_dr_modules.safetensors"))
    assert any(k.startswith("audio_lqformer") for k in state) and not any(k.startswith("video_") for k in state)
    trained = load_file(str(out / "checkpoint-1" / "mllm_dr_trainable.safetensors"))
    assert trained and all(k.startswith(("audio_lqformer", "audio_projector")) for k in trained)
    model, processor = load_adapter_export(out)
    assert not model.config.use_video
    import datasets

    rows = list(datasets.load_from_disk(str(corpus))["train"])[:2]
    batch = MllmDrCollator(processor, prompt_mode(1, True, False), with_rationale=False)(rows)
    assert "video_features" not in batch and not (batch["input_ids"] == processor.video_token_id).any()
    assert (batch["input_ids"] == processor.audio_token_id).sum() == 2 * processor.num_audio_tokens
    # text-only baseline: no LQ-former at all, no placeholders
    out = tmp_path / "text_only"
    train.main(["--stage", "2", "--backbone", str(backbone_dir), "--text_only", "--output_dir", str(out), *common_args(corpus, steps=1)])
    config = json.loads((out / "merged" / "config.json").read_text())
    assert not config["use_audio"] and not config["use_video"]
    assert json.loads((out / "run_manifest.json").read_text())["mode"] == "text"


def test_loss_decreases_on_a_learnable_toy_set(corpus, tmp_path):
    # A random backbone initialised at std 0.02 has logits too small to fit anything; std 0.3 lets
    # LoRA on q/v show learning within a few dozen steps.
    from transformers import LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = tiny_text_config(len(tokenizer))
    config.initializer_range = 0.3
    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    LlamaForCausalLM(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    train.main(["--stage", "1", "--backbone", str(backbone), "--output_dir", str(tmp_path / "s1"), *common_args(corpus, steps=2)])
    out = tmp_path / "s2_learn"
    train.main(
        ["--stage", "2", "--init_from", str(tmp_path / "s1"), "--output_dir", str(out), "--eval_strategy", "no",
         "--save_strategy", "no", "--lora_learning_rate", "5e-3", "--head_learning_rate", "5e-3",
         "--lr_scheduler_type", "constant", *common_args(corpus, steps=40)]
    )
    history = json.loads((out / "run_manifest.json").read_text())
    assert history["global_step"] == 40
    logs = [e for e in _log_history(out) if "loss" in e]
    first, last = logs[:10], logs[-10:]
    mean = lambda entries, key: sum(e[key] for e in entries) / len(entries)  # noqa: E731
    assert mean(last, "lm_loss") < 0.7 * mean(first, "lm_loss")
    assert mean(last, "score_loss") < 0.8 * mean(first, "score_loss")


def _log_history(out: Path) -> list[dict]:
    manifest = json.loads((out / "run_manifest.json").read_text())
    return manifest["log_history"]


def test_loss_schedule_from_fractional_progress():
    assert loss_weights("fixed", 0.3, 1.0, 2.0) == (1.0, 2.0)
    assert loss_weights("linear_blend", 0.0, 1.0, 1.0) == (0.0, 1.0)
    lm, score = loss_weights("linear_blend", 0.25, 1.0, 1.0)
    assert lm == pytest.approx(0.25) and score == pytest.approx(0.75)  # not 0 for the whole first epoch
    with pytest.raises(ValueError):
        loss_weights("cosine", 0.5, 1.0, 1.0)


def _one_step_moves(backbone_dir, rows, args, lora_b_std: float = 0.0, **trainer_kwargs) -> dict[str, torch.Tensor]:
    """How far one ``MllmDrTrainer`` run under ``args`` moves each trainable weight of a tiny model
    with LoRA and a trainable MAA head (``lora_b_std``: LoRA B drawn from N(0, std) instead of zeros)."""
    from peft import LoraConfig

    model, processor = build_tiny(backbone_dir, seed=3)
    model.requires_grad_(False)
    peft_model = apply_lora(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=DEFAULT_LORA_TARGET))
    model.score_head.requires_grad_(True)
    if lora_b_std:
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=lora_b_std, generator=torch.Generator().manual_seed(0))
    before = trainable_state(peft_model)
    trainer = MllmDrTrainer(
        model=peft_model, args=args, train_dataset=rows, processing_class=processor,
        data_collator=MllmDrCollator(processor, "full", with_rationale=True),
        learning_rates={"lora": 0.5, "head": 0.5}, **trainer_kwargs,
    )
    trainer.train()
    after = trainable_state(peft_model)
    return {k: after[k] - before[k] for k in after}


def test_gradient_accumulation_2_at_batch_1_equals_batch_2(backbone_dir, corpus, tmp_path):
    import datasets
    from transformers import TrainingArguments

    rows = datasets.load_from_disk(str(corpus))["train"].select(range(2))

    def one_step(batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        args = TrainingArguments(
            output_dir=str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=0.5,
            lr_scheduler_type="constant", use_cpu=True, report_to="none", save_strategy="no",
            remove_unused_columns=False, label_names=["labels", "score_labels"], seed=0, disable_tqdm=True,
            max_grad_norm=0.0,
        )
        return _one_step_moves(backbone_dir, rows, args, score_loss_weight=0.7)

    together, accumulated = one_step(2, 1), one_step(1, 2)
    assert any(v.abs().sum() > 0 for v in together.values())
    for name in together:
        torch.testing.assert_close(accumulated[name], together[name], atol=2e-6, rtol=1e-4, msg=name)


def test_resume_reaches_the_same_end_with_a_continuous_loss_curve(stage1, corpus, tmp_path):
    def run(out: Path, steps: int, resume: str | None = None) -> None:
        extra = ["--resume_from_checkpoint", resume] if resume else []
        train.main(
            ["--stage", "2", "--init_from", str(stage1), "--output_dir", str(out), "--eval_strategy", "no",
             "--save_strategy", "steps", "--save_steps", "3", "--lr_scheduler_type", "constant",
             "--lora_learning_rate", "1e-3", "--head_learning_rate", "1e-3", *extra, *common_args(corpus, steps=steps)]
        )

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight, 6)
    run(resumed, 3)  # "interrupted" after 3 steps, checkpoint-3 on disk
    run(resumed, 6, resume=str(resumed / "checkpoint-3"))
    a, b = _log_history(straight), _log_history(resumed)
    losses_a = {e["step"]: e["loss"] for e in a if "loss" in e}
    losses_b = {e["step"]: e["loss"] for e in b if "loss" in e}
    assert sorted(losses_b) == sorted(losses_a) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-4, abs=1e-5)
    final_a = load_file(str(straight / "checkpoint-6" / "mllm_dr_trainable.safetensors"))
    final_b = load_file(str(resumed / "checkpoint-6" / "mllm_dr_trainable.safetensors"))
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], atol=1e-5, rtol=1e-4)


def test_two_process_run_under_accelerate(stage1, corpus, tmp_path):
    """The shipped CPU config, as a user runs it: no --use_cpu, no ACCELERATE_USE_CPU (the launcher sets
    neither); both processes must join one gloo group, not train side by side into one folder."""
    out = tmp_path / "ddp"
    args = common_args(corpus, steps=2)
    del args[args.index("--use_cpu"):args.index("--use_cpu") + 2]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"),
        str(ROOT / "train.py"), "--stage", "2", "--init_from", str(stage1), "--output_dir", str(out),
        "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", *args,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert (out / "checkpoint-2" / "mllm_dr_trainable.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()


def test_activation_checkpointing_switch_trains_the_same(stage1, corpus, tmp_path):
    def one_step(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        train.main(
            ["--stage", "2", "--init_from", str(stage1), "--output_dir", str(out), "--eval_strategy", "no",
             "--save_strategy", "steps", "--save_steps", "1", "--lora_dropout", "0", "--lora_learning_rate", "1e-2",
             "--head_learning_rate", "1e-2", *extra, *common_args(corpus, steps=1)]
        )
        return load_file(str(out / "checkpoint-1" / "mllm_dr_trainable.safetensors"))

    plain = one_step(tmp_path / "plain")
    checkpointed = one_step(tmp_path / "checkpointed", "--gradient_checkpointing", "true")
    lora_b = [name for name in plain if "lora_B" in name]
    assert lora_b and all(checkpointed[name].abs().sum() > 0 for name in lora_b)  # LoRA got gradients
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_training_without_final_dev_eval(stage1, corpus, tmp_path):
    # --bf16 on a CPU: autocast for the compute, float32 master weights and exports
    out = tmp_path / "s2_bf16"
    train.main(
        ["--stage", "2", "--init_from", str(stage1), "--output_dir", str(out), "--bf16", "--no_final_dev_eval",
         "--eval_strategy", "no", "--save_strategy", "no", *common_args(corpus, steps=2)]
    )
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["global_step"] == 2
    assert not any(key.startswith("eval_") for key in manifest["final_metrics"])
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in manifest["log_history"] if "loss" in e)
    weights = load_file(str(out / "merged" / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_participant_item_scores_marks_missing_items():
    rows = [
        {"participant_id": "p1", "item_index": 1, "label": 2},
        {"participant_id": "p1", "item_index": 3, "label": 0},
        {"participant_id": 7, "item_index": 2, "label": None},
    ]
    table = participant_item_scores(rows, 3)
    assert table["p1"][0] == 2.0 and table["p1"][2] == 0.0 and math.isnan(table["p1"][1])
    assert all(math.isnan(v) for v in table["7"])
    with pytest.raises(ValueError, match="participant p1: item_index 4 is outside 1..3"):
        participant_item_scores([{"participant_id": "p1", "item_index": 4, "label": 1}], 3)


def test_transcript_cuts_counts_each_participant_once_at_its_largest_cut():
    summary = transcript_cuts([("p1", 0), ("p1", 5), ("p1", 3), (7, 0), ("p2", 2)], budget=32)
    assert summary == {"budget": 32, "participants": 3, "truncated": 2, "max_cut_tokens": 5,
                       "cut_tokens": {"p1": 5, "p2": 2}}
    assert transcript_cuts(()) == {"participants": 0, "truncated": 0, "max_cut_tokens": 0, "cut_tokens": {}}


def test_stage1_alignment_probe_trains_and_stage2_drops_it(backbone_dir, corpus, tmp_path):
    s1 = tmp_path / "s1"
    train.main(
        ["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(s1), "--alignment_probe_weight", "0.5",
         *common_args(corpus, steps=3)]
    )
    config = json.loads((s1 / "config.json").read_text())
    assert config["alignment_probe_items"] == 8 and config["alignment_probe_weight"] == 0.5
    state = load_file(str(s1 / "mllm_dr_modules.safetensors"))
    assert not torch.allclose(state["alignment_probe.bias"], torch.full((8,), 1.5))  # it trained
    history = json.loads((s1 / "run_manifest.json").read_text())["log_history"]
    assert all(entry["probe_loss"] > 0 for entry in history if "loss" in entry)
    assert any("learning_rate_probe" in entry for entry in history)

    with pytest.raises(SystemExit, match="stage-1 objective"):
        train.main(["--stage", "2", "--init_from", str(s1), "--output_dir", str(tmp_path / "x"),
                    "--alignment_probe_weight", "1", *common_args(corpus)])
    # stage 1 continued without the probe drops it (no probe loss from frozen, saved probe weights)
    s1b = tmp_path / "s1b"
    train.main(["--stage", "1", "--init_from", str(s1), "--output_dir", str(s1b), *common_args(corpus, steps=1)])
    assert json.loads((s1b / "config.json").read_text())["alignment_probe_items"] == 0
    assert not any("probe_loss" in entry for entry in json.loads((s1b / "run_manifest.json").read_text())["log_history"])
    s2 = tmp_path / "s2"
    train.main(["--stage", "2", "--init_from", str(s1), "--output_dir", str(s2), *common_args(corpus, steps=1)])
    assert not any(k.startswith("alignment_probe") for k in load_file(str(s2 / "adapter" / "mllm_dr_modules.safetensors")))
    assert json.loads((s2 / "merged" / "config.json").read_text())["alignment_probe_items"] == 0
    model, _ = load_adapter_export(s2 / "adapter")
    assert model.get_base_model().alignment_probe is None


def test_exports_carry_every_config_field_without_a_hand_kept_list(backbone_dir, tmp_path):
    from mllm_dr.checkpoints import export_adapter, export_merged

    model, processor = build_tiny(backbone_dir, seed=2, score_head_dropout=0.25)
    model.config.added_for_this_test = {"answer": 42}  # a field no list anywhere knows about
    model.config.score_head_trained = True
    export_adapter(model, processor, tmp_path / "adapter", str(backbone_dir))
    reloaded, _ = load_adapter_export(tmp_path / "adapter")
    assert reloaded.config.added_for_this_test == {"answer": 42}
    assert reloaded.config.score_head_dropout == 0.25 and reloaded.config.score_head_trained is True
    assert reloaded.config.audio_config.to_dict() == model.config.audio_config.to_dict()
    from transformers import AutoModel

    export_merged(reloaded, processor, tmp_path / "merged")
    merged = AutoModel.from_pretrained(tmp_path / "merged")  # the installed classes (registered by mllm_dr)
    assert merged.config.added_for_this_test == {"answer": 42}


def test_learning_rate_is_refused_with_the_group_flags_named(backbone_dir, corpus, tmp_path):
    with pytest.raises(SystemExit, match=r"--learning_rate is not used.*--lora_learning_rate.*--lqformer_learning_rate"):
        train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "x"),
                    "--learning_rate", "1e-3", *common_args(corpus)])
    assert not (tmp_path / "x").exists()


def test_an_option_of_another_corpus_is_refused(backbone_dir, corpus, tmp_path):
    with pytest.raises(SystemExit, match="--cmdc_split does not apply to --dataset_format prepared"):
        train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "x"),
                    "--cmdc_split", "fold2", *common_args(corpus)])
    with pytest.raises(SystemExit, match="--feature_cache_dir does not apply to --dataset_format prepared"):
        train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "y"),
                    "--feature_cache_dir", str(tmp_path / "cache"), *common_args(corpus)])
    assert not (tmp_path / "cache").exists()


def test_detached_score_head_trains_the_head_but_not_the_llm(backbone_dir, corpus, tmp_path):
    """--detach_score_head: with the cross-entropy weighted 0, one step changes the MAA head and leaves
    the LoRA weights as they were; without it the head's MSE moves the LoRA weights too."""
    import datasets

    from mllm_dr.training import MllmDrTrainingArguments

    rows = datasets.load_from_disk(str(corpus))["train"].select(range(2))

    def one_step(detach: bool) -> dict[str, torch.Tensor]:
        args = MllmDrTrainingArguments(
            output_dir=str(tmp_path / f"d{detach}"), per_device_train_batch_size=2, max_steps=1, optim="sgd",
            lr_scheduler_type="constant", use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
            seed=0, disable_tqdm=True, max_grad_norm=0.0, detach_score_head=detach,
        )
        # LoRA B starts at 0, which would keep every gradient off A: drawn non-zero so that both can move
        return _one_step_moves(backbone_dir, rows, args, lora_b_std=0.02, lm_loss_weight=0.0, score_loss_weight=1.0)

    for detach in (True, False):
        moved = one_step(detach)
        lora = [k for k in moved if "lora_" in k]
        head = [k for k in moved if "score_head" in k]
        assert lora and head
        assert all(moved[k].abs().sum() > 0 for k in head)
        lora_moved = sum(float(moved[k].abs().sum()) for k in lora)
        assert (lora_moved == 0) if detach else (lora_moved > 0), (detach, lora_moved)


def test_detached_score_head_needs_the_joint_loss(stage1, corpus, tmp_path):
    for extra in (["--no_joint_loss"], ["--score_loss_weight", "0"]):
        with pytest.raises(SystemExit, match="--detach_score_head .* needs stage 2 with the joint loss"):
            train.main(["--stage", "2", "--init_from", str(stage1), "--output_dir", str(tmp_path / "x"),
                        "--detach_score_head", *extra, *common_args(corpus)])
    assert not (tmp_path / "x").exists()
