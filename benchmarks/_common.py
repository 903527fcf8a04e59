"""Shared helpers of benchmarks/long_interview.py and benchmarks/data_scale.py (memory readings,
machine facts, an in-process tokenizer, worker subprocesses, Markdown and JSON output).

Light on purpose: importing this module does not import numpy or torch. On Linux a child started
by fork/vfork + exec inherits the parent's high-water RSS into its own ``ru_maxrss``, so the
orchestrating process must stay small for each worker's peak to be its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
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


# ----------------------------------------------------------------------------- inputs
def make_tokenizer():
    """The in-process tiny tokenizer (``tiny_models.make_tokenizer``): no download, no model needed."""
    from tiny_models import make_tokenizer as build

    return build()


# ----------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 4 significant digits, None shows as n/a."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write: a killed run leaves the previous file, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
