"""The one generate-parse-score loop (evaluation and prediction both call :func:`generate_items`):
a rationale and a score for each (participant, item) row, the MAA head's score from the same
prefill, strict parsing, and the choice of the score that counts."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

from modeling_mllm_dr import PAPER_SAMPLING
from processing_mllm_dr import MllmDrProcessor

from ..data import MllmDrCollator, feature_key
from ..uncertainty import score_probabilities, score_steps
from .attribution import ATTRIBUTION_EFFECTS, attribution_conditions, modality_attribution, total_effect, withheld
from .prefix import Prefill, cache_kwarg, left_padded, real_prompts, shared_prefill

SCORE_SOURCES = ("generated", "head", "generated_with_head_fallback", "expected", "combined")


@dataclass
class GenerationArguments:
    """How each item's answer is generated and which score counts (paper section 4.2: sampling at
    temperature 0.8, top-k 10, up to 200 new tokens)."""

    greedy: bool = field(default=False, metadata={"help": "Deterministic greedy decoding instead of sampling."})
    temperature: float = field(default=PAPER_SAMPLING["temperature"], metadata={"help": "Sampling temperature."})
    top_k: int = field(default=PAPER_SAMPLING["top_k"], metadata={"help": "Sample among the k most likely tokens (0: all)."})
    top_p: float | None = field(
        default=None,
        metadata={"help": "Nucleus sampling: keep the most likely of the top-k tokens up to this total probability "
                  "(1.0: off). Default: the model's generation_config.top_p, i.e. the backbone's (0.9 for "
                  "LLaMA-3-Instruct, which the authors' generate inherited; 1.0 where the backbone sets none)."},
    )
    max_new_tokens: int = field(default=PAPER_SAMPLING["max_new_tokens"], metadata={"help": "Longest answer, in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed; each item samples from its own (seed, participant, item) stream."})
    batch_size: int = field(default=8, metadata={"help": "Items generated together."})
    prefix_reuse: bool = field(
        default=True,
        metadata={"help": "Prefill a participant's shared prompt prefix once for all its items "
                  "(--no_prefix_reuse: prefill each item's whole prompt)."},
    )
    score_source: str = field(
        default="generated_with_head_fallback",
        metadata={"help": "The score that counts: generated (the parsed text), head (the MAA head), "
                  "generated_with_head_fallback (the text, the head where the text breaks format; the paper's), "
                  "expected (the expected score under the LM's probabilities of the digits where it wrote the "
                  "score, not the digit it wrote; the head where no digit was found), or combined "
                  "(--text_weight x the expected score + (1 - weight) x the head; evaluation can fit the weight "
                  "on a dev evaluation with --fit_text_weight_on).",
                  "choices": list(SCORE_SOURCES)},
    )
    text_weight: float | None = field(
        default=None,
        metadata={"help": "--score_source combined: the weight of the text's expected score, in [0, 1] (the head "
                  "gets the rest)."},
    )
    score_probabilities: bool = field(
        default=True,
        metadata={"help": "Record each item's probabilities of the scores, read from the raw logits at the step "
                  "where the score digit was written (no extra generation; --no_score_probabilities: off, "
                  "and the per-step logits are not kept)."},
    )
    modality_attribution: bool = field(
        default=False,
        metadata={"help": "Per item, how much the audio, the video and both moved the expected score and the head's "
                  "score: the prompt and the answer up to the score digit run again with that modality withheld "
                  "through the missing-modality path (no generation: 3 extra forwards per batch in float32, where "
                  "generation's own probabilities are the every-modality condition, 4 in bf16; see "
                  "--attribution_effect)."},
    )
    attribution_effect: str = field(
        default="direct",
        metadata={"help": "--modality_attribution's effect: direct (the generated rationale kept as context, the "
                  "digit's probabilities and the head read again; 3-4 forwards) or total (the answer generated "
                  "again per withheld condition, with the same per-item random streams: the change of the score "
                  "that counts, the expected score and the head's score, and the rationale written without "
                  "the modality; 3 extra generations, about 4x a plain evaluation).",
                  "choices": list(ATTRIBUTION_EFFECTS)},
    )
    unparsed_score: float = field(
        default=0.0,
        metadata={"help": "Item score used when the text breaks format and no head can stand in (zero-shot, "
                  "--score_source generated); default 0: a failure scores nothing. The authors' code put in "
                  "1.5, a filler that hides failures."},
    )

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        nucleus = "" if self.top_p is None or self.top_p >= 1.0 else f", top_p {self.top_p}"
        return f"sampling, temperature {self.temperature}, top_k {self.top_k}{nucleus}, a seed per item"

    def check(self, weight_to_fit: bool = False) -> None:
        """One-line ``ValueError`` for settings that cannot work together (before a model loads);
        ``weight_to_fit``: the text weight will be fitted (evaluation's --fit_text_weight_on)."""
        if self.score_source == "combined" and self.text_weight is None and not weight_to_fit:
            raise ValueError("--score_source combined needs --text_weight W (mllm-dr-evaluate can fit it on a dev "
                             "evaluation: --fit_text_weight_on DEV_EVAL_DIR)")
        if self.text_weight is not None and not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"--text_weight must be in [0, 1], got {self.text_weight}")
        if self.attribution_effect not in ATTRIBUTION_EFFECTS:
            raise ValueError(f"--attribution_effect must be one of {', '.join(ATTRIBUTION_EFFECTS)}, got {self.attribution_effect!r}")
        if self.attribution_effect != "direct" and not self.modality_attribution:
            raise ValueError(f"--attribution_effect {self.attribution_effect} is an option of --modality_attribution: add it")
        if self.score_source in ("expected", "combined") and not self.score_probabilities:
            raise ValueError(f"--score_source {self.score_source} reads the score probabilities: drop --no_score_probabilities")

    def for_model(self, model: Any) -> GenerationArguments:
        """These settings with ``top_p`` taken from the model's generation config when not given."""
        if self.top_p is not None:
            if not 0.0 < self.top_p <= 1.0:
                raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
            return self
        top_p = getattr(getattr(model, "generation_config", None), "top_p", None)
        return dataclasses.replace(self, top_p=float(top_p) if top_p else 1.0)


