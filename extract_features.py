#!/usr/bin/env python
"""HuBERT (or any wav2vec2-style) frame features from raw interview audio (paper section 3.1).

The paper feeds the audio LQ-former with HuBERT hidden states extracted from the raw speech; the
corpora ship only the wav files. This tool turns them into ``(frames, dim)`` float32 arrays at
the model's frame rate (50 frames/s for HuBERT at 16 kHz):

* E-DAIC-WOZ: ``<root>[/data]/<ID>_P[/<ID>_P]/<ID>_AUDIO.wav`` -> ``<ID>_P/features/<ID>_HuBERT.npy``
  (``features/`` beside the wav, where the corpus keeps its other feature files);
* CMDC: ``<root>/{HC,MDD}/<subject>/Q<n>.wav`` -> ``Q<n>_HuBERT.npy`` beside the wav;
* ``files``: every ``*.wav`` under a folder (or one wav) -> ``<stem>_HuBERT.npy`` beside it.

A 20-minute interview runs in bounded model memory: the waveform is cut into windows (30 s by
default) that each carry a little context on both sides (2 s), and only each window's central
frames are kept, so the stitched frame count equals the unchunked one exactly. Output files are
written atomically (temporary file + ``os.replace``) and finished files are skipped, so a killed
run resumes where it stopped.

WAV files are read with ``scipy.io.wavfile`` (PCM 8/16/24/32-bit and float), mixed down to mono
and resampled with ``scipy.signal.resample_poly``.

    python extract_features.py --model path/to/hubert-base-ls960 --data_dir /data/E-DAIC --layout edaic
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger("extract_features")

TARGET_SAMPLING_RATE = 16000
DEFAULT_SUFFIX = "_HuBERT"
LAYOUTS = ("edaic", "cmdc", "files")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_CMDC_CLIP = re.compile(r"^Q(\d+)[^0-9A-Za-z]*\.wav$", re.IGNORECASE)


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


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` so that ``path`` is either absent or complete: a temporary file
    beside it (hidden, ``.tmp``, never matched by ``*_HuBERT.npy``), fsynced, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _edaic_participant_folders(root: Path) -> list[Path]:
    """``<ID>_P`` folders under ``data/`` or the root (``data/`` wins on a clash); a root that is
    itself a participant folder stands for itself."""
    if root.name.endswith("_P") and ((root / root.name).is_dir() or not any(root.glob("*_P/"))):
        return [root]
    folders: dict[str, Path] = {}
    for base in (root / "data", root):
        if base.is_dir():
            for folder in sorted(base.glob("*_P")):
                if folder.is_dir():
                    folders.setdefault(folder.name, folder)
    return [folders[name] for name in sorted(folders)]


def find_edaic_jobs(root: Path, suffix: str = DEFAULT_SUFFIX) -> tuple[list[AudioJob], list[str]]:
    """``<ID>_AUDIO.wav`` of every ``<ID>_P`` folder (under ``data/`` or the root); the second list
    names participant folders without a wav.

    In nested copies (``<ID>_P/<ID>_P/...``) the innermost folder is the participant folder, as
    for the corpus loader (``corpora.py``): the wav is looked for there first, then in the outer
    levels, and the output always goes to ``<innermost>/features/``.
    """
    jobs, missing = [], []
    for folder in _edaic_participant_folders(root):
        participant = folder.name[:-2]
        levels = [folder]
        while (levels[-1] / folder.name).is_dir():
            levels.append(levels[-1] / folder.name)
        wavs = [level / f"{participant}_AUDIO.wav" for level in reversed(levels)]
        wav = next((path for path in wavs if path.is_file()), None)
        if wav is None:
            missing.append(f"{folder}: no {participant}_AUDIO.wav (looked in {', '.join(str(p.parent) for p in wavs)})")
            continue
        jobs.append(AudioJob(participant, wav, levels[-1] / "features" / f"{participant}{suffix}.npy"))
    return jobs, missing


def find_cmdc_jobs(root: Path, suffix: str = DEFAULT_SUFFIX) -> tuple[list[AudioJob], list[str]]:
    """``Q<n>.wav`` clips (irregular suffixes such as ``Q3-.wav`` tolerated, output named
    ``Q<n>``); the second list names wav files that were skipped and why."""
    by_output: dict[Path, AudioJob] = {}
    skipped = []
    for wav in sorted(root.rglob("*.wav"), key=lambda p: (str(p.parent), len(p.name), p.name)):
        match = _CMDC_CLIP.match(wav.name)
        if match is None:
            skipped.append(f"{wav}: not a Q<n>.wav clip")
            continue
        output = wav.parent / f"Q{int(match.group(1))}{suffix}.npy"
        if output in by_output:
            skipped.append(f"{wav}: same clip as {by_output[output].wav.name}, which is used")
            continue
        key = f"{wav.parent.relative_to(root)}/Q{int(match.group(1))}" if wav.parent != root else f"Q{match.group(1)}"
        by_output[output] = AudioJob(key, wav, output)
    return sorted(by_output.values(), key=lambda job: job.key), skipped


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
    finders = {"edaic": find_edaic_jobs, "cmdc": find_cmdc_jobs, "files": find_file_jobs}
    if layout not in finders:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    jobs, notes = finders[layout](root, suffix)
    if not jobs:
        expected = {
            "edaic": "<root>[/data]/<ID>_P[/<ID>_P]/<ID>_AUDIO.wav",
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
    if layout == "edaic":
        summary.failed += notes  # a participant folder without its wav cannot get features
    return summary


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract HuBERT (wav2vec2-style) frame features from E-DAIC / CMDC wav files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local transformers model folder (e.g. hubert-base-ls960)")
    parser.add_argument("--data_dir", required=True, help="corpus root (E-DAIC, CMDC), a folder of wavs or one wav")
    parser.add_argument("--layout", choices=LAYOUTS, default="edaic", help="where the wavs are and where outputs go")
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="hidden_states index (0 = transformer input, N = output of layer N, negative from the end); "
        "default: the model's final output (last_hidden_state)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (outputs are float32)")
    parser.add_argument("--chunk_seconds", type=float, default=30.0, help="window length; 0 = whole file at once")
    parser.add_argument("--overlap_seconds", type=float, default=2.0, help="context added on each side of a window")
    parser.add_argument("--suffix", default=DEFAULT_SUFFIX, help="output name: <ID><suffix>.npy")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.chunk_seconds < 0 or args.overlap_seconds < 0:
        raise SystemExit("--chunk_seconds and --overlap_seconds must be >= 0")
    try:
        summary = extract_corpus(
            args.model,
            args.data_dir,
            layout=args.layout,
            layer=args.layer,
            device=args.device,
            dtype=args.dtype,
            chunk_seconds=args.chunk_seconds or None,
            overlap_seconds=args.overlap_seconds,
            suffix=args.suffix,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as error:  # missing data dir, unreadable model folder, bad --layer
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"written {len(summary.written)}, skipped (already done) {len(summary.skipped)}, failed {len(summary.failed)}",
        file=sys.stderr,
    )
    for failure in summary.failed:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if summary.failed else 0


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
    "save_npy_atomic",
]

if __name__ == "__main__":
    sys.exit(main())
