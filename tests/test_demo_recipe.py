"""The demo's recipe (mllm_dr.demo, mllm-dr-demo) and the ablation benchmark that reuses it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mllm_dr import demo
from mllm_dr.commands import demo as demo_cli
from mllm_dr.commands import train

ROOT = Path(__file__).resolve().parents[1]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_stage_commands_share_one_recipe(tmp_path):
    settings = demo.DemoSettings(seed=3, precision="bf16")
    corpus = tmp_path / "corpus"
    full = demo.stage2_command(settings, corpus, tmp_path / "s2", tmp_path / "s1")
    text_only = demo.stage2_command(settings, corpus, tmp_path / "t", None, ["--text_only"])
    assert full[0] == "mllm-dr-train" and flag(full, "--init_from") == str(tmp_path / "s1") and "--backbone" not in full
    assert flag(text_only, "--backbone") == str(demo.backbone_dir()) and "--init_from" not in text_only
    for command in (full, text_only):  # an ablation differs from the full model only in its own flags
        for name in ("--lora_learning_rate", "--head_learning_rate", "--num_train_epochs", "--seed", "--data_dir"):
            assert flag(command, name) == flag(full, name)
        assert "--bf16" in command and "--no_final_dev_eval" in command
    assert flag(full, "--seed") == "3"
    assert "--bf16" not in demo.stage1_command(demo.DemoSettings(precision="fp32"), corpus, tmp_path / "s1")
    assert flag(demo.eval_flags(settings, corpus), "--dtype") == "bfloat16"
    assert flag(demo.eval_flags(demo.DemoSettings(precision="fp32"), corpus), "--dtype") == "float32"


def test_settings_record_the_resolved_precision_and_read_old_runs():
    resolved = demo.DemoSettings(precision="auto").resolved()
    assert resolved.precision in ("bf16", "fp32") and resolved.bf16 == (resolved.precision == "bf16")
    assert demo.DemoSettings.from_json(dataclasses.asdict(resolved)) == resolved
    old = {"participants": 60, "seconds": 4.0, "turns": 6, "phrasings": 1, "seed": 0, "batch_size": 8,
           "stage1_steps": 30, "stage2_epochs": 2.0, "max_new_tokens": 96, "eval_participants": None, "bf16": True}
    read = demo.DemoSettings.from_json(old)  # a run from before `precision` and the probe
    assert read.precision == "bf16" and read.alignment_probe_weight == 0.0 and read.stage1_steps == 30


def test_every_demo_step_is_an_installed_console_script(tmp_path):
    settings = demo.DemoSettings()
    commands = [
        demo.corpus_command(settings, tmp_path), demo.stage1_command(settings, tmp_path, tmp_path),
        demo.stage2_command(settings, tmp_path, tmp_path, tmp_path),
    ]  # fmt: skip
    for command in commands:
        resolved = demo.resolve_command(command)
        assert Path(resolved[0]).is_file() and Path(resolved[0]).name == command[0]


def test_summary_table_adds_the_head_only_row(tmp_path):
    trained, mean = tmp_path / "trained", tmp_path / "mean"
    trained.mkdir()
    mean.mkdir()
    (trained / "metrics.json").write_text(json.dumps(
        {"ccc": 0.5, "rmse": 4.0, "mae": 3.0, "f1": 0.5, "format_failure_rate": 0.0,
         "head_only": {"ccc": 0.6, "rmse": 3.5, "mae": 2.5, "f1": 0.4}}
    ))
    (mean / "metrics.json").write_text(json.dumps({"ccc": 0.0, "rmse": 6.0, "mae": 5.0, "f1": 0.0, "format_failure_rate": None}))
    table = demo.summary_table({"MLlm-DR (text score, head fallback)": trained, "train-mean": mean})
    lines = table.splitlines()
    assert lines[2].startswith("| MLlm-DR (text score, head fallback) | 0.500 |")
    assert lines[3] == "| MLlm-DR, MAA head score alone | 0.600 | 3.500 | 2.500 | 0.400 | n/a |"
    assert lines[4] == "| train-mean | 0.000 | 6.000 | 5.000 | 0.000 | n/a |"


def test_ablations_refuse_unknown_variants_and_unfinished_demo_runs(tmp_path):
    script = str(ROOT / "benchmarks" / "ablations.py")
    done = subprocess.run([sys.executable, script, "--run_dir", str(tmp_path / "a"), "--variants", "w/o everything"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown variants" in done.stderr
    demo_run = tmp_path / "demo"
    demo_run.mkdir()
    (demo_run / "settings.json").write_text(json.dumps({"participants": 60, "seconds": 4.0, "turns": 6, "phrasings": 1,
                                                        "seed": 0, "batch_size": 8, "stage1_steps": 30,
                                                        "stage2_epochs": 2.0, "max_new_tokens": 96,
                                                        "eval_participants": None, "bf16": False}))
    done = subprocess.run([sys.executable, script, "--run_dir", str(tmp_path / "b"), "--demo_run", str(demo_run)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "is missing" in done.stderr


def test_demo_never_writes_into_a_used_run_folder(tmp_path):
    used = tmp_path / "run"
    used.mkdir()
    (used / "summary.md").write_text("an earlier run")
    with pytest.raises(SystemExit, match="not empty"):
        demo_cli.main(["--run_dir", str(used), "--precision", "fp32"])
    assert (used / "summary.md").read_text() == "an earlier run"
    assert sorted(p.name for p in used.iterdir()) == ["summary.md"]


def test_every_ablation_variant_names_existing_train_flags():
    known = set()
    for dataclass_type in train.ARGUMENTS:
        for field in dataclasses.fields(dataclass_type):
            known |= {f"--{field.name}", f"--no_{field.name}"}
    for name, (_, train_flags, _) in demo.ABLATIONS.items():
        for item in train_flags or []:
            assert item in known, f"{name}: {item} is not a training flag"


def test_the_probe_ablation_trains_the_papers_stage_1_with_the_same_recipe(tmp_path):
    settings = demo.DemoSettings()
    assert settings.alignment_probe_weight > 0  # the demo uses the probe, so the ablation has something to remove
    assert set(demo.OWN_STAGE1) <= set(demo.ABLATIONS)
    folder, changes = demo.OWN_STAGE1["w/o probe (paper's stage 1)"]
    with_probe = demo.stage1_command(settings, tmp_path / "c", tmp_path / "s1")
    without = demo.stage1_command(dataclasses.replace(settings, **changes), tmp_path / "c", tmp_path / folder)
    assert float(flag(with_probe, "--alignment_probe_weight")) == settings.alignment_probe_weight
    assert float(flag(without, "--alignment_probe_weight")) == 0.0
    differing = {a for a, b in zip(with_probe, without) if a != b}
    assert differing == {str(tmp_path / "s1"), str(settings.alignment_probe_weight)}


def _fake_eval(folder: Path, per_item: dict[str, float], sources: bool, weight: float | None = None) -> None:
    folder.mkdir(parents=True)
    metrics = {"ccc": 0.5, "mae": sum(per_item.values()), "per_item_mae": per_item}
    if sources:
        metrics["score_sources"] = {
            s: {"ccc": 0.5, "mae": 2.0, "per_item_mae": {k: v * factor for k, v in per_item.items()}}
            for s, factor in (("generated_with_head_fallback", 1.0), ("expected", 0.9), ("head", 0.8), ("combined", 0.7),
                              ("combined_cross_fitted", 0.75))
        }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps({"text_weight": None if weight is None else {"value": weight}}))


def test_learning_matrix_resumes_finished_cells_and_tabulates_the_goal(tmp_path, smollm2_dir):
    """With every step of two cells already done, benchmarks/learning.py runs nothing and writes the
    table: group MAE over the cells, the gain over train-mean and the cells meeting the goal."""
    script = str(ROOT / "benchmarks" / "learning.py")
    run_dir = tmp_path / "learning"
    mean = {str(i): 1.0 for i in range(1, 9)}
    for seed, factor in ((0, 0.5), (1, 0.9), (2, 0.6)):
        cell = run_dir / f"seed{seed}-standard"
        (cell / "corpus").mkdir(parents=True)
        (cell / "corpus" / "rationales.jsonl").write_text("")
        (cell / "stage1").mkdir()
        (cell / "stage1" / "mllm_dr_adapter.json").write_text("{}")
        (cell / "stage1_stage1_120").mkdir()  # a recipe that changes stage 1 has its own
        (cell / "stage1_stage1_120" / "mllm_dr_adapter.json").write_text("{}")
        trained = {k: v * factor for k, v in mean.items()}
        for recipe in ("demo", "stage1_120"):
            (cell / "stage2" / recipe / "merged").mkdir(parents=True)
            (cell / "stage2" / recipe / "merged" / "config.json").write_text("{}")
            _fake_eval(cell / "eval" / f"{recipe}_dev", trained, sources=True)
            _fake_eval(cell / "eval" / f"{recipe}_test", trained, sources=True, weight=0.4)
        _fake_eval(cell / "eval" / "train_mean_test", mean, sources=False)
        _fake_eval(cell / "eval" / "train_mean_dev", mean, sources=False)
    output = tmp_path / "learning.json"
    done = subprocess.run([sys.executable, script, "--run_dir", str(run_dir), "--seeds", "0", "1", "--layouts", "standard",
                           "--recipes", "demo", "stage1_120", "--output", str(output)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(output.read_text())
    assert result["cells"]["seed0-standard"]["demo"]["text_weight"] == 0.4
    assert result["cells"]["seed1-standard"]["demo"]["head"]["groups"]["audio"] == pytest.approx(0.72)
    assert "stage1_120: combined" in result["table"]
    lines = {line.split(" | ")[0].strip("| "): line for line in result["table"].splitlines()}
    # generated: 0.5 and 0.9 of train-mean -> gains 50% and 10%: the 15% goal holds in one cell of two
    assert "0.700 ± 0.283" in lines["demo: generated_with_head_fallback"] and "+30%" in lines["demo: generated_with_head_fallback"]
    assert lines["demo: generated_with_head_fallback"].endswith("| 1/2 |")
    assert lines["demo: combined"].endswith("| 2/2 |") and lines["train_mean"].endswith("| 0/2 |")
    written = (run_dir / "learning.md").read_text()
    assert result["table"] in written and result["dev_table"] in written
    assert not (run_dir / "seed0-standard" / "logs").exists()  # nothing ran
    # dev: the same table without combined (its weight is fitted there), from the dev evaluations
    dev_lines = {line.split(" | ")[0].strip("| "): line for line in result["dev_table"].splitlines()}
    assert dev_lines["demo: generated_with_head_fallback"].endswith("| 1/2 |") and "demo: combined" not in dev_lines
    assert dev_lines["demo: combined_cross_fitted"].endswith("| 2/2 |")  # the dev stand-in for combined
    assert "demo: combined_cross_fitted" not in lines  # on test the dev-fitted combined counts
    assert result["cells"]["seed1-standard"]["dev"]["demo"]["head"]["groups"]["video"] == pytest.approx(0.72)

    # a later run of another cell carries the earlier cells, each entry with where it came from; in a
    # cell it lists, its entries are computed anew and the cell's others kept
    first = result["command"]
    del result["cells"]["seed0-standard"]["dev"]["demo"]["combined_cross_fitted"]  # a cell from before that source
    origin = {key: result[key] for key in ("command", "date", "git_commit")}
    result["cell_sources"] = {name: origin for name in result.pop("entry_sources")}  # a file from before entry_sources
    output.write_text(json.dumps(result))
    later = subprocess.run([sys.executable, script, "--run_dir", str(run_dir), "--seeds", "2", "1", "--layouts", "standard",
                            "--output", str(output), "--carry", str(output)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert later.returncode == 0, later.stderr[-2000:]
    merged = json.loads(output.read_text())
    assert sorted(merged["cells"]) == ["seed0-standard", "seed1-standard", "seed2-standard"]
    sources = merged["entry_sources"]
    assert sources["seed0-standard"]["demo"]["command"] == first  # carried
    assert sources["seed1-standard"]["demo"]["command"] == merged["command"] != first  # listed: computed anew
    assert sources["seed1-standard"]["train_mean"]["command"] == merged["command"]
    assert sources["seed1-standard"]["stage1_120"]["command"] == first  # not listed: kept in the computed cell
    assert "stage1_120" in merged["cells"]["seed1-standard"] and "stage1_120" in merged["cells"]["seed1-standard"]["dev"]
    assert set(sources["seed2-standard"]) == {"demo", "train_mean"}
    assert merged["table"].splitlines()[2].split(" | ")[1].strip() == "3"
    cross = next(line for line in merged["dev_table"].splitlines() if line.startswith("| demo: combined_cross_fitted"))
    assert cross.split(" | ")[1].strip() == "2"  # the carried cell without it is left out of that row only

