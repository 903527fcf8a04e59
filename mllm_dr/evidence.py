"""Evidence quotes: the spans a rationale quotes, looked up in the interview it claims to quote.

A rationale that says the participant said "i barely sleep at all" can be checked: each quoted
span is matched against the transcript's lines, linked to the line (and its time, where the
transcript format has one) and marked as found or not in the interview.

**What counts as a quote.**

- Text between double quotes: straight ``"..."``, curly ``“...”``, guillemets ``«...»`` and CJK
  corner brackets ``「...」``/``『...』`` (Chinese rationales), of any length.
- Text between single quotes, straight ``'...'`` or curly ``‘...’``, only when it holds at least two
  words, the opening mark does not follow a letter or digit and the closing one is not followed by
  one: the apostrophes in ``don't``, ``participants'`` or ``’90s`` never open or close a quote.
- A span that is exactly one of the questionnaire's answer options (``'several days'``, "nearly
  every day", ...) names the scale, not the interview: it is not a quote.
- Fewer than :data:`MIN_QUOTE_CHARS` characters after normalisation: not a quote (``"no"``).

**How a quote is matched.** The quote and every transcript line are normalised (Unicode NFKC,
case-folded, apostrophes dropped, every other punctuation or symbol turned into a space, spaces
collapsed). A quote is *found* when its normalised text is a substring of a line (on word
boundaries, except in scripts written without spaces), or of two consecutive lines joined (ASR splits utterances), or when ``rapidfuzz.fuzz.partial_ratio`` of the
quote against such a line (the best-aligned window of the line, Indel similarity 0-100) reaches
:data:`DEFAULT_THRESHOLD` (90: about one wrong character in ten, a small typo or a transcription
variant, but not a changed word in a short sentence). Quotes shorter than
:data:`FUZZY_MIN_CHARS` normalised characters must appear exactly, on word boundaries: a fuzzy
score means little for a word or two. A quote with an ellipsis (``...``, ``…``) is matched piece by
piece and is found when every piece is. The quote links to the line of its best match, found or not.

**The answer option a rationale names.** A rationale that ends "the frequency that fits best is
'nearly every day'" and then writes ``Score: 1`` contradicts itself; :func:`named_option` reads the
option (the last one named in quotes) so that evaluation can count such contradictions and
``mllm-dr-predict`` can flag them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rapidfuzz import fuzz

from .data.transcripts import TranscriptLine

DEFAULT_THRESHOLD = 90.0
MIN_QUOTE_CHARS = 3
FUZZY_MIN_CHARS = 12
MIN_SINGLE_QUOTED_WORDS = 2
# The PHQ answer options: a rationale names them in quotes ("the frequency that fits best is
# 'several days'") without quoting anybody.
ANSWER_OPTIONS = ("not at all", "several days", "more than half the days", "nearly every day")

_DOUBLE = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|«([^»\n]+)»|「([^」\n]+)」|『([^』\n]+)』')
_SINGLE = re.compile(r"(?<![\w'‘’])['‘](?=\S)([^\n]+?)(?<=\S)['’](?![\w'‘’])")
_ELLIPSIS = re.compile(r"\.{3,}|…")
_APOSTROPHES = dict.fromkeys(map(ord, "'’‘`´ʼ"), None)
# A letter or digit of a script that separates words by spaces (CJK, kana and hangul do not: a
# Chinese quote may sit inside a longer run of characters).
_WORD = r"[^\W\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]"


def normalise(text: str) -> str:
    """Case-folded NFKC text without apostrophes, other punctuation and symbols as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text)
    return " ".join(text.split())


_OPTIONS = {normalise(option): score for score, option in enumerate(ANSWER_OPTIONS)}  # normalised -> score


@dataclass(frozen=True)
class Span:
    """A quoted span of a rationale: its text and where it is (``start``/``end``: the quoted text,
    without the marks, as offsets into the rationale)."""

    text: str
    start: int
    end: int


def extract_quotes(rationale: str) -> list[Span]:
    """The quoted spans of ``rationale`` in order, by the rules in this module's docstring."""
    return [span for span in _quoted(rationale) if normalise(span.text) not in _OPTIONS]


