#!/usr/bin/env python
"""Benchmark 1: learning and ablations on the synthetic corpus with the SmolLM2 backbone (paper
Tables 3 and 4): train-mean, zero-shot, text-only LoRA, full MLlm-DR, w/o joint loss, w/o LQ-formers,
w/o audio, w/o video, and (when the recipe uses it) without the stage-1 alignment probe. One command:

    python benchmarks/ablations.py --run_dir runs/ablations [--demo_run runs/demo-<timestamp>]

Every variant is trained and evaluated with exactly the demo's recipe (``mllm_dr.demo``'s
``DemoSettings``, command builders and ``ABLATIONS``: same corpus, stage-1 output, learning rates,
epochs, precision and greedy decoding), each step run as its console command (``mllm-dr-train``,
``mllm-dr-evaluate``, ...). With ``--demo_run`` the demo's corpus, stage 1, full model and
baseline evaluations are reused and only the ablated variants are trained. Writes
``benchmarks/results/ablations.json`` and a Markdown table: totals (CCC, RMSE, MAE, F1, format
failures), the MAA head's scores alone, and per-item MAE, with the items planted only in the
transcript (T), audio (A) or video (V) marked. An interrupted run resumes: finished trainings and evaluations are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from mllm_dr.backbones import prepare_backbone
from mllm_dr.demo import (
    ABLATIONS,
    OWN_STAGE1,
    PRECISIONS,
    DemoSettings,
    backbone_dir,
    corpus_command,
    eval_flags,
    resolve_command,
    stage1_command,
    stage2_command,
)
from mllm_dr.io import write_text_atomic

from _common import RESULTS_DIR, run_command as run, write_json

AUDIO_ITEMS, VIDEO_ITEMS, TEXT_ITEMS = (4, 8), (5, 7), (1, 2, 3, 6)

# name -> (folder, extra training flags or None for no training, extra evaluation flags): the
# recipe's variants, mllm_dr.demo.ABLATIONS (OWN_STAGE1: the variants with a stage 1 of their own).
VARIANTS: dict[str, tuple[str, list[str] | None, list[str]]] = ABLATIONS


def results_table(results: dict[str, dict]) -> str:
    keys = [("ccc", "CCC"), ("rmse", "RMSE"), ("mae", "MAE"), ("f1", "F1"), ("format_failure_rate", "format fail.")]
    items = [str(i) for i in range(1, 9)]
    mark = {**{str(i): "A" for i in AUDIO_ITEMS}, **{str(i): "V" for i in VIDEO_ITEMS}, **{str(i): "T" for i in TEXT_ITEMS}}
    header = (
        "| variant | " + " | ".join(n for _, n in keys) + " | head-only CCC | head-only MAE | "
        + " | ".join(f"item {i} ({mark[i]})" for i in items) + " |"
    )
    lines = [header, "|---" * (len(keys) + len(items) + 3) + "|"]
    for name, metrics in results.items():
        cells = ["n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k, _ in keys]
        head = metrics.get("head_only") or {}
        cells += ["n/a" if head.get(k) is None else f"{head[k]:.3f}" for k in ("ccc", "mae")]
        per_item = metrics.get("per_item_mae") or {}
        cells += [f"{per_item[i]:.2f}" if i in per_item else "n/a" for i in items]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, required=True)
    parser.add_argument("--demo_run", type=Path, default=None,
                        help="a finished `make demo` run folder: reuse its corpus, stage 1, full model and baselines")
    parser.add_argument("--seed", type=int, default=DemoSettings.seed, help="ignored with --demo_run (the demo's is used)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                        help="ignored with --demo_run (the demo's is used)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of variant names")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    run_dir: Path = args.run_dir
    if args.demo_run is not None:
        corpus, stage1 = args.demo_run / "corpus", args.demo_run / "stage1"
        reused = {"MLlm-DR (full)": args.demo_run / "stage2"}
        reused_evals = {"MLlm-DR (full)": "mllm_dr", "zero-shot SmolLM2 {T}": "zero_shot", "train-mean": "train_mean"}
        for folder in (corpus, stage1, reused["MLlm-DR (full)"] / "merged"):
            if not folder.is_dir():
                raise SystemExit(f"--demo_run {args.demo_run}: {folder} is missing (is the demo run finished?)")
        settings_file = args.demo_run / "settings.json"
        if not settings_file.is_file():
            raise SystemExit(f"--demo_run {args.demo_run}: {settings_file} is missing (is the demo run finished?)")
        settings = DemoSettings.from_json(json.loads(settings_file.read_text())).resolved()
    else:
        settings = DemoSettings(seed=args.seed, precision=args.precision).resolved()
        corpus, stage1 = run_dir / "corpus", run_dir / "stage1"
        reused, reused_evals = {}, {}

    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"backbone: {prepare_backbone(backbone_dir())}", flush=True)
    # Timings of earlier, interrupted invocations into the same run_dir are kept.
    timings_path = run_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if not (corpus / "rationales.jsonl").is_file():
        timings["corpus"] = run(corpus_command(settings, corpus), logs / "corpus.log")
    if not (stage1 / "mllm_dr_adapter.json").is_file():
        timings["stage1"] = run(stage1_command(settings, corpus, stage1), logs / "stage1.log")

    results: dict[str, dict] = {}
    for name in args.variants:
        slug, train_extra, eval_extra = VARIANTS[name]
        variant_stage1 = stage1
        if name in OWN_STAGE1:
            folder, changes = OWN_STAGE1[name]
            if all(getattr(settings, key) == value for key, value in changes.items()):
                print(f"{name}: skipped, the recipe already has {changes}", flush=True)
                continue
            variant_stage1 = run_dir / folder
            if not (variant_stage1 / "mllm_dr_adapter.json").is_file():
                timings[f"stage1 {name}"] = run(
                    stage1_command(replace(settings, **changes), corpus, variant_stage1), logs / f"stage1_{slug}.log"
                )
        eval_dir = run_dir / "eval" / slug
        if name in reused_evals and (args.demo_run / "eval" / reused_evals[name] / "metrics.json").is_file():
            eval_dir = args.demo_run / "eval" / reused_evals[name]
        # the zero-shot variant evaluates the bare backbone (ABLATIONS leaves its --model to the caller)
        model_flags: list[str] = ["--model", str(backbone_dir())] if "--zero_shot" in eval_extra else []
        if train_extra is not None:
            out = reused.get(name, run_dir / "stage2" / slug)
            if not (out / "merged" / "config.json").is_file():
                start = None if "--text_only" in train_extra else variant_stage1
                timings[f"train {name}"] = run(stage2_command(settings, corpus, out, start, train_extra), logs / f"train_{slug}.log")
            model_flags = ["--model", str(out / "merged")]
        if not (eval_dir / "metrics.json").is_file():
            timings[f"eval {name}"] = run(
                ["mllm-dr-evaluate", *model_flags, *eval_extra, *eval_flags(settings, corpus),
                 "--output_dir", str(eval_dir)],
                logs / f"eval_{slug}.log",
            )
        write_json(timings_path, timings)
        results[name] = json.loads((eval_dir / "metrics.json").read_text())
        print(f"{name}: MAE {results[name]['mae']:.3f}", flush=True)

    table = results_table(results)
    output = {
        "command": " ".join(["python benchmarks/ablations.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "date": time.strftime("%Y-%m-%d"),
        "settings": asdict(settings),
        "demo_run": None if args.demo_run is None else str(args.demo_run),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "results": results,
        "table": table,
    }
    write_json(RESULTS_DIR / "ablations.json", output)
    write_text_atomic(run_dir / "ablations.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