# ----------------------------------------------------------------------------- sampling with a seed per item
def item_seed(seed: int, participant_id: str, item_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{participant_id}:{item_index}".encode()).hexdigest()
    return int(digest[:12], 16)


class PerItemSampler(LogitsProcessor):
    """Samples each row from its own random stream (temperature, top-k, then top-p among those) and
    turns the row into a one-hot, so greedy decoding then emits the sampled token.

    Sampling is the Gumbel-max trick over the top-k logits: the uniforms come from a
    ``torch.Generator`` per row, drawn for all steps before decoding and moved to the device once,
    so a step needs no device-to-host copy and no per-row loop. Each item's randomness is its own: a
    resumed run, or a different batch composition, gives the same text.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: int, max_steps: int = 200, top_p: float = 1.0):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = float(top_p)
        self.max_steps = max(1, int(max_steps))
        self._uniforms: torch.Tensor | None = None
        self._start: int | None = None

    def _draw(self, steps: int, width: int) -> torch.Tensor:
        """``(rows, steps, width)`` uniforms in (0, 1), each row from its own generator."""
        tiny = torch.finfo(torch.float32).tiny
        rows = [torch.rand((steps, width), generator=g).clamp_(tiny, 1.0 - 2**-24) for g in self.generators]
        return torch.stack(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"PerItemSampler has {len(self.generators)} seeds for a batch of {scores.shape[0]}")
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        logits = scores.float() / max(self.temperature, 1e-6)
        width = self.top_k if 0 < self.top_k < logits.shape[-1] else logits.shape[-1]
        if width == logits.shape[-1]:
            uniforms = self._draw(1, width)[:, 0].to(scores.device)  # the whole vocabulary: drawn per step
        else:
            if self._uniforms is None or step >= self._uniforms.shape[1]:
                fresh = self._draw(self.max_steps, width).to(scores.device)
                self._uniforms = fresh if self._uniforms is None else torch.cat([self._uniforms, fresh], dim=1)
            uniforms = self._uniforms[:, step]
        values, indices = logits.topk(width, dim=-1)  # sorted, most likely first
        if self.top_p < 1.0:  # the smallest prefix whose probability reaches top_p (the first token always stays)
            probabilities = values.softmax(dim=-1)
            outside = probabilities.cumsum(dim=-1) - probabilities >= self.top_p
            values = values.masked_fill(outside, float("-inf"))
        gumbel = -torch.log(-torch.log(uniforms))
        chosen = indices.gather(1, (values + gumbel).argmax(dim=-1, keepdim=True))
        return torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)


def choose_score(
    parsed: int | None,
    head: float | None,
    source: str,
    unparsed: float,
    lo: int,
    hi: int,
    expected: float | None = None,
    text_weight: float | None = None,
):
    """(score used, fell back?) for one item; the head's score is clipped to the item range.

    ``expected``: the expected score under the LM's digit probabilities (``expected`` and
    ``combined`` read it; where it is missing they read the parsed digit, then the head)."""
    clipped = None if head is None else float(min(max(head, lo), hi))
    if source == "head":
        if clipped is None:
            raise ValueError("--score_source head needs a trained score head")
        return clipped, False
    if source in ("expected", "combined"):
        text = expected if expected is not None else parsed
        if text is not None and source == "combined" and clipped is not None:
            if text_weight is None:
                raise ValueError("--score_source combined needs --text_weight (or, in evaluation, --fit_text_weight_on)")
            return float(text_weight * float(text) + (1.0 - text_weight) * clipped), False
        if text is not None:
            return float(text), False
        return (clipped, True) if clipped is not None else (float(unparsed), False)
    if parsed is not None:
        return float(parsed), False
    if source == "generated_with_head_fallback" and clipped is not None:
        return clipped, True
    return float(unparsed), False


# ----------------------------------------------------------------------------- generation
def shares_prefix(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Items of one participant with one transcript and one feature sequence per modality (E-DAIC, DAIC-WOZ)."""
    first = rows[0]
    return len(rows) > 1 and all(
        r["participant_id"] == first["participant_id"]
        and r["transcript"] == first["transcript"]
        and all(feature_key(r, m) == feature_key(first, m) for m in ("audio", "video"))
        for r in rows
    )


