"""HuBERT (or any wav2vec2-style) frame features from raw interview audio (paper section 3.1).

The paper feeds the audio LQ-former with HuBERT hidden states extracted from the raw speech; the
corpora ship only the wav files. This tool turns them into ``(frames, dim)`` float32 arrays at
the model's frame rate (50 frames/s for HuBERT at 16 kHz):

* E-DAIC-WOZ / DAIC-WOZ: ``<root>[/data]/<ID>_P[/<ID>_P]/<ID>_AUDIO.wav`` ->
  ``<ID>_P/features/<ID>_HuBERT.npy`` (``features/`` beside the wav, where the corpus keeps its
  other feature files, and where the loaders look: the corpus registry's ``audio_pattern``);
* CMDC: ``<root>/{HC,MDD}/<subject>/Q<n>.wav`` -> ``Q<n>_HuBERT.npy`` beside the wav;
* ``files``: every ``*.wav`` under a folder (or one wav) -> ``<stem>_HuBERT.npy`` beside it.

Participant and subject folders are found by the loaders' own discovery
(:func:`mllm_dr.data.daic.participant_folders`, :func:`mllm_dr.data.cmdc.subject_folders`).

A 20-minute interview runs in bounded model memory: the waveform is cut into windows (30 s by
default) that each carry a little context on both sides (2 s), and only each window's central
frames are kept, so the stitched frame count equals the unchunked one exactly. Output files are
written atomically (temporary file + ``os.replace``) and finished files are skipped, so a killed
run resumes where it stopped.

WAV files are read with ``scipy.io.wavfile`` (PCM 8/16/24/32-bit and float), mixed down to mono
and resampled with ``scipy.signal.resample_poly``.

    mllm-dr-extract-features --model path/to/hubert-base-ls960 --data_dir /data/E-DAIC --dataset_format edaic
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import cmdc, daic
from .data.report import Notes
from .io import save_npy_atomic

logger = logging.getLogger("mllm_dr.extraction")

TARGET_SAMPLING_RATE = 16000
DEFAULT_SUFFIX = "_HuBERT"
LAYOUTS = ("edaic", "daic", "cmdc", "files")
DTYPES = ("auto", "float32", "float16", "bfloat16")


class AudioReadError(ValueError):
    """A wav file that exists but cannot be read as audio (the message names the file)."""


# ----------------------------------------------------------------------------- audio
def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Reads a WAV file as mono float32 in [-1, 1] plus its sampling rate.

    Integer PCM is scaled by its full range (scipy returns 24-bit data left-aligned in int32, so
    the int32 scale is right for it too); several channels are averaged.
    """
    from scipy.io import wavfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        sampling_rate, data = wavfile.read(path)
    except Exception as error:  # scipy raises ValueError, EOFError, struct.error, ... for broken files
        raise AudioReadError(f"{path}: cannot be read as a WAV file ({type(error).__name__}: {error})") from None
    data = np.asarray(data)
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif np.issubdtype(data.dtype, np.floating):
        audio = data.astype(np.float32)
    else:
        raise AudioReadError(f"{path}: unsupported sample type {data.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    elif audio.ndim != 1:
        raise AudioReadError(f"{path}: expected (samples,) or (samples, channels) audio, got shape {audio.shape}")
    if audio.size == 0:
        raise AudioReadError(f"{path}: the file holds no audio samples")
    if sampling_rate <= 0:
        raise AudioReadError(f"{path}: invalid sampling rate {sampling_rate}")
    return audio, int(sampling_rate)


def resample(audio: np.ndarray, sampling_rate: int, target_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Polyphase resampling to ``target_rate`` (exact rational ratio, anti-aliased)."""
    if sampling_rate == target_rate:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    divisor = math.gcd(int(sampling_rate), int(target_rate))
    return resample_poly(audio, target_rate // divisor, sampling_rate // divisor).astype(np.float32)


def load_audio(path: str | Path, target_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Mono float32 at ``target_rate``."""
    audio, sampling_rate = read_wav(path)
    return resample(audio, sampling_rate, target_rate)


# ----------------------------------------------------------------------------- chunk geometry
def conv_geometry(config: object) -> tuple[int, int]:
    """``(receptive_field, hop)`` in samples of a wav2vec2-style convolutional front end
    (400 and 320 for HuBERT: one frame per 20 ms at 16 kHz)."""
    kernels = getattr(config, "conv_kernel", None)
    strides = getattr(config, "conv_stride", None)
    if not kernels or not strides or len(kernels) != len(strides):
        raise ValueError(
            f"{type(config).__name__} has no conv_kernel/conv_stride: only wav2vec2-style models "
            "(HuBERT, wav2vec2, WavLM, data2vec-audio) that take raw waveforms are supported"
        )
    receptive_field, hop = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        receptive_field += (int(kernel) - 1) * hop
        hop *= int(stride)
    return receptive_field, hop


def num_frames(num_samples: int, receptive_field: int, hop: int) -> int:
    """Frames the front end yields for ``num_samples`` (0 when shorter than one receptive field)."""
    return 0 if num_samples < receptive_field else (num_samples - receptive_field) // hop + 1


def plan_chunks(total_frames: int, chunk_frames: int | None, context_frames: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(context_start, keep_start, keep_end, context_end)`` in frames.

    The kept ranges tile ``[0, total_frames)`` exactly; each window adds up to ``context_frames``
    on both sides so frames near a cut still see their neighbours.
    """
    if not chunk_frames or chunk_frames >= total_frames:
        return [(0, 0, total_frames, total_frames)]
    plan = []
    for keep_start in range(0, total_frames, chunk_frames):
        keep_end = min(total_frames, keep_start + chunk_frames)
        context_start, context_end = max(0, keep_start - context_frames), min(total_frames, keep_end + context_frames)
        plan.append((context_start, keep_start, keep_end, context_end))
    return plan


# ----------------------------------------------------------------------------- the encoder
def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return "auto" if name == "auto" else getattr(torch, name)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class SpeechEncoder:
    """A wav2vec2-style model plus its input normalisation: waveform -> ``(frames, dim)`` float32.

    ``layer=None`` takes the model's final output (``last_hidden_state``); ``layer=N`` takes
    ``hidden_states[N]`` (0: the transformer's input, N: the output of transformer layer N;
    negative counts from the end). Layers above the chosen one are dropped, as they are not needed.
    For pre-norm ("stable layer norm") models such as HuBERT-large, the final output adds the
    encoder's last LayerNorm to ``hidden_states[-1]``; for HuBERT-base they are the same.
    """

    def __init__(
        self,
        model_path: str | Path,
        layer: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        chunk_seconds: float | None = 30.0,
        overlap_seconds: float = 2.0,
    ):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        self.model_path = str(model_path)
        self.device = _resolve_device(device)
        model = AutoModel.from_pretrained(self.model_path, dtype=_torch_dtype(dtype))
        self.config = model.config
        self.receptive_field, self.hop = conv_geometry(self.config)
        try:
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.model_path)
        except (OSError, ValueError):  # no preprocessor_config.json: plain zero-mean unit-variance
            self.feature_extractor = None
        self.sampling_rate = int(getattr(self.feature_extractor, "sampling_rate", None) or TARGET_SAMPLING_RATE)
        num_layers = int(self.config.num_hidden_layers)
        if layer is not None:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ValueError(
                    f"layer {layer} is out of range for {self.model_path}: it has {num_layers} transformer layers "
                    f"(valid: 0..{num_layers}, or negative from the end)"
                )
            layer = layer % (num_layers + 1)
            encoder_layers = getattr(getattr(model, "encoder", None), "layers", None)
            keep = max(layer, 1)  # hidden_states are recorded from the layers: keep at least one
            if isinstance(encoder_layers, torch.nn.ModuleList) and keep < len(encoder_layers):
                model.encoder.layers = encoder_layers[:keep]  # the layers above are never needed
        self.layer = layer
        self.model = model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.hidden_size = int(self.config.hidden_size)
        frames_per_second = self.sampling_rate / self.hop
        self.chunk_frames = None if not chunk_seconds else max(1, round(chunk_seconds * frames_per_second))
        self.context_frames = max(0, round(overlap_seconds * frames_per_second))

    @property
    def frames_per_second(self) -> float:
        return self.sampling_rate / self.hop

    def normalize(self, waveform: np.ndarray) -> np.ndarray:
        """The model's input normalisation over the whole recording (never per chunk, so chunked
        and unchunked runs see the same input)."""
        waveform = np.asarray(waveform, dtype=np.float32)
        if self.feature_extractor is None:
            return (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
        inputs = self.feature_extractor(waveform, sampling_rate=self.sampling_rate, return_tensors="np")
        if "input_values" not in inputs:
            raise ValueError(
                f"{self.model_path}: its feature extractor returns {sorted(inputs)} instead of raw 'input_values': "
                "only raw-waveform (wav2vec2-style) models are supported"
            )
        return np.asarray(inputs["input_values"][0], dtype=np.float32)

    def _forward(self, segment: np.ndarray) -> np.ndarray:
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(segment))[None].to(self.device, self.dtype)
        with torch.inference_mode():
            if self.layer is None:
                hidden = self.model(inputs).last_hidden_state
            else:
                hidden = self.model(inputs, output_hidden_states=True).hidden_states[self.layer]
        return hidden[0].float().cpu().numpy()

    def encode(self, waveform: np.ndarray, progress: bool = False) -> np.ndarray:
        """Features of a waveform already at ``self.sampling_rate``: ``(frames, hidden_size)`` float32."""
        audio = self.normalize(waveform)
        if audio.shape[0] < self.receptive_field:  # shorter than 25 ms: pad to one frame
            audio = np.pad(audio, (0, self.receptive_field - audio.shape[0]))
        total = num_frames(audio.shape[0], self.receptive_field, self.hop)
        output = np.empty((total, self.hidden_size), dtype=np.float32)
        plan = plan_chunks(total, self.chunk_frames, self.context_frames)
        if progress and len(plan) > 1:
            from tqdm.auto import tqdm

            plan = tqdm(plan, desc="chunks", unit="chunk", leave=False)
        for context_start, keep_start, keep_end, context_end in plan:
            start = context_start * self.hop
            # the last window takes the tail samples too (they make no frame, but a group-norm
            # front end normalises over them), so a single window equals the unchunked model
            stop = audio.shape[0] if context_end == total else (context_end - 1) * self.hop + self.receptive_field
            hidden = self._forward(audio[start:stop])
            if hidden.shape[0] != context_end - context_start:
                raise RuntimeError(
                    f"{self.model_path}: {stop - start} samples gave {hidden.shape[0]} frames, expected "
                    f"{context_end - context_start}: the model's frame geometry is not the conv_kernel/conv_stride one"
                )
            output[keep_start:keep_end] = hidden[keep_start - context_start : keep_end - context_start]
        return output

    def encode_file(self, wav_path: str | Path, progress: bool = False) -> np.ndarray:
        """Reads, mixes down, resamples and encodes one wav file."""
        return self.encode(load_audio(wav_path, self.sampling_rate), progress=progress)


# ----------------------------------------------------------------------------- files
@dataclass(frozen=True)
class AudioJob:
    """One wav file and the feature file it becomes."""

    key: str
    wav: Path
    output: Path


def find_edaic_jobs(root: Path, suffix: str = DEFAULT_SUFFIX) -> tuple[list[AudioJob], list[str]]:
    """``<ID>_AUDIO.wav`` of every ``<ID>_P`` folder (under ``data/`` or the root; a root that is
    itself a participant folder stands for itself); the second list names participant folders
    without a wav.

    In nested copies (``<ID>_P/<ID>_P/...``) the innermost folder is the participant folder, as
    for the corpus loader: the wav is looked for there first, then in the outer levels, and the
    output always goes to ``<innermost>/features/``.
    """
    jobs, missing = [], []
    for participant, levels in daic.participant_folders(root).items():
        wavs = [level / daic.WAV_PATTERN.format(id=participant) for level in reversed(levels)]
        wav = next((path for path in wavs if path.is_file()), None)
        if wav is None:
            missing.append(
                f"{levels[0]}: no {participant}_AUDIO.wav (looked in {', '.join(str(p.parent) for p in wavs)})"
            )
            continue
        output = levels[-1] / daic.AUDIO_PATTERN.format(id=participant).replace("_HuBERT.npy", f"{suffix}.npy")
        jobs.append(AudioJob(participant, wav, output))
    return jobs, missing


def find_cmdc_jobs(root: Path, suffix: str = DEFAULT_SUFFIX) -> tuple[list[AudioJob], list[str]]:
    """``Q<n>.wav`` clips of every subject folder (irregular names such as ``Q3-.wav`` matched as the
    loader matches them, output named ``Q<n>``); the second list says what was skipped and why."""
    notes = Notes()
    jobs = []
    wav_suffix = cmdc.question_suffix(cmdc.WAV_PATTERN, "wav pattern")
    for subject, folder in cmdc.subject_folders(root, notes).items():
        clips = cmdc.index_questions(folder, {"wav": wav_suffix}, subject, notes)["wav"]
        for question, wav in sorted(clips.items()):
            output = folder / cmdc.AUDIO_PATTERN.format(q=question).replace("_HuBERT.npy", f"{suffix}.npy")
            jobs.append(AudioJob(f"{folder.relative_to(root)}/Q{question}", wav, output))
    return sorted(jobs, key=lambda job: job.key), notes.lines()


def find_file_jobs(root: Path, suffix: str = DEFAULT_SUFFIX) -> tuple[list[AudioJob], list[str]]:
    """One wav file, or every ``*.wav`` under a folder; outputs beside each wav."""
    wavs = [root] if root.is_file() else sorted(root.rglob("*.wav"))
    return [AudioJob(str(wav), wav, wav.with_name(f"{wav.stem}{suffix}.npy")) for wav in wavs], []


def find_audio_jobs(
    data_dir: str | Path, layout: str, suffix: str = DEFAULT_SUFFIX
) -> tuple[list[AudioJob], list[str]]:
    """The wav files of a corpus folder and their output paths, plus notes on what was skipped."""
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data directory not found")
    finders = {"edaic": find_edaic_jobs, "daic": find_edaic_jobs, "cmdc": find_cmdc_jobs, "files": find_file_jobs}
    if layout not in finders:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    jobs, notes = finders[layout](root, suffix)
    if not jobs:
        expected = {
            "edaic": "<root>[/data]/<ID>_P[/<ID>_P]/<ID>_AUDIO.wav",
            "daic": "<root>[/data]/<ID>_P[/<ID>_P]/<ID>_AUDIO.wav",
            "cmdc": "<root>/{HC,MDD}/<subject>/Q<n>.wav",
            "files": "*.wav",
        }[layout]
        raise FileNotFoundError(f"{root}: no audio found for layout {layout!r} (expected {expected})")
    return jobs, notes


@dataclass
class ExtractionSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def extract_file(
    encoder: SpeechEncoder, wav: str | Path, output: str | Path, overwrite: bool = False, progress: bool = False
) -> bool:
    """Encodes ``wav`` into ``output`` (atomically); returns False when ``output`` already exists."""
    output = Path(output)
    if output.exists() and not overwrite:
        return False
    features = encoder.encode_file(wav, progress=progress)
    save_npy_atomic(output, features)
    return True


def extract_jobs(
    encoder: SpeechEncoder,
    jobs: Sequence[AudioJob],
    overwrite: bool = False,
    progress: bool = True,
    stop_on_error: bool = False,
) -> ExtractionSummary:
    """Runs every job, skipping finished outputs; a broken wav is recorded and the run goes on
    (unless ``stop_on_error``), so one bad file does not stop a corpus."""
    from tqdm.auto import tqdm

    summary = ExtractionSummary()
    bar = tqdm(jobs, desc="HuBERT features", unit="file", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.key, refresh=False)
        try:
            if extract_file(encoder, job.wav, job.output, overwrite=overwrite, progress=progress):
                summary.written.append(job.output)
            else:
                summary.skipped.append(job.output)
        except (OSError, ValueError) as error:
            if stop_on_error:
                raise
            logger.error("%s", error)
            summary.failed.append(str(error))
    return summary


def extract_corpus(
    model: str | Path,
    data_dir: str | Path,
    layout: str = "edaic",
    layer: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    chunk_seconds: float | None = 30.0,
    overlap_seconds: float = 2.0,
    suffix: str = DEFAULT_SUFFIX,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractionSummary:
    """Finds a corpus's wav files and writes their features; returns what was written/skipped/failed."""
    jobs, notes = find_audio_jobs(data_dir, layout, suffix)
    for note in notes:
        logger.warning("%s", note)
    todo = [job for job in jobs if overwrite or not job.output.exists()]
    summary = ExtractionSummary(skipped=[job.output for job in jobs if not overwrite and job.output.exists()])
    if todo:  # the model is loaded only when there is work
        encoder = SpeechEncoder(model, layer, device, dtype, chunk_seconds, overlap_seconds)
        done = extract_jobs(encoder, todo, overwrite=overwrite, progress=progress)
        summary.written, summary.failed = done.written, done.failed
        summary.skipped += done.skipped
    if layout in ("edaic", "daic"):
        summary.failed += notes  # a participant folder without its wav cannot get features
    return summary


__all__ = [
    "AudioJob",
    "AudioReadError",
    "ExtractionSummary",
    "SpeechEncoder",
    "conv_geometry",
    "extract_corpus",
    "extract_file",
    "extract_jobs",
    "find_audio_jobs",
    "load_audio",
    "num_frames",
    "plan_chunks",
    "read_wav",
    "resample",
]
