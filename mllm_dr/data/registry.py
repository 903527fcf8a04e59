"""The corpus registry: each corpus's facts in one :class:`CorpusSpec` (questionnaire, loader,
the command-line options it takes, where its feature files live), so that a new corpus touches one
module and one :func:`register_corpus` call, not every tool."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from . import cmdc, daic
from .report import LoadReport, Notes, natural_key
from .tables import SPLITS


@dataclass(frozen=True)
class CorpusSpec:
    """What the tools need to know about one corpus layout.

    Args:
        name: The ``--dataset_format`` value.
        title: Human-readable name.
        loader: ``loader(data_dir, *, on_error, rationales_path, return_report, **options)`` returning a
            ``DatasetDict`` (train/dev/test) of rows with :data:`~mllm_dr.data.ROW_FEATURES` columns.
        questionnaire: ``"phq8"`` or ``"phq9"``; ``None``: read from the rows (a 9th item means PHQ-9).
        aliases: Other accepted spellings of ``name``.
        has_dev_split: Whether the protocol defines a dev split.
        options: ``CorpusArguments`` field -> loader keyword, for the options this corpus takes.
        audio_pattern / wav_pattern: Where the audio features and the raw audio live, relative to a
            participant folder (``{id}``) or as per-question names (``{q}``); the HuBERT extractor
            writes ``audio_pattern`` from ``wav_pattern``.
        feature_cache: Whether training and evaluation convert its feature files into the feature
            cache (a prepared folder's features are read as they are).
    """

    name: str
    title: str
    loader: Callable[..., Any]
    questionnaire: str | None
    aliases: tuple[str, ...] = ()
    has_dev_split: bool = True
    options: Mapping[str, str] = field(default_factory=dict)
    audio_pattern: str | None = None
    wav_pattern: str | None = None
    feature_cache: bool = True

    def load(self, data_dir: str | os.PathLike, **kwargs: Any):
        return self.loader(data_dir, **kwargs)

    def questionnaire_of(self, dataset_dict: Mapping[str, datasets.Dataset]) -> str:
        """This corpus's questionnaire, or (``questionnaire=None``) the one its rows use."""
        if self.questionnaire is not None:
            return self.questionnaire
        items = {int(i) for split in dataset_dict.values() for i in split["item_index"]}
        return "phq9" if 9 in items else "phq8"


PREPARED_COLUMNS = ("participant_id", "item_index", "item_name", "transcript", "label")


def load_prepared(
    data_dir: str | os.PathLike,
    *,
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """A ``DatasetDict`` saved with ``save_to_disk`` whose rows already have the loaders' columns
    (at least ``participant_id``, ``item_index``, ``item_name``, ``transcript``, ``label``; features
    in ``audio_files`` / ``video_files``). ``on_error`` is accepted for a uniform interface: a
    prepared folder has no participant files to skip."""
    from .rationales import attach_rationales

    try:
        data = datasets.load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{data_dir}: not a datasets.save_to_disk folder ({error})") from None
    if not isinstance(data, datasets.DatasetDict):
        raise ValueError(f"{data_dir}: expected a DatasetDict with train/dev/test splits, got one Dataset")
    for name, split in data.items():
        missing = [c for c in PREPARED_COLUMNS if c not in split.column_names]
        if missing:
            raise ValueError(f"{data_dir}: split {name!r} lacks the column(s) {missing}")
    notes = Notes()
    if rationales_path is not None:
        data = attach_rationales(data, rationales_path, notes)
    report = LoadReport("prepared", notes=notes.lines())
    return (data, report) if return_report else data


CORPORA: dict[str, CorpusSpec] = {}


def register_corpus(spec: CorpusSpec) -> CorpusSpec:
    """Adds (or replaces) a corpus; its name and aliases become ``--dataset_format`` values."""
    CORPORA[spec.name] = spec
    return spec


register_corpus(
    CorpusSpec(
        "edaic", "E-DAIC-WOZ (AVEC 2019)", daic.load_edaic, "phq8",
        aliases=("e-daic", "e-daic-woz", "edaic-woz"), options={"visual": "visual"},
        audio_pattern=daic.AUDIO_PATTERN, wav_pattern=daic.WAV_PATTERN,
    )
)  # fmt: skip
register_corpus(
    CorpusSpec(
        "daic", "DAIC-WOZ (AVEC 2017)", daic.load_daic_woz, "phq8", aliases=("daic-woz", "daicwoz"),
        options={"visual": "visual"}, audio_pattern=daic.AUDIO_PATTERN,
    )
)  # fmt: skip
register_corpus(
    CorpusSpec(
        "cmdc", "CMDC (Chinese Multimodal Depression Corpus)", cmdc.load_cmdc, "phq9", has_dev_split=False,
        options={"cmdc_split": "split"}, audio_pattern=cmdc.AUDIO_PATTERN, wav_pattern=cmdc.WAV_PATTERN,
    )
)  # fmt: skip
register_corpus(
    CorpusSpec("prepared", "a datasets.save_to_disk folder of prepared rows", load_prepared, None, feature_cache=False)
)


def get_corpus(name: str) -> CorpusSpec:
    """The spec registered under ``name`` (or one of its aliases, case-insensitive)."""
    key = name.lower()
    for spec in CORPORA.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise ValueError(f"dataset_format must be one of {sorted(CORPORA)}, got {name!r}")


def load_corpus(
    data_dir: str | os.PathLike, dataset_format: str, **kwargs: Any
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """``dataset_format``: a registered corpus (``"edaic"``, ``"daic"``, ``"cmdc"``, ``"prepared"``);
    keyword arguments go to that corpus's loader."""
    return get_corpus(dataset_format).load(data_dir, **kwargs)


def concatenate_corpora(*dataset_dicts: datasets.DatasetDict) -> datasets.DatasetDict:
    """Split-wise concatenation of loaded corpora, refused when participant ids overlap: E-DAIC and
    DAIC-WOZ share sessions 300-492, and mixing them would put one person in train and test."""
    if not dataset_dicts:
        raise ValueError("concatenate_corpora needs at least one DatasetDict")
    seen: dict[str, int] = {}
    for position, dataset_dict in enumerate(dataset_dicts):
        ids = {pid for split in dataset_dict.values() for pid in split["participant_id"]}
        overlap = sorted((pid for pid in ids if pid in seen), key=natural_key)
        if overlap:
            shown = ", ".join(overlap[:30]) + (" ..." if len(overlap) > 30 else "")
            raise ValueError(
                f"corpora #{seen[overlap[0]] + 1} and #{position + 1} share {len(overlap)} participant id(s): {shown}. "
                "E-DAIC-WOZ contains DAIC-WOZ sessions 300-492; mixing them leaks participants across splits. "
                "Use one of the two (or drop the shared sessions from one) before concatenating."
            )
        for pid in ids:
            seen[pid] = position
    names = [name for name in SPLITS if any(name in d for d in dataset_dicts)]
    names += sorted({name for d in dataset_dicts for name in d} - set(names))
    return datasets.DatasetDict(
        {name: datasets.concatenate_datasets([d[name] for d in dataset_dicts if name in d]) for name in names}
    )


DEV_STRATUM_CUTOFF = 10  # held-out dev strata: PHQ total >= 10 (the corpora's PHQ_Binary) or not


def hold_out_dev(
    dataset_dict: Mapping[str, datasets.Dataset], fraction: float, seed: int = 0
) -> tuple[datasets.DatasetDict, list[str]]:
    """Moves about ``fraction`` of the train participants (all their rows) to ``dev``, for a corpus
    without a dev split (CMDC). Participant-disjoint, stratified by ``total >= 10`` (participants
    without a total form a stratum of their own), drawn with ``seed``: each stratum gives
    ``round(fraction * n)`` of its ``n`` participants, and keeps at least one in train. Refuses a
    corpus whose dev split is not empty, and a fraction that holds out nobody. Returns the new splits
    and the dev participants."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--dev_fraction must be in (0, 1), got {fraction}")
    if len(dataset_dict.get("dev", [])):
        raise ValueError("--dev_fraction holds out part of train for a corpus without a dev split: this one has one")
    train = dataset_dict["train"]
    column = train["total"] if "total" in train.column_names else [None] * len(train)
    totals: dict[str, Any] = dict(zip(train["participant_id"], column, strict=True))
    strata: dict[Any, list[str]] = defaultdict(list)
    for pid in sorted(totals, key=natural_key):
        strata[None if totals[pid] is None else totals[pid] >= DEV_STRATUM_CUTOFF].append(pid)
    held_out: list[str] = []
    for number, key in enumerate(sorted(strata, key=str)):
        members = strata[key]
        size = min(len(members) - 1, math.floor(fraction * len(members) + 0.5))
        order = np.random.default_rng([int(seed), number]).permutation(len(members))
        held_out += [members[i] for i in order[: max(0, size)]]
    if not held_out:
        raise ValueError(
            f"--dev_fraction {fraction} holds out no participant of the {len(totals)} in train "
            "(each stratum keeps one in train): raise it, or train without dev evaluation"
        )
    dev_ids = set(held_out)
    splits = dict(dataset_dict)
    splits["dev"] = train.filter(lambda row: row["participant_id"] in dev_ids).map(lambda row: {"split": "dev"})
    splits["train"] = train.filter(lambda row: row["participant_id"] not in dev_ids)
    return datasets.DatasetDict(splits), sorted(held_out, key=natural_key)
