"""mllm_dr.extraction / mllm-dr-extract-features on a tiny random HuBERT and real (espeak-ng) or synthesized speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

import mllm_dr.extraction as ef
from mllm_dr.commands import extract_features as extract_cli

HIDDEN = 32
SENTENCE = "I have not been sleeping well lately, and most days I feel tired and a bit low. "


def tiny_hubert(path: Path, layer_norm: bool = False, feature_extractor: dict | None = None) -> Path:
    """A 3-layer HuBERT with 32-wide hidden states (HuBERT's real conv geometry: 50 frames/s)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if layer_norm else "group",
        do_stable_layer_norm=layer_norm,
    )
    HubertModel(config).save_pretrained(path)
    if feature_extractor is not None:
        Wav2Vec2FeatureExtractor(**feature_extractor).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory) -> Path:
    return tiny_hubert(tmp_path_factory.mktemp("hubert"))


@pytest.fixture(scope="module")
def hubert_layer_norm_dir(tmp_path_factory) -> Path:
    return tiny_hubert(tmp_path_factory.mktemp("hubert_ln"), layer_norm=True)


def synth_speech(sampling_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like float32 audio: voiced 'syllables' (harmonics of a gliding f0, amplitude
    envelope) separated by pauses, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    audio = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(t.shape)
    return (audio / np.abs(audio).max() * 0.8).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sampling_rate: int) -> Path:
    """16-bit PCM, as the corpora ship."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, sampling_rate, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, float]:
    """A ~15 s recording: espeak-ng speech when the binary exists, else synthesized. Returns the
    wav (at its own sampling rate) and its duration in seconds."""
    folder = tmp_path_factory.mktemp("speech")
    path = folder / "speech.wav"
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        subprocess.run([espeak, "-w", str(path), SENTENCE * 3], check=True, capture_output=True)
    else:
        write_wav(path, synth_speech(22050, 15.0), 22050)
    sampling_rate, data = wavfile.read(path)
    return path, data.shape[0] / sampling_rate


def load(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


# ----------------------------------------------------------------------------- layouts + CLI
def test_edaic_cli_writes_float32_frames_at_50_per_second(hubert_dir, speech, tmp_path):
    wav, seconds = speech
    root = tmp_path / "E-DAIC"
    (root / "data" / "300_P").mkdir(parents=True)
    shutil.copy(wav, root / "data" / "300_P" / "300_AUDIO.wav")
    (root / "data" / "301_P").mkdir()  # no wav: reported, not fatal for the others

    code = extract_cli.main(["--model", str(hubert_dir), "--data_dir", str(root), "--dataset_format", "edaic", "--no_progress"])

    features = load(root / "data" / "300_P" / "features" / "300_HuBERT.npy")
    assert features.dtype == np.float32 and features.ndim == 2 and features.shape[1] == HIDDEN
    assert abs(features.shape[0] - seconds * 50) <= 1.5
    assert features.shape[0] == (ef.load_audio(wav).shape[0] - 400) // 320 + 1
    assert np.isfinite(features).all()
    assert code == 1  # 301_P has no wav
    assert not list((root / "data" / "301_P").rglob("*.npy"))


def test_edaic_nested_folders_at_root(hubert_dir, tmp_path):
    root = tmp_path / "edaic"
    write_wav(root / "402_P" / "402_P" / "402_AUDIO.wav", synth_speech(16000, 1.0), 16000)
    write_wav(root / "403_P" / "403_AUDIO.wav", synth_speech(16000, 1.0, seed=1), 16000)
    write_wav(root / "404_P" / "404_AUDIO.wav", synth_speech(16000, 1.0, seed=2), 16000)
    (root / "404_P" / "404_P" / "features").mkdir(parents=True)  # wav outside, features inside
    jobs, missing = ef.find_audio_jobs(root, "edaic")
    assert missing == []
    # the innermost <ID>_P is the participant folder, where the loaders look for features/
    assert {job.key: job.output for job in jobs} == {
        "402": root / "402_P" / "402_P" / "features" / "402_HuBERT.npy",
        "403": root / "403_P" / "features" / "403_HuBERT.npy",
        "404": root / "404_P" / "404_P" / "features" / "404_HuBERT.npy",
    }
    summary = ef.extract_corpus(hubert_dir, root, "edaic", progress=False)
    assert len(summary.written) == 3 and not summary.failed
    assert load(jobs[0].output).shape == (49, HIDDEN)


def test_cmdc_layout_names_outputs_by_question(hubert_dir, tmp_path):
    subject = tmp_path / "cmdc" / "MDD" / "MDD01"
    write_wav(subject / "Q1.wav", synth_speech(16000, 1.0), 16000)
    write_wav(subject / "Q2-.wav", synth_speech(16000, 0.5), 16000)  # irregular suffix
    write_wav(subject / "notes.wav", synth_speech(16000, 0.5), 16000)
    summary = ef.extract_corpus(hubert_dir, tmp_path / "cmdc", "cmdc", progress=False)
    assert sorted(p.name for p in summary.written) == ["Q1_HuBERT.npy", "Q2_HuBERT.npy"]
    assert load(subject / "Q1_HuBERT.npy").shape == (49, HIDDEN)
    assert load(subject / "Q2_HuBERT.npy").shape == (24, HIDDEN)
    assert not (subject / "notes_HuBERT.npy").exists()


def test_files_layout_and_very_short_audio(hubert_dir, tmp_path):
    write_wav(tmp_path / "clip.wav", synth_speech(16000, 0.01), 16000)  # 160 samples < one receptive field
    assert (
        extract_cli.main(
            ["--model", str(hubert_dir), "--data_dir", str(tmp_path / "clip.wav"), "--dataset_format", "files", "--no_progress"]
        )
        == 0
    )
    assert load(tmp_path / "clip_HuBERT.npy").shape == (1, HIDDEN)


# ----------------------------------------------------------------------------- chunking
def test_chunked_matches_unchunked(hubert_dir, speech, monkeypatch):
    wav, seconds = speech
    whole = ef.SpeechEncoder(hubert_dir, chunk_seconds=None).encode_file(wav)
    chunked_encoder = ef.SpeechEncoder(hubert_dir, chunk_seconds=2.0, overlap_seconds=2.0)
    calls = []
    forward = chunked_encoder._forward
    monkeypatch.setattr(chunked_encoder, "_forward", lambda segment: calls.append(len(segment)) or forward(segment))
    chunked = chunked_encoder.encode_file(wav)

    assert len(calls) == -(-whole.shape[0] // 100) and len(calls) > 3  # really several windows
    assert max(calls) <= 6 * 16000 + 400  # bounded: window + context, never the whole file
    assert chunked.shape == whole.shape
    cosine = (chunked * whole).sum(1) / np.linalg.norm(chunked, axis=1) / np.linalg.norm(whole, axis=1)
    assert cosine.mean() > 0.98
    assert np.linalg.norm(chunked - whole) / np.linalg.norm(whole) < 0.2


def test_chunking_is_exact_where_the_model_is_local(hubert_layer_norm_dir, speech):
    """With a per-frame (layer) norm front end, hidden_states[0] depends only on a window of
    +-8 frames: enough context must make chunked output identical, proving the stitching."""
    wav, _ = speech
    whole = ef.SpeechEncoder(hubert_layer_norm_dir, layer=0, chunk_seconds=None).encode_file(wav)
    chunked = ef.SpeechEncoder(hubert_layer_norm_dir, layer=0, chunk_seconds=1.0, overlap_seconds=0.5).encode_file(wav)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_plan_chunks_tiles_every_frame_once():
    plan = ef.plan_chunks(1234, chunk_frames=100, context_frames=30)
    kept = np.concatenate([np.arange(start, end) for _, start, end, _ in plan])
    np.testing.assert_array_equal(kept, np.arange(1234))
    assert all(0 <= c0 <= s < e <= c1 <= 1234 and s - c0 <= 30 and c1 - e <= 30 for c0, s, e, c1 in plan)
    assert ef.plan_chunks(50, None, 10) == [(0, 0, 50, 50)]


# ----------------------------------------------------------------------------- audio input
def test_resampling_and_stereo(hubert_dir, tmp_path):
    base = synth_speech(16000, 3.0)
    write_wav(tmp_path / "a16.wav", base, 16000)
    write_wav(tmp_path / "a44.wav", resample_poly(base, 441, 160), 44100)
    write_wav(tmp_path / "a8.wav", resample_poly(base, 1, 2), 8000)
    stereo = np.stack([base, base], axis=1)
    wavfile.write(tmp_path / "st.wav", 16000, (stereo * 32767).astype(np.int16))
    left_only = np.stack([resample_poly(base, 441, 160), np.zeros(132300)], axis=1).astype(np.float32)
    wavfile.write(tmp_path / "half.wav", 44100, left_only)  # float WAV, one silent channel

    for name in ("a16", "a44", "a8", "st", "half"):
        assert ef.load_audio(tmp_path / f"{name}.wav").shape == (48000,), name
    assert np.corrcoef(ef.load_audio(tmp_path / "a44.wav"), base)[0, 1] > 0.99
    np.testing.assert_allclose(ef.load_audio(tmp_path / "half.wav"), ef.load_audio(tmp_path / "a44.wav") / 2, atol=2e-4)

    encoder = ef.SpeechEncoder(hubert_dir)
    reference = encoder.encode_file(tmp_path / "a16.wav")
    assert reference.shape == (149, HIDDEN)
    for name in ("a44", "a8", "st"):
        assert encoder.encode_file(tmp_path / f"{name}.wav").shape == reference.shape, name
    np.testing.assert_allclose(encoder.encode_file(tmp_path / "st.wav"), reference, atol=1e-5)


def test_normalisation_uses_the_feature_extractor_when_present(tmp_path):
    audio = synth_speech(16000, 1.0) * 0.1 + 0.05
    plain = ef.SpeechEncoder(tiny_hubert(tmp_path / "plain"))
    assert plain.feature_extractor is None
    normalized = plain.normalize(audio)
    assert abs(normalized.mean()) < 1e-4 and abs(normalized.std() - 1) < 1e-3
    raw = ef.SpeechEncoder(tiny_hubert(tmp_path / "raw", feature_extractor={"do_normalize": False}))
    np.testing.assert_allclose(raw.normalize(audio), audio)


# ----------------------------------------------------------------------------- layers
def test_layer_selection_matches_hidden_states(hubert_dir, speech, tmp_path):
    from transformers import HubertModel

    wav, _ = speech
    model = HubertModel.from_pretrained(hubert_dir).eval()
    encoder = ef.SpeechEncoder(hubert_dir, chunk_seconds=None)
    audio = encoder.normalize(ef.load_audio(wav)[:32000])
    with torch.no_grad():
        outputs = model(torch.from_numpy(audio)[None], output_hidden_states=True)
    assert len(outputs.hidden_states) == 4
    for layer in (0, 1, 3, -1):
        selected = ef.SpeechEncoder(hubert_dir, layer=layer, chunk_seconds=None).encode(audio)
        np.testing.assert_allclose(selected, outputs.hidden_states[layer][0].numpy(), atol=1e-5)
    assert not np.allclose(outputs.hidden_states[1][0].numpy(), outputs.hidden_states[3][0].numpy())
    np.testing.assert_allclose(encoder.encode(audio), outputs.last_hidden_state[0].numpy(), atol=1e-5)

    shutil.copy(wav, tmp_path / "x.wav")
    assert (
        extract_cli.main(
            [
                "--model",
                str(hubert_dir),
                "--data_dir",
                str(tmp_path),
                "--layout",
                "files",
                "--layer",
                "1",
                "--chunk_seconds",
                "0",
                "--no_progress",
            ]
        )
        == 0
    )
    whole_layer1 = ef.SpeechEncoder(hubert_dir, layer=1, chunk_seconds=None).encode_file(wav)
    np.testing.assert_allclose(load(tmp_path / "x_HuBERT.npy"), whole_layer1, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        ef.SpeechEncoder(hubert_dir, layer=4)


# ----------------------------------------------------------------------------- resumable, atomic, errors
def test_rerun_skips_finished_files(hubert_dir, tmp_path):
    write_wav(tmp_path / "edaic" / "300_P" / "300_AUDIO.wav", synth_speech(16000, 1.0), 16000)
    summary = ef.extract_corpus(hubert_dir, tmp_path / "edaic", "edaic", progress=False)
    (output,) = summary.written
    before = output.stat().st_mtime_ns

    again = ef.extract_corpus(tmp_path / "no-such-model", tmp_path / "edaic", "edaic", progress=False)

    assert again.written == [] and again.skipped == [output]  # nothing to do: the model is not even loaded
    assert output.stat().st_mtime_ns == before


def test_failed_write_leaves_no_partial_file(hubert_dir, tmp_path, monkeypatch):
    wav = write_wav(tmp_path / "edaic" / "300_P" / "300_AUDIO.wav", synth_speech(16000, 1.0), 16000)
    output = wav.parent / "features" / "300_HuBERT.npy"
    encoder = ef.SpeechEncoder(hubert_dir)

    def torn_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ef.np, "save", torn_save)
    with pytest.raises(OSError, match="simulated"):
        ef.extract_file(encoder, wav, output)
    assert not output.exists()
    assert list(output.parent.iterdir()) == []  # no temporary file either

    def crash(segment):
        raise RuntimeError("killed mid-file (simulated)")

    monkeypatch.undo()
    monkeypatch.setattr(encoder, "_forward", crash)
    with pytest.raises(RuntimeError):
        ef.extract_file(encoder, wav, output)
    assert not output.exists()

    monkeypatch.undo()
    assert ef.extract_file(encoder, wav, output) is True
    assert load(output).shape == (49, HIDDEN)


def test_missing_or_unreadable_wav_errors_name_the_file(hubert_dir, tmp_path, capsys):
    encoder = ef.SpeechEncoder(hubert_dir)
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        ef.extract_file(encoder, missing, tmp_path / "out.npy")
    broken = tmp_path / "edaic" / "300_P" / "300_AUDIO.wav"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(ef.AudioReadError, match="300_AUDIO.wav"):
        ef.extract_file(encoder, broken, tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()

    write_wav(tmp_path / "edaic" / "301_P" / "301_AUDIO.wav", synth_speech(16000, 1.0), 16000)
    code = extract_cli.main(["--model", str(hubert_dir), "--data_dir", str(tmp_path / "edaic"), "--no_progress"])
    assert code == 1
    assert "300_AUDIO.wav" in capsys.readouterr().err
    assert (tmp_path / "edaic" / "301_P" / "features" / "301_HuBERT.npy").exists()  # the good one still ran
    assert not (broken.parent / "features" / "300_HuBERT.npy").exists()

    assert extract_cli.main(["--model", str(hubert_dir), "--data_dir", str(tmp_path / "absent"), "--no_progress"]) == 2
    assert "absent" in capsys.readouterr().err
