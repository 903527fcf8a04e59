"""The distiller (mllm_dr.distillation, mllm-dr-distill) against a real loopback chat-completions server and a
tiny local LM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import mllm_dr.distillation as dr
from mllm_dr.commands import distill as distill_cli
from mllm_dr.data import failures_path, load_rationales
from processing_mllm_dr import DEFAULT_SYSTEM_PROMPT, PHQ9_ITEMS

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"
KEY_ENV = "MLLM_DR_TEST_TEACHER_KEY"
HANG_UP = object()  # a scripted answer: close the connection without a response


# ----------------------------------------------------------------------------- fixtures
def make_rows(participants: Sequence[str] = ("301", "302"), items: Sequence[int] = (1, 3), split: str = "train"):
    rows = []
    for p_number, pid in enumerate(participants):
        for item in items:
            rows.append(
                {
                    "participant_id": pid,
                    "item_index": item,
                    "item_name": PHQ9_ITEMS[item - 1].name,
                    "transcript": f"[pid={pid}] Ellie: how have you been sleeping? Participant: I wake at four, often.",
                    "label": (p_number + item) % 4,
                    "split": split,
                }
            )
    return rows


def save_prepared(path: Path, splits: dict[str, list[dict[str, Any]]]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(path))
    return path


def key_of(request: dict[str, Any]) -> tuple[str, int]:
    """Which (participant, item) a chat request is about, read from the prompt."""
    user = request["messages"][-1]["content"]
    pid = re.search(r"\[pid=(\w+)\]", user).group(1)
    aspect = re.search(r"performance in (.*) based on the dialogue content", user).group(1)
    return pid, next(item.index for item in PHQ9_ITEMS if item.aspect == aspect)


def label_of(request: dict[str, Any]) -> int:
    return int(re.search(r"self-rating score of (\d)", request["messages"][-1]["content"]).group(1))


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "teacher",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


def good(request: dict[str, Any]) -> tuple[int, Any]:
    pid, item = key_of(request)
    return 200, completion(
        f"Evaluation Reason: Participant {pid} on item {item}: wakes at four most nights.\nScore: {label_of(request)}"
    )


def cli_args(data: Path, output: Path, url: str, *extra: str, model: str = "t") -> list[str]:
    return [
        "--dataset_format",
        "prepared",
        "--data_dir",
        str(data),
        "--output",
        str(output),
        "--teacher",
        "openai",
        "--api_base",
        url,
        "--teacher_model",
        model,
        "--no_progress",
        *extra,
    ]


class ChatServer:
    """An OpenAI-style chat-completions server on 127.0.0.1 (port 0) whose answers a test scripts
    with ``responder(request_json) -> (status, json_or_text)`` (status None: hang up without an
    answer); every request is recorded."""

    def __init__(self, responder: Callable[[dict[str, Any]], tuple[int, Any]] = good):
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                record = {"path": self.path, "headers": dict(self.headers), "body": body}
                with server.lock:
                    server.requests.append(record)
                status, payload = server.responder(body)
                if status is None:  # hang up: the client sees the connection closed without a response
                    self.close_connection = True
                    return
                data = (
                    payload
                    if isinstance(payload, bytes)
                    else (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
                )
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client was killed meanwhile
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def keys(self) -> list[tuple[str, int]]:
        with self.lock:
            return [key_of(r["body"]) for r in self.requests]


def scripted(script: dict[tuple[str, int], list[Any]]) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    """Per key, a list of answers used in turn (the last one repeats): a status code, a reply text,
    ``good`` or ``HANG_UP``."""
    seen: Counter = Counter()
    lock = threading.Lock()

    def respond(request):
        key = key_of(request)
        with lock:
            answers = script.get(key, [good])
            answer = answers[min(seen[key], len(answers) - 1)]
            seen[key] += 1
        if answer is good:
            return good(request)
        if answer is HANG_UP:
            return None, None
        if isinstance(answer, int):
            return answer, {"error": {"message": f"scripted {answer}"}}
        return 200, completion(answer)

    return respond


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ----------------------------------------------------------------------------- prompt and parsing
def test_prompt_is_table1_with_label_aspect_and_dialogue():
    row = make_rows(items=(3,))[0] | {"label": 2}
    system, user = dr.build_messages(row)
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert DEFAULT_SYSTEM_PROMPT.startswith("You are a psychiatrist, assessing the participant's mental health")
    assert user["role"] == "user"
    assert user["content"] == row["transcript"] + "\n\n" + (
        "Given the participant's self-rating score of 2, please evaluate the participant's performance in "
        "trouble falling or staying asleep, or sleeping too much based on the dialogue content. The output format "
        "is as follows: Evaluation Reason: A concise and logical description. Each output must strictly follow "
        "this format, avoiding omissions or confusion."
    )


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Evaluation Reason: Sleeps badly most nights.", "Sleeps badly most nights."),
        ("Evaluation Reason: Sleeps badly.\nScore: 2", "Sleeps badly."),
        ("Sure.\n**Evaluation Reason:** Wakes early.\n\nScore: 2.", "Wakes early."),
        ("Evaluation Reason:\nLine one.\nLine two.", "Line one.\nLine two."),
    ],
)
def test_parse_reply_keeps_only_the_rationale(reply, expected):
    assert dr.parse_reply(reply, label=2) == expected


@pytest.mark.parametrize(
    "reply, problem",
    [
        ("", "empty"),
        ("The participant sleeps badly. Score: 2", "exactly one"),
        ("Evaluation Reason: a. Evaluation Reason: b.", "exactly one"),
        ("Evaluation Reason:   \nScore: 2", "nothing after"),
        ("Evaluation Reason: sleeps badly.\nScore: 0", "differs from the label 2"),
        ("Evaluation Reason: Score: 2 because sleeps badly.", "inside the rationale"),
    ],
)
def test_parse_reply_rejects_broken_formats(reply, problem):
    with pytest.raises(dr.ReplyFormatError, match=problem):
        dr.parse_reply(reply, label=2)


def test_rows_are_validated_with_clear_errors(tmp_path):
    row = make_rows()[0]
    with pytest.raises(ValueError, match=r"row 0 \(participant 301\): label must be an integer 0-3, got None"):
        dr.validate_row(row | {"label": None}, "row 0")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['transcript'\]"):
        dr.validate_row({k: v for k, v in row.items() if k != "transcript"}, "row 3")
    with pytest.raises(ValueError, match="item_index must be an integer 1-9"):
        dr.validate_row(row | {"item_index": 0}, "row 0")

    class Untouchable:
        name, batch_size = "never", 1

        def generate(self, conversations, attempt=0):
            raise AssertionError("the teacher must not run before every row is checked")

    rows = make_rows() + [row | {"label": 7}]
    with pytest.raises(ValueError, match=r"row 4 \(participant 301\): label must be an integer 0-3, got 7"):
        dr.distill(rows, Untouchable(), tmp_path / "r.jsonl", progress=False)
    rows = [row | {"label": None}, row | {"split": "test", "label": None}]  # unlabelled: counted, not sent
    summary = dr.distill(rows, Untouchable(), tmp_path / "r.jsonl", progress=False)
    assert (summary.unlabelled, summary.written, summary.failed) == (1, 0, 0)
    assert not (tmp_path / "r.jsonl").exists()


# ----------------------------------------------------------------------------- the HTTP teacher
def test_http_teacher_retries_backs_off_and_records_failures(tmp_path):
    rows = make_rows(participants=("301", "302", "303"), items=(1, 2))
    script = {
        ("301", 1): [500, 429, good],  # transient: retried with back-off, then written
        ("301", 2): ["I think they are fine.", "Evaluation Reason: ok.\nEvaluation Reason: again", "no format"],
        ("302", 1): [400],  # fails fast: one request, recorded
        ("302", 2): ["no prefix here", good],  # malformed once, then written
        ("303", 1): [503],  # 5xx forever: gives up after the HTTP retries
    }
    sleeps: list[float] = []
    output = tmp_path / "out" / "rationales.jsonl"
    with ChatServer(scripted(script)) as server:
        teacher = dr.OpenAICompatibleTeacher(
            server.url, "teacher-model", api_key=SECRET, http_retries=3, retry_base_delay=0.01, sleep=sleeps.append
        )
        summary = dr.distill(rows, teacher, output, format_retries=2, progress=False)
        requested = Counter(server.keys())
        first = server.requests[0]

    assert requested == {("301", 1): 3, ("301", 2): 3, ("302", 1): 1, ("302", 2): 2, ("303", 1): 4, ("303", 2): 1}
    assert sleeps == [0.01, 0.02, 0.01, 0.02, 0.04]  # exponential, per item; format retries do not wait
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "teacher-model"
    assert first["headers"]["Authorization"] == f"Bearer {SECRET}"

    records = load_rationales(output)
    assert set(records) == {("301", 1), ("302", 2), ("303", 2)}
    assert records[("302", 2)].rationale == "Participant 302 on item 2: wakes at four most nights."
    assert {r.teacher for r in records.values()} == {"teacher-model"}
    assert {r.prompt_version for r in records.values()} == {"table1-v1"}
    failures = [json.loads(line) for line in read_lines(failures_path(output))]
    by_key = {(f["participant_id"], f["item_index"]): f for f in failures}
    assert set(by_key) == {("301", 2), ("302", 1), ("303", 1)}
    assert "malformed reply after 3 attempts" in by_key[("301", 2)]["reason"]
    assert by_key[("301", 2)]["reply"] == "no format"
    assert by_key[("302", 1)]["reason"].startswith("HTTP 400")
    assert by_key[("303", 1)]["reason"].startswith("gave up after 4 attempts: HTTP 503")
    assert (summary.written, summary.failed, summary.skipped) == (3, 3, 0)


def test_connection_errors_are_retried_then_recorded(tmp_path):
    with ChatServer() as server:  # a port that was just closed: connection refused
        url = server.url
    sleeps: list[float] = []
    teacher = dr.OpenAICompatibleTeacher(url, "m", http_retries=2, retry_base_delay=0.01, sleep=sleeps.append)
    summary = dr.distill(make_rows(participants=("301",), items=(1,)), teacher, tmp_path / "r.jsonl", progress=False)
    assert summary.failed == 1 and sleeps == [0.01, 0.02]
    (failure,) = [json.loads(line) for line in read_lines(tmp_path / "r.failures.jsonl")]
    assert failure["reason"].startswith("gave up after 3 attempts")
    assert not (tmp_path / "r.jsonl").exists()


def test_cli_sends_key_but_never_writes_or_prints_it(tmp_path, monkeypatch, capsys, caplog):
    data = save_prepared(
        tmp_path / "prepared",
        {
            "train": make_rows(participants=("301",)),
            "dev": make_rows(participants=("401",)),
            "test": make_rows(participants=("601",)),
        },
    )

    def respond(request):  # ("401", 3) gets a 401 whose body echoes the Authorization header
        if key_of(request) == ("401", 3):
            return 401, {"error": "bad key", "headers_seen": f"Bearer {SECRET}"}
        return good(request)

    monkeypatch.setenv(KEY_ENV, SECRET)
    output = tmp_path / "out" / "rationales.jsonl"
    with ChatServer(respond) as server:
        code = distill_cli.main(
            cli_args(data, output, server.url, "--api_key_env", KEY_ENV, "--retry_base_delay", "0.01", model="served-model")
        )
        headers = [r["headers"]["Authorization"] for r in server.requests]
        requested = set(server.keys())

    assert code == 1  # one failure recorded
    assert requested == {("301", 1), ("301", 3), ("401", 1), ("401", 3)}  # train + dev only, never test
    assert headers and all(h == f"Bearer {SECRET}" for h in headers)
    assert set(load_rationales(output)) == {("301", 1), ("301", 3), ("401", 1)}
    (failure,) = [json.loads(line) for line in read_lines(failures_path(output))]
    assert failure["reason"].startswith("HTTP 401") and "[REDACTED]" in failure["reason"]
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert "written 3, skipped (already done) 0, failed 1" in captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ----------------------------------------------------------------------------- the licence guard
@pytest.mark.parametrize(
    "url, loopback",
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.3.2.1/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://[::ffff:127.0.0.1]:80/v1", True),
        ("https://LOCALHOST/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://0.0.0.0:8000/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),
        ("http://localhost.example.com/v1", False),
        ("ftp://127.0.0.1/", False),
    ],
)
def test_loopback_detection(url, loopback):
    assert dr.is_loopback_url(url) is loopback


@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://192.0.2.10:8000/v1"])
def test_remote_endpoint_refused_without_flag(url, tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to connect")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    output = tmp_path / "out" / "rationales.jsonl"
    code = distill_cli.main(cli_args(tmp_path / "not-read", output, url, model="gpt-4o"))
    err = capsys.readouterr().err
    assert code != 0
    assert "licence" in err and "--allow-remote" in err and "E-DAIC-WOZ" in err and "CMDC" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(dr.RemoteEndpointRefused):
        dr.OpenAICompatibleTeacher(url, "gpt-4o")
    assert dr.OpenAICompatibleTeacher(url, "gpt-4o", allow_remote=True).url == url + "/chat/completions"


# ----------------------------------------------------------------------------- kill and resume
def test_killed_run_resumes_without_loss_or_repeats(tmp_path):
    rows = make_rows(participants=("301", "302", "303"), items=(1, 2, 3))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    first_batch = 3
    release, stuck = threading.Event(), threading.Event()
    served = Counter()

    def slow(request):
        served["n"] += 1
        if served["n"] > first_batch:  # later requests hang until the client has been killed
            stuck.set()
            release.wait(timeout=60)
        return good(request)

    command = [
        sys.executable,
        "-m",
        "mllm_dr.commands.distill",
        "--dataset_format",
        "prepared",
        "--data_dir",
        str(data),
        "--output",
        str(output),
        "--teacher",
        "openai",
        "--teacher_model",
        "t",
        "--no_progress",
    ]
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    with ChatServer(slow) as server:
        command += ["--api_base", server.url]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert stuck.wait(timeout=120), process.stderr.read().decode() if process.poll() is not None else ""
            deadline = time.monotonic() + 60
            while len(read_lines(output)) < first_batch and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            process.stderr.close()
            release.set()
        done_before = set(load_rationales(output))
        assert len(done_before) == first_batch
        asked_before = len(server.requests)

        server.responder = good
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        asked_again = Counter(server.keys()[asked_before:])

    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped (already done) {first_batch}" in rerun.stderr
    keys = [(json.loads(line)["participant_id"], json.loads(line)["item_index"]) for line in read_lines(output)]
    assert Counter(keys) == Counter({(r["participant_id"], r["item_index"]): 1 for r in rows})
    assert not set(asked_again) & done_before  # nothing finished was asked again
    assert set(asked_again) == {(r["participant_id"], r["item_index"]) for r in rows} - done_before
    assert all(count == 1 for count in asked_again.values())
    assert not failures_path(output).exists()


# ----------------------------------------------------------------------------- the corpus path
def test_cli_reads_rows_through_the_corpus_registry(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict

    from mllm_dr.data import CORPORA, CorpusSpec, LoadReport

    calls = []

    def load_fake(data_dir, **kwargs):
        calls.append((data_dir, kwargs))
        columns = {
            "train": make_rows(participants=("301",), items=(1,)),
            "dev": make_rows(participants=("401",), items=(1,), split="dev"),
            "test": make_rows(participants=("601",), items=(1,), split="test"),
        }
        return DatasetDict({name: Dataset.from_list(rows) for name, rows in columns.items()}), LoadReport("fake")

    monkeypatch.setitem(CORPORA, "fake", CorpusSpec("fake", "a corpus of this test", load_fake, "phq9"))
    with ChatServer() as server:
        code = distill_cli.main(
            [
                "--dataset_format",
                "fake",
                "--data_dir",
                "/corpus/E-DAIC",
                "--corpus_kwargs",
                '{"labels_dir": "labels"}',
                "--rationales",
                str(tmp_path / "r.jsonl"),
                "--teacher",
                "openai",
                "--api_base",
                server.url,
                "--teacher_model",
                "t",
                "--no_progress",
            ]
        )
    assert code == 0
    expected = {"on_error": "raise", "rationales_path": None, "return_report": True, "labels_dir": "labels"}
    assert calls == [("/corpus/E-DAIC", expected)]
    assert set(load_rationales(tmp_path / "r.jsonl")) == {("301", 1), ("401", 1)}


# ----------------------------------------------------------------------------- the local teacher
@pytest.fixture(scope="module")
def local_teacher_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the shared in-process tokenizer (ChatML template, pad = EOS)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mllm_dr.testing import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )
    path = tmp_path_factory.mktemp("teacher")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_local_teacher_garbage_ends_as_failures(local_teacher_dir, tmp_path):
    teacher = dr.LocalTeacher(local_teacher_dir, batch_size=2, max_new_tokens=6)
    calls = []
    generate = teacher.model.generate
    teacher.model.generate = lambda **kwargs: calls.append(kwargs["do_sample"]) or generate(**kwargs)
    rows = make_rows(participants=("301", "30200"), items=(1,)) + make_rows(participants=("303",), items=(2,))
    summary = dr.distill(rows, teacher, tmp_path / "r.jsonl", format_retries=1, progress=False)

    assert calls == [False, True, False, True]  # 2 batches x 2 attempts; the retry samples
    assert (summary.written, summary.failed) == (0, 3)
    assert not (tmp_path / "r.jsonl").exists()
    failures = [json.loads(line) for line in read_lines(tmp_path / "r.failures.jsonl")]
    assert {(f["participant_id"], f["item_index"]) for f in failures} == {("301", 1), ("30200", 1), ("303", 2)}
    assert all(f["reason"].startswith("malformed reply after 2 attempts") for f in failures)
    assert {f["teacher"] for f in failures} == {local_teacher_dir.name}


def test_local_teacher_cli_writes_well_formed_replies(local_teacher_dir, tmp_path, monkeypatch):
    """Generation replaced by a deterministic one that answers in Table 1's format (with the label
    read back from the rendered prompt), through the CLI's local path and real left padding."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(local_teacher_dir)
    batches = []

    def fake_generate(self, input_ids, attention_mask, **kwargs):
        batches.append(attention_mask.clone())
        replies = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = tokenizer.decode(ids[mask.bool()])
            assert prompt.endswith("<|im_start|>assistant\n")
            label = int(re.search(r"self-rating score of (\d)", prompt).group(1))
            pid = re.search(r"\[pid=(\w+)\]", prompt).group(1)
            text = f"Evaluation Reason: {pid} wakes at four most nights.\nScore: {label}"
            replies.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        width = max(map(len, replies))
        padded = [reply + [tokenizer.pad_token_id] * (width - len(reply)) for reply in replies]
        return torch.cat([input_ids, torch.tensor(padded)], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", fake_generate)
    rows = make_rows(participants=("301", "30222"), items=(1, 2))
    data = save_prepared(tmp_path / "prepared", {"train": rows[:2], "dev": [r | {"split": "dev"} for r in rows[2:]]})
    output = tmp_path / "rationales.jsonl"
    code = distill_cli.main(
        [
            "--dataset_format",
            "prepared",
            "--data_dir",
            str(data),
            "--output",
            str(output),
            "--teacher",
            "local",
            "--teacher_model",
            str(local_teacher_dir),
            "--teacher_name",
            "tiny-teacher",
            "--batch_size",
            "4",
            "--device",
            "cpu",
            "--no_progress",
        ]
    )

    assert code == 0
    (mask,) = batches
    assert mask.shape[0] == 4 and bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # left-padded
    records = load_rationales(output)
    assert set(records) == {(r["participant_id"], r["item_index"]) for r in rows}
    assert records[("30222", 2)].rationale == "30222 wakes at four most nights."
    assert records[("30222", 2)].label == rows[3]["label"]
    assert {r.teacher for r in records.values()} == {"tiny-teacher"}
