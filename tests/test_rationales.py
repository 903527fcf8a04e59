"""The rationales.jsonl schema: validation, one line per key, failures apart, torn-line recovery."""

from __future__ import annotations

import json

import pytest

from mllm_dr.data import Rationale, RationaleWriter, failures_path, load_rationales


def record(pid="302", item=3, label=2, text="Wakes most nights."):
    return {
        "participant_id": pid, "item_index": item, "item_name": "Sleep", "label": label,
        "rationale": text, "teacher": "template", "prompt_version": "test-v1",
    }


def test_write_skip_existing_and_failures_apart(tmp_path):
    path = tmp_path / "rationales.jsonl"
    writer = RationaleWriter(path)
    assert writer.write(record()) is True
    assert writer.write(record()) is False  # same key: nothing written
    writer.write_failure("303", 4, "no Evaluation Reason in reply", reply="Score: 2")
    assert failures_path(path).name == "rationales.failures.jsonl"
    resumed = RationaleWriter(path)
    assert resumed.has("302", 3) and not resumed.has("303", 4)
    assert resumed.write(record(pid="303", item=4)) is True
    assert [r.key for r in load_rationales(path).values()] == [("302", 3), ("303", 4)]
    assert len(path.read_text().splitlines()) == 2
    assert json.loads(failures_path(path).read_text())["participant_id"] == "303"


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "rationales.jsonl"
    RationaleWriter(path).write(record())
    with path.open("a") as handle:
        handle.write('{"participant_id": "304", "item_ind')  # a killed writer
    assert list(load_rationales(path)) == [("302", 3)]
    RationaleWriter(path).write(record(pid="304"))
    assert list(load_rationales(path)) == [("302", 3), ("304", 3)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"participant_id": 302}, "participant_id must be a non-empty string"),
        ({"item_index": 0}, "item_index must be an integer 1-9"),
        ({"label": 4}, "label must be an integer 0-3"),
        ({"rationale": "Evaluation Reason: x"}, "must not start with"),
        ({"rationale": " "}, "rationale must be a non-empty string"),
    ],
)
def test_invalid_records_raise_with_location(tmp_path, change, message):
    path = tmp_path / "rationales.jsonl"
    path.write_text(json.dumps(record()) + "\n" + json.dumps({**record(pid="9"), **change}) + "\n")
    with pytest.raises(ValueError, match=message) as error:
        load_rationales(path)
    assert f"{path}:2" in str(error.value)


def test_duplicate_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "rationales.jsonl"
    path.write_text((json.dumps(record()) + "\n") * 2)
    with pytest.raises(ValueError, match=rf"{path}:2: participant 302, item 3 is already on line 1"):
        load_rationales(path)
    assert Rationale.from_dict(record()).key == ("302", 3)
