"""The demo's recipe (scripts/run_demo.py) and the ablation benchmark that reuses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ablations  # noqa: E402
import run_demo  # noqa: E402


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_stage_commands_share_one_recipe(tmp_path):
    settings = run_demo.DemoSettings(seed=3, bf16=True)
    corpus = tmp_path / "corpus"
    full = run_demo.stage2_command(settings, corpus, tmp_path / "s2", tmp_path / "s1")
    text_only = run_demo.stage2_command(settings, corpus, tmp_path / "t", None, ["--text_only"])
    assert flag(full, "--init_from") == str(tmp_path / "s1") and "--backbone" not in full
    assert flag(text_only, "--backbone") == str(run_demo.BACKBONE_CACHE) and "--init_from" not in text_only
    for command in (full, text_only):  # an ablation differs from the full model only in its own flags
        for name in ("--lora_learning_rate", "--head_learning_rate", "--num_train_epochs", "--seed", "--data_dir"):
            assert flag(command, name) == flag(full, name)
        assert "--bf16" in command and "--no_final_dev_eval" in command
    assert flag(full, "--seed") == "3"
    assert "--bf16" not in run_demo.stage1_command(run_demo.DemoSettings(bf16=False), corpus, tmp_path / "s1")
    assert flag(run_demo.eval_flags(settings, corpus), "--dtype") == "bfloat16"
    assert flag(run_demo.eval_flags(run_demo.DemoSettings(), corpus), "--dtype") == "float32"


def test_summary_table_adds_the_head_only_row(tmp_path):
    trained, mean = tmp_path / "trained", tmp_path / "mean"
    trained.mkdir()
    mean.mkdir()
    (trained / "metrics.json").write_text(json.dumps(
        {"ccc": 0.5, "rmse": 4.0, "mae": 3.0, "f1": 0.5, "format_failure_rate": 0.0,
         "head_only": {"ccc": 0.6, "rmse": 3.5, "mae": 2.5, "f1": 0.4}}
    ))
    (mean / "metrics.json").write_text(json.dumps({"ccc": 0.0, "rmse": 6.0, "mae": 5.0, "f1": 0.0, "format_failure_rate": None}))
    table = run_demo.summary_table({"MLlm-DR (text score, head fallback)": trained, "train-mean": mean})
    lines = table.splitlines()
    assert lines[2].startswith("| MLlm-DR (text score, head fallback) | 0.500 |")
    assert lines[3] == "| MLlm-DR, MAA head score alone | 0.600 | 3.500 | 2.500 | 0.400 | n/a |"
    assert lines[4] == "| train-mean | 0.000 | 6.000 | 5.000 | 0.000 | n/a |"


def test_ablations_refuse_unknown_variants_and_unfinished_demo_runs(tmp_path):
    with pytest.raises(SystemExit, match="unknown variants"):
        ablations.main(["--run_dir", str(tmp_path / "a"), "--variants", "w/o everything"])
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "settings.json").write_text(json.dumps({"participants": 60, "seconds": 4.0, "turns": 6, "phrasings": 1,
                                                    "seed": 0, "batch_size": 8, "stage1_steps": 30,
                                                    "stage2_epochs": 2.0, "max_new_tokens": 96,
                                                    "eval_participants": None, "bf16": False}))
    with pytest.raises(SystemExit, match="is missing"):
        ablations.main(["--run_dir", str(tmp_path / "b"), "--demo_run", str(demo)])


def test_demo_never_writes_into_a_used_run_folder(tmp_path):
    used = tmp_path / "run"
    used.mkdir()
    (used / "summary.md").write_text("an earlier run")
    with pytest.raises(SystemExit, match="not empty"):
        run_demo.main(["--run_dir", str(used), "--precision", "fp32"])
    assert (used / "summary.md").read_text() == "an earlier run"
    assert sorted(p.name for p in used.iterdir()) == ["summary.md"]


def test_every_ablation_variant_names_existing_train_flags():
    import train

    known = set()
    for dataclass_type in (train.ModelArguments, train.DataArguments, train.MllmDrTrainingArguments):
        for field in dataclass_type.__dataclass_fields__.values():
            known |= {f"--{field.name}", f"--no_{field.name}"}
    for name, (_, train_flags, _) in ablations.VARIANTS.items():
        for item in train_flags or []:
            assert item in known, f"{name}: {item} is not a train.py flag"
    assert Path(ablations.__file__).parent.name == "benchmarks"


def test_the_probe_ablation_trains_the_papers_stage_1_with_the_same_recipe(tmp_path):
    from dataclasses import replace

    settings = run_demo.DemoSettings()
    assert settings.alignment_probe_weight > 0  # the demo uses the probe, so the ablation has something to remove
    assert set(ablations.OWN_STAGE1) <= set(ablations.VARIANTS)
    folder, changes = ablations.OWN_STAGE1["w/o probe (paper's stage 1)"]
    with_probe = run_demo.stage1_command(settings, tmp_path / "c", tmp_path / "s1")
    without = run_demo.stage1_command(replace(settings, **changes), tmp_path / "c", tmp_path / folder)
    assert float(flag(with_probe, "--alignment_probe_weight")) == settings.alignment_probe_weight
    assert float(flag(without, "--alignment_probe_weight")) == 0.0
    differing = {a for a, b in zip(with_probe, without) if a != b}
    assert differing == {str(tmp_path / "s1"), str(settings.alignment_probe_weight)}
