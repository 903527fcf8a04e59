#!/usr/bin/env python
"""The explanations of issue 16 on a trained demo model: score-probability calibration and interval
coverage, evidence-quote faithfulness, modality attribution by planted modality, and their cost.

    make demo                                              # or mllm-dr-demo: writes runs/demo-<time>/
    python benchmarks/explanations.py runs/demo-<time>     # ~3 minutes on 2 CPU cores

Evaluates the demo's stage-2 model on its test split twice with the demo's evaluation flags, in one
process after another: plain (``--no_score_probabilities``) and with every explanation
(probabilities, the default, plus ``--modality_attribution``); the cost is the ratio of the two wall
times. Writes ``benchmarks/results/explanations.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from _common import git_commit, machine_facts, result_path, write_json

# The synthetic corpus's plan (mllm_dr.synthetic, SYNTHETIC.md): where each item's evidence was planted.
PLANTED = {"text": (1, 2, 3, 6), "audio": (4, 8), "video": (5, 7)}


def native_bf16() -> bool:
    from mllm_dr.demo import cpu_has_native_bf16

    return cpu_has_native_bf16()


def evaluate(run: Path, out: Path, extra: list[str]) -> float:
    file = run / "settings.json"  # written by the demo at its end; the demo's defaults otherwise
    settings = json.loads(file.read_text()) if file.is_file() else {}
    command = [
        str(Path(sys.executable).parent / "mllm-dr-evaluate"), "--model", str(run / "stage2"),
        "--data_dir", str(run / "corpus"), "--dataset_format", "edaic", "--split", "test", "--greedy",
        "--max_new_tokens", str(settings.get("max_new_tokens", 96)), "--batch_size", "8",
        "--seed", str(settings.get("seed", 0)), "--dtype", "bfloat16" if settings.get("bf16", native_bf16()) else "float32",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="A demo run folder (runs/demo-<time>).")
    args = parser.parse_args()
    plain_dir, explained_dir = args.run / "eval-plain", args.run / "eval-explained"
    plain = evaluate(args.run, plain_dir, ["--no_score_probabilities"])
    explained = evaluate(args.run, explained_dir, ["--modality_attribution"])
    metrics = json.loads((explained_dir / "metrics.json").read_text())
    attribution = metrics.get("modality_attribution") or {}
    head_attribution = metrics.get("modality_attribution_head") or {}

    def by_planted_group(summary: dict) -> dict:
        return {
            group: {m: sum(summary.get(str(i), {}).get(m, 0.0) for i in items) / len(items) for m in ("audio", "video")}
            for group, items in PLANTED.items()
        }

    by_group, head_by_group = by_planted_group(attribution), by_planted_group(head_attribution)
    probabilities = metrics.get("score_probabilities") or {}
    result = {
        "command": f"python benchmarks/explanations.py {args.run}", "date": date.today().isoformat(),
        "git_commit": git_commit(), "machine": machine_facts(),
        "wall_s": {"plain": plain, "with_explanations": explained}, "cost_ratio": explained / plain,
        "score_probabilities": {k: probabilities.get(k) for k in ("n_items", "n_items_with_probabilities", "mean_entropy_bits",
                                                                 "calibration", "total_interval", "screen_brier")},
        "evidence": metrics.get("evidence"),
        "modality_attribution": attribution, "attribution_by_planted_group": by_group,
        "modality_attribution_head": head_attribution, "head_attribution_by_planted_group": head_by_group,
    }  # fmt: skip
    write_json(result_path("explanations", False, None), result)
    print(json.dumps({k: result[k] for k in ("wall_s", "cost_ratio", "attribution_by_planted_group",
                                                   "head_attribution_by_planted_group")}, indent=2))


if __name__ == "__main__":
    main()
