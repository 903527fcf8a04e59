#!/usr/bin/env python
"""The fault matrix (issue 12): damaged copies of a small synthetic E-DAIC corpus, damaged
checkpoints and killed or concurrent runs, each met through the real command lines, as a user
meets them. One line per fault class: survived (the outcome a user must get: a refusal before any
long work naming participant / item / file, or a skip recorded in the run's outputs, or identical
metrics) or NOT, with the evidence.

    python benchmarks/faults.py              # ~5 minutes on 2 CPU cores (tiny random backbone)
    python benchmarks/faults.py --keep DIR   # keep the corpora, runs and logs in DIR

Writes the table to stdout and JSON to ``benchmarks/results/faults.json``; exits 1 when a class
did not survive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from _common import ROOT, machine_facts, git_commit, markdown_table, progress, result_path, tiny_backbone, write_json

BIN = Path(sys.executable).parent
TINY_LQFORMER = {
    "num_query_tokens": 4, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
    "intermediate_size": 48, "dropout": 0.0, "projector_hidden_size": 40, "max_frames": 64,
}  # fmt: skip
TINY = json.dumps(
    {
        "audio_config": {**TINY_LQFORMER, "feature_dim": 768},
        "video_config": {**TINY_LQFORMER, "feature_dim": 2048},
        "score_head_num_heads": 4,
        "score_head_hidden_size": 16,
    }
)


# ----------------------------------------------------------------------------- running commands
@dataclass
class Run:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def refused_cleanly(self, *names: str) -> bool:
        """Exited non-zero with one message of ours naming every one of ``names`` (no traceback)."""
        return self.returncode != 0 and "Traceback" not in self.output and all(n in self.output for n in names)

    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1][:220] if lines else f"(exit {self.returncode}, no stderr)"


def run(tool: str, *arguments: str, timeout: float = 600) -> Run:
    command = [str(BIN / tool), *arguments]
    began = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return Run(command, done.returncode, done.stdout, done.stderr, time.perf_counter() - began)


def ok(run_: Run) -> Run:
    if run_.returncode != 0:
        raise RuntimeError(f"setup command failed ({run_.returncode}): {' '.join(run_.command)}\n{run_.stderr[-3000:]}")
    return run_


@dataclass
class Context:
    root: Path
    backbone: Path
    corpus: Path
    stage1: Path = field(default=Path())
    stage2: Path = field(default=Path())
    clean_eval: Path = field(default=Path())
    counter: int = 0

    def fresh(self, name: str) -> Path:
        self.counter += 1
        return self.root / "work" / f"{self.counter:02d}-{name}"

    def corpus_copy(self, name: str) -> Path:
        """A full copy of the corpus (damage goes into copies only)."""
        destination = self.fresh(name)
        shutil.copytree(self.corpus, destination, ignore=shutil.ignore_patterns(".mllm_dr_cache"))
        return destination


def corpus_args(data: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data), "--dataset_format", "edaic", *extra]


def train_args(data: Path, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        *corpus_args(data), "--model_overrides", TINY, "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--max_steps", str(steps), "--use_cpu", "true", "--report_to", "none",
        "--max_transcript_tokens", "32", "--disable_tqdm", "true", "--seed", "7", "--eval_strategy", "no",
        "--save_strategy", "no", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def stage1(ctx: Context, data: Path, out: Path, *extra: str, steps: int = 2) -> Run:
    return run("mllm-dr-train", "--stage", "1", "--backbone", str(ctx.backbone), *train_args(data, out, *extra, steps=steps))


def stage2_text(ctx: Context, data: Path, out: Path, *extra: str) -> Run:
    return run(
        "mllm-dr-train", "--stage", "2", "--backbone", str(ctx.backbone), "--text_only",
        "--rationales", str(data / "rationales.jsonl"), *train_args(data, out, *extra),
    )  # fmt: skip


def evaluate(model: Path, data: Path, out: Path, *extra: str) -> Run:
    return run(
        "mllm-dr-evaluate", "--model", str(model), *corpus_args(data), "--split", "test", "--greedy",
        "--max_new_tokens", "8", "--n_bootstrap", "0", "--max_transcript_tokens", "32", "--output_dir", str(out), *extra,
    )  # fmt: skip


def manifest(out: Path, name: str = "run_manifest.json") -> dict[str, Any]:
    return json.loads((out / name).read_text())


def trained(out: Path) -> bool:
    return out.exists() and any(p.name.startswith("checkpoint-") or p.name == "merged" for p in out.iterdir())


def rationale_lines(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / "rationales.jsonl").read_text().splitlines() if line.strip()]


def write_rationale_lines(data: Path, records: Sequence[dict[str, Any]], trailing_newline: bool = True) -> None:
    text = "\n".join(json.dumps(r) for r in records) + ("\n" if trailing_newline else "")
    (data / "rationales.jsonl").write_text(text)


def participant_folder(data: Path, pid: str) -> Path:
    return data / "data" / f"{pid}_P"


def first_train_participant(data: Path) -> str:
    return rationale_lines(data)[0]["participant_id"]


def test_participant(data: Path) -> str:
    import csv

    with (data / "labels" / "test_split.csv").open() as handle:
        return next(csv.DictReader(handle))["Participant_ID"]


# ----------------------------------------------------------------------------- the classes
Check = Callable[[Context], tuple[bool, str]]


def class_1(ctx: Context) -> tuple[bool, str]:
    """A labelled train row without a rationale: refused naming participant and item before any
    step, or skipped and recorded; a failing final evaluation keeps the exports (tests only)."""
    data = ctx.corpus_copy("no-rationale")
    records = rationale_lines(data)
    lost = records.pop(3)
    write_rationale_lines(data, records)
    out = ctx.fresh("no-rationale-raise")
    refused = stage2_text(ctx, data, out)
    where = f"participant {lost['participant_id']}, item {lost['item_index']}"
    out_skip = ctx.fresh("no-rationale-skip")
    skipped = stage2_text(ctx, data, out_skip, "--on_error", "skip")
    recorded = skipped.returncode == 0 and [
        (s["participant_id"], s.get("item_index")) for s in manifest(out_skip)["data"]["left_out"]["skipped"]
    ] == [(lost["participant_id"], lost["item_index"])]
    survived = refused.refused_cleanly(where, "no rationale") and not trained(out) and recorded
    return survived, f"raise: `{refused.last_line()}`; skip: recorded {recorded}, merged/ exported {trained(out_skip)}"


def class_2(ctx: Context) -> tuple[bool, str]:
    """A model retrained in place, or labels changed, since the predictions were written: a resumed
    evaluation must not mix them."""
    import torch
    from safetensors.torch import load_file, save_file

    model = ctx.fresh("retrained-model")
    shutil.copytree(ctx.stage2 / "merged", model)
    out = ctx.fresh("retrained-eval")
    shutil.copytree(ctx.clean_eval, out)
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    name = next(n for n in state if "lora" not in n and state[n].dtype == torch.float32)
    state[name] = state[name] + 1e-3  # the same size: a names-and-sizes fingerprint misses it
    save_file(state, str(weights), metadata={"format": "pt"})
    mixed = evaluate(model, ctx.corpus, out)
    model_ok = mixed.refused_cleanly(str(out)) or (
        mixed.returncode == 0 and manifest(out, "manifest.json")["model"]["fingerprint"] != manifest(ctx.clean_eval, "manifest.json")["model"]["fingerprint"]
        and "resum" not in mixed.output.lower()
    )
    data = ctx.corpus_copy("relabelled")
    pid = test_participant(data)
    out2 = ctx.fresh("relabelled-eval")
    ok(evaluate(ctx.stage2, data, out2))
    edit_item_labels(data, pid, relabel)
    (out2 / "metrics.json").unlink()
    relabelled = evaluate(ctx.stage2, data, out2)
    data_ok = relabelled.refused_cleanly(pid)
    return model_ok and data_ok, f"retrained: `{mixed.last_line()}`; relabelled: `{relabelled.last_line()}`"


def edit_item_labels(data: Path, pid: str, change: Callable[[str], str]) -> None:
    """Applies ``change`` to ``pid``'s item labels in both E-DAIC label files (``Detailed_PHQ8_Labels.csv``:
    ``Participant_ID``, ``PHQ_8<Item>``; ``detailed_lables.csv``: ``Participant``, ``PHQ8_<n>_<Item>``)."""
    import csv

    for name in ("Detailed_PHQ8_Labels.csv", "detailed_lables.csv"):
        path = data / "labels" / name
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        header = rows[0]
        key = header.index("Participant_ID" if "Participant_ID" in header else "Participant")
        items = [i for i, c in enumerate(header) if (c.startswith("PHQ_8") or c.startswith("PHQ8_")) and c != "PHQ_8Total"]
        for row in rows[1:]:
            if row[key] == pid:
                for i in items:
                    row[i] = change(row[i])
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)


def relabel(value: str) -> str:
    return str((int(float(value)) + 1) % 4) if value.strip() else value


def class_3(ctx: Context) -> tuple[bool, str]:
    """A duplicated prediction line is counted once (identical metrics); a second evaluation or
    distillation into the same place at the same time is refused."""
    out = ctx.fresh("duplicate-line")
    shutil.copytree(ctx.clean_eval, out)
    predictions = out / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines + [lines[0]]))
    (out / "metrics.json").unlink()
    again = evaluate(ctx.stage2, ctx.corpus, out)
    def scores(folder: Path) -> dict[str, Any]:
        return {k: v for k, v in manifest(folder, "metrics.json").items() if k != "throughput"}

    same = again.returncode == 0 and scores(out) == scores(ctx.clean_eval)
    holder = hold_lock(ctx.fresh("locked-eval"))
    try:
        concurrent = evaluate(ctx.stage2, ctx.corpus, holder.folder)
        from mllm_dr.distillation import output_lock_folder

        data = ctx.corpus_copy("locked-distill")
        distill_holder = hold_lock(output_lock_folder(data / "rationales.jsonl"))
        try:
            distill = run(
                "mllm-dr-distill", *corpus_args(data), "--rationales", str(data / "rationales.jsonl"), "--teacher",
                "openai", "--api_base", f"http://127.0.0.1:{closed_port()}/v1", "--teacher_model", "t", "--no_progress",
            )  # fmt: skip
        finally:
            distill_holder.release()
    finally:
        holder.release()
    survived = same and concurrent.refused_cleanly("in use") and distill.refused_cleanly("in use")
    return survived, (
        f"duplicate line: metrics identical {same}; concurrent evaluate: `{concurrent.last_line()}`; "
        f"concurrent distill: `{distill.last_line()}`"
    )


class hold_lock:  # noqa: N801 - used like a function
    """Another process holding ``exclusive_lock(folder)`` (a second run of a command)."""

    def __init__(self, folder: Path):
        self.folder = folder
        code = (
            "import sys, time; from mllm_dr.io import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'run'):\n    print('held', flush=True); time.sleep(600)\n"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.kill()
        self.process.wait()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def class_4(ctx: Context) -> tuple[bool, str]:
    """A complete last rationale record without a trailing newline survives a resumed distill."""
    data = ctx.corpus_copy("no-newline")
    records = rationale_lines(data)
    write_rationale_lines(data, records, trailing_newline=False)
    result = run(
        "mllm-dr-distill", *corpus_args(data), "--rationales", str(data / "rationales.jsonl"), "--splits", "train", "dev",
        "--teacher", "openai", "--api_base", f"http://127.0.0.1:{closed_port()}/v1", "--teacher_model", "t", "--no_progress",
    )  # fmt: skip
    kept = len(rationale_lines(data))
    return result.returncode == 0 and kept == len(records), f"{kept} of {len(records)} records kept; `{result.last_line()}`"


def damaged_feature(ctx: Context, name: str, damage: Callable[[Path], None], kind: str = "audio") -> tuple[Path, Path, str]:
    data = ctx.corpus_copy(name)
    pid = first_train_participant(data)
    folder = participant_folder(data, pid) / "features"
    path = folder / (f"{pid}_HuBERT.npy" if kind == "audio" else f"{pid}_CNN_ResNet.mat")
    damage(path)
    return data, path, pid


def refused_or_skipped(ctx: Context, data: Path, path: Path, pid: str, name: str) -> tuple[bool, str]:
    out = ctx.fresh(f"{name}-raise")
    refused = stage1(ctx, data, out)
    out_skip = ctx.fresh(f"{name}-skip")
    skipped = stage1(ctx, data, out_skip, "--on_error", "skip")
    recorded = skipped.returncode == 0 and any(
        s["participant_id"] == pid and s["path"] == str(path) for s in manifest(out_skip)["data"]["left_out"]["skipped"]
    )
    survived = refused.refused_cleanly(pid, str(path)) and not trained(out) and recorded
    return survived, f"raise: `{refused.last_line()}`; skip recorded: {recorded}"


def class_5(ctx: Context) -> tuple[bool, str]:
    """NaN / inf in a feature file: refused naming participant and file, or skipped and recorded."""
    import numpy as np

    def add_nan(path: Path) -> None:
        array = np.load(path)
        array[2, 5] = np.nan
        array[3, 1] = np.inf
        np.save(path, array)

    data, path, pid = damaged_feature(ctx, "nan", add_nan)
    return refused_or_skipped(ctx, data, path, pid, "nan")


def class_6(ctx: Context) -> tuple[bool, str]:
    """A 0-byte .npy and an empty .mat (an interrupted copy): named, and skippable."""
    results = []
    for name, kind, content in (("empty-npy", "audio", b""), ("empty-mat", "video", b""), ("zeroed-mat", "video", b"\0" * 4096)):
        data, path, pid = damaged_feature(ctx, name, lambda p, c=content: p.write_bytes(c), kind)
        results.append(refused_or_skipped(ctx, data, path, pid, name))
    return all(r[0] for r in results), "; ".join(r[1] for r in results)


def class_7(ctx: Context) -> tuple[bool, str]:
    """A train participant with no item labels: refused naming them, or skipped and recorded."""
    data = ctx.corpus_copy("unlabelled")
    pid = first_train_participant(data)
    edit_item_labels(data, pid, lambda _value: "")
    out = ctx.fresh("unlabelled-raise")
    refused = stage1(ctx, data, out)
    out_skip = ctx.fresh("unlabelled-skip")
    skipped = stage1(ctx, data, out_skip, "--on_error", "skip")
    recorded = skipped.returncode == 0 and manifest(out_skip)["data"]["skipped_participants"] == [pid]
    survived = refused.refused_cleanly(pid, "no item labels") and not trained(out) and recorded
    return survived, f"raise: `{refused.last_line()}`; skip recorded: {recorded}"


def class_8(ctx: Context) -> tuple[bool, str]:
    """A checkpoint folder whose modeling_mllm_dr.py was altered: its code must not run without
    --trust_remote_code, and the user is told that the folder's code differs."""
    model = ctx.fresh("foreign-code")
    shutil.copytree(ctx.stage2 / "merged", model)
    marker = ctx.fresh("marker")
    with (model / "modeling_mllm_dr.py").open("a") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('the checkpoint ran its own code')\n")
    result = evaluate(model, ctx.corpus, ctx.fresh("foreign-code-eval"))
    warned = "modeling_mllm_dr.py" in result.stderr and "differ" in result.stderr
    survived = result.returncode == 0 and not marker.exists() and warned
    return survived, f"folder code ran: {marker.exists()}; warned: {warned}"


