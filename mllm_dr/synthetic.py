"""Writes a synthetic interview corpus in exactly the E-DAIC-WOZ on-disk layout, for the demo, the
tests and the benchmarks (the real corpus needs a signed licence and cannot be shipped).

    mllm-dr-synthetic-corpus --output_dir runs/synthetic --participants 60 --seed 0 --seconds 4 --turns 12

Every PHQ-8 item is planted, with noise, in exactly one modality, so that each modality's
contribution can be measured:

    transcript wording only:  1 NoInterest, 2 Depressed, 3 Sleep, 6 Failure
    audio (HuBERT) only:      4 Tired, 8 Moving
    visual (ResNet) only:     5 Appetite, 7 Concentrating

Items share a latent severity (as in real questionnaires), so a modality carries *indirect*
information about the other modalities' items through that correlation; ``item_correlation=0``
removes it. The same arguments give byte-identical files. ``SYNTHETIC.md`` and
``signal_map.json`` inside the output describe what was planted. Nothing here is clinical data.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from processing_mllm_dr import PHQ8_ITEMS, PHQ9_ITEMS, PhqItem

from .data import cmdc
from .data.features import OPENFACE_META_COLUMNS
from .data.rationales import Rationale
from .evidence import ANSWER_OPTIONS
from .io import append_jsonl

FORMAT = "mllm-dr-synthetic-edaic"
VERSION = "synthetic-v1"  # also the rationales' prompt_version
TEACHER = "synthetic-template"
# Part of the corpus definition, not of a run: the planted directions and the background statistics
# are the same for every participant and every --seed, so a model trained on one seed's corpus can
# be evaluated on another's.
SIGNAL_SEED = 20_250_521
CUTOFF = 10  # PHQ_Binary = PHQ_Score >= 10 (the E-DAIC definition)
PTSD_CUTOFF = 44  # PCL-C total >= 44 -> "PCL-C (PTSD)" = 1

AUDIO_DIM, AUDIO_RATE = 768, 50  # HuBERT-base, 50 frames/s
VIDEO_DIM, VIDEO_RATE = 2048, 30  # CNN_ResNet, ~30 frames/s
CHUNK_FRAMES = 4096  # long sequences are generated and written in chunks: memory stays bounded

ITEM_MODALITY: dict[int, str] = {
    1: "text", 2: "text", 3: "text", 4: "audio", 5: "video", 6: "text", 7: "video", 8: "audio",
}
TEXT_ITEMS = tuple(i for i, m in ITEM_MODALITY.items() if m == "text")
FREQUENCY = ANSWER_OPTIONS  # a template rationale names its score's answer option (evidence.named_option reads it)

# Marginal P(score = 0, 1, 2, 3) per item, close to E-DAIC's (sleep and tiredness the most common
# complaints, psychomotor change the rarest); the total's spread then comes from item_correlation.
ITEM_MARGINALS: dict[int, tuple[float, float, float, float]] = {
    1: (0.52, 0.29, 0.11, 0.08),
    2: (0.51, 0.30, 0.11, 0.08),
    3: (0.38, 0.33, 0.15, 0.14),
    4: (0.35, 0.35, 0.16, 0.14),
    5: (0.52, 0.28, 0.11, 0.09),
    6: (0.54, 0.28, 0.10, 0.08),
    7: (0.56, 0.27, 0.10, 0.07),
    8: (0.63, 0.24, 0.08, 0.05),
}
PHQ9_MARGINALS = {**ITEM_MARGINALS, 9: (0.80, 0.12, 0.05, 0.03)}  # item 9 (self-harm): the rarest complaint
DEFAULT_ITEM_CORRELATION = 0.55  # share of each item's latent variance that is the shared severity
DEFAULT_TEXT_NOISE = 0.15  # probability that an answer uses a phrase from an adjacent level


@dataclass(frozen=True)
class FeatureSpec:
    """How one modality's feature sequence is synthesised (see ``SYNTHETIC.md`` for the rationale)."""

    name: str
    file_suffix: str
    dim: int
    rate: int  # frames per second
    items: tuple[int, ...]  # PHQ items planted in this modality
    amplitude: float  # planted vector = amplitude * (score - 1.5) * unit direction, on active frames
    background_mean_sd: float  # corpus-wide per-dimension mean ~ N(background_mean, sd)
    background_mean: float
    offset_sd: float  # per-participant per-dimension offset ~ N(0, offset_sd)
    frame_sd: float  # frame noise (AR(1) over time, per-dimension scale around this)
    ar: float  # AR(1) coefficient of the frame noise (features are smooth in time)
    relu: bool  # post-ReLU CNN features are non-negative
    active_fraction: tuple[float, float]  # per participant and item, fraction of frames carrying the signal


AUDIO = FeatureSpec(
    name="audio", file_suffix="_HuBERT.npy", dim=AUDIO_DIM, rate=AUDIO_RATE, items=(4, 8), amplitude=6.0,
    background_mean_sd=0.5, background_mean=0.0, offset_sd=0.3, frame_sd=1.0, ar=0.7, relu=False,
    active_fraction=(0.35, 0.65),
)
VIDEO = FeatureSpec(
    name="video", file_suffix="_CNN_ResNet.mat", dim=VIDEO_DIM, rate=VIDEO_RATE, items=(5, 7), amplitude=8.0,
    background_mean_sd=0.5, background_mean=0.3, offset_sd=0.3, frame_sd=1.0, ar=0.8, relu=True,
    active_fraction=(0.35, 0.65),
)
FEATURES = (AUDIO, VIDEO)


@dataclass(frozen=True)
class SignalLayout:
    """How the audio/visual items are planted (``--signal_layout``): which dimensions carry an item,
    how strongly, and on how much of the recording. The items, the background and the labels are
    the same in every layout; only the planted vectors and their active frames differ."""

    name: str
    description: str
    amplitude_scale: float = 1.0  # x FeatureSpec.amplitude
    sparse_dims: int | None = None  # None: one dense random unit direction per item; k: k axis-aligned dims
    active_fraction: tuple[float, float] | None = None  # None: the FeatureSpec's (35-65% of frames)
    direction_seed: int = 0  # 0: the standard directions; otherwise other directions, from this seed

    def amplitude(self, spec: FeatureSpec) -> float:
        return spec.amplitude * self.amplitude_scale

    def fraction(self, spec: FeatureSpec) -> tuple[float, float]:
        return self.active_fraction or spec.active_fraction


LAYOUTS: dict[str, SignalLayout] = {
    layout.name: layout
    for layout in (
        SignalLayout("standard", "a dense random unit direction per item, amplitude 6 (audio) / 8 (video) per score "
                     "step, on 35-65% of the frames"),
        SignalLayout("sparse", "8 axis-aligned dimensions per item (other dimensions than standard's directions), "
                     "the same norm, on 35-65% of the frames", sparse_dims=8, direction_seed=1),
        SignalLayout("faint", "other dense directions at a quarter of the amplitude, on 35-65% of the frames",
                     amplitude_scale=0.25, direction_seed=2),
        SignalLayout("brief", "other dense directions in short bursts on 10-20% of the frames, at 3x the amplitude",
                     amplitude_scale=3.0, active_fraction=(0.10, 0.20), direction_seed=3),
    )
}
STANDARD = LAYOUTS["standard"]