@torch.no_grad()
def generate_with_shared_prefix(model, batch: Mapping[str, torch.Tensor], shared: Prefill | None = None, **generate_kwargs: Any):
    """Generation for prompts that share a prefix (a participant's system prompt, features and
    transcript come before the item instruction): the prefix is prefilled once, its KV cache and
    last hidden states are copied to every item, and only the item-specific suffixes are prefilled.
    The head still pools the whole prompt (prefix hidden states + suffix hidden states).
    ``shared``: the prefix already prefilled (:func:`~mllm_dr.inference.prefix.shared_prefill`; it is
    left intact for another use, e.g. the modality attribution)."""
    real = real_prompts(batch)
    if shared is None:
        shared = shared_prefill(model, batch)
        cache = shared.repeated(len(real), copy=False)  # this prefill is used up here
    else:
        cache = shared.repeated(len(real))
    common = len(shared.ids)
    suffix_ids, suffix_mask = left_padded(
        [r[common:] for r in real], generate_kwargs.get("pad_token_id", 0), batch["attention_mask"].dtype
    )
    prefix = shared.ids.unsqueeze(0)
    full_ids = torch.cat([prefix.expand(len(real), -1), suffix_ids], dim=1)
    full_mask = torch.cat([torch.ones_like(prefix).expand(len(real), -1), suffix_mask], dim=1)
    out = model.generate(
        input_ids=full_ids, attention_mask=full_mask, prefix_hidden_states=shared.hidden,
        **{cache_kwarg(): cache}, **generate_kwargs,
    )  # fmt: skip
    return out, full_ids.shape[1]


@dataclass
class Answers:
    """One generation of a batch's rows, as the records and the attribution read it."""

    new_tokens: torch.Tensor  # (rows, steps): the generated ids
    texts: list[str]
    parsed: list[tuple[int | None, str | None]]  # (strict score, rationale) per row
    head: list[float | None]  # the MAA head's score per row (None: no trained head)
    steps: list[tuple[int, int, tuple[int, ...]]] | None  # where each row wrote its score digit
    probabilities: list[dict[str, Any]]  # :func:`mllm_dr.uncertainty.score_probabilities` per row (or {})
    counted: int  # new tokens generated (each row up to and including its EOS)

    def outcome(self, row: int, processor: MllmDrProcessor, settings: GenerationArguments) -> dict[str, Any]:
        """Row ``row``'s parsed score, rationale, head's score, expected score and the score that
        counts (``settings.score_source``), with whether that fell back to the head."""
        parsed, rationale = self.parsed[row]
        expected = self.probabilities[row].get("expected_score")
        score, fell_back = choose_score(
            parsed, self.head[row], settings.score_source, settings.unparsed_score, processor.score_min,
            processor.score_max, expected=expected, text_weight=settings.text_weight,
        )  # fmt: skip
        return {"parsed_score": parsed, "rationale": rationale, "head": self.head[row], "expected": expected,
                "score": score, "fell_back": fell_back}  # fmt: skip


