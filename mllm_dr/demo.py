"""The demo's recipe in one place: :class:`DemoSettings` and the command lines of every step
(synthetic corpus, stage 1, stage 2, evaluation), plus the ablation variants of that recipe
(:data:`ABLATIONS`). ``mllm-dr-demo`` runs the steps; ``benchmarks/ablations.py`` builds its
variants from the same settings, so the two always measure the same recipe.

Every step is the console command a user would type (``mllm-dr-train ...``), run as a subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .backbones import default_backbone_dir


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class DemoSettings:
    """Everything that defines the demo's corpus, training and evaluation (also its command line)."""

    participants: int = field(default=60, metadata={"help": "Synthetic participants (~60/20/20 train/dev/test)."})
    seconds: float = field(default=4.0, metadata={"help": "Feature length per interview, in seconds."})
    turns: int = field(default=6, metadata={"help": "Participant answers per transcript."})
    phrasings: int = field(default=1, metadata={"help": "Phrasings per score level in the synthetic transcripts (1-4)."})
    seed: int = field(default=0, metadata={"help": "Seed of the corpus, the training and the evaluation."})
    batch_size: int = field(default=8, metadata={"help": "Training batch size."})
    stage1_steps: int = field(default=60, metadata={"help": "Stage-1 optimizer steps."})
    alignment_probe_weight: float = field(
        default=1.0, metadata={"help": "Stage-1 auxiliary probe loss weight (not in the paper; 0 = the paper's stage 1)."}
    )
    stage2_epochs: float = field(default=2.0, metadata={"help": "Stage-2 epochs."})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest generated answer, in tokens."})
    eval_participants: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N test participants (default: all)."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "bf16 autocast for training and bf16 weights for evaluation; auto = bf16 where the CPU has "
                  "native bf16 (AVX512-BF16/AMX: about 1.4x faster here), fp32 elsewhere.", "choices": list(PRECISIONS)},
    )

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and cpu_has_native_bf16())

    def resolved(self) -> DemoSettings:
        """The same settings with ``precision`` decided (what a run records)."""
        return replace(self, precision="bf16" if self.bf16 else "fp32")

    @classmethod
    def from_json(cls, saved: dict) -> DemoSettings:
        """Settings recorded by a demo run (``settings.json``), older formats included."""
        saved = dict(saved)
        saved.setdefault("alignment_probe_weight", 0.0)  # demo runs from before the probe had none
        if "bf16" in saved:  # runs from before ``precision``
            saved["precision"] = "bf16" if saved.pop("bf16") else "fp32"
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


# Tuned for ~100 optimizer steps on SmolLM2-135M (the paper's 1e-5 would not move in that budget).
STAGE1_LEARNING_RATE = "2e-3"
LORA_LEARNING_RATE, HEAD_LEARNING_RATE = "2e-3", "3e-3"

# Ablation variants of the recipe (paper Tables 3-4): name -> (folder, extra training flags, or
# None for no training, extra evaluation flags). The zero-shot one adds --model BACKBONE itself.
ABLATIONS: dict[str, tuple[str, list[str] | None, list[str]]] = {
    "train-mean": ("train_mean", None, ["--train_mean"]),
    "zero-shot SmolLM2 {T}": ("zero_shot", None, ["--zero_shot"]),
    "LoRA {T} (text only, CE)": ("lora_text_ce", ["--text_only", "--no_joint_loss"], ["--score_source", "generated"]),
    "w/o LQ (text, joint)": ("wo_lq", ["--text_only"], []),
    "w/o Joint (CE only)": ("wo_joint", ["--no_joint_loss"], ["--score_source", "generated"]),
    "w/o LQ-A (no audio)": ("wo_audio", ["--no_use_audio"], []),
    "w/o LQ-V (no video)": ("wo_video", ["--no_use_video"], []),
    "w/o probe (paper's stage 1)": ("wo_probe", [], []),
    "MLlm-DR (full)": ("mllm_dr", [], []),
}
# Variants whose stage 1 differs from the recipe's: name -> (stage-1 folder, settings changes).
OWN_STAGE1: dict[str, tuple[str, dict[str, float]]] = {
    "w/o probe (paper's stage 1)": ("stage1_no_probe", {"alignment_probe_weight": 0.0}),
}


