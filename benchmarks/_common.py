"""Shared helpers of the benchmarks: machine facts and memory readings, worker subprocesses, timing,
backbones (the real SmolLM2 one, or a tiny random one for ``--quick``), synthetic inputs, Markdown
and JSON output.

A benchmark runs as ``python benchmarks/<name>.py``: Python puts the script's folder on the module
search path, so ``from _common import ...`` finds this module; the project itself is the installed
package (``mllm_dr`` and the model files), imported as a user would.

Light on purpose: importing this module imports neither numpy nor torch nor ``mllm_dr`` (whose
``__init__`` loads the model, hence torch); the helpers that need them import them when called. On
Linux a child started by fork/vfork + exec inherits the parent's high-water RSS into its own
``ru_maxrss``, so the orchestrating process of long_interview.py and data_scale.py must stay small
for each worker's peak to be its own (they write their JSON only after the last worker).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
_STARTED = time.perf_counter()


# ----------------------------------------------------------------------------- machine and memory
def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """CPU model, logical and usable CPUs, load average at start (other jobs skew CPU timings)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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


def machine_info(device: Any) -> dict[str, Any]:
    """What the numbers were measured on (a ``torch.device``); load average included because other
    jobs skew CPU timings."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

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


def proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mb() -> float | None:
    """This process's resident set size now, in MiB."""
    return proc_status_mb("VmRSS")


def ru_maxrss_mb() -> float:
    """Peak RSS of this process (``ru_maxrss`` is kB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def progress(message: str) -> None:
    """A progress line on stderr (stdout stays the Markdown report)."""
    print(f"[{time.perf_counter() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- torch: devices, threads, timing
def resolve_device(name: str):
    """``cpu`` or ``cuda``; a clear error instead of a crash deep inside the model when CUDA is absent."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch on this machine")
    return torch.device(name)


def sync(device: Any) -> None:
    """Waits for queued GPU work so that wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


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


# ----------------------------------------------------------------------------- workers
def run_worker(script: Path, arguments: Sequence[str]) -> dict[str, Any]:
    """Runs ``script --worker-result FILE *arguments`` in a fresh Python process and returns the JSON
    it wrote: each measurement starts from a clean heap and its own peak RSS."""
    with tempfile.TemporaryDirectory(prefix="mllm-dr-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, str(script), "--worker-result", str(result_file), *arguments]
        completed = subprocess.run(command, cwd=ROOT)
        if completed.returncode != 0:
            raise SystemExit(f"worker failed with exit code {completed.returncode}: {' '.join(command)}")
        return json.loads(result_file.read_text())


# ----------------------------------------------------------------------------- backbones and tokenizers
def smollm2_dir() -> Path:
    """Where the converted SmolLM2-135M-Instruct folder lives (``mllm_dr.backbones.default_backbone_dir``:
    ``$MLLM_DR_HOME/backbones/...``; ``make`` sets MLLM_DR_HOME to the checkout's ``.cache``)."""
    from mllm_dr.backbones import default_backbone_dir

    return default_backbone_dir()


def smollm2_backbone() -> Path:
    """The real SmolLM2-135M-Instruct folder, converted once by ``mllm_dr.backbones.prepare_backbone``
    (idempotent; it logs, never prints, so stdout stays the Markdown report)."""
    from mllm_dr.backbones import prepare_backbone

    return prepare_backbone(smollm2_dir())


def make_tokenizer():
    """The in-process tiny tokenizer (``mllm_dr.testing.make_tokenizer``: a ~400-token byte-level BPE,
    no download, no model needed)."""
    from mllm_dr.testing import make_tokenizer as build

    return build()


def tiny_backbone(directory: Path, seed: int = 0) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) saved like a pretrained backbone folder, for ``--quick``."""
    from mllm_dr.testing import save_tiny_backbone

    return save_tiny_backbone(directory, seed)


# ----------------------------------------------------------------------------- synthetic inputs
def synthetic_participant(pid: int = 300, seed: int = 0):
    """One planned participant of the synthetic corpus (labels and planted phrases; nothing written)."""
    from mllm_dr.synthetic import plan_participant

    return plan_participant(pid, "train", seed)


def synthetic_transcript(participant, turns: int, seed: int = 0) -> str:
    """The transcript text exactly as the E-DAIC loader reads it from the CSV (Text fields joined by
    newlines). turns=140 gives ~1,930 SmolLM2 tokens, turns=74 ~1,000."""
    from mllm_dr.synthetic import transcript_rows

    return "\n".join(row[2] for row in transcript_rows(participant, seed, turns, 1200.0))


def synthetic_rationale(participant, item: int) -> str:
    """The corpus's template rationale for an item (~60 SmolLM2 tokens)."""
    from mllm_dr.synthetic import rationale_text

    return rationale_text(participant, item)


def write_features(directory: Path, name: str, frames: int, dim: int, seed: int) -> str:
    """A random float16 ``.npy`` feature file like a feature-cache file (memory-mapped when read).
    Rows reference it as a source file (``audio_files`` / ``video_files``), so the collator reads
    it through the processor's frame policy, as for any raw file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path = directory / f"{name}.npy"
    np.save(path, rng.standard_normal((frames, dim), dtype=np.float32).astype(np.float16), allow_pickle=False)
    return str(path)


# ----------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 4 significant digits (whole numbers from 10,000 up), None
    shows as n/a."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def result_path(name: str, quick: bool, override: str | Path | None) -> Path:
    """``benchmarks/results/<name>.json``; a ``--quick`` smoke run writes ``<name>.quick.json`` so it
    can never overwrite a real measurement."""
    if override:
        return Path(override)
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


def write_json(path: str | Path, data: Any) -> Path:
    """``mllm_dr.io.write_json_atomic``: a killed run leaves the previous file, never half a file.
    (Imported here, not at the top: ``mllm_dr`` loads torch.)"""
    from mllm_dr.io import write_json_atomic

    return write_json_atomic(path, data)


def run_command(command: Sequence[str], log: Path) -> float:
    """Runs one step of a recipe (a console command, found next to this interpreter) with its output
    in ``log``; stops the benchmark on failure. Returns the wall time in seconds."""
    from mllm_dr.demo import resolve_command

    started = time.perf_counter()
    print(f"$ {' '.join(str(part) for part in command)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        result = subprocess.run(resolve_command(command), stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(str(part) for part in command)}; see {log}")
    return time.perf_counter() - started
