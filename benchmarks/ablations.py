#!/usr/bin/env python
"""Benchmark 1: learning and ablations on the synthetic corpus with the SmolLM2 backbone (paper
Tables 3 and 4): train-mean, zero-shot, text-only LoRA, full MLlm-DR, w/o joint loss, w/o LQ-formers,
w/o audio, w/o video. One command:

    python benchmarks/ablations.py --run_dir runs/ablations

It reuses one stage-1 output for every variant (``--stage1`` to pass an existing one, e.g. a demo
run's), trains each stage-2 variant with the demo's settings, evaluates all of them greedily on the
held-out test participants, and writes ``results/ablations.json`` and a Markdown table (totals:
CCC, RMSE, MAE, F1, format failures; per-item MAE, with the items planted only in audio (4, 8) or
only in video (5, 7) marked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / ".cache" / "backbones" / "smollm2-135m-instruct"
AUDIO_ITEMS, VIDEO_ITEMS, TEXT_ITEMS = (4, 8), (5, 7), (1, 2, 3, 6)

# name -> (extra train.py flags or None for no training, evaluation flags)
VARIANTS: dict[str, tuple[list[str] | None, list[str]]] = {
    "train-mean": (None, ["--train_mean"]),
    "zero-shot SmolLM2 {T}": (None, ["--zero_shot", "--model", str(BACKBONE)]),
    "LoRA {T} (text only, CE)": (["--text_only", "--no_joint_loss"], ["--score_source", "generated"]),
    "w/o LQ (text, joint)": (["--text_only"], []),
    "w/o Joint (CE only)": (["--no_joint_loss"], ["--score_source", "generated"]),
    "w/o LQ-A (no audio)": (["--no_use_audio"], []),
    "w/o LQ-V (no video)": (["--no_use_video"], []),
    "MLlm-DR (full)": ([], []),
}


def run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, default=None, help="an existing stage-1 output to reuse")
    parser.add_argument("--corpus", type=Path, default=None, help="an existing synthetic corpus (default: make one)")
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.5)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of variant names")
    args = parser.parse_args(argv)

    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    sys.path.insert(0, str(ROOT / "scripts"))
    from prepare_backbone import prepare_backbone

    prepare_backbone(BACKBONE)
    corpus = args.corpus or run_dir / "corpus"
    if args.corpus is None and not corpus.exists():
        run([python, "scripts/make_synthetic_corpus.py", "--output", str(corpus), "--participants", str(args.participants),
             "--seed", str(args.seed), "--seconds", str(args.seconds), "--turns", str(args.turns)], logs / "corpus.log")
    common = ["--data_dir", str(corpus), "--dataset_format", "edaic", "--preset", "demo", "--per_device_train_batch_size", "8",
              "--use_cpu", "--report_to", "none", "--logging_steps", "5", "--disable_tqdm", "true", "--eval_strategy", "no",
              "--save_strategy", "no", "--seed", str(args.seed), "--max_transcript_tokens", "384"]
    stage1 = args.stage1 or run_dir / "stage1"
    timings: dict[str, float] = {}
    if not (stage1 / "mllm_dr_adapter.json").is_file():
        timings["stage1"] = run([python, "train.py", "--stage", "1", "--backbone", str(BACKBONE), "--output_dir", str(stage1),
                                 "--max_steps", "12", "--lqformer_learning_rate", "1e-3", "--projector_learning_rate", "1e-3",
                                 "--warmup_steps", "2", *common], logs / "stage1.log")
    results: dict[str, dict] = {}
    for index, name in enumerate(args.variants):
        train_flags, eval_flags = VARIANTS[name]
        slug = f"v{index}"
        eval_dir = run_dir / "eval" / slug
        model_flags = []
        if train_flags is not None:
            out = run_dir / "stage2" / slug
            if not (out / "merged" / "config.json").is_file():
                init = [] if "--text_only" in train_flags else ["--init_from", str(stage1)]
                backbone = ["--backbone", str(BACKBONE)] if "--text_only" in train_flags else []
                timings[f"train {name}"] = run(
                    [python, "train.py", "--stage", "2", *init, *backbone, "--output_dir", str(out),
                     "--rationales", str(corpus / "rationales.jsonl"), "--num_train_epochs", str(args.epochs),
                     "--lora_learning_rate", "1e-3", "--head_learning_rate", "1e-3", "--warmup_steps", "3",
                     *train_flags, *common], logs / f"train_{slug}.log")
            model_flags = ["--model", str(out / "merged")]
        if not (eval_dir / "metrics.json").is_file():
            timings[f"eval {name}"] = run(
                [python, "evaluate_mllm_dr.py", *model_flags, *eval_flags, "--data_dir", str(corpus), "--dataset_format",
                 "edaic", "--split", "test", "--output_dir", str(eval_dir), "--greedy", "--max_new_tokens",
                 str(args.max_new_tokens), "--seed", str(args.seed)], logs / f"eval_{slug}.log")
        results[name] = json.loads((eval_dir / "metrics.json").read_text())

    keys = [("ccc", "CCC"), ("rmse", "RMSE"), ("mae", "MAE"), ("f1", "F1"), ("format_failure_rate", "format fail.")]
    items = [str(i) for i in range(1, 9)]
    mark = {**{str(i): "A" for i in AUDIO_ITEMS}, **{str(i): "V" for i in VIDEO_ITEMS}, **{str(i): "T" for i in TEXT_ITEMS}}
    header = "| variant | " + " | ".join(n for _, n in keys) + " | " + " | ".join(f"item {i} ({mark[i]})" for i in items) + " |"
    lines = [header, "|---" * (len(keys) + len(items) + 1) + "|"]
    for name, metrics in results.items():
        cells = ["n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k, _ in keys]
        per_item = metrics.get("per_item_mae") or {}
        cells += [f"{per_item[i]:.2f}" if i in per_item else "n/a" for i in items]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    output = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
        "settings": vars(args) | {"run_dir": str(args.run_dir), "stage1": str(stage1), "corpus": str(corpus)},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "results": results,
        "table": table,
    }
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "ablations.json").write_text(json.dumps(output, indent=2, default=str))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