def backbone_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder the demo trains on."""
    return default_backbone_dir()


def corpus_command(settings: DemoSettings, corpus: Path) -> list[str]:
    return [
        "mllm-dr-synthetic-corpus", "--output_dir", str(corpus), "--participants", str(settings.participants),
        "--seed", str(settings.seed), "--seconds", str(settings.seconds), "--turns", str(settings.turns),
        "--phrasings", str(settings.phrasings),
    ]  # fmt: skip


def train_flags(settings: DemoSettings, corpus: Path) -> list[str]:
    """Training flags shared by both stages."""
    return [
        "--data_dir", str(corpus), "--dataset_format", "edaic", "--preset", "demo",
        "--per_device_train_batch_size", str(settings.batch_size), "--use_cpu", "--report_to", "none",
        "--logging_steps", "5", "--disable_tqdm", "true", "--eval_strategy", "no", "--save_strategy", "no",
        "--seed", str(settings.seed), "--max_transcript_tokens", "384", "--dataloader_num_workers", "0",
        "--no_final_dev_eval", *(["--bf16"] if settings.bf16 else []),
    ]  # fmt: skip


def stage1_command(settings: DemoSettings, corpus: Path, output: Path) -> list[str]:
    return [
        "mllm-dr-train", "--stage", "1", "--backbone", str(backbone_dir()), "--output_dir", str(output),
        "--max_steps", str(settings.stage1_steps), "--lqformer_learning_rate", STAGE1_LEARNING_RATE,
        "--projector_learning_rate", STAGE1_LEARNING_RATE, "--warmup_steps", "2",
        "--alignment_probe_weight", str(settings.alignment_probe_weight), *train_flags(settings, corpus),
    ]  # fmt: skip


def stage2_command(
    settings: DemoSettings, corpus: Path, output: Path, stage1: Path | None, extra: Sequence[str] = ()
) -> list[str]:
    """Stage 2 from ``stage1``'s LQ-formers, or (``stage1=None``, with ``--text_only`` in ``extra``)
    from the bare backbone."""
    start = ["--init_from", str(stage1)] if stage1 is not None else ["--backbone", str(backbone_dir())]
    return [
        "mllm-dr-train", "--stage", "2", *start, "--output_dir", str(output),
        "--rationales", str(corpus / "rationales.jsonl"), "--num_train_epochs", str(settings.stage2_epochs),
        "--lora_learning_rate", LORA_LEARNING_RATE, "--head_learning_rate", HEAD_LEARNING_RATE, "--warmup_steps", "3",
        *extra, *train_flags(settings, corpus),
    ]  # fmt: skip


def eval_flags(settings: DemoSettings, corpus: Path) -> list[str]:
    """Evaluation flags shared by every evaluated model."""
    flags = [
        "--data_dir", str(corpus), "--dataset_format", "edaic", "--split", "test", "--greedy",
        "--max_new_tokens", str(settings.max_new_tokens), "--batch_size", "8", "--seed", str(settings.seed),
        "--dtype", "bfloat16" if settings.bf16 else "float32",
    ]  # fmt: skip
    if settings.eval_participants:
        flags += ["--limit_participants", str(settings.eval_participants)]
    return flags


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (oneDNN's check); emulated bf16 would be slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_command(command: Sequence[str]) -> list[str]:
    """A console script by its name from this interpreter's environment (where pip put it), so a
    step runs the same installation as the caller even when that environment is not on PATH."""
    program = command[0]
    if os.sep not in program:
        bindir = str(Path(sys.executable).parent)
        found = shutil.which(program, path=bindir + os.pathsep + os.environ.get("PATH", ""))
        if found is None:
            raise SystemExit(f"{program}: not found in {bindir} or on PATH (is mllm-dr installed?)")
        program = found
    return [program, *command[1:]]


def run_step(step: str, command: Sequence[str], timings: dict[str, float], log_dir: Path) -> None:
    """Runs one step, teeing its output to ``log_dir/<step>.log``; stops on failure."""
    print(f"\n=== {step}\n$ {' '.join(shlex.quote(part) for part in command)}", flush=True)
    started = time.perf_counter()
    log_path = log_dir / f"{step}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            resolve_command(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
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
    """Totals per evaluated model; the trained model also gets a row for its MAA head's scores alone."""
    keys = [("ccc", "CCC"), ("rmse", "RMSE"), ("mae", "MAE"), ("f1", "F1"), ("format_failure_rate", "format failures")]
    lines = ["| model | " + " | ".join(name for _, name in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, path in evals.items():
        metrics = json.loads((path / "metrics.json").read_text())
        rows = [(name, metrics)]
        if metrics.get("head_only"):
            rows.append((f"{name.split(' (')[0]}, MAA head score alone", {**metrics["head_only"], "format_failure_rate": None}))
        for label, values in rows:
            cells = ["n/a" if values.get(k) is None else f"{values[k]:.3f}" for k, _ in keys]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
