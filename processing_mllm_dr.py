"""MLlm-DR processor: the single owner of the prompt and of the output format.

Self-contained (torch + transformers, numpy through them): this file travels inside every checkpoint.

It turns (transcript, PHQ item, audio features, video features[, rationale, score]) into model
inputs: it renders the prompt (the part shared by all items of a participant first, the
item-specific instruction last, so the prefix can be reused), expands each placeholder to the
LQ-former's query count, truncates only the transcript, applies the frame policy, pads the feature
sequences with boolean masks, and builds labels that train only the answer (EOS included).
``parse_output`` is the one strict reader of what the model writes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

try:
    from .configuration_mllm_dr import AUDIO_PLACEHOLDER, FRAME_POLICIES, VIDEO_PLACEHOLDER, MllmDrConfig
except ImportError:  # imported as a top-level module rather than as remote code
    from configuration_mllm_dr import AUDIO_PLACEHOLDER, FRAME_POLICIES, VIDEO_PLACEHOLDER, MllmDrConfig


@dataclass(frozen=True)
class PhqItem:
    """One PHQ item: its 1-based number, the E-DAIC short name and the aspect the prompt asks about."""

    index: int
    name: str
    aspect: str


PHQ9_ITEMS: tuple[PhqItem, ...] = (
    PhqItem(1, "NoInterest", "interest or pleasure in doing things"),
    PhqItem(2, "Depressed", "feeling down, depressed, or hopeless"),
    PhqItem(3, "Sleep", "trouble falling or staying asleep, or sleeping too much"),
    PhqItem(4, "Tired", "feeling tired or having little energy"),
    PhqItem(5, "Appetite", "poor appetite or overeating"),
    PhqItem(6, "Failure", "feeling bad about themselves, or that they are a failure or have let their family down"),
    PhqItem(7, "Concentrating", "trouble concentrating on things, such as reading or watching television"),
    PhqItem(
        8,
        "Moving",
        "moving or speaking so slowly that other people could have noticed, or being fidgety or restless",
    ),
    PhqItem(9, "SelfHarm", "thoughts that they would be better off dead, or of hurting themselves"),
)
PHQ8_ITEMS: tuple[PhqItem, ...] = PHQ9_ITEMS[:8]
QUESTIONNAIRES: dict[str, tuple[PhqItem, ...]] = {"phq8": PHQ8_ITEMS, "phq9": PHQ9_ITEMS}

# What each prompt mode shows the model: (transcript, audio, video).
PROMPT_MODES: dict[str, tuple[bool, bool, bool]] = {
    "full": (True, True, True),  # MLlm-DR stage 2
    "features": (False, True, True),  # stage 1 (paper Table 5, "LQ")
    "audio": (False, True, False),  # stage 1, audio only ("LQ-A")
    "video": (False, False, True),  # stage 1, video only ("LQ-V")
    "text": (True, False, False),  # the text-only LoRA baseline / "w/o LQ"
    "text_audio": (True, True, False),  # "w/o LQ-V"
    "text_video": (True, False, True),  # "w/o LQ-A"
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


class MllmDrProcessor(ProcessorMixin):
    r"""Builds MLlm-DR inputs from transcripts, PHQ items and pre-extracted feature sequences.

    Args:
        tokenizer: The backbone's tokenizer. ``<AudioHere>`` / ``<VideoHere>`` are added as special
            tokens when missing (the model's embeddings must then be resized; ``from_backbone`` does).
        questionnaire: ``"phq8"`` (E-DAIC-WOZ, DAIC-WOZ) or ``"phq9"`` (CMDC).
        num_audio_tokens / num_video_tokens: Tokens each placeholder expands to (the LQ-former's queries).
        audio_feature_dim / video_feature_dim: Expected width of a frame; anything else is refused.
        audio_frame_policy / video_frame_policy, audio_max_frames / video_max_frames,
        truncate_frames, pool_size: See ``apply_frame_policy``.
        max_transcript_tokens: Transcript budget in tokens (set explicitly: some tokenizers report an
            enormous ``model_max_length``). Only the transcript is ever truncated.
        transcript_truncation_side: ``"right"`` drops the end of a long transcript, ``"left"`` its start.
        system_prompt: The system message (paper Table 1's by default).
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
        truncate_frames: int = 21000,
        pool_size: int = 3,
        max_transcript_tokens: int = 1536,
        transcript_truncation_side: str = "right",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        if questionnaire not in QUESTIONNAIRES:
            raise ValueError(f"questionnaire must be one of {sorted(QUESTIONNAIRES)}, got {questionnaire!r}")
        for name, policy in (("audio_frame_policy", audio_frame_policy), ("video_frame_policy", video_frame_policy)):
            if policy not in FRAME_POLICIES:
                raise ValueError(f"{name} must be one of {FRAME_POLICIES}, got {policy!r}")
        if transcript_truncation_side not in ("left", "right"):
            raise ValueError(f"transcript_truncation_side must be 'left' or 'right', got {transcript_truncation_side!r}")
        if int(max_transcript_tokens) < 1:
            raise ValueError(f"max_transcript_tokens must be >= 1, got {max_transcript_tokens}")
        self.questionnaire = questionnaire
        self.num_audio_tokens = int(num_audio_tokens)
        self.num_video_tokens = int(num_video_tokens)
        self.audio_feature_dim = int(audio_feature_dim)
        self.video_feature_dim = int(video_feature_dim)
        self.audio_frame_policy = audio_frame_policy
        self.video_frame_policy = video_frame_policy
        self.audio_max_frames = int(audio_max_frames)
        self.video_max_frames = int(video_max_frames)
        self.truncate_frames = int(truncate_frames)
        self.pool_size = int(pool_size)
        self.max_transcript_tokens = int(max_transcript_tokens)
        self.transcript_truncation_side = transcript_truncation_side
        self.system_prompt = system_prompt
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
        """A processor whose token counts, feature dims and frame policies match a model config."""
        audio, video = config.audio_config, config.video_config
        values = dict(
            num_audio_tokens=audio.num_query_tokens,
            num_video_tokens=video.num_query_tokens,
            audio_feature_dim=audio.feature_dim,
            video_feature_dim=video.feature_dim,
            audio_frame_policy=audio.frame_policy,
            video_frame_policy=video.frame_policy,
            audio_max_frames=audio.max_frames,
            video_max_frames=video.max_frames,
            truncate_frames=audio.truncate_frames,
            pool_size=audio.pool_size,
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
        if with_rationale:
            answer_format = f"{REASON_PREFIX} A concise and logical description.\n{SCORE_PREFIX} 0-3"
        else:
            answer_format = f"{SCORE_PREFIX} 0-3"
        return (
            f"Please evaluate the participant's {aspect} over the last two weeks, and score it from 0 to 3. "
            f"The output format is as follows:\n{answer_format}\n"
            "Each output must strictly follow this format, avoiding omissions or confusion."
        )

    @staticmethod
    def format_target(score: int, rationale: str | None = None) -> str:
        """Stage 2: ``Evaluation Reason: <rationale>\\nScore: <0-3>``; stage 1: ``Score: <0-3>``."""
        if rationale is None:
            return f"{SCORE_PREFIX} {int(score)}"
        rationale = rationale.strip()
        if rationale.startswith(REASON_PREFIX):
            rationale = rationale[len(REASON_PREFIX) :].strip()
        return f"{REASON_PREFIX} {rationale}\n{SCORE_PREFIX} {int(score)}"

    @staticmethod
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

    # ----------------------------------------------------------------- prompt rendering
    def render_prompt(self, item_index: int, mode: str = "full", with_rationale: bool = True) -> tuple[str, str]:
        """The prompt as text around the transcript: ``(before_transcript, after_transcript)``.

        Order: system prompt, feature placeholders, transcript (all shared by a participant's
        items), then the item's instruction, then the template's assistant header.
        """
        use_transcript, use_audio, use_video = self._mode(mode)
        parts = []
        if use_audio:
            parts.append(f"Audio features of the interview: {AUDIO_PLACEHOLDER}\n")
        if use_video:
            parts.append(f"Visual features of the interview: {VIDEO_PLACEHOLDER}\n")
        if use_transcript:
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

    @staticmethod
    def _mode(mode: str) -> tuple[bool, bool, bool]:
        if mode not in PROMPT_MODES:
            raise ValueError(f"mode must be one of {sorted(PROMPT_MODES)}, got {mode!r}")
        return PROMPT_MODES[mode]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _expand_placeholders(self, ids: list[int], mode: str, where: str) -> list[int]:
        _, use_audio, use_video = self._mode(mode)
        expected = {self.audio_token_id: (use_audio, self.num_audio_tokens, AUDIO_PLACEHOLDER)}
        expected[self.video_token_id] = (use_video, self.num_video_tokens, VIDEO_PLACEHOLDER)
        for token_id, (wanted, _, name) in expected.items():
            found = ids.count(token_id)
            if found != int(wanted):
                raise ValueError(
                    f"{where}: expected {int(wanted)} {name} placeholder(s) in the prompt for mode {mode!r}, "
                    f"found {found}"
                )
        expanded: list[int] = []
        for token_id in ids:
            expanded.extend([token_id] * expected[token_id][1] if token_id in expected else [token_id])
        return expanded

    # ----------------------------------------------------------------- features
    def _prepare_features(
        self, modality: str, features: Sequence[Any] | None, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dim = getattr(self, f"{modality}_feature_dim")
        policy = getattr(self, f"{modality}_frame_policy")
        max_frames = getattr(self, f"{modality}_max_frames")
        field = f"{modality}_features"
        if features is None:
            features = [None] * batch_size
        if len(features) != batch_size:
            raise ValueError(f"{field}: expected {batch_size} entries (one per prompt), got {len(features)}")
        arrays = []
        for i, sample in enumerate(features):
            if sample is None:
                arrays.append(np.zeros((0, dim), dtype=np.float32))
                continue
            array = sample.detach().cpu().float().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample)
            if array.ndim != 2 or array.shape[1] != dim:
                raise ValueError(f"{field}[{i}]: expected shape (frames, {dim}), got {tuple(array.shape)}")
            array = apply_frame_policy(array, policy, max_frames, self.truncate_frames, self.pool_size)
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
    ) -> BatchFeature:
        """Model inputs for a batch of (participant, item) prompts.

        With ``scores`` the answer is appended and ``labels`` / ``score_labels`` are returned: the
        target is ``Evaluation Reason: <rationale>\\nScore: <s>`` where a rationale is given (stage
        2) and ``Score: <s>`` where it is None (stage 1), each followed by EOS, which is trained.
        Returns ``input_ids``, ``attention_mask``, ``prompt_mask`` (what the score head pools),
        ``{audio,video}_features`` + ``_mask`` for the modalities the mode shows, and, with
        ``return_truncation``, ``transcript_truncated`` (tokens cut per sample; not a model input).
        ``with_rationale`` picks the answer format the instruction asks for; by default it is the
        target's format (rationale given or not) and, without targets, the stage-2 format.
        """
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if isinstance(transcripts, str):
            transcripts = [transcripts]
        if isinstance(item_indices, (int, np.integer)):
            item_indices = [int(item_indices)]
        batch_size = len(transcripts)
        use_transcript, use_audio, use_video = self._mode(mode)
        named = {"item_indices": item_indices, "scores": scores, "rationales": rationales}
        named.update({"audio_features": audio_features, "video_features": video_features})
        for name, values in named.items():
            if values is not None and len(values) != batch_size:
                raise ValueError(f"{name}: expected {batch_size} entries (one per transcript), got {len(values)}")
        if rationales is not None and scores is None:
            raise ValueError("rationales need scores: the target always ends with the score line")
        if not use_audio and audio_features is not None and any(f is not None for f in audio_features):
            raise ValueError(f"audio_features were given but mode {mode!r} shows no audio")
        if not use_video and video_features is not None and any(f is not None for f in video_features):
            raise ValueError(f"video_features were given but mode {mode!r} shows no video")

        eos_id = self.tokenizer.eos_token_id
        sequences, label_rows, prompt_lengths, truncated = [], [], [], []
        for i in range(batch_size):
            transcript = transcripts[i]
            if not isinstance(transcript, str):
                raise ValueError(f"transcripts[{i}]: expected a string, got {type(transcript).__name__}")
            if use_transcript and not transcript.strip():
                raise ValueError(f"transcripts[{i}]: the transcript is empty")
            item_index = int(item_indices[i])
            asks_rationale = with_rationale
            if asks_rationale is None:
                asks_rationale = scores is None or (rationales is not None and rationales[i] is not None)
            before, after = self.render_prompt(item_index, mode, with_rationale=asks_rationale)
            transcript_ids = self._encode(transcript) if use_transcript else []
            if {self.audio_token_id, self.video_token_id} & set(transcript_ids):
                raise ValueError(
                    f"transcripts[{i}]: contains the text {AUDIO_PLACEHOLDER} or {VIDEO_PLACEHOLDER}, "
                    "which would add a second feature placeholder"
                )
            cut = max(0, len(transcript_ids) - self.max_transcript_tokens)
            if cut:
                transcript_ids = (
                    transcript_ids[: self.max_transcript_tokens]
                    if self.transcript_truncation_side == "right"
                    else transcript_ids[cut:]
                )
            before_ids = self._expand_placeholders(self._encode(before), mode, where=f"prompt {i}")
            prompt = before_ids + transcript_ids + self._encode(after)
            labels = [-100] * len(prompt)
            if scores is not None:
                score = scores[i]
                if isinstance(score, bool) or not float(score).is_integer() or not 0 <= int(score) <= 3:
                    raise ValueError(f"scores[{i}]: expected an integer item score in 0-3, got {score!r}")
                rationale = rationales[i] if rationales is not None else None
                answer = self._encode(self.format_target(int(score), rationale)) + [eos_id]
                prompt, labels = prompt + answer, labels + answer
            sequences.append(prompt)
            label_rows.append(labels)
            prompt_lengths.append(len(prompt) - sum(label != -100 for label in labels))
            truncated.append(cut)

        length = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        prompt_mask = torch.zeros(batch_size, length, dtype=torch.bool)
        labels_tensor = torch.full((batch_size, length), -100, dtype=torch.long)
        for i, (ids, labels, prompt_length) in enumerate(zip(sequences, label_rows, prompt_lengths)):
            start = length - len(ids) if padding_side == "left" else 0
            span = slice(start, start + len(ids))
            input_ids[i, span] = torch.tensor(ids)
            attention_mask[i, span] = 1
            labels_tensor[i, span] = torch.tensor(labels)
            prompt_mask[i, start : start + prompt_length] = True

        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_mask": prompt_mask}
        if scores is not None:
            data["labels"] = labels_tensor
            data["score_labels"] = torch.tensor([float(s) for s in scores], dtype=torch.float32)
        for modality, used, features in (("audio", use_audio, audio_features), ("video", use_video, video_features)):
            if used:
                padded, mask = self._prepare_features(modality, features, batch_size)
                data[f"{modality}_features"], data[f"{modality}_mask"] = padded, mask
        if return_truncation:
            data["transcript_truncated"] = torch.tensor(truncated, dtype=torch.long)
        return BatchFeature(data=data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "prompt_mask", "audio_features", "audio_mask", "video_features", "video_mask"]


MllmDrProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MllmDrProcessor",
    "PhqItem",
    "PHQ8_ITEMS",
    "PHQ9_ITEMS",
    "PROMPT_MODES",
    "apply_frame_policy",
]