def signal_layout(name: str) -> SignalLayout:
    """The layout called ``name``; one-line ``ValueError`` naming the known ones otherwise."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown signal layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]

# --------------------------------------------------------------------------------------------
# Transcript language. Each text item has, per score level, several phrasings that share a few
# markers (so the level is learnable without being a lookup table). Nothing in the filler, the
# greetings or the interviewer fragments depends on any label, and none of it touches energy,
# appetite, concentration or movement (the audio/visual items).
# --------------------------------------------------------------------------------------------

PROMPTS: dict[int, tuple[str, ...]] = {
    1: ("what do you do to have fun these days", "what are some things you really look forward to",
        "do you still do the things you used to enjoy"),
    2: ("how have you been feeling lately", "how would you describe your mood these days",
        "when was the last time you felt really down"),
    3: ("how easy is it for you to get a good night's sleep", "how have you been sleeping",
        "tell me about your sleep lately"),
    6: ("how do you feel about yourself these days", "what are you most proud of in your life",
        "how would your best friend describe you"),
}

PHRASES: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (
        ("i still really enjoy my hobbies, i look forward to them all the time",
         "plenty of things, i'm always keen to try something new",
         "i get excited about my projects and going out with friends",
         "i never lose interest in the stuff i love doing"),
        ("a few days here and there i don't feel like doing much, but mostly i still enjoy things",
         "once in a while i lose interest in stuff, it passes after a day or two",
         "some days my hobbies feel a bit flat, not often though",
         "every now and then i can't be bothered, but i still enjoy most things"),
        ("more days than not i just don't care about the things i used to enjoy",
         "most of the week nothing really interests me anymore",
         "i've stopped doing a lot of my hobbies, most days i can't be bothered",
         "half the time or more i don't get any pleasure out of things"),
        ("nothing interests me anymore, every single day feels empty",
         "i don't enjoy anything now, nearly every day i just sit there",
         "i gave up on all my hobbies, i have no interest in anything day after day",
         "honestly nothing gives me any pleasure anymore, not one day"),
    ),
    2: (
        ("i feel pretty good, my mood has been steady and positive",
         "i'm in a good place, i can't remember the last time i felt down",
         "honestly i feel upbeat, no complaints about my mood",
         "my mood is great, i'm a cheerful person in general"),
        ("now and then i feel a little low, but it doesn't last",
         "a couple of days i felt kind of down, then it lifted",
         "i get a bit blue once in a while, nothing serious",
         "there were a few sad days recently, mostly i'm okay"),
        ("more than half the time i feel down and i can't shake it",
         "most days i feel low and kind of hopeless about things",
         "i've been feeling sad a lot, more days than not",
         "a lot of the week i feel heavy and down"),
        ("i feel hopeless pretty much every day, like it will never get better",
         "i'm depressed all the time, every single day is dark",
         "i feel down and hopeless nearly every day, i cry a lot",
         "there isn't a day i don't feel miserable and hopeless"),
    ),
    3: (
        ("i sleep fine, i'm out as soon as my head hits the pillow",
         "no problems with sleep, i get a solid eight hours",
         "i sleep really well, straight through the night",
         "sleep is easy for me, i never have trouble with it"),
        ("a few nights i have trouble falling asleep, but mostly it's fine",
         "once in a while i wake up in the night, not a big deal",
         "some nights it takes me a while to drop off",
         "every now and then i toss and turn, mostly i sleep okay"),
        ("more than half the nights i wake up and can't get back to sleep",
         "most nights i lie awake for hours before i fall asleep",
         "my sleep is bad most of the week, i keep waking up at three",
         "more nights than not i either can't fall asleep or i oversleep"),
        ("i barely sleep at all, nearly every night",
         "i'm awake almost all night every night, i get maybe two hours",
         "every single night i can't sleep, it's been like that for weeks",
         "i hardly sleep anymore, i'm up until dawn every night"),
    ),
    6: (
        ("i feel good about myself, i'm proud of what i've achieved",
         "i like who i am, i've done okay in life",
         "i'm confident in myself, i don't really have regrets",
         "i think i'm a decent person, my family is proud of me"),
        ("once in a while i'm hard on myself, but it passes",
         "a few times i felt i let someone down, mostly i'm okay with myself",
         "some days i doubt myself a bit, not often",
         "now and then i feel like i could have done better, that's normal"),
        ("more often than not i feel like i've let my family down",
         "most days i feel bad about myself and the choices i made",
         "a lot of the time i think i'm a disappointment",
         "more days than not i feel like i've messed everything up"),
        ("i feel like a complete failure every day",
         "i'm a failure, i let everyone down and i think about it constantly",
         "every day i feel worthless, i've let my family down completely",
         "i hate myself nearly all the time, i ruined everything"),
    ),
}

GREETINGS = (
    "hi, i'm good thanks", "hello, nice to meet you", "yeah, i'm doing alright", "okay, hi",
    "hi there, thanks for having me", "um, hello",
)
HEDGES = ("um, ", "well, ", "yeah, ", "i mean, ", "you know, ", "uh, ")
FILLER_PROMPTS = (
    "where are you from originally", "tell me about your job", "what did you study at school",
    "tell me about your family", "how did you end up living here", "what's your typical saturday like",
    "do you travel a lot", "tell me more about that",
)
FILLER_TEMPLATES = (
    "i grew up in {city}, and i moved here about {n} years ago",
    "i work as {job} at {workplace}",
    "my {relative} lives in {city}, we talk on the phone",
    "i have {pet} named {name}",
    "we drove to {place} last {season}, it was a long drive",
    "i studied {subject} in college",
    "i've been at my current job for about {n} years",
    "my {relative} works in {field}",
    "on saturdays i {chore}",
    "i play {instrument}, my {relative} taught me",
    "the traffic here is bad, it takes me {minutes} minutes to get to work",
    "i live with my {relative} in an apartment near {landmark}",
    "i was in the {branch} for {n} years",
    "my {relative} and i are planning a trip to {place}",
    "i drive {car}, it's pretty old",
    "the weather in {city} is {weather}",
    "i'm thinking about taking a class in {subject}",
    "my {relative} has {kids} kids, so the house is always full",
    "i volunteer at {venue} on sundays",
    "i moved to {city} for work, then came back here",
)
FILLER_SLOTS: dict[str, tuple[str, ...]] = {
    "city": ("los angeles", "chicago", "houston", "phoenix", "san diego", "denver", "seattle", "boston",
             "atlanta", "new york", "dallas", "portland", "miami", "detroit"),
    "n": ("two", "three", "four", "five", "six", "ten", "twelve", "fifteen", "twenty"),
    "kids": ("two", "three", "four"),
    "minutes": ("twenty", "thirty", "forty", "forty five", "sixty"),
    "job": ("a nurse", "an accountant", "a mechanic", "a teacher", "a cashier", "an electrician",
            "a security guard", "a receptionist", "a truck driver", "a software tester", "a warehouse manager"),
    "workplace": ("a hospital", "a small company downtown", "a car dealership", "a school", "a grocery store",
                  "a hotel", "a law firm", "the airport", "a construction company"),
    "relative": ("mom", "dad", "sister", "brother", "cousin", "aunt", "uncle", "grandmother", "son", "daughter"),
    "pet": ("a dog", "a cat", "two cats", "a parrot", "a little dog"),
    "name": ("max", "bella", "charlie", "luna", "rocky", "daisy", "buddy"),
    "place": ("san francisco", "las vegas", "the grand canyon", "yosemite", "mexico", "new orleans", "florida"),
    "season": ("summer", "winter", "spring", "fall"),
    "subject": ("business", "biology", "history", "computer science", "accounting", "psychology", "art"),
    "field": ("insurance", "real estate", "construction", "retail", "the post office", "banking"),
    "chore": ("do the laundry and clean the apartment", "go to the farmers market", "wash the car",
              "fix things around the house", "visit my grandmother"),
    "instrument": ("the guitar", "the piano", "the drums", "the violin"),
    "landmark": ("the park", "the freeway", "the beach", "the university", "the mall"),
    "branch": ("army", "navy", "air force", "marines"),
    "car": ("a honda", "a toyota", "a pickup truck", "a ford", "a minivan"),
    "weather": ("pretty mild", "hot and dry", "rainy", "cold in the winter", "humid"),
    "venue": ("a shelter", "the church", "a community center", "the library"),
}

TOPICS = {1: "things they do for fun", 2: "their mood", 3: "sleep", 6: "how they see themselves", 9: "self-harm"}
PROBLEMS = {
    1: "loss of interest or pleasure in doing things",
    2: "feeling down, depressed or hopeless",
    3: "trouble sleeping",
    4: "tiredness or low energy",
    5: "poor appetite or overeating",
    6: "feeling bad about themselves or like a failure",
    7: "trouble concentrating",
    8: "slowed or restless movement and speech",
    9: "thoughts of death or of hurting themselves",  # PHQ-9 only (the CMDC layout)
}
FEATURE_EVIDENCE = {
    4: ("voice", "the low-energy pattern"),
    8: ("voice", "the psychomotor (slowed or restless speech) pattern"),
    5: ("face and body", "the appetite-related pattern"),
    7: ("face and body", "the distracted, unfocused pattern"),
}
STRENGTH = ("clearly below average", "slightly below average", "slightly above average", "clearly above average")

# Seed tags: every random stream is derived from (tag, seed[, participant]) so that one
# participant's content does not depend on how many others are generated.
_TAG_SPLITS, _TAG_LABELS, _TAG_PHRASES, _TAG_TRANSCRIPT, _TAG_AUDIO, _TAG_VIDEO = 1, 2, 3, 4, 5, 6


@dataclass
class Participant:
    """Everything decided about one participant before any file is written."""

    pid: int
    split: str
    gender: str
    age: int
    severity: float  # latent severity (standard normal)
    scores: tuple[int, ...]  # PHQ-8 items 1..8
    ptsd_severity: float
    ptsd_label: int
    phrase_levels: dict[int, int] = field(default_factory=dict)  # text item -> level of the phrase used
    phrases: dict[int, str] = field(default_factory=dict)  # text item -> the answer planted
    prompts: dict[int, str] = field(default_factory=dict)  # text item -> the interviewer fragment

    @property
    def total(self) -> int:
        return int(sum(self.scores))

    def score(self, item: int) -> int:
        return self.scores[item - 1]


# --------------------------------------------------------------------------------------------
# Planning: ids, splits, labels, planted phrases (no I/O)
# --------------------------------------------------------------------------------------------


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def split_sizes(participants: int) -> dict[str, int]:
    """~60/20/20 with at least one participant per split from 3 participants on; 1 participant is a
    train-only corpus and 2 are train + test (enough for a full-length timing run)."""
    if isinstance(participants, bool) or int(participants) != participants or participants < 1:
        raise ValueError(f"participants must be a positive integer, got {participants!r}")
    if participants < 3:
        return {"train": 1, "dev": 0, "test": participants - 1}
    test = max(1, round(0.2 * participants))
    dev = max(1, round(0.2 * participants))
    return {"train": participants - dev - test, "dev": dev, "test": test}


def _draw_ids(rng: np.random.Generator, count: int, ranges: Sequence[range], overflow_start: int) -> list[int]:
    """``count`` ids from the first range that holds them (E-DAIC-like gaps), else all of them plus
    consecutive ids from ``overflow_start``."""
    for pool in ranges:
        if count <= len(pool):
            return sorted(int(i) for i in rng.choice(np.asarray(pool), size=count, replace=False))
    everything = [i for pool in ranges for i in pool]
    everything = sorted(set(everything))
    return everything + list(range(overflow_start, overflow_start + count - len(everything)))


def assign_ids(participants: int, seed: int) -> dict[str, list[int]]:
    """E-DAIC-like ids: train/dev from the Wizard-of-Oz range 300-492 (then 300-599, then 1000+),
    test from the AI-agent range 600-718 (then 600-999, then after the train/dev overflow)."""
    sizes = split_sizes(participants)
    rng = _rng(_TAG_SPLITS, seed)
    n_td = sizes["train"] + sizes["dev"]
    td = _draw_ids(rng, n_td, (range(300, 493), range(300, 600)), overflow_start=1000)
    test_overflow = 1000 + max(0, n_td - 300)
    test = _draw_ids(rng, sizes["test"], (range(600, 719), range(600, 1000)), overflow_start=test_overflow)
    order = rng.permutation(len(td))
    train = sorted(td[i] for i in order[: sizes["train"]])
    dev = sorted(td[i] for i in order[sizes["train"]:])
    return {"train": train, "dev": dev, "test": test}


@cache
def _thresholds(item: int) -> tuple[float, float, float]:
    cumulative = np.cumsum(PHQ9_MARGINALS[item])[:3]
    return tuple(NormalDist().inv_cdf(float(p)) for p in cumulative)  # type: ignore[return-value]


def _adjacent(level: int, rng: np.random.Generator) -> int:
    if level == 0:
        return 1
    if level == 3:
        return 2
    return level + (1 if rng.random() < 0.5 else -1)


def plan_participant(
    pid: int, split: str, seed: int, item_correlation: float = DEFAULT_ITEM_CORRELATION,
    text_noise: float = DEFAULT_TEXT_NOISE,
    phrasings: int | None = None,
) -> Participant:
    """Labels and planted phrases of one participant: a Gaussian copula over a latent severity, so
    each item keeps its E-DAIC-like marginal whatever ``item_correlation`` is."""
    rng = _rng(_TAG_LABELS, seed, pid)
    severity = float(rng.standard_normal())
    own = rng.standard_normal(8)
    latent = np.sqrt(item_correlation) * severity + np.sqrt(1.0 - item_correlation) * own
    scores = tuple(int(np.searchsorted(_thresholds(item), latent[item - 1])) for item in range(1, 9))
    gender = "male" if rng.random() < 0.5 else "female"
    age = int(rng.integers(18, 71))
    ptsd = float(np.clip(round(33.0 + 12.0 * (0.7 * severity + 0.714 * rng.standard_normal())), 17, 85))
    participant = Participant(pid, split, gender, age, severity, scores, ptsd, int(ptsd >= PTSD_CUTOFF))
    phrase_rng = _rng(_TAG_PHRASES, seed, pid)
    for item in TEXT_ITEMS:
        level = participant.score(item)
        if phrase_rng.random() < text_noise:
            level = _adjacent(level, phrase_rng)
        options = PHRASES[item][level][:phrasings]  # fewer phrasings: an easier task for tiny budgets
        participant.phrase_levels[item] = level
        participant.phrases[item] = options[int(phrase_rng.integers(len(options)))]
        participant.prompts[item] = PROMPTS[item][int(phrase_rng.integers(len(PROMPTS[item])))]
    return participant


def plan_corpus(
    participants: int, seed: int, item_correlation: float = DEFAULT_ITEM_CORRELATION,
    text_noise: float = DEFAULT_TEXT_NOISE,
    phrasings: int | None = None,
) -> list[Participant]:
    """All participants, sorted by id (what ``make_synthetic_corpus`` writes, without writing)."""
    ids = assign_ids(participants, seed)
    planned = [
        plan_participant(pid, split, seed, item_correlation, text_noise, phrasings)
        for split, pids in ids.items()
        for pid in pids
    ]
    return sorted(planned, key=lambda p: p.pid)


# --------------------------------------------------------------------------------------------
# Transcripts
# --------------------------------------------------------------------------------------------


def _fill(template: str, rng: np.random.Generator) -> str:
    values = {}
    for slot, options in FILLER_SLOTS.items():
        if "{" + slot + "}" in template:
            values[slot] = options[int(rng.integers(len(options)))]
    return template.format(**values)


def transcript_rows(participant: Participant, seed: int, turns: int, seconds: float) -> list[tuple[str, str, str, str]]:
    """``(Start_Time, End_Time, Text, Confidence)`` rows: a greeting, the four planted answers (each
    usually preceded by an interviewer fragment, as ASR picks them up) and label-free filler, in a
    random order, timed like speech and laid out over the recording."""
    rng = _rng(_TAG_TRANSCRIPT, seed, participant.pid)
    lines: list[tuple[str, bool]] = [(GREETINGS[int(rng.integers(len(GREETINGS)))], False)]
    blocks: list[list[tuple[str, bool]]] = []
    for item in TEXT_ITEMS:
        block = [(participant.prompts[item], True)] if rng.random() < 0.7 else []
        blocks.append(block + [(participant.phrases[item], False)])
    templates: list[int] = []
    for _ in range(max(0, turns - 1 - len(TEXT_ITEMS))):
        if not templates:  # every template once before any repeats
            templates = [int(i) for i in rng.permutation(len(FILLER_TEMPLATES))]
        template = FILLER_TEMPLATES[templates.pop()]
        block = [(FILLER_PROMPTS[int(rng.integers(len(FILLER_PROMPTS)))], True)] if rng.random() < 0.3 else []
        blocks.append(block + [(_fill(template, rng), False)])
    for index in rng.permutation(len(blocks)):
        lines.extend(blocks[int(index)])
    texts = []
    for text, interviewer in lines:
        if not interviewer and "," not in text[:12] and rng.random() < 0.25:
            text = HEDGES[int(rng.integers(len(HEDGES)))] + text
        texts.append((text, interviewer))

    # Natural timing (~2.6 words/s, 1-4 s of interviewer speech between lines), then fitted into the
    # recording: compressed when the speech is longer than it, gaps stretched when shorter.
    durations = np.array([len(t.split()) / 2.6 + rng.uniform(0.2, 0.6) for t, _ in texts])
    gaps = rng.uniform(1.0, 4.0, size=len(texts))
    gaps[0] = rng.uniform(2.0, 8.0)
    span = 0.95 * seconds
    natural = float(durations.sum() + gaps.sum())
    if natural > span:
        durations, gaps = durations * span / natural, gaps * span / natural
    else:
        gaps = gaps + rng.dirichlet(np.ones(len(gaps))) * (span - natural)
    rows = []
    t = 0.0
    for (text, interviewer), duration, gap in zip(texts, durations, gaps, strict=True):
        start = t + gap
        end = start + duration
        confidence = rng.uniform(0.45, 0.85) if interviewer else rng.uniform(0.72, 0.99)
        rows.append((f"{start:.3f}", f"{end:.3f}", text, f"{confidence:.9f}"))
        t = end
    return rows


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@cache
def corpus_definition(spec_name: str, layout: SignalLayout = STANDARD) -> dict[str, Any]:
    """The fixed part of a modality (from ``SIGNAL_SEED`` only): per-dimension background mean and
    noise scale, and one unit direction per planted item (orthogonal to each other). Another
    ``layout`` keeps the background and draws other directions (dense, or ``sparse_dims`` signed
    axis-aligned dimensions per item, disjoint between items)."""
    spec = {s.name: s for s in (*FEATURES, OPENFACE)}[spec_name]
    rng = _rng(SIGNAL_SEED, spec.dim)
    mean = (spec.background_mean + spec.background_mean_sd * rng.standard_normal(spec.dim)).astype(np.float32)
    scale = (spec.frame_sd * np.exp(0.25 * rng.standard_normal(spec.dim))).astype(np.float32)
    if layout.direction_seed:
        rng = _rng(SIGNAL_SEED, spec.dim, layout.direction_seed)
    if layout.sparse_dims:
        k = layout.sparse_dims
        chosen = rng.choice(spec.dim, size=k * len(spec.items), replace=False).reshape(len(spec.items), k)
        sparse = {}
        for item, dims in zip(spec.items, chosen, strict=True):
            vector = np.zeros(spec.dim, dtype=np.float32)
            vector[np.sort(dims)] = rng.choice((-1.0, 1.0), size=k) / np.sqrt(k)
            sparse[item] = vector
        return {"mean": mean, "scale": scale, "directions": sparse}
    directions: dict[int, np.ndarray] = {}
    for item, raw in zip(spec.items, rng.standard_normal((len(spec.items), spec.dim)), strict=True):
        for previous in directions.values():  # Gram-Schmidt: orthonormal within the modality
            raw = raw - float(np.dot(raw, previous)) * previous
        directions[item] = raw / np.linalg.norm(raw)
    directions = {item: v.astype(np.float32) for item, v in directions.items()}
    return {"mean": mean, "scale": scale, "directions": directions}


def signal_directions(layout: str = "standard") -> dict[int, np.ndarray]:
    """Item -> the unit direction planted for it in ``layout`` (audio items 768-dim, video items 2048-dim)."""
    chosen = signal_layout(layout)
    return {item: v.copy() for spec in FEATURES for item, v in corpus_definition(spec.name, chosen)["directions"].items()}


def _segment_mask(rng: np.random.Generator, frames: int, rate: int, fraction: float) -> np.ndarray:
    """Contiguous active segments covering about ``fraction`` of the frames (mean segment 1 s, or
    an eighth of a short recording)."""
    mean_on = max(1.0, min(float(rate), frames / 8.0))
    mean_off = mean_on * (1.0 - fraction) / fraction
    mask = np.zeros(frames, dtype=bool)
    t, on = 0, bool(rng.random() < fraction)
    while t < frames:
        length = max(1, int(rng.exponential(mean_on if on else mean_off) + 0.5))
        if on:
            mask[t:t + length] = True
        t += length
        on = not on
    return mask


def feature_chunks(
    spec: FeatureSpec, frames: int, participant: Participant | CmdcSubject, seed: int, key: Sequence[int] | None = None,
    layout: SignalLayout = STANDARD,
) -> Iterator[np.ndarray]:
    """Yields ``(<= CHUNK_FRAMES, dim)`` float32 chunks of one participant's feature sequence:
    corpus mean + participant offset + AR(1) frame noise + planted item signals (then ReLU for CNN
    features). Only ``spec.items`` influence the values. ``key`` names the random stream (default
    the participant id; a CMDC answer's is the subject code and the question)."""
    definition = corpus_definition(spec.name, layout)
    key = (participant.pid,) if key is None else key
    rng = _rng(_TAG_AUDIO if spec.name == "audio" else _TAG_VIDEO, seed, *key)
    offset = definition["mean"] + (spec.offset_sd * rng.standard_normal(spec.dim)).astype(np.float32)
    signals = []
    for item in spec.items:
        fraction = float(rng.uniform(*layout.fraction(spec)))
        vector = (layout.amplitude(spec) * (participant.score(item) - 1.5) * definition["directions"][item]).astype(np.float32)
        signals.append((_segment_mask(rng, frames, spec.rate, fraction), vector))
    innovation = np.float32(np.sqrt(1.0 - spec.ar**2))
    ar = np.float32(spec.ar)
    state = rng.standard_normal(spec.dim).astype(np.float32)  # stationary start
    for start in range(0, frames, CHUNK_FRAMES):
        stop = min(frames, start + CHUNK_FRAMES)
        noise = rng.standard_normal((stop - start, spec.dim), dtype=np.float32)
        noise *= innovation
        noise[0] += ar * state
        for i in range(1, stop - start):
            noise[i] += ar * noise[i - 1]
        state = noise[-1].copy()
        noise *= definition["scale"]
        noise += offset
        for mask, vector in signals:
            active = mask[start:stop]
            if active.any():
                noise[active] += vector
        if spec.relu:
            np.maximum(noise, 0.0, out=noise)
        yield noise


def write_npy_streaming(path: Path, frames: int, dim: int, chunks: Iterator[np.ndarray]) -> None:
    """``np.save``-identical float32 .npy (no pickle), appended chunk by chunk (bounded memory)."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (frames, dim)})
        written = 0
        for chunk in chunks:
            handle.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
            written += len(chunk)
    if written != frames:
        raise RuntimeError(f"{path}: wrote {written} frames, expected {frames}")


MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by make_synthetic_corpus.py (synthetic E-DAIC-WOZ layout)"


def _mat_prefix(name: str, rows: int, cols: int) -> tuple[bytes, int]:
    """Header and element tags of a version-5 MAT file holding one float32 matrix, exactly as
    ``scipy.io.savemat`` lays it out (uncompressed), except for a fixed header text (savemat's
    contains a creation time, which would make the files differ run to run)."""
    if len(MAT_HEADER_TEXT) > 116:
        raise AssertionError("MAT header text too long")
    data_bytes = rows * cols * 4
    padded = data_bytes + (-data_bytes) % 8
    name_bytes = name.encode("ascii")
    name_padded = name_bytes + b"\0" * ((-len(name_bytes)) % 8)
    body = (
        np.array([6, 8, 7, 0], "<u4").tobytes()  # array flags: mxSINGLE_CLASS
        + np.array([5, 8, rows, cols], "<u4").tobytes()  # dimensions (miINT32)
        + np.array([1, len(name_bytes)], "<u4").tobytes() + name_padded  # name (miINT8)
        + np.array([7, data_bytes], "<u4").tobytes()  # real part (miSINGLE)
    )
    total = len(body) + padded
    if total >= 2**32:
        raise ValueError(f"{rows}x{cols} float32 is too large for one MAT-5 element")
    header = MAT_HEADER_TEXT.ljust(116, b"\0") + b"\0" * 8 + b"\x00\x01IM"
    return header + np.array([14, total], "<u4").tobytes() + body, padded


def write_mat_streaming(path: Path, frames: int, dim: int, chunks: Iterator[np.ndarray], name: str = "feature") -> None:
    """A ``scipy.io.savemat``-compatible .mat with one ``(frames, dim)`` float32 variable. MATLAB
    stores columns contiguously, so each chunk of frames is written as ``dim`` column pieces at
    their final offsets: memory stays at one chunk however long the interview."""
    prefix, padded = _mat_prefix(name, frames, dim)
    with path.open("wb") as handle:
        handle.write(prefix)
        handle.truncate(len(prefix) + padded)  # the zero padding after the data included
        fd, written = handle.fileno(), 0
        for chunk in chunks:
            columns = np.ascontiguousarray(np.asarray(chunk, dtype="<f4").T)  # (dim, rows)
            for d in range(dim):
                os.pwrite(fd, columns[d].tobytes(), len(prefix) + 4 * (d * frames + written))
            written += len(chunk)
    if written != frames:
        raise RuntimeError(f"{path}: wrote {written} frames, expected {frames}")


def frame_counts(seconds: float) -> dict[str, int]:
    """Frames per modality for an interview of ``seconds`` (at least one)."""
    return {spec.name: max(1, int(round(spec.rate * seconds))) for spec in FEATURES}


# --------------------------------------------------------------------------------------------
# Labels, rationales, docs
# --------------------------------------------------------------------------------------------

SPLIT_COLUMNS = ["Participant_ID", "Gender", "PHQ_Binary", "PHQ_Score", "PCL-C (PTSD)", "PTSD Severity"]
DETAILED_PHQ8_COLUMNS = ["Participant_ID"] + [f"PHQ_8{item.name}" for item in PHQ8_ITEMS] + ["PHQ_8Total"]
DETAILED_LABELS_ITEMS = [
    "PHQ8_1_NoInterest", "PHQ8_2_Depressed", "PHQ8_3_Sleep", "PHQ8_4_Tired", "PHQ8_5_Appetite",
    "PHQ8_6_Failure", "PHQ8_7_Concentration", "PHQ8_8_Psychomotor",
]
DETAILED_LABELS_COLUMNS = (
    ["Participant"] + DETAILED_LABELS_ITEMS
    + ["Depression_severity", "Depression_label", "PTSD_severity", "PTSD_label", "gender", "age", "split"]
)
TRANSCRIPT_COLUMNS = ["Start_Time", "End_Time", "Text", "Confidence"]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_labels(labels_dir: Path, corpus: Sequence[Participant], test_item_labels: bool = True) -> None:
    """The three split files, ``Detailed_PHQ8_Labels.csv`` (train+dev) and, unless disabled,
    ``detailed_lables.csv`` (sic; all splits: the only place test item labels live)."""
    labels_dir.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = [
            [p.pid, p.gender, int(p.total >= CUTOFF), p.total, p.ptsd_label, f"{p.ptsd_severity:.1f}"]
            for p in corpus if p.split == split
        ]
        _write_csv(labels_dir / f"{split}_split.csv", SPLIT_COLUMNS, rows)
    rows = [[p.pid, *p.scores, p.total] for p in corpus if p.split != "test"]
    _write_csv(labels_dir / "Detailed_PHQ8_Labels.csv", DETAILED_PHQ8_COLUMNS, rows)
    if test_item_labels:
        rows = [
            [p.pid, *p.scores, p.total, int(p.total >= CUTOFF), f"{p.ptsd_severity:.1f}", p.ptsd_label,
             p.gender, p.age, p.split]
            for p in corpus
        ]
        _write_csv(labels_dir / "detailed_lables.csv", DETAILED_LABELS_COLUMNS, rows)


def rationale_text(
    participant: Participant | CmdcSubject,
    item: int,
    modalities: dict[int, str] = ITEM_MODALITY,
    visual: str = "ResNet",
) -> str:
    """A template rationale that cites the planted evidence and agrees with the label; it says it is
    a template so that nobody mistakes it for a teacher model's or a clinician's. ``modalities``:
    where each item is planted; ``visual``: the visual feature's name."""
    label = participant.score(item)
    if modalities[item] == "text":
        evidence = (
            f'When the interview turns to {TOPICS[item]}, the participant says "{participant.phrases[item]}".'
        )
    else:
        channel, pattern = FEATURE_EVIDENCE[item]
        modality = "audio (HuBERT)" if modalities[item] == "audio" else f"visual ({visual})"
        evidence = (
            f"The transcript does not touch on this; the evidence is in the participant's {channel}: "
            f"{pattern} in the {modality} features is {STRENGTH[label]}."
        )
    verdict = (
        f"This points to no {PROBLEMS[item]} over the last two weeks."
        if label == 0
        else f"This points to {PROBLEMS[item]} on {FREQUENCY[label]} of the last two weeks."
    )
    return f"(Synthetic template rationale.) {evidence} {verdict} The frequency that fits best is '{FREQUENCY[label]}'."


def rationale_records(
    corpus: Sequence[Participant | CmdcSubject], items: Sequence[PhqItem] = PHQ8_ITEMS, **text: Any
) -> list[Rationale]:
    """One validated record per (train/dev participant, item); ``text``: :func:`rationale_text`'s options."""
    records = []
    for p in corpus:
        if p.split == "test":
            continue
        for item in items:
            record = {
                "participant_id": str(p.pid), "item_index": item.index, "item_name": item.name,
                "label": p.score(item.index), "rationale": rationale_text(p, item.index, **text),
                "teacher": TEACHER, "prompt_version": VERSION,
            }
            records.append(Rationale.from_dict(record, where=f"synthetic {p.pid}/{item.index}"))
    return records


def write_rationale_file(path: Path, records: Sequence[Rationale]) -> None:
    """The lines ``RationaleWriter`` writes (``json.dumps(asdict(record))``), appended in one write
    with one fsync: the corpus is built in a private folder that is renamed into place, so a per-line
    fsync (~3 ms each, 2,000 lines for a few hundred participants) would buy nothing. The tests
    check that the bytes equal ``write_rationales``'s."""
    append_jsonl(path, [asdict(record) for record in records])


def _direction_text(spec: FeatureSpec, item: int, layout: SignalLayout) -> str:
    """How an item's planted direction was drawn (signal_map.json)."""
    row = spec.items.index(item)
    if layout.sparse_dims:
        return (f"{layout.sparse_dims} signed axis-aligned dimensions (+-1/sqrt({layout.sparse_dims})), row {row} of "
                f"default_rng([{SIGNAL_SEED}, {spec.dim}, {layout.direction_seed}]).choice({spec.dim}, "
                f"{layout.sparse_dims * len(spec.items)}, replace=False), listed in 'dimensions' "
                "(corpus_definition / signal_directions(layout))")  # fmt: skip
    rng = f"[{SIGNAL_SEED}, {spec.dim}]" + ("" if not layout.direction_seed else f" + [{layout.direction_seed}]")
    return (f"row {row} of standard_normal(({len(spec.items)}, {spec.dim})) drawn from default_rng({rng}) "
            + ("after the background mean and scale, " if not layout.direction_seed else "")
            + "Gram-Schmidt orthonormalised in item order (corpus_definition / signal_directions())")


def signal_map(corpus: Sequence[Participant], arguments: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable description of what was planted (no paths, no times: deterministic)."""
    layout = signal_layout(arguments.get("signal_layout", "standard"))
    items = {}
    for item in PHQ8_ITEMS:
        modality = ITEM_MODALITY[item.index]
        entry: dict[str, Any] = {"name": item.name, "modality": modality, "marginal": list(ITEM_MARGINALS[item.index])}
        if modality == "text":
            entry.update(
                phrases_per_level=[len(level[: arguments.get("phrasings")]) for level in PHRASES[item.index]],
                adjacent_level_noise=arguments["text_noise"],
            )
        else:
            spec = AUDIO if modality == "audio" else VIDEO
            entry.update(
                file_suffix=spec.file_suffix,
                direction=_direction_text(spec, item.index, layout),
                amplitude_per_score_step=layout.amplitude(spec), centred_at=1.5,
            )
            if layout.sparse_dims:
                direction = corpus_definition(spec.name, layout)["directions"][item.index]
                entry["dimensions"] = [int(d) for d in np.flatnonzero(direction)]
        items[str(item.index)] = entry
    features = {
        spec.name: {
            "file_suffix": spec.file_suffix, "dim": spec.dim, "frames_per_second": spec.rate, "items": list(spec.items),
            "amplitude": layout.amplitude(spec), "background_mean": spec.background_mean,
            "background_mean_sd": spec.background_mean_sd, "participant_offset_sd": spec.offset_sd,
            "frame_noise_sd": spec.frame_sd, "frame_noise_scale_lognormal_sd": 0.25, "ar1": spec.ar,
            "relu": spec.relu, "active_fraction": list(layout.fraction(spec)),
        }
        for spec in FEATURES
    }
    planted = {"name": layout.name, "description": layout.description, "amplitude_scale": layout.amplitude_scale,
               "sparse_dims": layout.sparse_dims, "direction_seed": layout.direction_seed}  # fmt: skip
    splits = {s: [p.pid for p in corpus if p.split == s] for s in ("train", "dev", "test")}
    totals = [p.total for p in corpus]
    return {
        "format": FORMAT, "version": VERSION, "synthetic": True, "seed": arguments["seed"],
        "signal_seed": SIGNAL_SEED, "signal_layout": planted, "arguments": arguments, "cutoff": CUTOFF, "items": items,
        "features": features, "frames": frame_counts(arguments["seconds"]), "splits": splits,
        "summary": {
            "participants": len(corpus), "depressed": int(sum(t >= CUTOFF for t in totals)),
            "mean_total": round(float(np.mean(totals)), 3), "max_total": int(max(totals)),
        },
    }


def synthetic_md(info: dict[str, Any]) -> str:
    """Human-readable counterpart of ``signal_map.json``."""
    args = info["arguments"]
    a, v = info["features"]["audio"], info["features"]["video"]
    command = (
        f"mllm-dr-synthetic-corpus --output_dir DIR --participants {args['participants']} "
        f"--seed {args['seed']} --seconds {args['seconds']:g} --turns {args['turns']}"
        + ("" if args["test_item_labels"] else " --no_test_item_labels")
        + (f" --item_correlation {args['item_correlation']:g}" if args["item_correlation"] != DEFAULT_ITEM_CORRELATION
           else "")
        + ("" if args["text_noise"] == DEFAULT_TEXT_NOISE else f" --text_noise {args['text_noise']:g}")
        + ("" if args.get("phrasings") is None else f" --phrasings {args['phrasings']}")
        + ("" if args.get("signal_layout", "standard") == "standard" else f" --signal_layout {args['signal_layout']}")
    )
    s = info["summary"]
    n_train, n_dev, n_test = (len(info["splits"][k]) for k in ("train", "dev", "test"))
    n_audio, n_video = info["frames"]["audio"], info["frames"]["video"]
    background = (
        f"N({a['background_mean']:g}, {a['background_mean_sd']:g}) audio, "
        f"N({v['background_mean']:g}, {v['background_mean_sd']:g}) visual"
    )
    test_labels = (
        "`labels/detailed_lables.csv` (sic; all splits, the only place with test item labels)"
        if args["test_item_labels"]
        else "no `labels/detailed_lables.csv` (--no_test_item_labels: test item labels exist nowhere)"
    )
    return f"""# Synthetic E-DAIC-WOZ-layout corpus (NOT clinical data)

Generated by `mllm-dr-synthetic-corpus` ({info['version']}). Every participant, transcript,
feature and label here is invented; the rationales are templates. Use it to exercise the code,
never to claim anything about depression.

Regenerate byte-identically with:

    {command}

- Participants: {s['participants']} (train {n_train}, dev {n_dev}, test {n_test}).
- Signal layout `{info.get('signal_layout', {}).get('name', 'standard')}`: {info.get('signal_layout', {}).get('description', LAYOUTS['standard'].description)}.
- PHQ-8 total >= {info['cutoff']}: {s['depressed']}; mean total {s['mean_total']}, max {s['max_total']}.
- Features per participant: {n_audio} HuBERT frames (768-dim, 50/s), {n_video} ResNet frames (2048-dim, 30/s).

## Where each PHQ-8 item is planted

| item | name | modality | signal |
|---|---|---|---|
| 1 | NoInterest | transcript | graded answer phrase |
| 2 | Depressed | transcript | graded answer phrase |
| 3 | Sleep | transcript | graded answer phrase |
| 4 | Tired | audio (`_HuBERT.npy`) | dir. #0, amplitude {a['amplitude']:g} x (score - 1.5) |
| 5 | Appetite | visual (`_CNN_ResNet.mat`) | dir. #0, amplitude {v['amplitude']:g} x (score - 1.5), pre-ReLU |
| 6 | Failure | transcript | graded answer phrase |
| 7 | Concentrating | visual (`_CNN_ResNet.mat`) | dir. #1, amplitude {v['amplitude']:g} x (score - 1.5), pre-ReLU |
| 8 | Moving | audio (`_HuBERT.npy`) | dir. #1, amplitude {a['amplitude']:g} x (score - 1.5) |

**Labels.** A latent severity g ~ N(0, 1) per participant; item k's latent is
sqrt(r) g + sqrt(1 - r) e_k (r = item_correlation = {args['item_correlation']:g}, e_k ~ N(0, 1)),
cut at thresholds that give each item an E-DAIC-like marginal (`signal_map.json` -> items ->
marginal). Totals spread 0-24 with roughly a quarter at or above the cut-off. PHQ_Binary = total >=
{info['cutoff']}. The PTSD columns (PCL-C 17-85, label = severity >= {PTSD_CUTOFF}) follow g loosely;
nothing is planted for them. Because items share g, each modality also carries *indirect*
information about the other modalities' items; with item_correlation 0 the items are independent and
each modality informs only its own items.

**Transcript items (1, 2, 3, 6).** Each transcript holds one answer per text item, a phrase drawn
from several phrasings of the item's score level (0: e.g. "i sleep fine, ...", 3: "i barely sleep at
all, nearly every night"); with probability {args['text_noise']:g} the phrase comes from an adjacent
level instead. Most answers are preceded by an interviewer fragment (ASR picks the interviewer up).
The other lines are a greeting and filler about work, family, places and pastimes, drawn without
looking at any label and never touching energy, appetite, concentration or movement. `--turns` is
the number of participant lines (at least 5: greeting + 4 planted answers). Times follow speech
(~2.6 words/s) and are fitted into the recording (`--seconds`). Some lines contain commas, so the
CSV quotes them.

**Feature items (4, 8 audio; 5, 7 visual).** Each frame is
corpus mean (per dimension: {background})
+ participant offset (N(0, {a['participant_offset_sd']:g}) per dimension)
+ AR(1) frame noise (coefficient {a['ar1']:g} audio, {v['ar1']:g} visual; sd ~{a['frame_noise_sd']:g}, times a fixed
  per-dimension log-normal scale)
+ for each planted item, amplitude x (score - 1.5) x the item's unit direction, on the frames of
random contiguous segments covering a per-participant fraction U{tuple(a['active_fraction'])} of the
interview. The visual features then pass through ReLU (non-negative, like pooled CNN features). The directions, the
corpus mean and the scales come from the fixed signal seed {info['signal_seed']} (the same for every
--seed: they define the corpus, like a real feature extractor); they are orthonormal within a
modality and can be recomputed with `make_synthetic_corpus.signal_directions()`. A ridge probe on
mean-pooled features recovers the planted items; nothing else in the features depends on a label.

**Rationales.** `rationales.jsonl` holds one record per (train/dev participant, item), teacher
`{TEACHER}`, prompt_version `{VERSION}`: a template that starts "(Synthetic template rationale.)",
cites the planted phrase (text items) or the planted feature pattern (audio/visual items) and ends
with the frequency matching the label. Test participants have none.

**Files.** `labels/{{train,dev,test}}_split.csv`, `labels/Detailed_PHQ8_Labels.csv` (train+dev),
{test_labels},
`data/<ID>_P/<ID>_Transcript.csv`, `data/<ID>_P/features/<ID>_HuBERT.npy` (float32, frames x 768),
`data/<ID>_P/features/<ID>_CNN_ResNet.mat` (variable `feature`, float32, frames x 2048; the MAT
header text is fixed so that files are byte-identical run to run). No audio/video files.
"""


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise FileExistsError(f"{output} exists and is not empty (pass --force / force=True to replace it)")
        if not (output / "signal_map.json").is_file():
            raise FileExistsError(
                f"{output} is not empty and holds no signal_map.json, so it is not a synthetic corpus written by "
                "this script; refusing to replace it even with --force (remove it yourself if that is intended)"
            )


def make_synthetic_corpus(
    output: str | Path,
    participants: int,
    seed: int,
    seconds: float = 4.0,
    turns: int = 12,
    test_item_labels: bool = True,
    force: bool = False,
    item_correlation: float = DEFAULT_ITEM_CORRELATION,
    text_noise: float = DEFAULT_TEXT_NOISE,
    phrasings: int | None = None,
    signal_layout_name: str = "standard",
) -> dict[str, Any]:
    """Writes the corpus to ``output`` atomically (built in a hidden sibling folder, renamed into
    place) and returns a summary: output, splits (ids), frames, totals, files, bytes, elapsed_s.
    ``signal_layout_name``: how the audio/visual items are planted (:data:`LAYOUTS`)."""
    began = time.perf_counter()
    output = Path(output).absolute()
    layout = signal_layout(signal_layout_name)
    _check_arguments(seed, seconds, item_correlation, text_noise)
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    if phrasings is not None and not 1 <= phrasings <= 4:
        raise ValueError(f"phrasings must be 1-4 (phrasings per score level), got {phrasings}")
    split_sizes(participants)
    _check_output(output, force)

    seed, seconds = int(seed), float(seconds)
    arguments = {
        "participants": int(participants), "seed": seed, "seconds": seconds, "turns": int(turns),
        "test_item_labels": bool(test_item_labels), "item_correlation": float(item_correlation),
        "text_noise": float(text_noise), "phrasings": phrasings, "signal_layout": layout.name,
    }
    corpus = plan_corpus(participants, seed, item_correlation, text_noise, phrasings)
    frames = frame_counts(seconds)

    def write(staging: Path) -> dict[str, Any]:
        write_labels(staging / "labels", corpus, test_item_labels)
        for p in corpus:
            folder = staging / "data" / f"{p.pid}_P"
            (folder / "features").mkdir(parents=True)
            _write_csv(folder / f"{p.pid}_Transcript.csv", TRANSCRIPT_COLUMNS, transcript_rows(p, seed, turns, seconds))
            write_npy_streaming(
                folder / "features" / f"{p.pid}{AUDIO.file_suffix}", frames["audio"], AUDIO.dim,
                feature_chunks(AUDIO, frames["audio"], p, seed, layout=layout),
            )
            write_mat_streaming(
                folder / "features" / f"{p.pid}{VIDEO.file_suffix}", frames["video"], VIDEO.dim,
                feature_chunks(VIDEO, frames["video"], p, seed, layout=layout),
            )
        return _write_docs(staging, corpus, signal_map(corpus, arguments), synthetic_md, PHQ8_ITEMS)

    info = _write_atomically(output, force, write)
    return {**_summary(output, arguments, info, corpus, began), "frames": frames}


def _check_arguments(seed: int, seconds: float, item_correlation: float, text_noise: float) -> None:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not 0.0 <= item_correlation <= 1.0:
        raise ValueError(f"item_correlation must be in [0, 1], got {item_correlation}")
    if not 0.0 <= text_noise <= 1.0:
        raise ValueError(f"text_noise must be in [0, 1], got {text_noise}")


def _write_docs(
    staging: Path, corpus: Sequence[Participant | CmdcSubject], info: dict[str, Any], markdown: Callable[[dict], str],
    items: Sequence[PhqItem], **text: Any,
) -> dict[str, Any]:
    """``rationales.jsonl``, ``signal_map.json`` (``info``) and ``SYNTHETIC.md`` (``markdown(info)``)."""
    write_rationale_file(staging / "rationales.jsonl", rationale_records(corpus, items, **text))
    (staging / "signal_map.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (staging / "SYNTHETIC.md").write_text(markdown(info), encoding="utf-8")
    return info


def _write_atomically(output: Path, force: bool, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Runs ``write(staging)`` in a hidden sibling folder of ``output``, then renames it into place
    (replacing an earlier synthetic corpus only with ``force``); returns what ``write`` returned."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        info = write(staging)
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the corpus from other users
        _check_output(output, force)  # again: someone may have written there meanwhile
        if output.exists() and any(output.iterdir()):
            trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, trash / "old")
            os.replace(staging, output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, output)  # an empty directory is replaced atomically
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _summary(
    output: Path,
    arguments: dict[str, Any],
    info: dict[str, Any],
    corpus: Sequence[Participant | CmdcSubject],
    began: float,
) -> dict[str, Any]:
    """What both generators return: output, arguments, splits (ids), totals, files, bytes, elapsed_s."""
    files = [f for f in output.rglob("*") if f.is_file()]
    totals = [p.total for p in corpus]
    return {
        "output": str(output),
        "arguments": arguments,
        "splits": info["splits"],
        "participants": len(corpus),
        "depressed_share": float(np.mean([t >= CUTOFF for t in totals])),
        "totals": {str(p.pid): p.total for p in corpus},
        "rationales": sum(p.split != "test" for p in corpus) * len(corpus[0].scores),
        "files": len(files),
        "bytes": int(sum(f.stat().st_size for f in files)),
        "elapsed_s": round(time.perf_counter() - began, 3),
    }


# --------------------------------------------------------------------------------------------
# The CMDC layout: HC/HCxx and MDD/MDDxx, one answer per question, PHQ-9 (mllm_dr.data.cmdc reads it)
# --------------------------------------------------------------------------------------------

CMDC_FORMAT = "mllm-dr-synthetic-cmdc"
CMDC_QUESTIONS = 12
DEFAULT_VIDEO_SHARE = 45 / 78  # about 45 of CMDC's 78 subjects have video
OPENFACE = FeatureSpec(
    name="openface", file_suffix=".csv", dim=cmdc.OPENFACE_DIM, rate=30, items=(5, 7), amplitude=4.0,
    background_mean_sd=0.5, background_mean=0.0, offset_sd=0.3, frame_sd=1.0, ar=0.8, relu=False,
    active_fraction=(0.35, 0.65),
)
CMDC_ITEM_MODALITY = {**ITEM_MODALITY, 9: "text"}
# Text items the shipped question map leaves unmapped are planted in these questions (their items
# are scored from the whole interview); the mapped ones go where cmdc_question_map.json says.
CMDC_UNMAPPED_QUESTIONS = {3: (2,), 6: (11,)}
_TAG_CMDC = 7

CMDC_PHRASES: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("我对自己的爱好还是很有兴趣，每周都盼着去做。", "平时喜欢的事情我都照样在做，挺开心的。"),
        ("偶尔有几天不太想做事，大部分时候还是有兴趣的。", "有时候提不起劲，过一两天就好了。"),
        ("一多半的日子里，以前喜欢的事情都不想做了。", "最近大部分时间对什么都没兴趣。"),
        ("几乎每天都对什么都提不起兴趣，爱好全放下了。", "什么事情都不能让我高兴，天天如此。")),
    2: (("我心情挺好的，很少觉得低落。", "情绪一直比较稳定，也比较乐观。"),
        ("偶尔会有点低落，但很快就过去了。", "有几天心情不太好，不算严重。"),
        ("超过一半的时间我都觉得情绪低落、没有希望。", "大部分日子心里都很沉重。"),
        ("几乎每天都觉得很绝望，情绪一直很低。", "每天都很难过，看不到希望。")),
    3: (("我睡得很好，一躺下就能睡着。", "睡眠没什么问题，一觉到天亮。"),
        ("有几个晚上入睡有点困难，大多数时候还好。", "偶尔半夜会醒，不影响什么。"),
        ("一多半的晚上都睡不好，半夜醒了就睡不着。", "大部分晚上要躺好几个小时才能睡着。"),
        ("几乎每天晚上都失眠，只能睡两三个小时。", "每天夜里都睡不着，已经好几周了。")),
    6: (("我对自己挺满意的，也为自己做的事感到骄傲。", "我觉得自己还不错，没什么后悔的。"),
        ("偶尔会对自己要求太严，但很快就过去了。", "有时候觉得自己可以做得更好，这很正常。"),
        ("大部分时间我都觉得自己让家人失望了。", "一多半的日子里我都觉得自己很差劲。"),
        ("几乎每天都觉得自己是个失败者，对不起所有人。", "我每天都觉得自己一无是处。")),
    9: (("我从来没有伤害自己的想法。", "没有过那种念头，我很珍惜生活。"),
        ("有几天闪过不想活的念头，很快就打消了。", "偶尔会想到死，但没有当真。"),
        ("一多半的日子里都会想到死或者伤害自己。", "最近经常有不想活下去的想法。"),
        ("几乎每天都在想死或者伤害自己。", "每天都会冒出结束生命的念头。")),
}
CMDC_FILLER = (
    "我是在南方一个小城市长大的。", "我现在在一家公司做行政工作。", "周末一般在家做做家务。",
    "我和父母住在一起。", "上学的时候我学的是会计。", "我平时坐地铁上班，大概要四十分钟。",
    "家里养了一只猫。", "我有一个哥哥，在外地工作。", "前段时间和朋友去爬了一次山。",
    "我每天早上七点左右起床。", "最近单位的事情比较多。", "我喜欢吃家乡菜。",
)


@dataclass
class CmdcSubject:
    """One synthetic CMDC subject: id (``HC01``), group, PHQ-9 items, whether it has video, its answers."""

    pid: str
    code: int  # the subject's number in the random streams (HC n -> 1000 + n, MDD n -> 2000 + n)
    split: str
    gender: str
    scores: tuple[int, ...]  # PHQ-9 items 1..9
    has_video: bool
    seconds: dict[int, float] = field(default_factory=dict)  # question -> answer length
    answers: dict[int, str] = field(default_factory=dict)  # question -> transcript
    phrases: dict[int, str] = field(default_factory=dict)  # text item -> its first planted answer

    @property
    def total(self) -> int:
        return int(sum(self.scores))

    def score(self, item: int) -> int:
        return self.scores[item - 1]


def cmdc_subject_ids(participants: int) -> dict[str, list[str]]:
    """Train and test ids of the authors' protocol (train HC01-40 + MDD01-20, test HC41-52 +
    MDD21-26): two thirds HC, and about 3/13 of each group (at least one from 2 on) in test."""
    if isinstance(participants, bool) or int(participants) != participants or not 1 <= participants <= 78:
        raise ValueError(f"participants must be 1-78 (CMDC has 52 HC + 26 MDD subjects), got {participants!r}")
    sizes = {"HC": round(participants * 2 / 3)}
    sizes["MDD"] = participants - sizes["HC"]
    ids: dict[str, list[str]] = {"train": [], "test": []}
    for group, size in sizes.items():
        test = max(1, round(size * 3 / 13)) if size >= 2 else 0
        first_test = cmdc.AUTHORS_TRAIN[group].stop
        ids["train"] += [f"{group}{n:02d}" for n in range(1, size - test + 1)]
        ids["test"] += [f"{group}{n:02d}" for n in range(first_test, first_test + test)]
    return ids


def plan_cmdc(
    participants: int, seed: int, seconds: float, item_correlation: float = DEFAULT_ITEM_CORRELATION,
    text_noise: float = DEFAULT_TEXT_NOISE, video_share: float = DEFAULT_VIDEO_SHARE,
) -> list[CmdcSubject]:
    """All subjects, HC then MDD: an MDD subject's latent severity is higher (N(1.2, 0.5) against
    N(-1, 0.5)); items and answers as in the E-DAIC plan; video for an evenly spread share."""
    mapping = cmdc.load_question_map()
    planted = {item: tuple(mapping.get(item) or CMDC_UNMAPPED_QUESTIONS[item]) for item in CMDC_PHRASES}
    split_of = {pid: split for split, pids in cmdc_subject_ids(participants).items() for pid in pids}
    subjects = []
    for k, pid in enumerate(sorted(split_of, key=lambda s: (not s.startswith("HC"), s)), start=1):
        mdd = pid.startswith("MDD")
        code = (2000 if mdd else 1000) + int(pid.lstrip("HCMD"))
        rng = _rng(_TAG_CMDC, seed, code)
        severity = (1.2 if mdd else -1.0) + 0.5 * float(rng.standard_normal())
        latent = np.sqrt(item_correlation) * severity + np.sqrt(1.0 - item_correlation) * rng.standard_normal(9)
        scores = tuple(int(np.searchsorted(_thresholds(item), latent[item - 1])) for item in range(1, 10))
        has_video = math.ceil(k * video_share) > math.ceil((k - 1) * video_share)  # the first subject always
        subject = CmdcSubject(pid, code, split_of[pid], "F" if rng.random() < 0.5 else "M", scores, has_video)
        for q in range(1, CMDC_QUESTIONS + 1):
            subject.seconds[q] = float(seconds * rng.uniform(0.5, 1.5))
            subject.answers[q] = CMDC_FILLER[int(rng.integers(len(CMDC_FILLER)))]
        for item, questions in planted.items():
            for q in questions:
                level = subject.score(item)
                if rng.random() < text_noise:
                    level = _adjacent(level, rng)
                phrase = CMDC_PHRASES[item][level][int(rng.integers(len(CMDC_PHRASES[item][level])))]
                subject.phrases.setdefault(item, phrase)
                subject.answers[q] = f"{subject.answers[q]}{phrase}"
        subjects.append(subject)
    return subjects


def openface_columns() -> list[str]:
    """OpenFace 2.x's 709 feature columns after frame, face_id, timestamp, confidence, success."""
    eye = [f"eye_lmk_{axis}_{i}" for axis in ("x", "y", "X", "Y", "Z") for i in range(56)]
    face = [f"{axis}_{i}" for axis in ("x", "y", "X", "Y", "Z") for i in range(68)]
    pdm = ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    units = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
    aus = [f"AU{u:02d}_r" for u in units] + [f"AU{u:02d}_c" for u in (*units[:16], 28, 45)]
    gaze = [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    pose = [f"pose_{p}" for p in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
    columns = gaze + eye + pose + face + pdm + aus
    assert len(columns) == cmdc.OPENFACE_DIM
    return columns


def write_openface_csv(path: Path, chunks: Iterator[np.ndarray], rate: int) -> None:
    """An OpenFace 2.x CSV (``frame, face_id, timestamp, confidence, success`` then the 709 features,
    ", "-separated as OpenFace writes them)."""
    values = np.concatenate(list(chunks))
    frames = np.arange(len(values))
    ones = np.ones(len(values))
    meta = np.column_stack([frames + 1, 0 * ones, frames / rate, 0.98 * ones, ones])
    header = ", ".join([*OPENFACE_META_COLUMNS, *openface_columns()])
    fmt = ["%d", "%d", "%.3f", "%.2f", "%d"] + ["%.4f"] * values.shape[1]
    np.savetxt(path, np.column_stack([meta, values]), fmt=fmt, delimiter=", ", header=header, comments="")


def cmdc_signal_map(subjects: Sequence[CmdcSubject], arguments: dict[str, Any]) -> dict[str, Any]:
    """What was planted where (deterministic: no paths, no times)."""
    mapping = cmdc.load_question_map()
    items = {}
    for item in PHQ9_ITEMS:
        modality = CMDC_ITEM_MODALITY[item.index]
        entry: dict[str, Any] = {"name": item.name, "modality": modality, "mapped": mapping.get(item.index, [])}
        if modality == "text":
            entry["planted_in_questions"] = list(mapping.get(item.index) or CMDC_UNMAPPED_QUESTIONS[item.index])
        else:
            spec = AUDIO if modality == "audio" else OPENFACE
            entry.update(file=f"Q<n>{spec.file_suffix}", amplitude_per_score_step=spec.amplitude, centred_at=1.5)
        items[str(item.index)] = entry
    splits = {s: [p.pid for p in subjects if p.split == s] for s in ("train", "dev", "test")}
    return {
        "format": CMDC_FORMAT, "version": VERSION, "synthetic": True, "seed": arguments["seed"],
        "signal_seed": SIGNAL_SEED, "arguments": arguments, "cutoff": CUTOFF, "items": items,
        "features": {
            "audio": {"file": f"Q<n>{AUDIO.file_suffix}", "dim": AUDIO.dim, "frames_per_second": AUDIO.rate},
            "video": {"file": "Q<n>.csv (OpenFace 2.x)", "dim": OPENFACE.dim, "frames_per_second": OPENFACE.rate},
        },
        "splits": splits, "without_video": [p.pid for p in subjects if not p.has_video],
        "summary": {"participants": len(subjects), "depressed": int(sum(p.total >= CUTOFF for p in subjects)),
                    "max_total": int(max(p.total for p in subjects))},
    }  # fmt: skip


def cmdc_synthetic_md(info: dict[str, Any]) -> str:
    args, s = info["arguments"], info["summary"]
    defaults = {"item_correlation": DEFAULT_ITEM_CORRELATION, "text_noise": DEFAULT_TEXT_NOISE,
                "video_share": DEFAULT_VIDEO_SHARE}  # fmt: skip
    command = (
        f"mllm-dr-synthetic-corpus --layout cmdc --output_dir DIR --participants {args['participants']} "
        f"--seed {args['seed']} --seconds {args['seconds']:g}"
        + "".join(f" --{name} {args[name]:g}" for name, default in defaults.items() if args[name] != default)
    )
    rows = "\n".join(
        f"| {i} | {e['name']} | {e['modality']} | {', '.join(f'Q{q}' for q in e.get('planted_in_questions', []))} |"
        if e["modality"] == "text" else f"| {i} | {e['name']} | {e['modality']} | every Q<n> |"
        for i, e in info["items"].items()
    )
    return f"""# Synthetic CMDC-layout corpus (NOT clinical data)

Generated by `mllm-dr-synthetic-corpus --layout cmdc` ({info['version']}). Every subject, answer,
feature and label here is invented; the rationales are templates. Regenerate byte-identically with:

    {command}

- Subjects: {s['participants']} (train {len(info['splits']['train'])}, test {len(info['splits']['test'])}; no dev split, as in the authors' protocol).
  PHQ-9 total >= {info['cutoff']}: {s['depressed']}, max {s['max_total']}.
- Without video (a missing modality): {', '.join(info['without_video']) or 'none'}.
- Files: `labels.csv` (subject_id, PHQ9_1..PHQ9_9, PHQ9_Total, gender), `HC/HCxx/` and `MDD/MDDxx/` with
  `Q1.txt`..`Q{CMDC_QUESTIONS}.txt` (UTF-8 Chinese), `Q<n>_HuBERT.npy` (float32, frames x 768, 50/s) and,
  for subjects with video, `Q<n>.csv` (OpenFace 2.x columns, 709 features, 30/s). No wav files.

MDD subjects have a higher latent severity than HC subjects; items share it (item_correlation
{args['item_correlation']:g}). Each answer is label-free filler, plus the graded phrase of a text
item in the questions below; feature items are planted in every answer's features as in the E-DAIC
generator (`signal_map.json`). Nothing here is clinical data.

| item | name | modality | planted in |
|---|---|---|---|
{rows}
"""


def make_synthetic_cmdc(
    output: str | Path,
    participants: int,
    seed: int,
    seconds: float = 2.0,
    force: bool = False,
    item_correlation: float = DEFAULT_ITEM_CORRELATION,
    text_noise: float = DEFAULT_TEXT_NOISE,
    video_share: float = DEFAULT_VIDEO_SHARE,
) -> dict[str, Any]:
    """Writes a CMDC-layout corpus (what :func:`mllm_dr.data.load_cmdc` reads) atomically, like
    :func:`make_synthetic_corpus`: ``participants`` subjects (1-78) of the authors' protocol, answers
    of about ``seconds`` each, video for a ``video_share`` of the subjects, template rationales for the
    train subjects. The same arguments give byte-identical files."""
    began = time.perf_counter()
    output = Path(output).absolute()
    _check_arguments(seed, seconds, item_correlation, text_noise)
    if not 0.0 < video_share <= 1.0:
        raise ValueError(f"video_share must be in (0, 1], got {video_share}")
    _check_output(output, force)
    arguments = {
        "participants": int(participants), "seed": int(seed), "seconds": float(seconds),
        "item_correlation": float(item_correlation), "text_noise": float(text_noise), "video_share": float(video_share),
    }  # fmt: skip
    subjects = plan_cmdc(participants, int(seed), float(seconds), item_correlation, text_noise, video_share)

    def write(staging: Path) -> dict[str, Any]:
        labels = [[p.pid, *p.scores, p.total, p.gender] for p in subjects]
        header = [cmdc.ID_COLUMN, *cmdc.ITEM_COLUMNS, cmdc.TOTAL_COLUMN, cmdc.GENDER_COLUMN]
        _write_csv(staging / cmdc.LABELS_CSV, header, labels)
        for p in subjects:
            folder = staging / ("MDD" if p.pid.startswith("MDD") else "HC") / p.pid
            folder.mkdir(parents=True)
            for q, answer in p.answers.items():
                (folder / cmdc.TRANSCRIPT_PATTERN.format(q=q)).write_text(answer, encoding="utf-8")
                frames = max(1, round(AUDIO.rate * p.seconds[q]))
                chunks = feature_chunks(AUDIO, frames, p, seed, key=(p.code, q))
                write_npy_streaming(folder / cmdc.AUDIO_PATTERN.format(q=q), frames, AUDIO.dim, chunks)
                if p.has_video:
                    frames = max(1, round(OPENFACE.rate * p.seconds[q]))
                    chunks = feature_chunks(OPENFACE, frames, p, seed, key=(p.code, q))
                    write_openface_csv(folder / cmdc.VIDEO_PATTERN.format(q=q), chunks, OPENFACE.rate)
        info = cmdc_signal_map(subjects, arguments)
        text = {"modalities": CMDC_ITEM_MODALITY, "visual": "OpenFace"}
        return _write_docs(staging, subjects, info, cmdc_synthetic_md, PHQ9_ITEMS, **text)

    info = _write_atomically(output, force, write)
    return {**_summary(output, arguments, info, subjects, began), "without_video": info["without_video"]}
