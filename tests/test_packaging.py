"""MLlm-DR is an installable library: a wheel built from the checkout works outside it, every console
script answers --help with documented flags, and no file edits the import path."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # console script -> module with build_parser() and main()
    "mllm-dr-train": "mllm_dr.commands.train",
    "mllm-dr-evaluate": "mllm_dr.commands.evaluate",
    "mllm-dr-predict": "mllm_dr.commands.predict",
    "mllm-dr-distill": "mllm_dr.commands.distill",
    "mllm-dr-extract-features": "mllm_dr.commands.extract_features",
    "mllm-dr-synthetic-corpus": "mllm_dr.commands.synthetic_corpus",
    "mllm-dr-prepare-backbone": "mllm_dr.commands.prepare_backbone",
    "mllm-dr-demo": "mllm_dr.commands.demo",
    "mllm-dr-push": "mllm_dr.commands.push",
    "mllm-dr-review": "mllm_dr.commands.review",
    "mllm-dr-analyse-reviews": "mllm_dr.commands.analyse_reviews",
}


def test_no_tracked_python_file_edits_the_import_path():
    needle = "sys." + "path"  # spelled apart so that this file does not match itself
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = [f for f in files.split() if needle in (ROOT / f).read_text(encoding="utf-8")]
    assert offenders == []


def test_console_scripts_are_declared_for_every_command():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == {name: f"{module}:main" for name, module in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help_and_a_shown_default(name):
    parser = importlib.import_module(COMMANDS[name]).build_parser()
    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    undocumented = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.dest != "help" and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert undocumented == []


def test_the_same_idea_has_the_same_flag_in_every_tool():
    flags = {name: {s for a in importlib.import_module(m).build_parser()._actions for s in a.option_strings}
             for name, m in COMMANDS.items()}
    for name in ("mllm-dr-train", "mllm-dr-evaluate", "mllm-dr-distill", "mllm-dr-extract-features"):
        assert {"--data_dir", "--dataset_format"} <= flags[name], name
    for name in ("mllm-dr-train", "mllm-dr-evaluate", "mllm-dr-distill"):
        assert {"--on_error", "--visual", "--cmdc_split", "--corpus_kwargs"} <= flags[name], name
    for name in ("mllm-dr-evaluate", "mllm-dr-predict", "mllm-dr-extract-features"):
        assert "--model" in flags[name], name
    for name in ("mllm-dr-train", "mllm-dr-evaluate", "mllm-dr-predict", "mllm-dr-synthetic-corpus",
                 "mllm-dr-prepare-backbone"):
        assert "--output_dir" in flags[name], name
    assert "--rationales" in flags["mllm-dr-train"] and "--rationales" in flags["mllm-dr-distill"]


def test_top_level_scripts_run_the_console_commands(tmp_path):
    for script, name in (("train.py", "mllm-dr-train"), ("evaluate_mllm_dr.py", "mllm-dr-evaluate")):
        via_script = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
        via_console = subprocess.run([str(Path(sys.executable).parent / name), "--help"], cwd=tmp_path,
                                     capture_output=True, text=True, timeout=300)
        assert via_script.returncode == via_console.returncode == 0, via_script.stderr + via_console.stderr
        options = lambda text: [line.split()[0] for line in text.splitlines() if line.startswith("  --")]  # noqa: E731
        assert options(via_script.stdout) == options(via_console.stdout) and options(via_script.stdout)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A wheel built from the checkout, installed (not editable) into a fresh environment whose only
    other packages are this environment's dependencies (torch & co., not this project)."""
    import shutil

    root = tmp_path_factory.mktemp("wheel")
    # The working tree's files (tracked, and untracked ones git does not ignore), copied: a build in
    # the checkout would leave build/ there, and stale files in it could reach the wheel.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    source = root / "source"
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)],
        capture_output=True, text=True, timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("mllm_dr-*.whl"))
    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from this environment's site-packages, appended after the new one's. A
    # path line in a .pth file does not run that folder's own .pth files, so the editable install of
    # the checkout (a .pth finder) stays invisible there.
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env_dir


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", MLLM_DR_HOME=str(tmp_path / "mllm_dr_home"))
    return env


def test_the_installed_wheel_works_outside_the_checkout(installed_wheel, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    script = textwrap.dedent(
        """
        import json, sys
        import mllm_dr, configuration_mllm_dr, modeling_mllm_dr, processing_mllm_dr
        from mllm_dr.data import load_edaic, load_question_map
        from mllm_dr.metrics import METRIC_DIR, load_phq_metric
        from mllm_dr.synthetic import make_synthetic_corpus

        checkout = sys.argv[1]
        for module in (mllm_dr, configuration_mllm_dr, modeling_mllm_dr, processing_mllm_dr):
            assert not module.__file__.startswith(checkout), module.__file__
        make_synthetic_corpus("corpus", 4, seed=0, seconds=0.5, turns=5)
        data = load_edaic("corpus", rationales_path="corpus/rationales.jsonl")
        assert sum(len(split) for split in data.values()) == 32 and data["train"][0]["rationale"]
        assert load_question_map()[1] == [4, 6]  # package data
        metric = load_phq_metric()
        result = metric.compute(predictions=[2, 4, 6], references=[1, 4, 7], n_bootstrap=0)
        print(json.dumps({"ccc": result["ccc"], "metric_dir": str(METRIC_DIR), "package": mllm_dr.__file__}))
        """
    )
    done = subprocess.run([str(installed_wheel / "bin" / "python"), "-c", script, str(ROOT)], cwd=empty,
                          env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ccc"] == pytest.approx(12 / 13)
    assert out["package"].startswith(str(installed_wheel)) and out["metric_dir"].startswith(str(installed_wheel))
    assert not (empty / "metrics").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_installed_console_script_answers_help_from_an_empty_directory(installed_wheel, tmp_path, name):
    done = subprocess.run([str(installed_wheel / "bin" / name), "--help"], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage:") and "--help" in done.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


def _imports(path: Path) -> set[str]:
    """The mllm_dr modules a file imports (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part) if node.level else node.module or ""
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("mllm_dr")}


def test_layers_import_only_what_lies_below_them():
    package = ROOT / "mllm_dr"
    for path in (package / "inference").glob("*.py"):
        assert not any(name.startswith("mllm_dr.training") for name in _imports(path)), path
    for path in (package / "training").glob("*.py"):
        assert not any(name.startswith("mllm_dr.inference") for name in _imports(path)), path
    for path in (package / "commands").glob("*.py"):  # no command imports another command
        assert not any(name.startswith("mllm_dr.commands") for name in _imports(path)), path
    below_commands = [p for p in package.rglob("*.py") if "commands" not in p.parts]
    for path in below_commands:
        assert not any(name.startswith("mllm_dr.commands") for name in _imports(path)), path
    for path in (package / "data").glob("*.py"):
        layers = ("mllm_dr.training", "mllm_dr.inference", "mllm_dr.checkpoints", "mllm_dr.evaluation")
        assert not any(name.startswith(layers) for name in _imports(path)), path
    for model_file in ("configuration_mllm_dr.py", "modeling_mllm_dr.py", "processing_mllm_dr.py"):
        assert _imports(ROOT / model_file) == set(), model_file