def class_9(ctx: Context) -> tuple[bool, str]:
    """Skipped participants and missing modalities appear in the outputs; --require_modalities."""
    data = ctx.corpus_copy("no-video")
    pid = test_participant(data)
    (participant_folder(data, pid) / "features" / f"{pid}_CNN_ResNet.mat").unlink()
    out = ctx.fresh("no-video-eval")
    result = evaluate(ctx.stage2, data, out)
    recorded = (
        result.returncode == 0
        and pid in manifest(out, "manifest.json")["data"]["left_out"]["missing_modality"]["video"]
        and pid in manifest(out, "metrics.json")["left_out"]["missing_modality"]["video"]
        and f"Scored without video features (no video file): {pid}" in (out / "report.md").read_text()
    )
    required = evaluate(ctx.stage2, data, ctx.fresh("no-video-required"), "--require_modalities", "video")
    survived = recorded and required.refused_cleanly(pid)
    return survived, f"recorded in manifest/metrics/report: {recorded}; required: `{required.last_line()}`"


def class_10(ctx: Context) -> tuple[bool, str]:
    """The distiller against a dead endpoint, a trickling one, and a user-info --api_base."""
    data = ctx.corpus_copy("dead-endpoint")
    (data / "rationales.jsonl").unlink()
    common = [*corpus_args(data), "--rationales", str(data / "out.jsonl"), "--teacher", "openai", "--teacher_model", "t",
              "--no_progress", "--retry_base_delay", "0.1", "--max_retry_delay", "0.2"]  # fmt: skip
    dead = run("mllm-dr-distill", *common, "--api_base", f"http://127.0.0.1:{closed_port()}/v1")
    with Trickle() as trickle:
        slow = run("mllm-dr-distill", *common, "--api_base", trickle.url, "--timeout", "2", "--http_retries", "0",
                   "--max_consecutive_failures", "2")  # fmt: skip
    userinfo = run("mllm-dr-distill", *common, "--api_base", "http://127.0.0.1:1@example.com/v1")
    survived = (
        dead.refused_cleanly("127.0.0.1") and dead.seconds < 60
        and slow.returncode != 0 and "Traceback" not in slow.output and slow.seconds < 60
        and userinfo.refused_cleanly("@") and "example.com" not in userinfo.output
    )  # fmt: skip
    return survived, (
        f"dead endpoint: stopped after {dead.seconds:.0f} s, `{dead.last_line()}`; trickling server: stopped after "
        f"{slow.seconds:.0f} s; user-info: `{userinfo.last_line()}`"
    )