def _generate_kwargs(rows: Sequence[Mapping[str, Any]], settings: GenerationArguments, tokenizer) -> dict[str, Any]:
    """``generate``'s keywords for one batch (a fresh per-item sampler: each call draws the same streams)."""
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": False}
    if settings.score_probabilities:  # raw logits per step: PerItemSampler's processed scores are one-hot
        kwargs.update(output_logits=True, return_dict_in_generate=True)
    if not settings.greedy:
        seeds = [item_seed(settings.seed, str(r["participant_id"]), int(r["item_index"])) for r in rows]
        kwargs["logits_processor"] = [
            PerItemSampler(seeds, settings.temperature, settings.top_k, settings.max_new_tokens, settings.top_p or 1.0)
        ]
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    kwargs["eos_token_id"] = tokenizer.eos_token_id
    return kwargs


@torch.no_grad()
def generate_answers(
    model,
    processor: MllmDrProcessor,
    batch: Mapping[str, torch.Tensor],
    rows: Sequence[Mapping[str, Any]],
    settings: GenerationArguments,
    use_head: bool,
    keep_prefill: bool = False,
) -> tuple[Answers, Prefill | None]:
    """Generates the collated ``batch`` of ``rows`` once and parses it: ``(answers, prefill)``. With
    prefix reuse and ``keep_prefill``, the participant's shared prefix as prefilled here (kept intact
    for the direct attribution's "every modality" condition), else None."""
    tokenizer = processor.tokenizer
    kwargs = _generate_kwargs(rows, settings, tokenizer)
    shared = None
    if settings.prefix_reuse and shares_prefix(rows):
        shared = shared_prefill(model, batch) if keep_prefill else None
        out, prompt_length = generate_with_shared_prefix(model, batch, shared, **kwargs)
    else:
        out = model.generate(**batch, **kwargs)
        prompt_length = batch["input_ids"].shape[1]
    new_tokens = out.sequences[:, prompt_length:]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    eos = tokenizer.eos_token_id
    counted = int(sum(int((row != eos).sum()) + int((row == eos).any()) for row in new_tokens.cpu()))
    heads = [float(v) for v in out.head_score] if use_head and out.head_score is not None else [None] * len(texts)
    parsed = [processor.parse_output(text) for text in texts]
    steps = None
    if settings.score_probabilities or settings.modality_attribution:  # where each row wrote its score digit
        steps = score_steps(tokenizer, new_tokens, [p for p, _ in parsed], processor.score_min, processor.score_max)
    if settings.score_probabilities and out.logits is not None:
        probabilities = score_probabilities(
            tokenizer, new_tokens, out.logits, [p for p, _ in parsed], processor.score_min, processor.score_max,
            steps=steps,
        )
    else:
        probabilities = [{} for _ in texts]
    return Answers(new_tokens, texts, parsed, heads, steps, probabilities, counted), shared


@torch.no_grad()
def total_attribution(
    model, processor: MllmDrProcessor, batch: Mapping[str, torch.Tensor], rows: Sequence[Mapping[str, Any]],
    settings: GenerationArguments, use_head: bool, outcomes: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any] | None]:  # fmt: skip
    """``--attribution_effect total``: each withheld condition generates the rows' answers again
    (same per-item random streams), and each row records how its score that counts, its expected
    score and its head's score changed (:func:`mllm_dr.inference.attribution.total_effect`) from its
    ``outcomes`` with every modality (:meth:`Answers.outcome`)."""
    conditions = attribution_conditions(batch)
    if not conditions:
        return [None] * len(rows)
    without = {
        name: generate_answers(model, processor, withheld(batch, modalities), rows, settings, use_head)[0]
        for name, modalities in conditions.items()
    }  # fmt: skip
    return [
        total_effect(outcome, {name: other.outcome(i, processor, settings) for name, other in without.items()})
        for i, outcome in enumerate(outcomes)
    ]  # fmt: skip