def named_option(rationale: str | None) -> int | None:
    """The score of the answer option a rationale names last in quotes (``... fits best is 'several
    days'`` -> 1), or None where it names none. Unquoted mentions do not count: ``"not at all
    interested"`` in prose describes the participant, not the scale."""
    named = [normalise(span.text) for span in _quoted(rationale or "")]
    options = [_OPTIONS[text] for text in named if text in _OPTIONS]
    return options[-1] if options else None


def _quoted(rationale: str) -> list[Span]:
    """Every quoted span (answer options included) of at least :data:`MIN_QUOTE_CHARS`, in order."""
    spans: list[Span] = []
    taken: list[tuple[int, int]] = []
    for match in _DOUBLE.finditer(rationale):
        group = next(g for g in range(1, 6) if match.group(g) is not None)
        spans.append(Span(match.group(group), match.start(group), match.end(group)))
        taken.append(match.span())
    for match in _SINGLE.finditer(rationale):
        if any(a <= match.start() < b or a < match.end() <= b for a, b in taken):
            continue  # single quotes inside a double-quoted span
        if len(normalise(match.group(1)).split()) >= MIN_SINGLE_QUOTED_WORDS:
            spans.append(Span(match.group(1), match.start(1), match.end(1)))
    return [span for span in sorted(spans, key=lambda s: s.start) if len(normalise(span.text)) >= MIN_QUOTE_CHARS]


@dataclass(frozen=True)
class Quote:
    """One quote checked against the transcript: ``found`` or not, the ``score`` of its best match
    (0-100; 100 for an exact one), and that match's line (``line``: the number in the transcript
    file, or in the text; ``start``/``end`` seconds where the transcript has times)."""

    text: str
    start: int
    end: int
    found: bool
    score: float
    line: int | None = None
    time_start: float | None = None
    time_end: float | None = None
    matched: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_lines(transcript: str) -> list[TranscriptLine]:
    """The non-empty lines of a transcript text (what the model read), numbered from 1, no times."""
    return [TranscriptLine(n, line.strip()) for n, line in enumerate(transcript.split("\n"), 1) if line.strip()]


class Transcript:
    """A transcript's lines, normalised once, to check many quotes against."""

    def __init__(self, lines: Sequence[TranscriptLine] | str):
        self.lines = text_lines(lines) if isinstance(lines, str) else list(lines)
        normalised = [normalise(line.text) for line in self.lines]
        # Each line alone, then each pair of consecutive lines joined: index of the first line, text.
        self.windows = [(i, text) for i, text in enumerate(normalised)]
        self.windows += [(i, f"{a} {b}") for i, (a, b) in enumerate(zip(normalised, normalised[1:]))]

    def best(self, piece: str) -> tuple[float, int | None]:
        """``(score, line index)`` of the best match of a normalised ``piece``."""
        exact = re.compile(rf"(?<!{_WORD}){re.escape(piece)}(?!{_WORD})")
        for index, text in self.windows:
            if exact.search(text):
                return 100.0, index
        if len(piece) < FUZZY_MIN_CHARS:
            return 0.0, None
        best, where = 0.0, None
        for index, text in self.windows:
            score = fuzz.partial_ratio(piece, text, score_cutoff=best)
            if score > best:
                best, where = score, index
        return best, where

    def check(self, span: Span, threshold: float = DEFAULT_THRESHOLD) -> Quote:
        """``span`` looked up in the lines: found when every ellipsis-separated piece is."""
        pieces = [p for p in (normalise(part) for part in _ELLIPSIS.split(span.text)) if len(p) >= MIN_QUOTE_CHARS]
        results = [self.best(piece) for piece in pieces or [normalise(span.text)]]
        score = min(score for score, _ in results)
        where = next((index for _, index in results if index is not None), None)
        line = None if where is None else self.lines[where]
        return Quote(
            span.text, span.start, span.end, found=score >= threshold, score=round(float(score), 1),
            line=None if line is None else line.number, time_start=None if line is None else line.start,
            time_end=None if line is None else line.end, matched=None if line is None else line.text,
        )  # fmt: skip

    def quotes(self, rationale: str | None, threshold: float = DEFAULT_THRESHOLD) -> list[Quote]:
        """Every quote of ``rationale`` checked (none for an empty or missing rationale)."""
        return [self.check(span, threshold) for span in extract_quotes(rationale or "")]