class Trickle:
    """A loopback HTTP server that answers one byte per second, forever."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/v1"
        self.stop = threading.Event()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.drip, args=(connection,), daemon=True).start()

    def drip(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                while not self.stop.is_set():
                    connection.sendall(b" ")
                    time.sleep(1.0)
            except OSError:
                return

    def __enter__(self) -> Trickle:
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.server.close()


def class_11(ctx: Context) -> tuple[bool, str]:
    """Damaged files get one line naming them: truncated safetensors (evaluate, predict, resume), a
    checkpoint without trainer_state.json, a non-MLlm-DR config.json, a torn middle line of
    predictions.jsonl, a pickled .npy given to predict."""
    import numpy as np

    lines = []
    model = ctx.fresh("truncated-model")
    shutil.copytree(ctx.stage2 / "merged", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    truncated = evaluate(model, ctx.corpus, ctx.fresh("truncated-eval"))
    lines.append(("truncated weights (evaluate)", truncated.refused_cleanly(str(weights)), truncated))

    pid = test_participant(ctx.corpus)
    features = participant_folder(ctx.corpus, pid) / "features"
    transcript = participant_folder(ctx.corpus, pid) / f"{pid}_Transcript.csv"
    predict_common = ["--transcript", str(transcript), "--greedy", "--max_new_tokens", "8"]
    predicted = run("mllm-dr-predict", "--model", str(model), *predict_common, "--audio", str(features / f"{pid}_HuBERT.npy"),
                    "--output_dir", str(ctx.fresh("truncated-predict")))  # fmt: skip
    lines.append(("truncated weights (predict)", predicted.refused_cleanly(str(weights)), predicted))

    pickled = ctx.fresh("pickled") / "features.npy"
    pickled.parent.mkdir(parents=True)
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    predicted = run("mllm-dr-predict", "--model", str(ctx.stage2), *predict_common, "--audio", str(pickled),
                    "--output_dir", str(ctx.fresh("pickled-predict")))  # fmt: skip
    lines.append(("pickled .npy (predict)", predicted.refused_cleanly(str(pickled)), predicted))

    foreign = evaluate(ctx.backbone, ctx.corpus, ctx.fresh("foreign-config"))
    lines.append(("non-MLlm-DR config.json", foreign.refused_cleanly(str(ctx.backbone / "config.json")), foreign))

    out = ctx.fresh("torn-middle")
    shutil.copytree(ctx.clean_eval, out)
    predictions = out / "predictions.jsonl"
    text = predictions.read_text().splitlines(keepends=True)
    text[1] = text[1][: len(text[1]) // 2] + "\n"
    predictions.write_text("".join(text))
    (out / "metrics.json").unlink()
    torn = evaluate(ctx.stage2, ctx.corpus, out)
    lines.append(("torn middle line of predictions.jsonl", torn.refused_cleanly(f"{predictions}:2"), torn))

    run_dir = ctx.fresh("resume-damaged")
    ok(stage1(ctx, ctx.corpus, run_dir, "--save_strategy", "steps", "--save_steps", "2"))
    checkpoint = run_dir / "checkpoint-2"
    state = checkpoint / "mllm_dr_trainable.safetensors"
    state.write_bytes(state.read_bytes()[:200])
    resumed = stage1(ctx, ctx.corpus, run_dir, "--resume_from_checkpoint", str(checkpoint), steps=4)
    lines.append(("truncated safetensors (resume)", resumed.refused_cleanly(str(state)), resumed))
    (checkpoint / "trainer_state.json").unlink()
    resumed = stage1(ctx, ctx.corpus, run_dir, "--resume_from_checkpoint", str(checkpoint), steps=4)
    lines.append(("checkpoint without trainer_state.json", resumed.refused_cleanly("trainer_state.json"), resumed))
    survived = all(good for _name, good, _run in lines)
    return survived, "; ".join(f"{name}: {'named' if good else 'NOT: ' + repr(r.last_line())}" for name, good, r in lines)


def class_12(ctx: Context) -> tuple[bool, str]:
    """The processor and the model refuse lenient inputs with a ValueError naming the field."""
    code = r'''
import json, sys, numpy as np, torch
from mllm_dr.testing import build_tiny, AUDIO_DIM, VIDEO_DIM
model, processor = build_tiny(sys.argv[1])
results = {}
def expect(name, field, call):
    try:
        call()
        results[name] = f"accepted"
    except ValueError as error:
        results[name] = "ok" if field in str(error) else f"unnamed: {error}"
    except Exception as error:
        results[name] = f"{type(error).__name__}: {error}"
t = "I sleep badly."
a = np.zeros((5, AUDIO_DIM), np.float32); v = np.zeros((4, VIDEO_DIM), np.float32)
call = lambda **kw: processor(**{"transcripts": [t], "item_indices": [3], "audio_features": [a], "video_features": [v], **kw})
expect("item 3.7", "item", lambda: call(item_indices=[3.7]))
expect("bool item", "item", lambda: call(item_indices=[True]))
expect("scores=['abc']", "scores[0]", lambda: call(scores=["abc"]))
expect("bool features", "audio_features", lambda: call(audio_features=[a.astype(bool)]))
expect("complex features", "audio_features", lambda: call(audio_features=[a.astype(np.complex64)]))
expect("NaN features", "audio_features", lambda: call(audio_features=[np.full_like(a, np.nan)]))
batch = call(scores=[2])
inputs = {k: batch[k] for k in batch if k not in ("labels",)}
expect("score_labels batch 3", "score_labels", lambda: model(**{**inputs, "score_labels": torch.zeros(3)}))
expect("prompt_mask (1, 1)", "prompt_mask", lambda: model(**{**inputs, "prompt_mask": torch.ones(1, 1, dtype=torch.bool)}))
print(json.dumps(results))
'''
    done = subprocess.run([sys.executable, "-c", code, str(ctx.backbone)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return False, f"probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    survived = all(v == "ok" for v in results.values())
    return survived, ", ".join(f"{k}: {v}" for k, v in results.items())


def class_13(ctx: Context) -> tuple[bool, str]:
    """A resume on changed data, and a rationale written for another label, are refused."""
    run_dir = ctx.fresh("resume-other-data")
    ok(stage1(ctx, ctx.corpus, run_dir, "--save_strategy", "steps", "--save_steps", "2"))
    data = ctx.corpus_copy("relabelled-train")
    edit_item_labels(data, first_train_participant(data), relabel)
    resumed = stage1(ctx, data, run_dir, "--resume_from_checkpoint", "last", steps=4)
    allowed = stage1(ctx, data, run_dir, "--resume_from_checkpoint", "last", "--allow_data_change", steps=4)
    other = ctx.corpus_copy("other-label-rationale")
    records = rationale_lines(other)
    records[0]["label"] = (records[0]["label"] + 1) % 4
    write_rationale_lines(other, records)
    out = ctx.fresh("other-label-train")
    mismatch = stage2_text(ctx, other, out)
    where = f"participant {records[0]['participant_id']}, item {records[0]['item_index']}"
    survived = (
        resumed.refused_cleanly("mllm_dr_data.json", "other data") and allowed.returncode == 0
        and mismatch.refused_cleanly(where, "rationale written for label") and not trained(out)
    )  # fmt: skip
    return survived, f"resume: `{resumed.last_line()}`; --allow_data_change: exit {allowed.returncode}; rationale: `{mismatch.last_line()}`"


CLASSES: list[tuple[int, str, Check]] = [
    (1, "train/dev row without a rationale (the export kept when the final evaluation fails: tests only)", class_1),
    (2, "evaluation resumed after the model or the labels changed", class_2),
    (3, "duplicated prediction lines; concurrent evaluation / distillation", class_3),
    (4, "distiller: last record without a trailing newline", class_4),
    (5, "NaN / inf features", class_5),
    (6, "0-byte .npy, empty or zero-filled .mat", class_6),
    (7, "participant without item labels", class_7),
    (8, "checkpoint code run without being asked", class_8),
    (9, "left-out participants and missing modalities invisible; --require_modalities", class_9),
    (10, "distiller: dead endpoint, trickling endpoint, user-info in --api_base", class_10),
    (11, "damaged files named in one line", class_11),
    (12, "lenient processor / model API checks", class_12),
    (13, "resume on other data; rationale for another label", class_13),
]


def setup(root: Path) -> Context:
    from mllm_dr.synthetic import make_synthetic_corpus

    progress("setup: tiny backbone, synthetic corpus (12 participants), stage 1, stage 2, one clean evaluation")
    backbone = tiny_backbone(root / "backbone")
    corpus = root / "corpus"
    make_synthetic_corpus(corpus, 12, seed=0, seconds=1.0, turns=6)
    ctx = Context(root, backbone, corpus)
    ctx.stage1 = root / "s1"
    ok(stage1(ctx, corpus, ctx.stage1))
    ctx.stage2 = root / "s2"
    ok(run("mllm-dr-train", "--stage", "2", "--init_from", str(ctx.stage1), "--rationales", str(corpus / "rationales.jsonl"),
           *train_args(corpus, ctx.stage2)))  # fmt: skip
    ctx.clean_eval = root / "eval"
    ok(evaluate(ctx.stage2, corpus, ctx.clean_eval))
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="Keep corpora, runs and logs in this folder (default: a temporary one).")
    parser.add_argument("--only", type=int, nargs="*", help="Run only these class numbers.")
    parser.add_argument("--output", help="JSON result path (default benchmarks/results/faults.json).")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mllm-dr-faults-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ctx = setup(root)
        rows = []
        for number, title, check in CLASSES:
            if args.only and number not in args.only:
                continue
            progress(f"class {number}: {title}")
            started = time.perf_counter()
            try:
                survived, evidence = check(ctx)
            except Exception as error:  # a crash of the check itself is a class that did not survive
                survived, evidence = False, f"the check crashed: {type(error).__name__}: {error}"
            rows.append({"class": number, "fault": title, "survived": survived, "evidence": evidence,
                         "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    table = markdown_table(
        ["#", "fault", "outcome", "evidence"],
        [[r["class"], r["fault"], "survived" if r["survived"] else "**NOT survived**", r["evidence"]] for r in rows],
    )
    print(table)
    result = {
        "command": "python benchmarks/faults.py" + (f" --only {' '.join(map(str, args.only))}" if args.only else ""),
        "date": date.today().isoformat(),
        "machine": machine_facts(),
        "git_commit": git_commit(),
        "seconds": round(time.perf_counter() - began, 1),
        "classes": rows,
    }
    write_json(args.output or result_path("faults", False, None), result)
    return 0 if all(r["survived"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