@torch.no_grad()
def generate_items(
    model,
    processor: MllmDrProcessor,
    rows: Sequence[Mapping[str, Any]],
    mode: str,
    settings: GenerationArguments,
    use_head: bool,
) -> tuple[list[dict[str, Any]], int]:
    """One batch of rows -> ``(records, new tokens generated)``.

    Each record holds the row's ids, the generated text, the strictly parsed score and rationale,
    the MAA head's score (``use_head``: only for a trained head), the score that counts
    (``settings.score_source``) and whether it fell back to the head, with
    ``settings.score_probabilities`` the LM's probabilities of the scores where it wrote the digit
    (:func:`mllm_dr.uncertainty.score_probabilities`: ``score_probabilities``,
    ``score_probability_mass``, ``expected_score``, ``entropy``), with ``settings.modality_attribution``
    the ``attribution`` of :mod:`mllm_dr.inference.attribution`, plus the row's label, total and
    gender. The new tokens count the answers only (not the total effect's re-generations).
    """
    batch = MllmDrCollator(processor, mode, with_rationale=True, padding_side="left", with_targets=False)(list(rows))
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    direct = settings.modality_attribution and settings.attribution_effect == "direct"
    # with the direct attribution the prefix's prefill is kept: the withheld conditions reuse its ids
    # (and, outside float32, the "every modality" condition its cache)
    answers, shared = generate_answers(model, processor, batch, rows, settings, use_head, keep_prefill=direct)
    outcomes = [answers.outcome(i, processor, settings) for i in range(len(rows))]
    attributions: list[dict[str, Any] | None] = [None] * len(rows)
    if direct:
        generated = ([o["expected"] for o in outcomes], answers.head)
        attributions = modality_attribution(model, processor, batch, answers.new_tokens, answers.steps,
                                            answers.head[0] is not None, shared=shared, generated=generated)  # fmt: skip
    elif settings.modality_attribution:
        attributions = total_attribution(model, processor, batch, rows, settings, use_head, outcomes)
    records = []
    for i, (row, outcome) in enumerate(zip(rows, outcomes)):
        records.append(
            {
                "participant_id": str(row["participant_id"]),
                "item_index": int(row["item_index"]),
                "item_name": row["item_name"],
                "generated_text": answers.texts[i],
                "rationale": outcome["rationale"],
                "parsed_score": outcome["parsed_score"],
                "head_score": outcome["head"],
                "score": outcome["score"],
                **answers.probabilities[i],
                **({"attribution": attributions[i]} if settings.modality_attribution else {}),
                "label": row.get("label"),
                "fell_back": outcome["fell_back"],
                "total": row.get("total"),
                "gender": row.get("gender"),
            }
        )
    return records, answers.counted


def generate_batches(
    model,
    processor: MllmDrProcessor,
    rows: Sequence[Mapping[str, Any]],
    mode: str,
    settings: GenerationArguments,
    use_head: bool,
    *,
    progress: bool = True,
) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """:func:`generate_items` over every row, ``settings.batch_size`` at a time (never mixing
    participants when prefixes are reused): yields each batch's ``(records, new tokens)`` as it is
    done, so a caller can write it before the next starts. ``progress``: a tqdm bar over items (on
    stderr)."""
    from tqdm.auto import tqdm

    batches = make_batches(list(rows), max(1, settings.batch_size), by_participant=settings.prefix_reuse)
    with tqdm(total=len(rows), desc="generating", unit="item", disable=not progress) as bar:
        for batch in batches:
            records, counted = generate_items(model, processor, batch, mode, settings, use_head)
            bar.update(len(records))
            yield records, counted


def make_batches(rows: list[dict[str, Any]], batch_size: int, by_participant: bool) -> list[list[dict[str, Any]]]:
    """Fixed-size batches; with prefix reuse, a batch never mixes participants (their prompts share
    a prefix only within a participant)."""
    if not by_participant:
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row["participant_id"])].append(row)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def check_rows(rows: Sequence[Mapping[str, Any]], processor: MllmDrProcessor, mode: str) -> None:
    """Every input checked before anything is generated or written: empty transcripts, feature widths
    (read from file headers, naming the file)."""
    from ..data import feature_shape

    inputs = processor.inputs_for(mode)
    checked: set[tuple[str, str]] = set()
    for row in rows:
        pid = str(row["participant_id"])
        if inputs.transcript and not str(row.get("transcript") or "").strip():
            raise SystemExit(f"participant {pid}, item {row['item_index']}: the transcript is empty")
        for modality in ("audio", "video"):
            if not getattr(inputs, modality):
                continue
            expected = getattr(processor, f"{modality}_feature_dim")
            for file in feature_key(row, modality)[1]:
                if (modality, file) in checked:
                    continue
                checked.add((modality, file))
                try:
                    _frames, dim = feature_shape(file)
                except ValueError as error:
                    raise SystemExit(f"participant {pid}: {error}") from None
                if dim != expected:
                    raise SystemExit(
                        f"participant {pid}: {modality} features {file} are {dim} wide, the model expects (frames, {expected})"
                    )