def check_quotes(
    rationale: str | None, transcript: Sequence[TranscriptLine] | str, threshold: float = DEFAULT_THRESHOLD
) -> list[Quote]:
    """The quotes of ``rationale`` looked up in ``transcript`` (its lines, or its text)."""
    return Transcript(transcript).quotes(rationale, threshold)


def where(quote: Quote | Mapping[str, Any]) -> str:
    """``'line 12, 34.5-37.1 s'`` (as much as is known of the quote's best match)."""
    q = quote if isinstance(quote, Mapping) else quote.to_dict()
    if q.get("line") is None:
        return "no similar line"
    text = f"line {q['line']}"
    if q.get("time_start") is not None:
        text += f", {q['time_start']:.1f}" + (f"-{q['time_end']:.1f}" if q.get("time_end") is not None else "") + " s"
    return text


def mark_quotes(rationale: str, quotes: Iterable[Quote | Mapping[str, Any]]) -> str:
    """``rationale`` with a mark after each quote: ``[found: line 12, 34.5-37.1 s]`` or
    ``[NOT IN TRANSCRIPT]`` (Markdown-safe plain text)."""
    marked, last = [], 0
    for quote in sorted((q if isinstance(q, Mapping) else q.to_dict() for q in quotes), key=lambda q: q["end"]):
        close = quote["end"] + 1 if quote["end"] < len(rationale) else quote["end"]  # after the closing mark
        mark = f" [found: {where(quote)}]" if quote["found"] else " [NOT IN TRANSCRIPT]"
        marked += [rationale[last:close], mark]
        last = close
    return "".join(marked + [rationale[last:]])


def unfounded_sentence(quote: Quote | Mapping[str, Any]) -> str:
    """A flag's sentence for a quote not found in the interview."""
    q = quote if isinstance(quote, Mapping) else quote.to_dict()
    nearest = "" if q.get("line") is None else f" (closest: {where(q)}, similarity {q['score']:.0f}/100)"
    return f"the rationale quotes \"{q['text']}\", which is not in the transcript{nearest}"


def contradiction_sentence(rationale: str | None, parsed_score: int | None) -> str | None:
    """A flag's sentence where the rationale names an answer option other than the score written
    after it; None where it agrees, names none or the output was not parsed."""
    option = named_option(rationale)
    if option is None or parsed_score is None or option == parsed_score:
        return None
    return f"the rationale names '{ANSWER_OPTIONS[option]}' ({option}) but the score written after it is {parsed_score}"


def evidence_summary(records: Iterable[Mapping[str, Any]], threshold: float = DEFAULT_THRESHOLD,
                     examples: int = 5) -> dict[str, Any]:  # fmt: skip
    """``metrics.json``'s ``evidence``: of the records with a rationale (each with its ``quotes``),
    the share with at least one quote and the share of quotes found in the transcript (the
    faithfulness rate; None without quotes), plus the first ``examples`` unfounded quotes; and of the
    parsed rationales that name an answer option in quotes (:func:`named_option`), the share whose
    option is the score written after it (``option_agreement_rate``) with the first contradictions."""
    rationales = [r for r in records if r.get("rationale")]
    quotes = [(r, q) for r in rationales for q in r.get("quotes") or []]
    found = sum(bool(q["found"]) for _, q in quotes)
    unfounded = [
        {"participant_id": str(r["participant_id"]), "item_index": int(r["item_index"]), "quote": q["text"],
         "score": q["score"], "closest_line": q.get("line")}
        for r, q in quotes if not q["found"]
    ]  # fmt: skip
    with_quote = sum(bool(r.get("quotes")) for r in rationales)
    # The answer option the rationale names against the score written after it (parsed outputs only).
    naming = [(r, named_option(r["rationale"])) for r in rationales if r.get("parsed_score") is not None]
    naming = [(r, option) for r, option in naming if option is not None]
    contradicting = [
        {"participant_id": str(r["participant_id"]), "item_index": int(r["item_index"]), "named": ANSWER_OPTIONS[option],
         "named_score": option, "parsed_score": r["parsed_score"]}
        for r, option in naming if option != r["parsed_score"]
    ]  # fmt: skip
    return {
        "rationales": len(rationales),
        "with_quote": with_quote,
        "share_with_quote": with_quote / len(rationales) if rationales else None,
        "quotes": len(quotes),
        "found": found,
        "faithfulness_rate": found / len(quotes) if quotes else None,
        "threshold": threshold,
        "unfounded_examples": unfounded[:examples],
        "naming_an_option": len(naming),
        "option_agrees": len(naming) - len(contradicting),
        "option_agreement_rate": (len(naming) - len(contradicting)) / len(naming) if naming else None,
        "contradicting_examples": contradicting[:examples],
    }


