"""Faults of the distiller (mllm-dr-distill) met in use: two runs into one file, a resumed file whose
last record lacks its newline, a dead or trickling endpoint, a misleading or remote ``--api_base``.
Each runs the real CLI against a loopback server (helpers from test_distill_rationales)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_distill_rationales import (
    HANG_UP,
    ChatServer,
    cli_args,
    good,
    key_of,
    make_rows,
    read_lines,
    save_prepared,
    scripted,
)

import mllm_dr.distillation as dr
from mllm_dr.commands import distill as distill_cli
from mllm_dr.data import failures_path, load_rationales
from processing_mllm_dr import PHQ9_ITEMS


def record_of(row: dict[str, Any], rationale: str = "Wakes at four most nights.") -> dict[str, Any]:
    """A rationales.jsonl record for ``row`` as the distiller writes it."""
    return {
        "participant_id": row["participant_id"],
        "item_index": row["item_index"],
        "item_name": PHQ9_ITEMS[row["item_index"] - 1].name,
        "label": row["label"],
        "rationale": rationale,
        "teacher": "earlier-teacher",
        "prompt_version": dr.PROMPT_VERSION,
    }


def keys_in(path: Path) -> Counter:
    return Counter((json.loads(line)["participant_id"], json.loads(line)["item_index"]) for line in read_lines(path))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to connect")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ----------------------------------------------------------------------------- one run per output file
def test_second_run_into_the_same_file_is_refused_before_any_request(tmp_path):
    rows = make_rows(participants=("301", "302"), items=(1, 2))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "runs" / "rationales.jsonl"
    release, stuck = threading.Event(), threading.Event()

    def respond(request):  # the first run's requests wait until the second run has been tried
        if request["model"] == "first":
            stuck.set()
            release.wait(timeout=60)
        return good(request)

    command = [sys.executable, "-m", "mllm_dr.commands.distill"]
    with ChatServer(respond) as server:
        first = subprocess.Popen(
            command + cli_args(data, output, server.url, model="first"),
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert stuck.wait(timeout=120), first.stderr.read() if first.poll() is not None else ""
            asked = len(server.requests)
            with pytest.raises(SystemExit) as refused:
                distill_cli.main(cli_args(data, output, server.url, model="second"))
            asked_by_second = len(server.requests) - asked
            # another output file in the same folder is not blocked
            other = output.with_name("rationales_cmdc.jsonl")
            other_code = distill_cli.main(cli_args(data, other, server.url, model="second"))
        finally:
            release.set()
            try:
                first.wait(timeout=120)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
        first_err = first.stderr.read()
        first.stderr.close()

    message = str(refused.value.code)
    assert asked_by_second == 0
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    assert "rationales.jsonl" in message and "in use" in message and f"pid {first.pid}" in message
    assert first.returncode == 0, first_err
    assert keys_in(output) == Counter({(r["participant_id"], r["item_index"]): 1 for r in rows})
    assert {r.teacher for r in load_rationales(output).values()} == {"first"}
    assert other_code == 0 and len(load_rationales(other)) == len(rows)


def test_repeated_identical_records_are_kept_once(tmp_path):
    rows = make_rows(participants=("301", "302"), items=(1,))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    existing = [record_of(rows[0]), record_of(rows[0])]  # two racing runs wrote the same record
    output.write_text("".join(json.dumps(r) + "\n" for r in existing))
    with ChatServer() as server:
        code = distill_cli.main(cli_args(data, output, server.url))
        asked = server.keys()

    assert code == 0
    assert asked == [("302", 1)]
    assert keys_in(output) == Counter({("301", 1): 1, ("302", 1): 1})
    assert load_rationales(output)[("301", 1)].teacher == "earlier-teacher"  # training can read it


def test_conflicting_repeated_records_are_refused_naming_file_lines_and_key(tmp_path, capsys):
    rows = make_rows(participants=("301", "302"), items=(1,))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    existing = [record_of(rows[0]), record_of(rows[1]), record_of(rows[0], rationale="Sleeps well.")]
    output.write_text("".join(json.dumps(r) + "\n" for r in existing))
    before = output.read_bytes()
    with ChatServer() as server:
        code = distill_cli.main(cli_args(data, output, server.url))
        asked = server.keys()

    err = capsys.readouterr().err
    assert code == 2 and asked == []
    assert f"{output}: lines 1 and 3" in err and "('301', 1)" in err and "differ in rationale" in err
    assert output.read_bytes() == before


# ----------------------------------------------------------------------------- resume after a missing newline
@pytest.mark.parametrize("new_rows", [0, 1])
def test_resume_keeps_a_complete_last_record_without_newline(tmp_path, capsys, new_rows):
    done = make_rows(participants=tuple(str(n) for n in range(301, 307)), items=range(1, 9))
    assert len(done) == 48
    rows = done + make_rows(participants=("399",), items=(1,))[:new_rows]
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    lines = [json.dumps(record_of(row)) for row in done]
    output.write_text("\n".join(lines))  # the last record is complete but has no newline
    with ChatServer() as server:
        code = distill_cli.main(cli_args(data, output, server.url))
        asked = server.keys()

    assert code == 0
    assert f"written {new_rows}, skipped (already done) 48, failed 0" in capsys.readouterr().err
    assert asked == [("399", 1)][:new_rows]
    assert read_lines(output)[:48] == lines  # all 48 kept, byte for byte
    assert keys_in(output) == Counter({(r["participant_id"], r["item_index"]): 1 for r in rows})


# ----------------------------------------------------------------------------- a dead endpoint
def test_dead_endpoint_stops_after_consecutive_failures(tmp_path, capsys):
    rows = make_rows(participants=("301", "302", "303"), items=(1, 2))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    with ChatServer() as server:  # a port that was just closed: connection refused
        url = server.url
    started = time.monotonic()
    code = distill_cli.main(
        cli_args(data, output, url, "--http_retries", "1", "--retry_base_delay", "0.01",
                 "--max_consecutive_failures", "2")
    )
    elapsed = time.monotonic() - started

    err = capsys.readouterr().err
    assert code == 2 and elapsed < 10
    assert f"stopping: 2 items in a row got no answer from {url}/chat/completions" in err
    assert "written in this run: 0" in err and "rerun to resume" in err and "Traceback" not in err
    assert len(read_lines(failures_path(output))) == 2  # the two tried items, the rest untouched
    assert not output.exists()


def test_consecutive_count_resets_on_an_answer_and_written_records_stay(tmp_path, capsys):
    rows = make_rows(participants=("301", "302", "303", "304"), items=(1, 2))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    script = {  # in order: ok, x, x, ok (resets), x, x, x (3 in a row: stop), never asked
        ("301", 2): [HANG_UP],
        ("302", 1): [HANG_UP],
        ("303", 1): [HANG_UP],
        ("303", 2): [HANG_UP],
        ("304", 1): [HANG_UP],
    }
    flags = ("--http_retries", "1", "--retry_base_delay", "0.01", "--max_consecutive_failures", "3")
    with ChatServer(scripted(script)) as server:
        code = distill_cli.main(cli_args(data, output, server.url, *flags))
        asked = Counter(server.keys())
        err = capsys.readouterr().err

        assert code == 2
        assert f"stopping: 3 items in a row got no answer from {server.url}/chat/completions" in err
        assert "RemoteDisconnected" in err and "written in this run: 2" in err
        assert asked == {("301", 1): 1, ("301", 2): 2, ("302", 1): 2, ("302", 2): 1, ("303", 1): 2,
                         ("303", 2): 2, ("304", 1): 2}
        assert set(load_rationales(output)) == {("301", 1), ("302", 2)}
        assert len(read_lines(failures_path(output))) == 5

        server.responder = good  # the endpoint is back: a rerun finishes the rest
        assert distill_cli.main(cli_args(data, output, server.url, *flags)) == 0
    assert "written 6, skipped (already done) 2, failed 0" in capsys.readouterr().err
    assert keys_in(output) == Counter({(r["participant_id"], r["item_index"]): 1 for r in rows})


# ----------------------------------------------------------------------------- a trickling endpoint
@contextmanager
def trickling_server(phase: str, gap: float = 0.1, count: int = 40) -> Iterator[str]:
    """A chat-completions server that answers well but sends ``count`` filler bytes one at a time,
    ``gap`` seconds apart (well under any per-read timeout), inside the headers or the body."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps(good(request)[1]).encode()
            pad = b" " * count if phase == "body" else b""
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            try:
                if phase == "headers":
                    self.wfile.write(head + b"X-Slow: ")
                    self.trickle(b"a" * count)
                    head = b"\r\n"
                self.wfile.write(head + f"Content-Length: {len(pad) + len(body)}\r\n\r\n".encode())
                self.trickle(pad)
                self.wfile.write(body)
            except OSError:  # the client gave up
                pass
            self.close_connection = True

        def trickle(self, data: bytes) -> None:
            for byte in data:
                self.wfile.write(bytes([byte]))
                time.sleep(gap)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_trickling_server_meets_the_total_deadline(tmp_path, phase):
    rows = make_rows(participants=("301",), items=(1,))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    output = tmp_path / "rationales.jsonl"
    flags = ("--timeout", "0.5", "--http_retries", "1", "--retry_base_delay", "0.01")
    with trickling_server(phase) as url:  # 40 bytes 0.1 s apart: a complete reply only after 4 s
        started = time.monotonic()
        code = distill_cli.main(cli_args(data, output, url, *flags))
        elapsed = time.monotonic() - started

    assert code == 1 and elapsed < 3.0  # two attempts of 0.5 s each
    (failure,) = [json.loads(line) for line in read_lines(failures_path(output))]
    assert failure["reason"] == (
        "gave up after 2 attempts: RequestDeadlineExceeded: no complete reply within the 0.5 s deadline (--timeout)"
    )
    assert not output.exists()


