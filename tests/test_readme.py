"""The README cannot rot: every ```python block runs, every command line in a ```bash block is parsed
by that command's own parser.

Python blocks run in order, each in a fresh interpreter, all in one clean working directory (so a
block may load what an earlier one saved), on the tiny backbone and a small synthetic E-DAIC corpus.
The README's placeholder paths are replaced through ``PYTHON_PLACEHOLDERS`` only; a block that uses a
placeholder path the table does not map, a table entry the README no longer has, or a block that
raises all fail. New blocks are picked up as they are written: give their placeholders a fixture here.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from mllm_dr.synthetic import make_synthetic_corpus
from mllm_dr.testing import save_tiny_backbone

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Fixtures:
    backbone: Path
    corpus: Path  # E-DAIC layout: data/<ID>_P/..., labels/
    participant: str  # one participant id of the corpus
    cache: Path

    def participant_file(self, *parts: str) -> Path:
        return self.corpus / "data" / f"{self.participant}_P" / Path(*parts)


# README text (exactly as written, quotes included) -> what it stands for here.
PYTHON_PLACEHOLDERS = {
    '"path/to/backbone"': lambda f: f.backbone,
    '"300_P/300_Transcript.csv"': lambda f: f.participant_file(f"{f.participant}_Transcript.csv"),
    '"300_P/features/300_HuBERT.npy"': lambda f: f.participant_file("features", f"{f.participant}_HuBERT.npy"),
    '"/data/E-DAIC"': lambda f: f.corpus,
    '"/data/cache"': lambda f: f.cache,
}

# Bash command lines that are not parsed here, as written (after joining continuations).
UNPARSED_LINES = {
    "make demo": "the demo itself (minutes); its recipe is tested in tests/test_demo_recipe.py",
    "make test": "this suite",
}
SCRIPTS = {"train.py", "evaluate_mllm_dr.py"}  # `python X` in a checkout; each calls one command's main()
GPU_PRECISION_FLAGS = ("--bf16", "--fp16", "--tf32")


def readme_blocks(language: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every fenced block in that language."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


PYTHON_BLOCKS = readme_blocks("python")
BASH_BLOCKS = readme_blocks("bash")


def _looks_like_a_placeholder_path(value: str) -> bool:
    return value.startswith(("/", "path/to/")) or (
        "/" in value and re.search(r"\.(csv|npy|mat|jsonl?|txt|safetensors|gguf)$", value) is not None
    )


def unmapped_placeholders(code: str) -> list[str]:
    """String literals of a block that name a path outside its working directory and have no mapping."""
    mapped = {ast.literal_eval(key) for key in PYTHON_PLACEHOLDERS}
    return sorted(
        node.value
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and _looks_like_a_placeholder_path(node.value) and node.value not in mapped
    )


def substitute(code: str, fixtures: Fixtures) -> str:
    for placeholder, value in PYTHON_PLACEHOLDERS.items():
        code = code.replace(placeholder, repr(str(value(fixtures))))
    return code


def test_readme_has_blocks_of_both_kinds():
    assert PYTHON_BLOCKS and BASH_BLOCKS


def test_every_placeholder_in_the_tables_is_still_in_the_readme():
    python_code = "".join(code for _, code in PYTHON_BLOCKS)
    assert [p for p in PYTHON_PLACEHOLDERS if p not in python_code] == [], "stale PYTHON_PLACEHOLDERS entries"
    bash_lines = {line for _, code in BASH_BLOCKS for line in command_lines(code)}
    assert [line for line in UNPARSED_LINES if line not in bash_lines] == [], "stale UNPARSED_LINES entries"


# ---------------------------------------------------------------------------------------------- python


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Fixtures:
    root = tmp_path_factory.mktemp("readme")
    summary = make_synthetic_corpus(root / "E-DAIC", participants=6, seed=0, seconds=1.0, turns=3)
    return Fixtures(
        backbone=save_tiny_backbone(root / "backbone", seed=0),
        corpus=root / "E-DAIC",
        participant=str(summary["splits"]["train"][0]),
        cache=root / "cache",
    )


@pytest.fixture(scope="module")
def python_runner(fixtures, tmp_path_factory):
    """Runs the README's python blocks in order (each once), in one clean working directory."""
    workdir = tmp_path_factory.mktemp("readme_cwd")
    scripts = tmp_path_factory.mktemp("readme_blocks")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results: dict[int, subprocess.CompletedProcess] = {}

    def run_through(index: int) -> tuple[subprocess.CompletedProcess, list[int]]:
        """This block's run, after every earlier one's, and the lines of earlier blocks that failed."""
        for i in range(index + 1):
            if i not in results:
                line, code = PYTHON_BLOCKS[i]
                script = scripts / f"readme_line_{line}.py"
                script.write_text(substitute(code, fixtures), encoding="utf-8")
                results[i] = subprocess.run(
                    [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
                )
        return results[index], [PYTHON_BLOCKS[i][0] for i in range(index) if results[i].returncode != 0]

    return run_through


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_python_block_runs(index, python_runner):
    line, code = PYTHON_BLOCKS[index]
    missing = unmapped_placeholders(code)
    assert missing == [], f"README.md:{line} uses {missing}: map them to a fixture in PYTHON_PLACEHOLDERS"
    result, failed_before = python_runner(index)
    earlier = f" (earlier blocks it may build on failed too: README.md:{failed_before})" if failed_before else ""
    assert result.returncode == 0, f"README.md:{line} failed{earlier}:\n{result.stderr[-4000:]}"


# ------------------------------------------------------------------------------------------------ bash


def command_lines(code: str) -> list[str]:
    """Logical command lines: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", code)
    lines = []
    for raw in joined.splitlines():
        words = shlex.split(raw, comments=True)
        if words:
            lines.append(shlex.join(words))
    return lines


def console_scripts() -> dict[str, str]:
    """Console script -> command module, from the package metadata (new commands are picked up)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def script_module(script: str) -> str:
    """The command module a checkout script (train.py, evaluate_mllm_dr.py) runs."""
    match = re.search(r"^from (mllm_dr\.commands\.\w+) import main$", (ROOT / script).read_text(), re.MULTILINE)
    assert match, f"{script} does not call one mllm_dr.commands module's main()"
    return match.group(1)


def elide(args: list[str], parser) -> list[str]:
    """The README's ``...``: after an option that takes a value it stands for that value (ELIDED), anywhere
    else for the other flags (dropped)."""
    takes_value = {s for a in parser._actions if a.nargs not in (0, "?") for s in a.option_strings}
    out = []
    for word in args:
        if word == "...":
            if out and out[-1] in takes_value:
                out.append("ELIDED")
            continue
        out.append(word)
    return out


def resolve(words: list[str]) -> tuple[str, list[str]]:
    """(command module, its arguments) of one README command line; fails for a command it does not know."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words[0] == "python" and len(words) > 1 and words[1] in SCRIPTS:
        return script_module(words[1]), words[2:]
    if words[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        with _parser_errors(shlex.join(words)):
            launch = launch_command_parser().parse_args(words[2:])
        if launch.config_file is not None:
            assert (ROOT / launch.config_file).is_file(), f"{launch.config_file} is not in the checkout"
        assert launch.training_script in SCRIPTS, f"accelerate launches {launch.training_script}"
        return script_module(launch.training_script), list(launch.training_script_args)
    scripts = console_scripts()
    assert words[0] in scripts, (
        f"README command {shlex.join(words)!r}: not a script or console command this test knows; "
        "parse it here or list it in UNPARSED_LINES with a reason"
    )
    return scripts[words[0]], words[1:]


@contextlib.contextmanager
def _parser_errors(line: str):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            yield
    except SystemExit as error:  # argparse: unknown flag, bad choice or type
        pytest.fail(f"README command {line!r} is refused by its parser ({error.code}): {stderr.getvalue().strip()}")
    except ValueError as error:  # HfArgumentParser: arguments left over; dataclass checks
        pytest.fail(f"README command {line!r} is refused by its parser: {error}")


BASH_LINES = [(line, command) for line, code in BASH_BLOCKS for command in command_lines(code)]


@pytest.mark.parametrize("line,command", BASH_LINES, ids=[f"README.md:{line}:{c[:60]}" for line, c in BASH_LINES])
def test_bash_command_is_accepted_by_its_parser(line, command):
    words = shlex.split(command)
    if words[0] == "make":
        assert command in UNPARSED_LINES, f"README.md:{line}: {command!r} is not listed in UNPARSED_LINES"
        target = words[1]
        assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.MULTILINE), target
        return
    if command in UNPARSED_LINES:
        return
    module, args = resolve(words)
    parser = importlib.import_module(module).build_parser()
    args = elide(args, parser)
    # TrainingArguments refuses GPU precision on a machine without one; the flag itself is what is checked.
    if any(flag in args for flag in GPU_PRECISION_FLAGS) and any("--use_cpu" in a.option_strings for a in parser._actions):
        import torch

        if not torch.accelerator.is_available():
            args = [*args, "--use_cpu", "true"]
    with _parser_errors(command):
        parser.parse_args_into_dataclasses(args)
