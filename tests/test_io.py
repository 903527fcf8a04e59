"""mllm_dr.io: the one atomic writer and JSON-lines appender."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mllm_dr.io import append_jsonl, atomic_open, read_jsonl, save_npy_atomic, write_json_atomic, write_text_atomic


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "nested" / "out.json"
    write_json_atomic(target, {"a": 1, "when": tmp_path})  # non-JSON values through str
    assert json.loads(target.read_text()) == {"a": 1, "when": str(tmp_path)}
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    with pytest.raises(RuntimeError), atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write("half of a third version")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "second\n"  # the old file is untouched
    save_npy_atomic(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2])  # not contiguous
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [[0, 2], [3, 5]])
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(ValueError, match="whole files"):
        atomic_open(target, "a").__enter__()


def test_append_keeps_a_complete_last_record_and_cuts_only_a_torn_one(tmp_path):
    path = tmp_path / "records.jsonl"
    assert append_jsonl(path, [{"k": 1}, {"k": 2}]) == 2
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # a complete record without its newline
    append_jsonl(path, [{"k": 3}])
    assert [r["k"] for _, r in read_jsonl(path)] == [1, 2, 3]
    with path.open("ab") as handle:
        handle.write(b'{"k": 4, "tor')  # what a killed writer leaves
    assert [r["k"] for _, r in read_jsonl(path)] == [1, 2, 3]  # the torn tail is not a record
    append_jsonl(path, [{"k": 5}])
    assert path.read_text().splitlines() == ['{"k": 1}', '{"k": 2}', '{"k": 3}', '{"k": 5}']
    assert append_jsonl(path, []) == 0


def test_a_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"k": 1}\nnot json\n{"k": 3}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:2: not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []
