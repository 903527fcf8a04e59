"""How the data layer reports broken data: a :class:`Problem` names participant, file and what is
wrong; a :class:`LoadReport` collects what was left out and what was noticed; ``on_error``
(``"raise"`` or ``"skip"``) decides between a refusal and a recorded skip."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

logger = logging.getLogger("mllm_dr.data")

ON_ERROR = ("raise", "skip")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``"HC2"`` before ``"HC10"`` and ``"300"`` before ``"1000"``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text)))


@dataclass(frozen=True)
class Problem:
    """One broken-data finding: which participant (and, for a finding about one row, which item),
    which file, what is wrong."""

    participant_id: str
    path: str
    problem: str
    item_index: int | None = None

    def __str__(self) -> str:
        item = "" if self.item_index is None else f", item {self.item_index}"
        return f"participant {self.participant_id}{item}: {self.path}: {self.problem}"

    def to_dict(self) -> dict[str, str | int]:
        record: dict[str, str | int] = {"participant_id": self.participant_id, "path": self.path, "problem": self.problem}
        if self.item_index is not None:
            record["item_index"] = self.item_index
        return record


@dataclass
class LoadReport:
    """What a loader left out (``skipped``) and what it noticed without leaving anything out (``notes``)."""

    corpus: str
    skipped: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_participants(self) -> list[str]:
        """Participants left out whole (not those that lost single items)."""
        return sorted({p.participant_id for p in self.skipped if p.item_index is None}, key=natural_key)

    @property
    def skipped_items(self) -> int:
        return sum(p.item_index is not None for p in self.skipped)

    def summary(self) -> str:
        items = f", {self.skipped_items} item row(s) skipped" if self.skipped_items else ""
        lines = [f"{self.corpus}: {len(self.skipped_participants)} participant(s) skipped{items}, {len(self.notes)} note(s)"]
        lines += [f"  skipped {problem}" for problem in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class Broken(Exception):
    """A participant-level data problem found in ``path`` (turned into a :class:`Problem`)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class Notes:
    """Groups repetitive notes ("no video for 33 subjects") into one line each, so logs stay readable."""

    def __init__(self) -> None:
        self.grouped: dict[str, list[str]] = defaultdict(list)
        self.single: list[str] = []

    def add(self, message: str, participant_id: str | None = None) -> None:
        if participant_id is None:
            self.single.append(message)
        else:
            self.grouped[message].append(participant_id)

    def lines(self) -> list[str]:
        out = list(self.single)
        for message, ids in self.grouped.items():
            ids = sorted(set(ids), key=natural_key)
            shown = ", ".join(ids[:20]) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")
            out.append(f"{message}: {len(ids)} participant(s): {shown}")
        return out


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def fail(report: LoadReport, on_error: str, participant_id: str, error: Broken) -> None:
    """``on_error="raise"``: a ``ValueError`` naming participant, file and problem; ``"skip"``: recorded."""
    problem = Problem(participant_id, error.path, error.problem)
    if on_error == "raise":
        raise ValueError(str(problem)) from None
    report.skipped.append(problem)


def finish(report: LoadReport, notes: Notes) -> None:
    report.notes.extend(notes.lines())
    if report.skipped or report.notes:
        logger.warning("%s", report.summary())
