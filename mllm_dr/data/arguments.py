"""The one set of corpus options every command line takes (``HfArgumentParser`` dataclass), and
the one function that turns them into dataset rows."""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from .cache import build_feature_cache, check_feature_sequences
from .checks import checked, modality_problems, participants_without, target_problems
from .registry import CORPORA, CorpusSpec, get_corpus, hold_out_dev
from .report import ON_ERROR, LoadReport, natural_key

logger = logging.getLogger("mllm_dr.data")

CACHE_DIRNAME = ".mllm_dr_cache"


@dataclass
class CorpusArguments:
    """Which corpus to read and how (``--data_dir``, ``--dataset_format`` and the corpus's options)."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Corpus root (E-DAIC-WOZ, DAIC-WOZ, CMDC), or a datasets.save_to_disk folder for "
                  "--dataset_format prepared."},
    )
    dataset_format: str = field(
        default="edaic",
        metadata={"help": f"Corpus layout: one of {', '.join(sorted(CORPORA))} (see README, 'Using a real corpus')."},
    )
    visual: str | None = field(
        default=None,
        metadata={"help": "E-DAIC-WOZ / DAIC-WOZ visual features: resnet | openface | none (default: resnet for "
                  "E-DAIC-WOZ, none for DAIC-WOZ)."},
    )
    cmdc_split: str | None = field(
        default=None, metadata={"help": "CMDC protocol: authors | fold1 .. fold5 (default: authors)."}
    )
    corpus_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON object of further keyword arguments for the corpus loader, e.g. "
                  "'{\"labels_csv\": \"my_labels.csv\"}' for CMDC (see mllm_dr.data.load_cmdc)."},
    )
    on_error: str = field(
        default="raise",
        metadata={"help": "Broken data: raise (stop before any long work, naming participant, item, file and "
                  "problem) | skip (leave the participant, or the item row, out; recorded in the run's outputs). "
                  "See README, 'Broken data'.", "choices": list(ON_ERROR)},
    )
    dev_fraction: float | None = field(
        default=None,
        metadata={"help": "For a corpus without a dev split (CMDC): hold out this fraction of the train participants "
                  "as dev (participant-disjoint, stratified by PHQ total >= 10, drawn with --dev_seed). Default: no "
                  "dev split, so training runs without dev evaluation (see README, 'Using a real corpus')."},
    )
    dev_seed: int = field(default=0, metadata={"help": "Seed of the --dev_fraction draw (the same in every command)."})
    require_modalities: str | None = field(
        default=None,
        metadata={"help": "Comma-separated modalities (audio, video) every participant must have: a missing "
                  "feature file is then broken data (--on_error decides) instead of a missing modality."},
    )

    def required_modalities(self) -> list[str]:
        names = [m.strip() for m in (self.require_modalities or "").split(",") if m.strip()]
        unknown = sorted(set(names) - {"audio", "video"})
        if unknown:
            raise ValueError(f"--require_modalities takes audio and/or video, got {unknown}")
        return names

    def spec(self) -> CorpusSpec:
        return get_corpus(self.dataset_format)

    def loader_kwargs(self) -> dict[str, Any]:
        """The loader's keyword arguments for the options given; an option this corpus does not take
        is refused rather than ignored (``--require_modalities`` is checked here too)."""
        spec = self.spec()
        self.required_modalities()
        kwargs: dict[str, Any] = {}
        for option in ("visual", "cmdc_split"):
            value = getattr(self, option)
            if value is None:
                continue
            if option not in spec.options:
                raise ValueError(f"--{option} does not apply to --dataset_format {spec.name}")
            kwargs[spec.options[option]] = value
        if self.corpus_kwargs:
            try:
                extra = json.loads(self.corpus_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"--corpus_kwargs must be a JSON object ({error})") from None
            if not isinstance(extra, dict):
                raise ValueError(f"--corpus_kwargs must be a JSON object, got {type(extra).__name__}")
            clash = sorted(set(extra) & (set(kwargs) | {"on_error", "rationales_path", "return_report"}))
            if clash:
                raise ValueError(f"--corpus_kwargs sets {clash}, which have flags of their own")
            kwargs.update(extra)
        return kwargs


@dataclass
class FeatureCacheArguments:
    """Where the feature cache goes (the commands that read features: training and evaluation)."""

    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": f"Where the feature cache goes (default: DATA_DIR/{CACHE_DIRNAME})."},
    )


@dataclass
class LoadedCorpus:
    """Rows of the requested splits, the corpus spec and questionnaire, and what was left out."""

    data: datasets.DatasetDict
    spec: CorpusSpec
    questionnaire: str
    reports: list[LoadReport]
    data_dir: str
    on_error: str = "raise"
    rationales: str | None = None
    dev_source: str = "corpus"  # "corpus" (its own dev split), "held_out_fraction" (--dev_fraction) or "none"
    dev_participants: list[str] = field(default_factory=list)  # the held-out ones (--dev_fraction)

    def __getitem__(self, split: str) -> datasets.Dataset:
        return self.data[split]

    def cache_features(self, frames: Any, cache_dir: str | os.PathLike | None = None, progress: bool | None = None) -> None:
        """Builds the feature cache for the rows with ``frames``' (the processor's) frame policies,
        in ``cache_dir`` (default ``DATA_DIR/.mllm_dr_cache``), where the corpus uses one
        (:attr:`CorpusSpec.feature_cache`); elsewhere reads each feature sequence once to check it.
        Either way an unreadable or non-finite sequence goes to ``on_error`` here, not mid-run."""
        if not self.spec.feature_cache:
            if cache_dir is not None:
                raise ValueError(
                    f"--feature_cache_dir does not apply to --dataset_format {self.spec.name} (its features are read as they are)"
                )
            self.data, report = check_feature_sequences(self.data, frames, on_error=self.on_error, progress=progress, return_report=True)
            self.reports.append(report)
            return
        cache_dir = cache_dir or os.path.join(self.data_dir, CACHE_DIRNAME)
        self.data, report = build_feature_cache(
            self.data, cache_dir, frames, on_error=self.on_error, progress=progress, return_report=True
        )
        self.reports.append(report)

    def check_targets(self, with_rationale: bool) -> None:
        """Every row must be trainable: an item label (a participant with none is one problem), and
        with ``with_rationale`` (stage 2) a rationale written for that label. ``on_error`` refuses
        them together, naming participant, item and file, or drops and records them."""
        report = LoadReport("training targets")
        problems = target_problems(
            self.data, with_rationale=with_rationale, labels_source=f"{self.data_dir} (item labels)",
            rationales_source=self.rationales,
        )  # fmt: skip
        self.data = checked(self.data, problems, self.on_error, report, "row(s) cannot be trained or validated on")
        if report.skipped:
            logger.warning("%s", report.summary())
        self.reports.append(report)

    @property
    def skipped_participants(self) -> list[str]:
        """Participants left out whole by the loader, the checks or the feature cache (``on_error="skip"``)."""
        return sorted({p for report in self.reports for p in report.skipped_participants}, key=natural_key)

    @property
    def skipped_items(self) -> int:
        """Item rows left out (participants that keep other items)."""
        return sum(report.skipped_items for report in self.reports)

    def left_out(self, modalities: Sequence[str] = ("audio", "video")) -> dict[str, Any]:
        """What the run's outputs record of the data they do not cover: ``skipped`` (one entry per
        problem: participant, item for a row-level one, file, problem; ``on_error="skip"``) and
        ``missing_modality`` (``{modality: [participants scored without it]}`` for ``modalities``,
        the ones the model uses: rows whose feature file is absent)."""
        skipped = [problem.to_dict() for report in self.reports for problem in report.skipped]
        missing = {modality: participants_without(self.data, modality) for modality in modalities}
        return {"skipped": skipped, "missing_modality": missing}


def load_splits(
    args: CorpusArguments,
    splits: Sequence[str],
    *,
    rationales: str | os.PathLike | None = None,
    frames: Any = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> LoadedCorpus:
    """Loads ``args``' corpus, holds out ``--dev_fraction`` of train as dev (:func:`hold_out_dev`),
    keeps ``splits`` (an absent split is an empty one: CMDC has no dev set), attaches ``rationales``
    and, with ``frames`` (the model's processor or config), builds the feature cache
    (:meth:`LoadedCorpus.cache_features`): the one row-loading front end of training, evaluation and
    distillation."""
    if args.data_dir is None:
        raise ValueError("--data_dir is required")
    spec = args.spec()
    required = args.required_modalities()
    kwargs = args.loader_kwargs()
    takes = inspect.signature(spec.loader).parameters
    by_loader = [m for m in required if f"require_{m}" in takes]  # the loader names the missing file
    kwargs.update({f"require_{m}": True for m in by_loader})
    data, report = spec.load(args.data_dir, on_error=args.on_error, rationales_path=rationales, return_report=True, **kwargs)
    held_out: list[str] = []
    if args.dev_fraction is not None:
        data, held_out = hold_out_dev(data, args.dev_fraction, args.dev_seed)
        logger.info("dev: %d train participant(s) held out (--dev_fraction %g, --dev_seed %d): %s",
                    len(held_out), args.dev_fraction, args.dev_seed, ", ".join(held_out))  # fmt: skip
    dev_source = "held_out_fraction" if held_out else "corpus" if len(data.get("dev", [])) else "none"
    template = next(iter(data.values()))
    selected = {}
    for split in splits:
        selected[split] = data[split] if split in data else template.select([])
    data = datasets.DatasetDict(selected)
    generic = [m for m in required if m not in by_loader]
    if generic:
        problems = modality_problems(data, generic, str(args.data_dir))
        data = checked(data, problems, args.on_error, report, "participant(s) lack a required modality")
    corpus = LoadedCorpus(
        data, spec, spec.questionnaire_of(data), [report], str(args.data_dir), args.on_error,
        None if rationales is None else str(rationales), dev_source, held_out,
    )  # fmt: skip
    if frames is not None:
        corpus.cache_features(frames, cache_dir, progress=progress)
    return corpus