def test_help_documents_the_deadline_and_the_failure_limit():
    text = " ".join(distill_cli.build_parser().format_help().split())
    assert "deadline in seconds for a whole request" in text
    assert "--max_consecutive_failures" in text and "0: never stop" in text
    (_, _, teacher_args) = distill_cli.build_parser().parse_args_into_dataclasses(
        args=["--data_dir", "x", "--rationales", "r.jsonl", "--teacher", "openai", "--teacher_model", "m"]
    )
    assert teacher_args.max_consecutive_failures == 5


# ----------------------------------------------------------------------------- what --api_base names
@pytest.mark.parametrize(
    "url, extra",
    [
        ("http://user@evil.example@127.0.0.1:8000/v1", ()),
        ("http://a:s3cret-pw@127.0.0.1:8000/v1", ()),
        ("http://a:s3cret-pw@api.example.com/v1", ("--allow-remote",)),
        ("http://127.0.0.1:8000@evil.example/v1", ("--allow-remote",)),
    ],
)
def test_api_base_with_user_info_is_refused(url, extra, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    output = tmp_path / "out" / "rationales.jsonl"
    code = distill_cli.main(cli_args(tmp_path / "not-read", output, url, *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert "must not contain user information" in err and "s3cret-pw" not in err and "evil" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="user information"):
        dr.OpenAICompatibleTeacher(url, "m", allow_remote=True)


def test_remote_endpoint_under_allow_remote_warns_on_stderr(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    output = tmp_path / "out" / "rationales.jsonl"
    code = distill_cli.main(cli_args(tmp_path / "not-read", output, "http://192.0.2.10:8000/v1", "--allow-remote"))
    err = capsys.readouterr().err
    assert code == 2  # the data folder does not exist: nothing is sent
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "192.0.2.10" in warning and "not this machine" in warning and "unencrypted http" in warning


def test_loopback_endpoint_under_allow_remote_does_not_warn(tmp_path, capsys):
    rows = make_rows(participants=("301",), items=(1,))
    data = save_prepared(tmp_path / "prepared", {"train": rows})
    with ChatServer() as server:
        code = distill_cli.main(cli_args(data, tmp_path / "r.jsonl", server.url, "--allow-remote"))
        assert [key_of(r["body"]) for r in server.requests] == [("301", 1)]
    assert code == 0
    assert "warning:" not in capsys.readouterr().err
