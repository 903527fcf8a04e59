#!/usr/bin/env python
"""The explanations of issue 16 on a trained demo model: score-probability calibration and interval
coverage, evidence-quote faithfulness, modality attribution by planted modality, and their cost.

    make demo                                              # or mllm-dr-demo: writes runs/demo-<time>/
    python benchmarks/explanations.py runs/demo-<time>     # ~3 minutes on 2 CPU cores
    python benchmarks/explanations.py runs/learning/seed1-sparse --model runs/learning/seed1-sparse/stage2/demo/merged \
        --dtype float32 --effect total                     # a learning-matrix cell's model, the total effect

Evaluates the model (default: the demo's stage 2) on the run's test split (``RUN/corpus``) twice with
the demo's evaluation flags, in one process after another: plain (``--no_score_probabilities``) and
with every explanation (probabilities, the default, plus ``--modality_attribution`` with
``--attribution_effect`` EFFECT); the cost is the ratio of the two wall times. Writes
``benchmarks/results/explanations.json`` (``explanations_total.json`` for the total effect, ``_float32`` added for --dtype float32).
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


def evaluate(run: Path, model: Path, dtype: str, out: Path, extra: list[str]) -> float:
    file = run / "settings.json"  # written by the demo at its end; the demo's defaults otherwise
    settings = json.loads(file.read_text()) if file.is_file() else {}
    if dtype == "auto":
        dtype = "bfloat16" if settings.get("bf16", native_bf16()) else "float32"
    command = [
        str(Path(sys.executable).parent / "mllm-dr-evaluate"), "--model", str(model),
        "--data_dir", str(run / "corpus"), "--dataset_format", "edaic", "--split", "test", "--greedy",
        "--max_new_tokens", str(settings.get("max_new_tokens", 96)), "--batch_size", "8",
        "--seed", str(settings.get("seed", 0)), "--dtype", dtype,
        "--output_dir", str(out), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="A demo run folder (runs/demo-<time>), or any folder with the corpus "
                        "under corpus/ (a learning-matrix cell) with --model.")
    parser.add_argument("--model", type=Path, help="The model to explain (default: RUN/stage2, the demo's).")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="auto: the demo's (bf16 where the CPU has it); float32 for attribution meant for reading.")
    parser.add_argument("--effect", choices=("direct", "total"), default="direct",
                        help="--attribution_effect of the explained evaluation (total: the answers re-generated per condition).")
    parser.add_argument("--output", type=Path, help="Results JSON (default: benchmarks/results/explanations[_total][_float32].json).")
    args = parser.parse_args()
    model = args.model or args.run / "stage2"
    suffix = "" if args.effect == "direct" else f"-{args.effect}"
    suffix += "" if args.dtype == "auto" else f"-{args.dtype}"
    plain_dir, explained_dir = args.run / f"eval-plain{suffix}", args.run / f"eval-explained{suffix}"
    plain = evaluate(args.run, model, args.dtype, plain_dir, ["--no_score_probabilities"])
    explained = evaluate(args.run, model, args.dtype, explained_dir,
                         ["--modality_attribution", "--attribution_effect", args.effect])
    metrics = json.loads((explained_dir / "metrics.json").read_text())
    attribution = metrics.get("modality_attribution") or {}
    head_attribution = metrics.get("modality_attribution_head") or {}
    score_attribution = metrics.get("modality_attribution_score") or {}

    def by_planted_group(summary: dict) -> dict:
        return {
            group: {m: sum(summary.get(str(i), {}).get(m, 0.0) for i in items) / len(items) for m in ("audio", "video")}
            for group, items in PLANTED.items()
        }

    def points_at_planted(by_group: dict) -> dict:
        """Per modality: does withholding it move the items planted in it more than every other group's?"""
        return {m: all(by_group[m][m] > by_group[g][m] + 1e-6 for g in PLANTED if g != m) for m in ("audio", "video")}

    by_group, head_by_group = by_planted_group(attribution), by_planted_group(head_attribution)
    plain_metrics = json.loads((plain_dir / "metrics.json").read_text())
    probabilities = metrics.get("score_probabilities") or {}
    result = {
        "command": "python benchmarks/explanations.py " + " ".join(sys.argv[1:]), "date": date.today().isoformat(),
        "model": str(model), "effect": args.effect, "dtype": args.dtype,
        "plain": {k: plain_metrics.get(k) for k in ("ccc", "mae", "per_item_mae")},
        "git_commit": git_commit(), "machine": machine_facts(),
        "wall_s": {"plain": plain, "with_explanations": explained}, "cost_ratio": explained / plain,
        "score_probabilities": {k: probabilities.get(k) for k in ("n_items", "n_items_with_probabilities", "mean_entropy_bits",
                                                                 "calibration", "total_interval", "screen_brier")},
        "evidence": metrics.get("evidence"),
        "modality_attribution": attribution, "attribution_by_planted_group": by_group,
        "points_at_planted": {"expected": points_at_planted(by_group), "head": points_at_planted(head_by_group),
                              **({"score": points_at_planted(by_planted_group(score_attribution))} if score_attribution else {})},
        "modality_attribution_head": head_attribution, "head_attribution_by_planted_group": head_by_group,
        **({"modality_attribution_score": score_attribution,
            "score_attribution_by_planted_group": by_planted_group(score_attribution)} if score_attribution else {}),
    }  # fmt: skip
    write_json(result_path("explanations" + suffix.replace("-", "_"), False, args.output), result)
    print(json.dumps({k: result[k] for k in ("wall_s", "cost_ratio", "attribution_by_planted_group",
                                             "head_attribution_by_planted_group", "score_attribution_by_planted_group",
                                             "points_at_planted")
                      if k in result}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
