"""Issue 14: training exports the weights of the best dev evaluation (the head's dev MSE in stage 2,
the answer cross-entropy otherwise), records which step won, and says so in the card."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from training_fixtures import common_args, make_prepared_corpus

from mllm_dr.checkpoints import MODULES_FILE, TRAINABLE_STATE_FILE
from mllm_dr.commands import train
from mllm_dr.training import MllmDrTrainer, MllmDrTrainingArguments

EVERY_TWO_STEPS = {"--eval_strategy": "steps", "--eval_steps": "2", "--save_strategy": "steps", "--save_steps": "2"}


def test_stage2_exports_the_best_dev_step_not_the_last(backbone_dir, tmp_path, monkeypatch):
    corpus = make_prepared_corpus(tmp_path / "corpus")
    args = common_args(corpus, steps=6, **EVERY_TWO_STEPS)
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "s1"), *args])

    log = MllmDrTrainer.log

    def dev_best_at_step_2(self, logs, *a, **k):  # the dev score as measured, except step 2 made the best
        log(self, logs, *a, **k)
        if "eval_score_loss" in logs and self.state.global_step == 2:
            logs["eval_score_loss"] = 0.0

    monkeypatch.setattr(MllmDrTrainer, "log", dev_best_at_step_2)
    out = tmp_path / "s2"
    train.main(["--stage", "2", "--init_from", str(tmp_path / "s1"), "--output_dir", str(out), *args])
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["global_step"] == 6
    assert manifest["selection"] == {"metric": "eval_score_loss", "exported": "best dev evaluation", "best_metric": 0.0,
                                     "best_step": 2}  # fmt: skip
    best = load_file(str(out / "checkpoint-2" / TRAINABLE_STATE_FILE))
    exported = load_file(str(out / "adapter" / MODULES_FILE))
    head = [name for name in best if name.startswith("score_head.")]
    assert head and all(torch.equal(best[name], exported[name]) for name in head)
    last = load_file(str(out / "checkpoint-6" / TRAINABLE_STATE_FILE))
    assert any(not torch.equal(last[name], exported[name]) for name in head)  # the last step is not what was exported
    card = ModelCard.load(out / "merged" / "README.md").text
    assert "| exported weights | the best dev `eval_score_loss` (0, step 2) |" in card


def _arguments(tmp_path, **kwargs) -> MllmDrTrainingArguments:
    return MllmDrTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


def test_selection_choices(tmp_path):
    args = _arguments(tmp_path)
    assert args.configure_selection(has_dev=True, head_trained=True)["metric"] == "eval_score_loss"
    assert (args.load_best_model_at_end, args.metric_for_best_model, args.greater_is_better) == (True, "score_loss", False)
    assert _arguments(tmp_path).configure_selection(True, head_trained=False)["metric"] == "eval_lm_loss"
    none = _arguments(tmp_path)
    assert none.configure_selection(has_dev=False, head_trained=True) == {
        "metric": None, "exported": "last step", "reason": "no dev split"}  # fmt: skip
    assert none.load_best_model_at_end is False
    assert _arguments(tmp_path, select_on="last").configure_selection(True, True)["reason"] == "asked"
    with pytest.raises(SystemExit, match="trains no score head"):
        _arguments(tmp_path, select_on="score_loss").configure_selection(True, head_trained=False)
    with pytest.raises(SystemExit, match="checkpoints must be saved where the dev split is scored"):
        _arguments(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="epoch").configure_selection(True, True)
