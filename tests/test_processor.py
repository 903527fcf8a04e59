"""The processor: prompt layout, targets, truncation, frame policies, bad input, strict parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM, make_tokenizer, random_features
from processing_mllm_dr import (
    PHQ8_ITEMS,
    PHQ9_ITEMS,
    MllmDrProcessor,
    apply_frame_policy,
    format_target,
    parse_output,
)


@pytest.fixture
def processor():
    return MllmDrProcessor(
        make_tokenizer(),
        num_audio_tokens=4,
        num_video_tokens=3,
        audio_feature_dim=AUDIO_DIM,
        video_feature_dim=VIDEO_DIM,
        max_transcript_tokens=40,
    )


def _features(rng, n=2):
    return (
        [random_features(rng, 5, AUDIO_DIM) for _ in range(n)],
        [random_features(rng, 4, VIDEO_DIM) for _ in range(n)],
    )


def test_item_tables():
    assert [item.index for item in PHQ8_ITEMS] == list(range(1, 9))
    assert [item.index for item in PHQ9_ITEMS] == list(range(1, 10))
    assert [item.name for item in PHQ8_ITEMS] == [
        "NoInterest", "Depressed", "Sleep", "Tired", "Appetite", "Failure", "Concentrating", "Moving",
    ]
    assert PHQ9_ITEMS[8].name == "SelfHarm"


def test_targets_are_exact_and_eos_is_trained(processor):
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # pad = EOS, the hard case
    rng = np.random.default_rng(0)
    audio, video = _features(rng)
    batch = processor(
        ["I sleep badly", "fine"], [3, 1], audio, video, scores=[2, 0], rationales=["Poor sleep.", None],
        padding_side="right",
    )
    for i, expected in enumerate(["Evaluation Reason: Poor sleep.\nScore: 2", "Score: 0"]):
        trained = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert trained[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(trained[:-1]) == expected
        # labels train exactly the answer: it sits right after the prompt
        n_prompt = int(batch["prompt_mask"][i].sum())
        assert (batch["labels"][i][:n_prompt] == -100).all()
        assert batch["labels"][i][n_prompt] != -100
    # the right-padded sample 1 has pads (= EOS ids) that are not trained, its own EOS is
    assert (batch["attention_mask"][1] == 0).any()
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == -100).all()
    assert batch["score_labels"].tolist() == [2.0, 0.0]


def test_prompt_order_shared_part_first(processor):
    rng = np.random.default_rng(1)
    audio, video = _features(rng)
    batch = processor(["the same transcript", "the same transcript"], [1, 7], audio, video, padding_side="right")
    a, b = batch["input_ids"]
    common = 0
    while a[common] == b[common]:
        common += 1
    text = processor.tokenizer.decode(a[:common])
    # system prompt, both placeholders and the whole transcript precede the first difference
    assert "psychiatrist" in text and "the same transcript" in text
    assert "<AudioHere>" in text and "<VideoHere>" in text
    assert text.index("<AudioHere>") < text.index("the same transcript")
    assert (a == processor.audio_token_id).sum() == 4 and (a == processor.video_token_id).sum() == 3


@pytest.mark.parametrize(
    ("mode", "transcript", "audio", "video"),
    [
        ("full", True, True, True),
        ("features", False, True, True),
        ("audio", False, True, False),
        ("text", True, False, False),
        ("text_video", True, False, True),
    ],
)
def test_prompt_modes(processor, mode, transcript, audio, video):
    rng = np.random.default_rng(2)
    a, v = _features(rng, 1)
    batch = processor(["UNIQUE words here"], [2], a if audio else None, v if video else None, mode=mode)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert ("UNIQUE words here" in text) == transcript
    assert ("audio_features" in batch) == audio and ("<AudioHere>" in text) == audio
    assert ("video_features" in batch) == video and ("<VideoHere>" in text) == video


def test_only_the_transcript_is_truncated(processor):
    rng = np.random.default_rng(3)
    audio, video = _features(rng, 1)
    long_transcript = " ".join(["hello how are you doing today"] * 40)
    batch = processor(
        [long_transcript], [2], audio, video, scores=[3], rationales=["Clear low mood."], return_truncation=True
    )
    assert batch["transcript_truncated"][0] > 0
    ids = batch["input_ids"][0]
    assert (ids == processor.audio_token_id).sum() == 4 and (ids == processor.video_token_id).sum() == 3
    trained = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(trained[:-1]) == "Evaluation Reason: Clear low mood.\nScore: 3"
    short = processor(["hello"], [2], audio, video, return_truncation=True)
    full_prompt_without_transcript = short["input_ids"].shape[1] - len(processor.tokenizer("hello")["input_ids"])
    assert int(batch["prompt_mask"][0].sum()) == full_prompt_without_transcript + processor.max_transcript_tokens


def test_features_padded_with_boolean_masks_and_missing_modality(processor):
    rng = np.random.default_rng(4)
    audio = [random_features(rng, 6, AUDIO_DIM), random_features(rng, 2, AUDIO_DIM)]
    batch = processor(["a b", "c d"], [1, 2], audio, [None, None])
    assert batch["audio_features"].shape == (2, 6, AUDIO_DIM)
    assert batch["audio_mask"].dtype == torch.bool
    assert batch["audio_mask"].sum(1).tolist() == [6, 2]
    assert torch.equal(batch["audio_features"][1, :2], torch.from_numpy(audio[1]))
    assert (batch["audio_features"][1, 2:] == 0).all()
    # missing video: placeholders stay, features are a fully masked row
    assert (batch["input_ids"] == processor.video_token_id).sum(1).tolist() == [3, 3]
    assert not batch["video_mask"].any()


def test_frame_policies():
    frames = np.arange(30 * 2, dtype=np.float32).reshape(30, 2)
    uniform = apply_frame_policy(frames, "uniform", max_frames=7)
    assert uniform.shape == (7, 2) and uniform[0, 0] == 0 and uniform[-1, 0] == frames[-1, 0]  # covers the end
    assert apply_frame_policy(frames, "uniform", max_frames=100) is frames
    pooled = apply_frame_policy(frames, "truncate_maxpool", max_frames=0, truncate_frames=21, pool_size=3)
    assert pooled.shape == (7, 2)
    np.testing.assert_array_equal(pooled[0], frames[2])  # max of frames 0-2
    assert pooled[-1, 0] == frames[20, 0]  # nothing after frame 21
    assert apply_frame_policy(frames, "none", 1) is frames
    with pytest.raises(ValueError, match="frame policy"):
        apply_frame_policy(frames, "random", 5)


def test_processor_applies_its_frame_policy():
    processor = MllmDrProcessor(
        make_tokenizer(), audio_feature_dim=AUDIO_DIM, video_feature_dim=VIDEO_DIM, audio_max_frames=10
    )
    batch = processor(["x y"], [1], [np.ones((95, AUDIO_DIM), np.float32)], [None])
    assert batch["audio_features"].shape[1] == 10


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(processor):
    rng = np.random.default_rng(5)
    audio, video = _features(rng)
    with pytest.raises(ValueError, match=r"audio_features\[1\]: expected shape \(frames, 12\), got \(5, 13\)"):
        processor(["a", "b"], [1, 2], [audio[0], np.zeros((5, AUDIO_DIM + 1))], video)
    bad = video[0].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"video_features\[0\]: 1 frame\(s\) contain NaN or inf"):
        processor(["a", "b"], [1, 2], audio, [bad, video[1]])
    inf = audio[1].copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"audio_features\[1\]: 1 frame"):
        processor(["a", "b"], [1, 2], [audio[0], inf], video)
    with pytest.raises(ValueError, match="item_indices: expected 2 entries"):
        processor(["a", "b"], [1], audio, video)
    with pytest.raises(ValueError, match="audio_features: expected 2 entries"):
        processor(["a", "b"], [1, 2], audio[:1], video)
    with pytest.raises(ValueError, match="scores: expected 2 entries"):
        processor(["a", "b"], [1, 2], audio, video, scores=[1])
    with pytest.raises(ValueError, match=r"transcripts\[1\]: contains the text <AudioHere>"):
        processor(["a", "I said <AudioHere> twice"], [1, 2], audio, video)
    with pytest.raises(ValueError, match=r"transcripts\[0\]: the transcript is empty"):
        processor(["  ", "b"], [1, 2], audio, video)
    with pytest.raises(ValueError, match=r"scores\[0\]: expected an integer item score in 0-3, got 4"):
        processor(["a", "b"], [1, 2], audio, video, scores=[4, 0])
    with pytest.raises(ValueError, match="item index 9 is not an item of PHQ8"):
        processor(["a"], [9], audio[:1], video[:1])
    with pytest.raises(ValueError, match="mode shows no audio|mode 'text' shows no audio"):
        processor(["a"], [1], audio[:1], None, mode="text")


def test_missing_or_duplicated_placeholder_in_template_is_refused(processor):
    rng = np.random.default_rng(6)
    audio, video = _features(rng, 1)
    processor.system_prompt = "You are a psychiatrist. <VideoHere>"  # a user edit that duplicates a placeholder
    with pytest.raises(ValueError, match=r"expected 1 <VideoHere> placeholder\(s\) .* found 2"):
        processor(["a"], [1], audio, video)
    processor.system_prompt = "You are a psychiatrist. <AudioHere>"
    with pytest.raises(ValueError, match=r"expected 0 <AudioHere> placeholder\(s\) in the prompt for mode 'text'"):
        processor(["a"], [1], mode="text")


# --------------------------------------------------------------------------- strict parsing
@pytest.mark.parametrize(
    ("text", "score", "rationale"),
    [
        ("Evaluation Reason: Sleeps poorly most nights.\nScore: 2", 2, "Sleeps poorly most nights."),
        ("Evaluation Reason: Fine.\nScore: 0", 0, "Fine."),
        ("Score: 3", 3, ""),
        ("  Evaluation Reason: ok\n  Score:1  \n", 1, "ok"),
        ("Evaluation Reason: multi\nline reason\nScore: 2.", 2, "multi\nline reason"),
    ],
)
def test_parse_well_formed(text, score, rationale):
    assert parse_output(text) == (score, rationale)


@pytest.mark.parametrize(
    "text",
    [
        "Evaluation Reason: no score at all",
        "Evaluation Reason: bad.\nScore: 4",
        "Evaluation Reason: bad.\nScore: -1",
        "Evaluation Reason: two.\nScore: 1\nScore: 2",
        "Evaluation Reason: the Score: 2 is inside the rationale",
        "Evaluation Reason: Score: 2 mentioned here.\nScore: 2",
        "Evaluation Reason: I would say 2.",
        "Score: 2 because of poor sleep",
        "Score: two",
        "Score: 1.5",
        "Score: 12",
        "",
    ],
)
def test_parse_malformed_gives_none(text):
    score, _ = parse_output(text)
    assert score is None


def test_format_target_round_trips_through_parse():
    for score in range(4):
        text = format_target(score, "Because of X, Y and Z.")
        assert parse_output(text) == (score, "Because of X, Y and Z.")
        assert parse_output(format_target(score)) == (score, "")


def test_answer_order_score_first_is_the_authors_and_round_trips(tiny, tmp_path):
    from processing_mllm_dr import MllmDrProcessor, format_target, parse_output

    _, processor = tiny
    assert processor.answer_order == "reason_first"
    first = format_target(2, "Wakes most nights.", "score_first")
    assert first == "Score: 2\nEvaluation Reason: Wakes most nights."
    assert parse_output(first) == parse_output(format_target(2, "Wakes most nights.")) == (2, "Wakes most nights.")
    reason_prompt = processor.instruction(3)
    processor.answer_order = "score_first"
    assert processor.instruction(3).index("Score: 0-3") < processor.instruction(3).index("Evaluation Reason:")
    assert reason_prompt.index("Evaluation Reason:") < reason_prompt.index("Score: 0-3")
    ids = processor.tokenize("I sleep badly", 3, score=2, rationale="Wakes most nights.")
    answer = processor.tokenizer.decode([t for t, label in zip(ids["input_ids"], ids["labels"]) if label != -100])
    assert answer.startswith("Score: 2\nEvaluation Reason: Wakes most nights.")
    processor.save_pretrained(tmp_path)
    assert MllmDrProcessor.from_pretrained(tmp_path).answer_order == "score_first"
    with pytest.raises(ValueError, match="answer_order"):
        format_target(1, "x", "middle")
