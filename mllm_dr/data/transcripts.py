"""Interview transcripts in the corpora's formats, as the text the model reads."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import Broken
from .tables import find_column, ragged, read_rows

DAIC_SPEAKERS = {"ellie": "Interviewer", "participant": "Participant"}


def edaic_transcript(path: Path) -> str:
    """All ``Text`` fields joined by newlines (E-DAIC's ASR transcript has no speaker column)."""
    header, rows = read_rows(path)
    text_column = find_column(header, ["Text"])
    if text_column is None:
        raise Broken(path, f"no Text column (expected Start_Time,End_Time,Text,Confidence; header: {header})")
    index = header.index(text_column)
    lines = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise Broken(path, ragged(line, fields, header))
        if fields[index].strip():
            lines.append(fields[index].strip())
    if not lines:
        raise Broken(path, "transcript has no text")
    return "\n".join(lines)


def daic_transcript(path: Path) -> str:
    """``Interviewer: ...`` / ``Participant: ...`` lines; consecutive rows of one speaker are merged so the
    interviewer's questions stay visible as context without one line per utterance fragment."""
    header, rows = read_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    speaker_column = find_column(header, ["speaker"])
    value_column = find_column(header, ["value"])
    if speaker_column is None or value_column is None:
        raise Broken(path, f"expected tab-separated columns start_time, stop_time, speaker, value; header: {header}")
    s_index, v_index = header.index(speaker_column), header.index(value_column)
    turns: list[list[str]] = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise Broken(path, ragged(line, fields, header))
        text = fields[v_index].strip()
        if not text:
            continue
        speaker = DAIC_SPEAKERS.get(fields[s_index].strip().lower(), fields[s_index].strip() or "Unknown")
        if turns and turns[-1][0] == speaker:
            turns[-1][1] += " " + text
        else:
            turns.append([speaker, text])
    if not turns:
        raise Broken(path, "transcript has no text")
    return "\n".join(f"{speaker}: {text}" for speaker, text in turns)


def plain_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise Broken(path, f"not UTF-8 text ({error})") from None


def transcript_format(path: Path) -> str:
    """``daic`` (tab-separated with a speaker column), ``edaic`` (a CSV with a text column) or
    ``plain``, from the file's first line and suffix; ``ValueError`` when it cannot be read."""
    try:
        first_line = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the transcript ({error})") from None
    if "\t" in first_line and "speaker" in first_line.lower():
        return "daic"
    if path.suffix.lower() == ".csv" and "text" in first_line.lower():
        return "edaic"
    return "plain"


def _read_as(path: str | os.PathLike, readers: dict[str, Callable[[Path], Any]]) -> Any:
    """``readers[format](path)``, a broken file's problem as one ``ValueError``."""
    path = Path(path)
    reader = readers[transcript_format(path)]
    try:
        return reader(path)
    except Broken as error:
        raise ValueError(str(error)) from None


def read_transcript(path: str | os.PathLike) -> str:
    """One interview's transcript as the text the model reads, whatever its format: an E-DAIC
    ``<ID>_Transcript.csv`` (``Start_Time,End_Time,Text,Confidence``), a DAIC-WOZ ``<ID>_TRANSCRIPT.csv``
    (tab-separated with speakers), or plain UTF-8 text (CMDC ``Q<n>.txt``, anything else)."""
    return _read_as(path, {"daic": daic_transcript, "edaic": edaic_transcript, "plain": plain_text})


@dataclass(frozen=True)
class TranscriptLine:
    """One line of an interview as its file holds it: ``number`` is the line in the file (1-based,
    the header counted), ``start``/``end`` in seconds where the format has times (E-DAIC, DAIC-WOZ)."""

    number: int
    text: str
    start: float | None = None
    end: float | None = None
    speaker: str | None = None


def _seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _timed_lines(path: Path, delimiter: str, quoting: int, names: dict[str, list[str]]) -> list[TranscriptLine]:
    header, rows = read_rows(path, delimiter=delimiter, quoting=quoting)
    index = {key: header.index(c) if (c := find_column(header, options)) else None for key, options in names.items()}
    if index["text"] is None:
        raise Broken(path, f"no text column (header: {header})")
    out = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise Broken(path, ragged(line, fields, header))
        cell = lambda key: None if index[key] is None else fields[index[key]].strip()  # noqa: E731
        if cell("text"):
            speaker = cell("speaker")
            out.append(TranscriptLine(
                line, cell("text"), *(None if cell(k) is None else _seconds(cell(k)) for k in ("start", "end")),
                None if speaker is None else DAIC_SPEAKERS.get(speaker.lower(), speaker or "Unknown"),
            ))  # fmt: skip
    return out


def _plain_lines(path: Path) -> list[TranscriptLine]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [TranscriptLine(n, text.strip()) for n, text in enumerate(lines, 1) if text.strip()]


LINE_READERS: dict[str, Callable[[Path], list[TranscriptLine]]] = {
    "daic": lambda path: _timed_lines(path, "\t", csv.QUOTE_NONE, {"text": ["value"], "start": ["start_time"],
                                                                    "end": ["stop_time"], "speaker": ["speaker"]}),
    "edaic": lambda path: _timed_lines(path, ",", csv.QUOTE_MINIMAL, {"text": ["Text"], "start": ["Start_Time"],
                                                                      "end": ["End_Time", "Stop_Time"], "speaker": []}),
    "plain": _plain_lines,
}  # fmt: skip


def transcript_lines(path: str | os.PathLike) -> list[TranscriptLine]:
    """The non-empty lines of a transcript file with their file line numbers and, for E-DAIC
    (``Start_Time``/``End_Time``) and DAIC-WOZ (``start_time``/``stop_time``, one line per row, not
    merged by speaker), their times; plain text has numbers only. What evidence quotes link to;
    :func:`read_transcript` still gives the text the model reads."""
    return _read_as(path, LINE_READERS)
