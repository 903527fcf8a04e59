"""Lenient API checks (issue 12, class 12): the processor and the model refuse inputs that used to be
accepted loosely (rounded, broadcast, cast) with a ``ValueError`` that names the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM, build_tiny, make_tokenizer, random_features
from processing_mllm_dr import MllmDrProcessor

TRANSCRIPT = "I sleep badly and wake up tired"


@pytest.fixture(scope="module")
def processor():
    return MllmDrProcessor(
        make_tokenizer(), num_audio_tokens=4, num_video_tokens=3, audio_feature_dim=AUDIO_DIM,
        video_feature_dim=VIDEO_DIM, max_transcript_tokens=40,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model(backbone_dir):
    return build_tiny(backbone_dir)


def _features(n: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [random_features(rng, 5, AUDIO_DIM) for _ in range(n)], [random_features(rng, 4, VIDEO_DIM) for _ in range(n)]


def _call(processor, n: int = 1, **overrides):
    audio, video = _features(n)
    arguments = {"transcripts": [TRANSCRIPT] * n, "item_indices": [3] * n, "audio_features": audio, "video_features": video}
    return processor(**{**arguments, **overrides})


def _shape_pattern(shape: tuple[int, ...]) -> str:
    """A regular expression for ``repr(shape)``."""
    return r"\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + r"\)"


def _model_batch(processor):
    audio, video = _features(2, seed=1)
    return processor([TRANSCRIPT, "I feel fine"], [3, 2], audio, video, scores=[2, 0])


# --------------------------------------------------------------------------- the processor
@pytest.mark.parametrize("item_indices", [[3.7], 3.7], ids=["list", "scalar"])
def test_fractional_item_index_is_refused(processor, item_indices):
    with pytest.raises(ValueError, match=r"item_indices(\[0\])?: expected an integer, got 3\.7"):
        _call(processor, item_indices=item_indices)
    # an integral float is the integer it spells
    integral = [3.0] if isinstance(item_indices, list) else 3.0
    assert torch.equal(_call(processor, item_indices=integral)["input_ids"], _call(processor)["input_ids"])


@pytest.mark.parametrize(
    "item_indices", [[True], True, [np.bool_(True)], np.bool_(True)], ids=["list", "scalar", "np-list", "np-scalar"]
)
def test_bool_item_index_is_refused(processor, item_indices):
    # True is an int in Python: it would silently be item 1
    with pytest.raises(ValueError, match=r"item_indices(\[0\])?: expected an integer, got (np\.)?True"):
        _call(processor, item_indices=item_indices)


@pytest.mark.parametrize("score", [2.5, True, np.bool_(False), "abc", "2", None, [2]])
def test_score_that_is_not_an_integer_is_refused_naming_its_position(processor, score):
    with pytest.raises(ValueError, match=r"scores\[1\]: expected an integer item score in 0-3, got "):
        _call(processor, n=2, scores=[1, score])
    assert _call(processor, n=2, scores=[1, 2.0])["score_labels"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("scores", 2), ("scores", "2"), ("rationales", "Poor sleep."), ("item_indices", "3"), ("audio_features", 0.0)],
)
def test_per_prompt_arguments_must_be_sequences(processor, name, value):
    # a scalar has no len(); a string's len() counts characters
    extra = {"scores": [2]} if name == "rationales" else {}
    with pytest.raises(ValueError, match=rf"{name}: expected a sequence of 1 entries \(one per transcript\)"):
        _call(processor, **{**extra, name: value})
    with pytest.raises(ValueError, match="transcripts: expected a string or a sequence of strings, got NoneType"):
        processor(None, [3])


@pytest.mark.parametrize("field", ["audio_features", "video_features"])
@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(bool),
        lambda a: a.astype(np.complex64),
        lambda a: torch.from_numpy(a).bool(),
        lambda a: torch.from_numpy(a).to(torch.complex64),
    ],
    ids=["numpy-bool", "numpy-complex", "torch-bool", "torch-complex"],
)
def test_bool_or_complex_features_are_refused(processor, field, convert):
    audio, video = _features(2)
    features = {"audio_features": audio, "video_features": video}
    features[field] = [features[field][0], convert(features[field][1])]
    with pytest.raises(ValueError, match=rf"{field}\[1\]: expected real-valued features, got dtype (bool|complex64)"):
        processor([TRANSCRIPT] * 2, [3, 4], **features)


@pytest.mark.parametrize("frames_reduced", [False, True])
def test_non_finite_features_are_refused_naming_the_position(processor, frames_reduced):
    audio, video = _features(2)
    video[1] = torch.from_numpy(video[1])
    video[1][2, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"video_features\[1\]: 1 frame\(s\) contain NaN or inf"):
        processor([TRANSCRIPT] * 2, [3, 4], audio, video, frames_reduced=frames_reduced)
    audio[0][:, 1] = np.nan
    with pytest.raises(ValueError, match=r"audio_features\[0\]: 5 frame\(s\) contain NaN or inf"):
        processor([TRANSCRIPT] * 2, [3, 4], audio, video, frames_reduced=frames_reduced)


@pytest.mark.parametrize(
    ("shape", "shown"),
    [((AUDIO_DIM,), r"\(12,\)"), ((1, 5, AUDIO_DIM), r"\(1, 5, 12\)"), ((), r"\(\)")],
)
def test_features_that_are_not_frames_by_dim_are_refused_with_their_shape(processor, shape, shown):
    with pytest.raises(ValueError, match=rf"audio_features\[0\]: expected shape \(frames, 12\), got {shown}"):
        _call(processor, audio_features=[np.zeros(shape, np.float32)])


def test_ragged_features_are_refused_naming_the_position(processor):
    audio, video = _features(2)
    with pytest.raises(ValueError, match=r"audio_features\[1\]: not an array of numbers"):
        processor([TRANSCRIPT] * 2, [3, 4], [audio[0], [[0.0] * AUDIO_DIM, [0.0]]], video)


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("shape", [(3,), (1,), (2, 1)])
def test_score_labels_of_another_batch_size_are_refused(tiny_model, shape):
    model, processor = tiny_model
    batch = _model_batch(processor)
    expected = rf"score_labels must have shape \(2,\).*batch size 2, score_labels has shape {_shape_pattern(shape)}"
    with pytest.raises(ValueError, match=expected):
        model(**{**batch, "score_labels": torch.zeros(shape)})
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="score_labels .* inputs_embeds has batch size 2"):
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], score_labels=torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, None), (2, -1)], ids=["1x1", "2x1", "1xL", "2xL-1"])
def test_prompt_mask_of_another_shape_is_refused(tiny_model, shape):
    model, processor = tiny_model
    batch = _model_batch(processor)
    length = batch["input_ids"].shape[1]
    rows, columns = shape
    columns = {None: length, -1: length - 1}.get(columns, columns)
    expected = rf"prompt_mask must have shape \(2, {length}\), that of input_ids, got \({rows}, {columns}\)"
    with pytest.raises(ValueError, match=expected):
        model(**{**batch, "prompt_mask": torch.ones(rows, columns, dtype=torch.bool)})


@pytest.mark.parametrize("name", ["prompt_mask", "audio_mask", "video_mask"])
def test_masks_must_be_boolean_or_hold_only_zero_and_one(tiny_model, name):
    model, processor = tiny_model
    batch = _model_batch(processor)
    mask = batch[name]
    for bad in (mask.long() * 2, mask.float() * 0.5, mask.long() * 3 - 1):
        with pytest.raises(ValueError, match=rf"{name} must be boolean or hold only 0 and 1"):
            model(**{**batch, name: bad})
    # 0/1 masks of any dtype mean the same as the boolean one
    with torch.no_grad():
        reference = model(**batch).score
        for same in (mask.long(), mask.float()):
            torch.testing.assert_close(model(**{**batch, name: same}).score, reference, atol=0, rtol=0)