def interview_texts(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Participant id -> the transcript text its rows hold (a corpus whose items see different parts
    of the interview, CMDC's questions, gets each distinct part once, in order)."""
    parts: dict[str, dict[str, None]] = {}
    for row in rows:
        parts.setdefault(str(row["participant_id"]), {})[row.get("transcript") or ""] = None
    return {pid: "\n".join(text for text in texts if text) for pid, texts in parts.items()}


def evidence_lines(summary: Mapping[str, Any] | None) -> list[str]:
    """``report.md``'s account of the evidence quotes (``metrics.json``'s ``evidence``)."""
    if not summary or not summary["rationales"]:
        return []
    share = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    lines = [
        "## Evidence quotes",
        "",
        f"- Rationales quoting the interview: {summary['with_quote']} of {summary['rationales']} "
        f"({share(summary['share_with_quote'])})",
        f"- Quotes found in the transcript (faithfulness): {summary['found']} of {summary['quotes']} "
        f"({share(summary['faithfulness_rate'])}); matched after normalising case and punctuation, fuzzy "
        f"similarity >= {summary['threshold']:g}/100 (mllm_dr.evidence)",
    ]
    if summary.get("naming_an_option"):
        lines.append(
            f"- Rationales naming an answer option ('several days', ...) that agrees with the score written after it: "
            f"{summary['option_agrees']} of {summary['naming_an_option']} ({share(summary['option_agreement_rate'])})")
        lines += [f"  - contradiction: participant {e['participant_id']}, item {e['item_index']}: names '{e['named']}' "
                  f"({e['named_score']}), scores {e['parsed_score']}" for e in summary.get("contradicting_examples") or []]
    for example in summary["unfounded_examples"]:
        closest = "" if example["closest_line"] is None else f", closest line {example['closest_line']}"
        lines.append(f"  - not in the transcript: participant {example['participant_id']}, item "
                     f"{example['item_index']}: \"{example['quote']}\" (similarity {example['score']:.0f}{closest})")
    return lines + [""]


def attach_quotes(
    records: Iterable[dict[str, Any]], transcripts: Mapping[str, Sequence[TranscriptLine] | str],
    threshold: float = DEFAULT_THRESHOLD,
) -> None:  # fmt: skip
    """Adds ``quotes`` (a list of :class:`Quote` dicts) to each record with a rationale, matched
    against its participant's transcript (``transcripts``: participant id -> lines or text); each
    transcript is normalised once."""
    cache: dict[str, Transcript] = {}
    for record in records:
        pid = str(record["participant_id"])
        if not record.get("rationale") or pid not in transcripts:
            record["quotes"] = []
            continue
        if pid not in cache:
            cache[pid] = Transcript(transcripts[pid])
        record["quotes"] = [q.to_dict() for q in cache[pid].quotes(record["rationale"], threshold)]


__all__ = [
    "ANSWER_OPTIONS",
    "DEFAULT_THRESHOLD",
    "Quote",
    "Span",
    "Transcript",
    "attach_quotes",
    "check_quotes",
    "contradiction_sentence",
    "evidence_lines",
    "evidence_summary",
    "extract_quotes",
    "interview_texts",
    "mark_quotes",
    "named_option",
    "normalise",
    "text_lines",
    "unfounded_sentence",
    "where",
]
