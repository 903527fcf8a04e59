"""Helpers of benchmarks/overhead.py and benchmarks/eval_throughput.py: machine description,
backbones (the real SmolLM2 one, or a tiny random one for ``--quick``), synthetic transcripts,
timing, Markdown and JSON output.

Kept apart from the library (and from the other benchmarks' _common.py) so that a benchmark never
changes what it measures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

SMOLLM2_DIR = ROOT / ".cache" / "backbones" / "smollm2-135m-instruct"
RESULTS_DIR = ROOT / "benchmarks" / "results"

# ----------------------------------------------------------------------------- machine
from _common import cpu_model  # noqa: E402  (one copy, shared with the other benchmarks)


def git_commit() -> str | None:
    """HEAD of the repository (read-only), so a result names the code it measured."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = out.stdout.strip() or None
        return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; load average included because other jobs skew CPU timings."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }
    for name in ("torch", "transformers", "peft"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda``; a clear error instead of a crash deep inside the model when CUDA is absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch on this machine")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Waits for queued GPU work so that wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """Median (the headline), min, max and the spread of a list of timings."""
    if not values:
        return {"median": None, "min": None, "max": None, "stdev": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


# ----------------------------------------------------------------------------- backbones
def smollm2_backbone() -> Path:
    """The real SmolLM2-135M-Instruct folder (converted once by scripts/prepare_backbone.py; idempotent)."""
    import contextlib

    from prepare_backbone import prepare_backbone

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the Markdown report
        return prepare_backbone(SMOLLM2_DIR)


def tiny_tokenizer():
    """A ~400-token byte-level BPE tokenizer trained in-process (no download)."""
    from tiny_models import make_tokenizer

    return make_tokenizer()


def tiny_backbone(directory: Path, seed: int = 0) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) saved like a pretrained backbone folder, for ``--quick``."""
    from tiny_models import save_tiny_backbone

    return save_tiny_backbone(directory, seed)


# ----------------------------------------------------------------------------- synthetic inputs
def synthetic_participant(pid: int = 300, seed: int = 0):
    """One planned participant of the synthetic corpus (labels and planted phrases; nothing written)."""
    from make_synthetic_corpus import plan_participant

    return plan_participant(pid, "train", seed)


def synthetic_transcript(participant, turns: int, seed: int = 0) -> str:
    """The transcript text exactly as corpora.load_corpus reads it from the E-DAIC CSV (Text fields
    joined by newlines). turns=140 gives ~1,930 SmolLM2 tokens, turns=74 ~1,000."""
    from make_synthetic_corpus import transcript_rows

    return "\n".join(row[2] for row in transcript_rows(participant, seed, turns, 1200.0))


def synthetic_rationale(participant, item: int) -> str:
    """The corpus's template rationale for an item (~60 SmolLM2 tokens)."""
    from make_synthetic_corpus import rationale_text

    return rationale_text(participant, item)


def write_features(directory: Path, name: str, frames: int, dim: int, seed: int) -> str:
    """A random float16 ``.npy`` feature file like the feature cache's (memory-mapped by the collator)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path = directory / f"{name}.npy"
    np.save(path, rng.standard_normal((frames, dim), dtype=np.float32).astype(np.float16), allow_pickle=False)
    return str(path)


# ----------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def result_path(name: str, quick: bool, override: str | None) -> Path:
    """``benchmarks/results/<name>.json``; a ``--quick`` smoke run writes ``<name>.quick.json`` so it
    can never overwrite a real measurement."""
    if override:
        return Path(override)
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (a killed run leaves the previous result, never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
