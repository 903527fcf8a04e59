"""MLlm-DR processor: the single owner of the prompt, the frame policy and the output format.

Self-contained (torch + transformers, numpy through them): this file travels inside every checkpoint.

It turns (transcript, PHQ item, audio features, video features[, rationale, score]) into model
inputs: it renders the prompt (the part shared by all items of a participant first, the
item-specific instruction last, so the prefix can be reused), expands each placeholder to the
LQ-former's query count, truncates only the transcript, shortens each feature sequence with its
modality's frame policy (:meth:`MllmDrProcessor.reduce_frames`, the one place the policy is
applied), pads the feature sequences with boolean masks, and builds labels that train only the
answer (EOS included). :func:`parse_output` is the one strict reader of what the model writes.

The work is split in public steps so that a data pipeline can run the expensive ones once:
:meth:`~MllmDrProcessor.tokenize` (one sample's token ids, e.g. in ``datasets.map``),
:meth:`~MllmDrProcessor.reduce_frames` (e.g. when a feature cache is built) and
:meth:`~MllmDrProcessor.collate` (padding a batch of tokenized samples and their features);
``__call__`` runs all three.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

try:
    from .configuration_mllm_dr import (
        AUDIO_PLACEHOLDER,
        FRAME_POLICIES,
        VIDEO_PLACEHOLDER,
        MllmDrConfig,
        frame_policy_settings,
    )
except ImportError:  # imported as a top-level module rather than as remote code
    from configuration_mllm_dr import (
        AUDIO_PLACEHOLDER,
        FRAME_POLICIES,
        VIDEO_PLACEHOLDER,
        MllmDrConfig,
        frame_policy_settings,
    )

MODALITIES = ("audio", "video")


@dataclass(frozen=True)
class PhqItem:
    """One PHQ item: its 1-based number, the E-DAIC short name, the aspect the prompt asks about
    (paper Table 1's phrasing, third person) and the questionnaire's own wording (for reports)."""

    index: int
    name: str
    aspect: str
    wording: str = ""


PHQ9_ITEMS: tuple[PhqItem, ...] = (
    PhqItem(1, "NoInterest", "interest or pleasure in doing things", "Little interest or pleasure in doing things"),
    PhqItem(2, "Depressed", "feeling down, depressed, or hopeless", "Feeling down, depressed, or hopeless"),
    PhqItem(
        3, "Sleep", "trouble falling or staying asleep, or sleeping too much",
        "Trouble falling or staying asleep, or sleeping too much",
    ),  # fmt: skip
    PhqItem(4, "Tired", "feeling tired or having little energy", "Feeling tired or having little energy"),
    PhqItem(5, "Appetite", "poor appetite or overeating", "Poor appetite or overeating"),
    PhqItem(
        6, "Failure", "feeling bad about themselves, or that they are a failure or have let their family down",
        "Feeling bad about yourself, or that you are a failure or have let yourself or your family down",
    ),  # fmt: skip
    PhqItem(
        7, "Concentrating", "trouble concentrating on things, such as reading or watching television",
        "Trouble concentrating on things, such as reading the newspaper or watching television",
    ),  # fmt: skip
    PhqItem(
        8,
        "Moving",
        "moving or speaking so slowly that other people could have noticed, or being fidgety or restless",
        "Moving or speaking so slowly that other people could have noticed, or the opposite: being so fidgety or "
        "restless that you have been moving around a lot more than usual",
    ),
    PhqItem(
        9, "SelfHarm", "thoughts that they would be better off dead, or of hurting themselves",
        "Thoughts that you would be better off dead, or of hurting yourself in some way",
    ),  # fmt: skip
)
PHQ8_ITEMS: tuple[PhqItem, ...] = PHQ9_ITEMS[:8]
QUESTIONNAIRES: dict[str, tuple[PhqItem, ...]] = {"phq8": PHQ8_ITEMS, "phq9": PHQ9_ITEMS}


class PromptInputs(NamedTuple):
    """What a prompt mode shows the model."""

    transcript: bool
    audio: bool
    video: bool


PROMPT_MODES: dict[str, PromptInputs] = {
    "full": PromptInputs(True, True, True),  # MLlm-DR stage 2
    "features": PromptInputs(False, True, True),  # stage 1 (paper Table 5, "LQ")
    "audio": PromptInputs(False, True, False),  # stage 1, audio only ("LQ-A")
    "video": PromptInputs(False, False, True),  # stage 1, video only ("LQ-V")
    "text": PromptInputs(True, False, False),  # the text-only LoRA baseline / "w/o LQ"
    "text_audio": PromptInputs(True, True, False),  # "w/o LQ-V"
    "text_video": PromptInputs(True, False, True),  # "w/o LQ-A"
}

DEFAULT_SYSTEM_PROMPT = (
    "You are a psychiatrist, assessing the participant's mental health in certain aspects through a series "
    "of questions. A score of 0 means not at all, 1 means several days, 2 means more than half the days, "
    "and 3 means nearly every day."
)
REASON_PREFIX = "Evaluation Reason:"
SCORE_PREFIX = "Score:"
_TRANSCRIPT_SLOT = "\u2063MLLMDR_TRANSCRIPT\u2063"
_SCORE_LINE = re.compile(r"[ \t]*Score:[ \t]*([0-9]+)[ \t]*\.?[ \t]*")


def prompt_mode(stage: int, use_audio: bool, use_video: bool, text_only: bool = False) -> str:
    """The prompt mode a training stage (1 or 2; inference uses 2) and the modality switches imply."""
    if text_only or (not use_audio and not use_video):
        if stage == 1:
            raise ValueError("stage 1 trains the LQ-formers: it needs at least one of audio or video")
        return "text"
    if stage == 1:
        return "features" if use_audio and use_video else ("audio" if use_audio else "video")
    return "full" if use_audio and use_video else ("text_audio" if use_audio else "text_video")


def apply_frame_policy(
    features: np.ndarray,
    policy: str,
    max_frames: int,
    truncate_frames: int = 21000,
    pool_size: int = 3,
) -> np.ndarray:
    """Shortens a ``(frames, dim)`` sequence.

    ``"uniform"``: at most ``max_frames`` frames picked evenly over the whole interview (nothing
    after minute 7 is lost); ``"truncate_maxpool"``: the authors' policy, the first
    ``truncate_frames`` frames max-pooled by ``pool_size``; ``"none"``: unchanged.

    Apply it once: ``truncate_maxpool`` shortens an already shortened sequence again.
    """
    if policy == "none":
        return features
    if policy == "uniform":
        if features.shape[0] <= max_frames:
            return features
        index = np.linspace(0, features.shape[0] - 1, num=max_frames).round().astype(np.int64)
        return features[index]
    if policy == "truncate_maxpool":
        kept = features[:truncate_frames]
        usable = (kept.shape[0] // pool_size) * pool_size
        if usable == 0:
            return np.asarray(kept)
        return np.asarray(kept[:usable]).reshape(usable // pool_size, pool_size, -1).max(axis=1)
    raise ValueError(f"frame policy must be one of {FRAME_POLICIES}, got {policy!r}")


def reduce_frames(features: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """:func:`apply_frame_policy` with settings as ``frame_policy_settings`` writes them."""
    return apply_frame_policy(
        features,
        settings["policy"],
        settings.get("max_frames", 0),
        settings.get("truncate_frames", 0),
        settings.get("pool_size", 1),
    )


def parse_output(text: str, score_min: int = 0, score_max: int = 3) -> tuple[int | None, str]:
    """Strictly reads a generated answer: ``(score, rationale)``.

    The score counts only when ``Score:`` occurs exactly once in the text, on a line of its own,
    followed by one integer in ``[score_min, score_max]``. Anything else (no score, two scores, a
    score inside the rationale, out of range, a digit elsewhere) gives ``None``: never a guess.
    """
    text = text.strip()
    score = None
    score_lines = [line for line in text.splitlines() if SCORE_PREFIX.lower() in line.lower()]
    if len(score_lines) == 1 and text.lower().count(SCORE_PREFIX.lower()) == 1:
        match = _SCORE_LINE.fullmatch(score_lines[0])
        if match is not None and score_min <= int(match.group(1)) <= score_max:
            score = int(match.group(1))
    rationale_lines = [line for line in text.splitlines() if not _SCORE_LINE.fullmatch(line)]
    rationale = "\n".join(rationale_lines).strip()
    if rationale.startswith(REASON_PREFIX):
        rationale = rationale[len(REASON_PREFIX) :].strip()
    return score, rationale


# The paper-comparable reading (its Table 6 metric I counts outputs a reader cannot score): "score",
# any case, optional markup (**, __, #) and a colon, "=" or "is", then one integer, anywhere in the
# text; every such mention must name the same number. Used only to report a second format rate.
_PERMISSIVE_SCORE = re.compile(r"(?i)\bscore\b[\s*_#]*(?::|=|\bis\b)?[\s*_#]*([0-9]+)\b")


def parse_score_permissive(text: str, score_min: int = 0, score_max: int = 3) -> int | None:
    """The score a lenient reader finds (``Score: 2`` mid-line, ``**score:** 2``, ``score is 2``), or
    None when there is none, it is out of range, or two mentions disagree. Never chooses the score
    that counts: that stays :func:`parse_output`'s."""
    found = {int(value) for value in _PERMISSIVE_SCORE.findall(text)}
    if len(found) != 1:
        return None
    (score,) = found
    return score if score_min <= score <= score_max else None


ANSWER_ORDERS = ("reason_first", "score_first")


def format_target(score: int, rationale: str | None = None, answer_order: str = "reason_first") -> str:
    """Stage 2: ``Evaluation Reason: <rationale>\\nScore: <s>`` (paper Table 1's order), or with
    ``answer_order="score_first"`` ``Score: <s>\\nEvaluation Reason: <rationale>`` (the authors'
    code); stage 1: ``Score: <s>``. :func:`parse_output` reads both."""
    if answer_order not in ANSWER_ORDERS:
        raise ValueError(f"answer_order must be one of {ANSWER_ORDERS}, got {answer_order!r}")
    if rationale is None:
        return f"{SCORE_PREFIX} {int(score)}"
    rationale = rationale.strip()
    if rationale.startswith(REASON_PREFIX):
        rationale = rationale[len(REASON_PREFIX) :].strip()
    if answer_order == "score_first":
        return f"{SCORE_PREFIX} {int(score)}\n{REASON_PREFIX} {rationale}"
    return f"{REASON_PREFIX} {rationale}\n{SCORE_PREFIX} {int(score)}"


def _integer(value: Any, field: str) -> int:
    """``value`` as an int when it is an integral number (3 or 3.0; never True, 3.7 or "3")."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    return int(value)


def _length(values: Any) -> int | None:
    """How many entries a per-prompt argument holds; None when it is no sequence (a scalar, a 0-d
    array, a string or a mapping, whose ``len`` would count characters or keys)."""
    if isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        return len(values)
    except TypeError:
        return None


def _check_entries(values: Any, field: str, batch_size: int, per: str) -> None:
    """A per-``per`` argument holds exactly ``batch_size`` entries (raises ``ValueError`` naming ``field``)."""
    length = _length(values)
    if length is None:
        raise ValueError(f"{field}: expected a sequence of {batch_size} entries (one per {per}), got {type(values).__name__}")
    if length != batch_size:
        raise ValueError(f"{field}: expected {batch_size} entries (one per {per}), got {length}")


class MllmDrProcessor(ProcessorMixin):
    r"""Builds MLlm-DR inputs from transcripts, PHQ items and pre-extracted feature sequences.

    Args:
        tokenizer: The backbone's tokenizer. ``<AudioHere>`` / ``<VideoHere>`` are added as special
            tokens when missing (the model's embeddings must then be resized; ``from_backbone`` does).
        questionnaire: ``"phq8"`` (E-DAIC-WOZ, DAIC-WOZ) or ``"phq9"`` (CMDC).
        num_audio_tokens / num_video_tokens: Tokens each placeholder expands to (the LQ-former's queries).
        audio_feature_dim / video_feature_dim: Expected width of a frame; anything else is refused.
        audio_frame_policy / video_frame_policy, audio_max_frames / video_max_frames,
        audio_truncate_frames / video_truncate_frames, audio_pool_size / video_pool_size: Each
            modality's frame policy (see ``apply_frame_policy``); ``from_config`` copies them from
            that modality's ``LQFormerConfig``.
        max_transcript_tokens: Transcript budget in tokens (set explicitly: some tokenizers report an
            enormous ``model_max_length``). Only the transcript is ever truncated.
        transcript_truncation_side: ``"right"`` drops the end of a long transcript, ``"left"`` its start.
        system_prompt: The system message (paper Table 1's by default).
        score_min / score_max: Range of one item score (0-3); the prompt, the targets and the parser use it.
        answer_order: ``"reason_first"`` (paper Table 1: the rationale, then the score) or
            ``"score_first"`` (the authors' code); the prompt's format line and the targets follow it.
        chat_template: Unused by this processor (the tokenizer's chat template renders the prompt).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        questionnaire: str = "phq8",
        num_audio_tokens: int = 32,
        num_video_tokens: int = 32,
        audio_feature_dim: int = 768,
        video_feature_dim: int = 2048,
        audio_frame_policy: str = "uniform",
        video_frame_policy: str = "uniform",
        audio_max_frames: int = 7000,
        video_max_frames: int = 7000,
        audio_truncate_frames: int | None = None,
        video_truncate_frames: int | None = None,
        audio_pool_size: int | None = None,
        video_pool_size: int | None = None,
        max_transcript_tokens: int = 1536,
        transcript_truncation_side: str = "right",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        score_min: int = 0,
        score_max: int = 3,
        answer_order: str = "reason_first",
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        # Processors saved before the settings were per modality had one shared pair.
        legacy_truncate, legacy_pool = kwargs.pop("truncate_frames", 21000), kwargs.pop("pool_size", 3)
        if questionnaire not in QUESTIONNAIRES:
            raise ValueError(f"questionnaire must be one of {sorted(QUESTIONNAIRES)}, got {questionnaire!r}")
        for name, policy in (("audio_frame_policy", audio_frame_policy), ("video_frame_policy", video_frame_policy)):
            if policy not in FRAME_POLICIES:
                raise ValueError(f"{name} must be one of {FRAME_POLICIES}, got {policy!r}")
        if transcript_truncation_side not in ("left", "right"):
            raise ValueError(f"transcript_truncation_side must be 'left' or 'right', got {transcript_truncation_side!r}")
        if int(max_transcript_tokens) < 1:
            raise ValueError(f"max_transcript_tokens must be >= 1, got {max_transcript_tokens}")
        if answer_order not in ANSWER_ORDERS:
            raise ValueError(f"answer_order must be one of {ANSWER_ORDERS}, got {answer_order!r}")
        if not int(score_min) < int(score_max):
            raise ValueError(f"score_min ({score_min}) must be < score_max ({score_max})")
        self.questionnaire = questionnaire
        self.num_audio_tokens = int(num_audio_tokens)
        self.num_video_tokens = int(num_video_tokens)
        self.audio_feature_dim = int(audio_feature_dim)
        self.video_feature_dim = int(video_feature_dim)
        self.audio_frame_policy = audio_frame_policy
        self.video_frame_policy = video_frame_policy
        self.audio_max_frames = int(audio_max_frames)
        self.video_max_frames = int(video_max_frames)
        self.audio_truncate_frames = int(legacy_truncate if audio_truncate_frames is None else audio_truncate_frames)
        self.video_truncate_frames = int(legacy_truncate if video_truncate_frames is None else video_truncate_frames)
        self.audio_pool_size = int(legacy_pool if audio_pool_size is None else audio_pool_size)
        self.video_pool_size = int(legacy_pool if video_pool_size is None else video_pool_size)
        for modality in MODALITIES:
            for name in ("max_frames", "truncate_frames", "pool_size"):
                if getattr(self, f"{modality}_{name}") < 1:
                    raise ValueError(f"{modality}_{name} must be >= 1, got {getattr(self, f'{modality}_{name}')}")
        self.max_transcript_tokens = int(max_transcript_tokens)
        self.transcript_truncation_side = transcript_truncation_side
        self.system_prompt = system_prompt
        self.score_min = int(score_min)
        self.score_max = int(score_max)
        self.answer_order = answer_order
        self._prompt_cache: dict[tuple, tuple[list[int], list[int]]] = {}
        super().__init__(tokenizer, chat_template=chat_template)
        missing = [t for t in (AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER) if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_tokens(missing, special_tokens=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # the paper's setting: pad = EOS
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(VIDEO_PLACEHOLDER)

    @classmethod
    def from_config(cls, tokenizer: Any, config: MllmDrConfig, **kwargs: Any) -> MllmDrProcessor:
        """A processor whose token counts, feature dims, frame policies and score range match a model
        config (each modality's settings from that modality's ``LQFormerConfig``)."""
        values: dict[str, Any] = {"score_min": config.score_min, "score_max": config.score_max}
        for modality in MODALITIES:
            lqformer = getattr(config, f"{modality}_config")
            values.update(
                {
                    f"num_{modality}_tokens": lqformer.num_query_tokens,
                    f"{modality}_feature_dim": lqformer.feature_dim,
                    f"{modality}_frame_policy": lqformer.frame_policy,
                    f"{modality}_max_frames": lqformer.max_frames,
                    f"{modality}_truncate_frames": lqformer.truncate_frames,
                    f"{modality}_pool_size": lqformer.pool_size,
                }
            )
        values.update(kwargs)
        return cls(tokenizer, **values)

    # ----------------------------------------------------------------- items and text formats
    @property
    def items(self) -> tuple[PhqItem, ...]:
        return QUESTIONNAIRES[self.questionnaire]

    def item(self, index: int) -> PhqItem:
        """The PHQ item with 1-based number ``index`` of this processor's questionnaire."""
        for item in self.items:
            if item.index == index:
                return item
        raise ValueError(
            f"item index {index!r} is not an item of {self.questionnaire.upper()} "
            f"(valid: 1-{len(self.items)})"
        )

    def instruction(self, item_index: int, with_rationale: bool = True) -> str:
        """The item-specific request, the last part of every prompt."""
        aspect = self.item(item_index).aspect
        low, high = self.score_min, self.score_max
        if with_rationale:
            reason, score = f"{REASON_PREFIX} A concise and logical description.", f"{SCORE_PREFIX} {low}-{high}"
            answer_format = f"{score}\n{reason}" if self.answer_order == "score_first" else f"{reason}\n{score}"
        else:
            answer_format = f"{SCORE_PREFIX} {low}-{high}"
        return (
            f"Please evaluate the participant's {aspect} over the last two weeks, and score it from {low} to {high}. "
            f"The output format is as follows:\n{answer_format}\n"
            "Each output must strictly follow this format, avoiding omissions or confusion."
        )

    format_target = staticmethod(format_target)

    def parse_output(self, text: str) -> tuple[int | None, str]:
        """:func:`parse_output` with this processor's score range."""
        return parse_output(text, self.score_min, self.score_max)

    def check_score(self, value: Any, field: str = "score") -> int:
        """An item score as an int in ``[score_min, score_max]``; anything else is a ``ValueError``."""
        try:
            score = _integer(value, field)
        except ValueError:
            raise ValueError(f"{field}: expected an integer item score in {self.score_min}-{self.score_max}, got {value!r}") from None
        if not self.score_min <= score <= self.score_max:
            raise ValueError(f"{field}: expected an integer item score in {self.score_min}-{self.score_max}, got {value!r}")
        return score

    # ----------------------------------------------------------------- prompt rendering
    def inputs_for(self, mode: str) -> PromptInputs:
        """What prompt ``mode`` shows: ``(transcript, audio, video)`` booleans."""
        if mode not in PROMPT_MODES:
            raise ValueError(f"mode must be one of {sorted(PROMPT_MODES)}, got {mode!r}")
        return PROMPT_MODES[mode]

    def render_prompt(self, item_index: int, mode: str = "full", with_rationale: bool = True) -> tuple[str, str]:
        """The prompt as text around the transcript: ``(before_transcript, after_transcript)``.

        Order: system prompt, feature placeholders, transcript (all shared by a participant's
        items), then the item's instruction, then the template's assistant header.
        """
        inputs = self.inputs_for(mode)
        parts = []
        if inputs.audio:
            parts.append(f"Audio features of the interview: {AUDIO_PLACEHOLDER}\n")
        if inputs.video:
            parts.append(f"Visual features of the interview: {VIDEO_PLACEHOLDER}\n")
        if inputs.transcript:
            parts.append(f"Interview transcript:\n{_TRANSCRIPT_SLOT}\n\n")
        else:
            parts.append(_TRANSCRIPT_SLOT)
        parts.append(self.instruction(item_index, with_rationale=with_rationale))
        user = "".join(parts)
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            bos = self.tokenizer.bos_token or ""
            text = f"{bos}System: {self.system_prompt}\n\nUser: {user}\n\nAssistant: "
        if text.count(_TRANSCRIPT_SLOT) != 1:
            raise ValueError("the chat template must render the user message exactly once")
        before, after = text.split(_TRANSCRIPT_SLOT)
        return before, after

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (the pieces of a prompt)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, item_index: int, mode: str = "full", with_rationale: bool = True) -> tuple[list[int], list[int]]:
        """Token ids around the transcript, placeholders already expanded: ``(before, after)``.

        Rendered once per (item, mode, answer format) and reused: the chat template is the slow part.
        """
        key = (
            item_index, mode, with_rationale, self.system_prompt, self.questionnaire, self.score_min, self.score_max,
            self.answer_order,
            self.num_audio_tokens, self.num_video_tokens, getattr(self.tokenizer, "chat_template", None), len(self.tokenizer),
        )  # fmt: skip
        cached = self._prompt_cache.get(key)
        if cached is None:
            before, after = self.render_prompt(item_index, mode, with_rationale=with_rationale)
            cached = (self.expand_placeholders(self.encode_text(before), mode), self.encode_text(after))
            self._prompt_cache[key] = cached
        return list(cached[0]), list(cached[1])

    def expand_placeholders(self, ids: list[int], mode: str) -> list[int]:
        """Token ids with each ``<AudioHere>`` / ``<VideoHere>`` repeated to the LQ-former's query
        count; the prompt must hold exactly one placeholder per modality that ``mode`` shows."""
        inputs = self.inputs_for(mode)
        expected = {
            self.audio_token_id: (inputs.audio, self.num_audio_tokens, AUDIO_PLACEHOLDER),
            self.video_token_id: (inputs.video, self.num_video_tokens, VIDEO_PLACEHOLDER),
        }
        for token_id, (wanted, _, name) in expected.items():
            found = ids.count(token_id)
            if found != int(wanted):
                raise ValueError(
                    f"expected {int(wanted)} {name} placeholder(s) in the prompt for mode {mode!r}, found {found} "
                    "(check the system prompt and the tokenizer's chat template)"
                )
        expanded: list[int] = []
        for token_id in ids:
            expanded.extend([token_id] * expected[token_id][1] if token_id in expected else [token_id])
        return expanded

    def encode_transcript(self, transcript: str, field: str = "transcript") -> tuple[list[int], int]:
        """The transcript's token ids within ``max_transcript_tokens`` and how many tokens were cut."""
        if not isinstance(transcript, str):
            raise ValueError(f"{field}: expected a string, got {type(transcript).__name__}")
        if not transcript.strip():
            raise ValueError(f"{field}: the transcript is empty")
        ids = self.encode_text(transcript)
        if {self.audio_token_id, self.video_token_id} & set(ids):
            raise ValueError(
                f"{field}: contains the text {AUDIO_PLACEHOLDER} or {VIDEO_PLACEHOLDER}, "
                "which would add a second feature placeholder"
            )
        cut = max(0, len(ids) - self.max_transcript_tokens)
        if cut:
            ids = ids[: self.max_transcript_tokens] if self.transcript_truncation_side == "right" else ids[cut:]
        return ids, cut

    # ----------------------------------------------------------------- one sample's tokens
    def tokenize(
        self,
        transcript: str | None,
        item_index: int,
        mode: str = "full",
        score: int | None = None,
        rationale: str | None = None,
        with_rationale: bool | None = None,
        transcript_ids: tuple[list[int], int] | None = None,
        field: str = "sample",
    ) -> dict[str, Any]:
        """One prompt (plus its answer when ``score`` is given) as token ids.

        Returns ``input_ids``, ``labels`` (-100 on the prompt), ``prompt_length``,
        ``transcript_truncated`` (tokens cut) and ``score`` (the target's, or None). ``transcript_ids`` (``encode_transcript``'s result)
        skips encoding the transcript again, e.g. for a participant's other items.
        ``with_rationale`` picks the answer format the instruction asks for: by default the target's
        (a rationale given or not) and, without a target, the stage-2 format.
        """
        item_index = _integer(item_index, f"{field}: item_index")
        self.item(item_index)
        if rationale is not None and score is None:
            raise ValueError(f"{field}: a rationale needs a score: every target has the score line")
        if with_rationale is None:
            with_rationale = score is None or rationale is not None
        ids, cut = [], 0
        if self.inputs_for(mode).transcript:
            ids, cut = transcript_ids if transcript_ids is not None else self.encode_transcript(transcript, f"{field}: transcript")
        before, after = self.prompt_ids(item_index, mode, with_rationale)
        prompt = before + ids + after
        labels = [-100] * len(prompt)
        if score is not None:
            score = self.check_score(score, f"{field}: score")
            if rationale is not None and (not isinstance(rationale, str) or not rationale.strip()):
                raise ValueError(f"{field}: the rationale must be a non-empty string, got {rationale!r}")
            answer = self.encode_text(format_target(score, rationale, self.answer_order)) + [self.tokenizer.eos_token_id]
            labels = labels + answer
            prompt = prompt + answer
        return {
            "input_ids": prompt,
            "labels": labels,
            "prompt_length": len(before) + len(ids) + len(after),
            "transcript_truncated": cut,
            "score": score,
        }

    # ----------------------------------------------------------------- features
    def frame_settings(self, modality: str) -> dict[str, Any]:
        """The frame policy of ``modality`` with only the settings it uses (a cache key)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return frame_policy_settings(
            getattr(self, f"{modality}_frame_policy"),
            getattr(self, f"{modality}_max_frames"),
            getattr(self, f"{modality}_truncate_frames"),
            getattr(self, f"{modality}_pool_size"),
        )

    def reduce_frames(self, modality: str, features: np.ndarray) -> np.ndarray:
        """``modality``'s frame policy applied to one raw ``(frames, dim)`` sequence: the one place
        the policy runs. A memory-mapped input is read only where the policy keeps frames."""
        return reduce_frames(features, self.frame_settings(modality))

    def pad_features(
        self, modality: str, features: Sequence[Any] | None, batch_size: int, frames_reduced: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature sequences of one modality as a zero-padded float32 ``(batch, frames, dim)`` tensor
        and its boolean mask (True = a real frame); ``None`` entries are missing recordings.

        Each sequence goes through :meth:`reduce_frames` unless ``frames_reduced`` (it already did,
        e.g. in a feature cache). Widths, dtypes and finiteness are checked, naming the entry.
        """
        dim = getattr(self, f"{modality}_feature_dim")
        field = f"{modality}_features"
        if features is None:
            features = [None] * batch_size
        _check_entries(features, field, batch_size, "prompt")
        arrays = []
        for i, sample in enumerate(features):
            if sample is None:
                arrays.append(np.zeros((0, dim), dtype=np.float32))
                continue
            array = sample.detach().cpu() if isinstance(sample, torch.Tensor) else sample
            try:
                array = array.float().numpy() if isinstance(array, torch.Tensor) and array.is_floating_point() else np.asarray(array)
            except (TypeError, ValueError) as error:  # e.g. ragged nested lists
                raise ValueError(f"{field}[{i}]: not an array of numbers ({error})") from None
            if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
                raise ValueError(f"{field}[{i}]: expected real-valued features, got dtype {array.dtype}")
            if array.ndim != 2 or array.shape[1] != dim:
                raise ValueError(f"{field}[{i}]: expected shape (frames, {dim}), got {tuple(array.shape)}")
            if not frames_reduced:
                array = self.reduce_frames(modality, array)
            array = np.array(array, dtype=np.float32)  # a writable float32 copy (inputs may be read-only memmaps)
            if not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).any(axis=1).sum())
                raise ValueError(f"{field}[{i}]: {bad} frame(s) contain NaN or inf")
            arrays.append(array)
        length = max(1, max(a.shape[0] for a in arrays))
        padded = torch.zeros(batch_size, length, dim, dtype=torch.float32)
        mask = torch.zeros(batch_size, length, dtype=torch.bool)
        for i, array in enumerate(arrays):
            padded[i, : array.shape[0]] = torch.from_numpy(array)
            mask[i, : array.shape[0]] = True
        return padded, mask

    # ----------------------------------------------------------------- batches
    def collate(
        self,
        samples: Sequence[Mapping[str, Any]],
        mode: str = "full",
        audio_features: Sequence[Any] | None = None,
        video_features: Sequence[Any] | None = None,
        padding_side: str = "left",
        frames_reduced: bool = False,
        with_labels: bool | None = None,
        return_truncation: bool = False,
    ) -> BatchFeature:
        """Pads :meth:`tokenize` outputs and their features into model inputs.

        Returns ``input_ids``, ``attention_mask``, ``prompt_mask`` (what the score head pools),
        ``labels`` (when the samples have answers, or ``with_labels``), ``{audio,video}_features`` +
        ``_mask`` for the modalities the mode shows, and, with ``return_truncation``,
        ``transcript_truncated`` (tokens cut per sample; not a model input).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        batch_size = len(samples)
        if batch_size == 0:
            raise ValueError("collate needs at least one sample")
        inputs = self.inputs_for(mode)
        for modality, used, features in (("audio", inputs.audio, audio_features), ("video", inputs.video, video_features)):
            if not used and features is not None and any(f is not None for f in features):
                raise ValueError(f"{modality}_features were given but mode {mode!r} shows no {modality}")
        if with_labels is None:
            with_labels = any(len(s["labels"]) > s["prompt_length"] for s in samples)
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((batch_size, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        prompt_mask = torch.zeros(batch_size, length, dtype=torch.bool)
        labels = torch.full((batch_size, length), -100, dtype=torch.long)
        for i, sample in enumerate(samples):
            ids = sample["input_ids"]
            start = length - len(ids) if padding_side == "left" else 0
            input_ids[i, start : start + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[i, start : start + len(ids)] = 1
            labels[i, start : start + len(ids)] = torch.as_tensor(sample["labels"], dtype=torch.long)
            prompt_mask[i, start : start + int(sample["prompt_length"])] = True
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_mask": prompt_mask}
        if with_labels:
            data["labels"] = labels
            if all(s.get("score") is not None for s in samples):
                data["score_labels"] = torch.tensor([float(s["score"]) for s in samples], dtype=torch.float32)
        for modality, used, features in (("audio", inputs.audio, audio_features), ("video", inputs.video, video_features)):
            if used:
                padded, mask = self.pad_features(modality, features, batch_size, frames_reduced=frames_reduced)
                data[f"{modality}_features"], data[f"{modality}_mask"] = padded, mask
        if return_truncation:
            data["transcript_truncated"] = torch.tensor([int(s["transcript_truncated"]) for s in samples], dtype=torch.long)
        return BatchFeature(data=data)

    # ----------------------------------------------------------------- main entry point
    def __call__(
        self,
        transcripts: str | Sequence[str],
        item_indices: int | Sequence[int],
        audio_features: Sequence[Any] | None = None,
        video_features: Sequence[Any] | None = None,
        scores: Sequence[int] | None = None,
        rationales: Sequence[str | None] | None = None,
        mode: str = "full",
        padding_side: str = "left",
        with_rationale: bool | None = None,
        return_truncation: bool = False,
        return_tensors: str = "pt",
        frames_reduced: bool = False,
    ) -> BatchFeature:
        """Model inputs for a batch of (participant, item) prompts: :meth:`tokenize` per sample
        (a transcript shared by several samples is encoded once), then :meth:`collate`.

        With ``scores`` the answer is appended and ``labels`` / ``score_labels`` are returned: the
        target is ``Evaluation Reason: <rationale>\\nScore: <s>`` where a rationale is given (stage
        2) and ``Score: <s>`` where it is None (stage 1), each followed by EOS, which is trained.
        Raw feature sequences go through each modality's frame policy (``frames_reduced=True``:
        they already did). See :meth:`collate` for the returned fields.
        """
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if isinstance(transcripts, str):
            transcripts = [transcripts]
        if isinstance(item_indices, (int, float, np.number, np.bool_)):  # one prompt's item (never True or 3.7)
            item_indices = [_integer(item_indices, "item_indices")]
        batch_size = _length(transcripts)
        if batch_size is None:
            raise ValueError(
                f"transcripts: expected a string or a sequence of strings, got {type(transcripts).__name__}"
            )
        named = {"item_indices": item_indices, "scores": scores, "rationales": rationales}
        named.update({"audio_features": audio_features, "video_features": video_features})
        for name, values in named.items():
            if values is not None:
                _check_entries(values, name, batch_size, "transcript")
        if rationales is not None and scores is None:
            raise ValueError("rationales need scores: the target always ends with the score line")
        uses_transcript = self.inputs_for(mode).transcript
        encoded: dict[str, tuple[list[int], int]] = {}
        samples = []
        for i in range(batch_size):
            transcript = transcripts[i]
            if not isinstance(transcript, str):
                raise ValueError(f"transcripts[{i}]: expected a string, got {type(transcript).__name__}")
            transcript_ids = None
            if uses_transcript:
                if transcript not in encoded:
                    encoded[transcript] = self.encode_transcript(transcript, f"transcripts[{i}]")
                transcript_ids = encoded[transcript]
            samples.append(
                self.tokenize(
                    transcript,
                    _integer(item_indices[i], f"item_indices[{i}]"),
                    mode,
                    score=None if scores is None else self.check_score(scores[i], f"scores[{i}]"),
                    rationale=None if rationales is None else rationales[i],
                    with_rationale=with_rationale,
                    transcript_ids=transcript_ids,
                    field=f"prompt {i}",
                )
            )
        return self.collate(
            samples, mode, audio_features, video_features, padding_side=padding_side,
            frames_reduced=frames_reduced, with_labels=scores is not None, return_truncation=return_truncation,
        )  # fmt: skip

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "prompt_mask", "audio_features", "audio_mask", "video_features", "video_mask"]


MllmDrProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "MODALITIES",
    "MllmDrProcessor",
    "PHQ8_ITEMS",
    "PHQ9_ITEMS",
    "PROMPT_MODES",
    "PhqItem",
    "PromptInputs",
    "QUESTIONNAIRES",
    "parse_score_permissive",
    "REASON_PREFIX",
    "SCORE_PREFIX",
    "apply_frame_policy",
    "format_target",
    "ANSWER_ORDERS",
    "parse_output",
    "prompt_mode",
    "reduce_frames",
]
