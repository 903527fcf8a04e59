#!/usr/bin/env python
"""What E-DAIC's size costs, measured without 150 GB of disk.

E-DAIC-WOZ has 275 participants with ~20-minute interviews (60,000 HuBERT frames x 768 and 36,000
ResNet frames x 2048 each, ~480 MB of raw features per participant). Generating all of that
synthetically would need ~130 GB, so the benchmark measures two slices and extrapolates:

* Part A (full length): ``--full-participants`` (default 2) synthetic participants at
  ``--full-seconds`` (default 1200) — generation time and disk per participant, ``load_edaic``,
  ``build_feature_cache`` (uniform policy, 7000 frames, float16) timed participant by participant
  with the cache size of each, then ``MllmDrCollator`` over every row in batches of 8 (shuffled, as a
  training sampler would) with a real ``MllmDrProcessor``, showing RSS per batch stays bounded.
* Part B (full count): ``--short-participants`` (default 275) at ``--short-seconds`` (default 4)
  through the same loader, cache and collator over every row.

Each part runs in a FRESH worker process, so its peak RSS (``ru_maxrss``) is its own. The dataset's
in-memory Arrow size is set against the feature bytes it references: rows hold file paths, never
arrays, so 8 items of a participant share one file. Finally the totals for 275 participants at
20 minutes are extrapolated from Part A (labelled as such).

    python benchmarks/data_scale.py            # full: 2 x 20 min + 275 x 4 s (~1.1 GB temp disk)
    python benchmarks/data_scale.py --quick    # smoke: 1 x 60 s + 30 x 4 s

Goal (issue): peak RSS under 2 GB at any scale; no per-item duplication of arrays.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    current_rss_mb,
    machine_facts,
    markdown_table,
    proc_status_mb,
    progress,
    ru_maxrss_mb,
    run_worker,
    write_json,
)

EDAIC_PARTICIPANTS = 275
EDAIC_ITEMS = 8
FULL_SECONDS = 1200.0
AUDIO_RATE, AUDIO_DIM = 50, 768  # HuBERT-base
VIDEO_RATE, VIDEO_DIM = 30, 2048  # CNN_ResNet
MAX_FRAMES = 7000  # the uniform policy's budget (paper preset default)
CACHE_ITEM_BYTES = 2  # float16
GOAL_MB = 2048.0


def frames_at(seconds: float) -> dict[str, int]:
    """Frames per modality of an interview (as ``mllm_dr.synthetic.frame_counts``)."""
    return {"audio": max(1, round(AUDIO_RATE * seconds)), "video": max(1, round(VIDEO_RATE * seconds))}


# ------------------------------------------------------------------------------------------ worker
def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def worker(
    part: str, workdir: Path, participants: int, seconds: float, turns: int, batch_size: int, seed: int,
    per_participant_cache: bool, max_transcript_tokens: int,
) -> dict[str, Any]:
    """One part, in a fresh process: generate, load, cache, collate; RSS read after every stage."""
    stages: dict[str, dict[str, Any]] = {}

    def stage(name: str, began: float, **extra: Any) -> None:
        record = {"s": time.perf_counter() - began, "rss_mb": current_rss_mb(), "ru_maxrss_mb": ru_maxrss_mb(), **extra}
        stages[name] = record
        progress(
            f"[part {part}] {name}: {record['s']:.2f} s, RSS {record['rss_mb']:.0f} MiB, "
            f"peak {record['ru_maxrss_mb']:.0f} MiB"
        )

    began = time.perf_counter()
    import datasets
    import numpy as np

    import mllm_dr.synthetic as synth
    from configuration_mllm_dr import MllmDrConfig
    from mllm_dr.data import MllmDrCollator, build_feature_cache, load_edaic
    from processing_mllm_dr import MllmDrProcessor

    from _common import make_tokenizer

    datasets.disable_progress_bars()
    stage("imports", began)

    corpus_dir, cache_dir = workdir / f"part{part}-corpus", workdir / f"part{part}-cache"
    began = time.perf_counter()
    summary = synth.make_synthetic_corpus(corpus_dir, participants, seed, seconds=seconds, turns=turns)
    stage("generate", began)
    per_pid: dict[str, dict[str, Any]] = {}
    for folder in sorted((corpus_dir / "data").glob("*_P")):
        pid = folder.name[:-2]
        features = folder / "features"
        per_pid[pid] = {
            "disk_bytes": _size(folder),
            "audio_bytes": (features / f"{pid}_HuBERT.npy").stat().st_size,
            "video_bytes": (features / f"{pid}_CNN_ResNet.mat").stat().st_size,
        }
    corpus_bytes = _size(corpus_dir)

    began = time.perf_counter()
    loaded = load_edaic(corpus_dir)
    stage("load_edaic", began)

    # The paper preset's config: its frame policies (uniform, MAX_FRAMES frames) for the cache, and
    # its token counts and dims for the collator's processor below.
    config = MllmDrConfig.paper_preset()  # config only, no weights
    for modality in ("audio", "video"):
        expected = {"policy": "uniform", "max_frames": MAX_FRAMES}
        if getattr(config, f"{modality}_config").frame_settings() != expected:
            raise RuntimeError(f"the paper preset's {modality} frame policy is no longer {expected}: update MAX_FRAMES")
    cache_settings = dict(frames=config, dtype="float16", progress=False)
    if per_participant_cache:  # each participant's files converted in its own call, timed apart
        for pid in per_pid:
            subset = {}
            for name, split in loaded.items():
                index = [i for i, p in enumerate(split["participant_id"]) if p == pid]
                if index:
                    subset[name] = split.select(index)
            t0 = time.perf_counter()
            build_feature_cache(datasets.DatasetDict(subset), cache_dir, **cache_settings)
            per_pid[pid]["cache_build_s"] = time.perf_counter() - t0
            per_pid[pid]["rss_after_cache_mb"] = current_rss_mb()
            progress(f"[part {part}] cache for participant {pid}: {per_pid[pid]['cache_build_s']:.2f} s")
    began = time.perf_counter()
    cached = build_feature_cache(loaded, cache_dir, **cache_settings)  # per participant: all cache hits here
    stage("build_feature_cache" + (" (columns only, files already built)" if per_participant_cache else ""), began)
    cache_bytes = _size(cache_dir)
    for split in cached.values():
        for pid, audio, video in zip(split["participant_id"], split["audio_cache"], split["video_cache"], strict=True):
            files = {path for path in (audio, video) if path}  # one cached file per modality, None when missing
            per_pid[pid]["cache_files"] = sorted(set(per_pid[pid].get("cache_files", [])) | files)
    for info in per_pid.values():
        info["cache_bytes"] = sum(Path(p).stat().st_size for p in info.pop("cache_files", []))

    # The rows: paths only. Arrow bytes vs the feature bytes they reference.
    rows = sum(len(s) for s in cached.values())
    arrow_bytes = sum(s.data.nbytes for s in cached.values())
    referenced = {p for s in cached.values() for col in ("audio_cache", "video_cache") for p in s[col] if p}
    any_split = next(iter(cached.values()))
    array_columns = [name for name, feature in any_split.features.items() if "float" in str(feature)]

    # The collator over every row, shuffled, in batches: RSS after each batch.
    processor = MllmDrProcessor.from_config(make_tokenizer(), config, max_transcript_tokens=max_transcript_tokens)
    collator = MllmDrCollator(processor, mode="full", with_rationale=False, padding_side="right")
    everything = datasets.concatenate_datasets([s for s in cached.values() if len(s)])
    order = np.random.default_rng(seed).permutation(len(everything)).tolist()
    batch_rss, batch_s, batch_mb, shapes = [], [], [], {}
    began = time.perf_counter()
    for start in range(0, len(order), batch_size):
        t0 = time.perf_counter()
        batch = collator([everything[i] for i in order[start : start + batch_size]])
        batch_s.append(time.perf_counter() - t0)
        batch_mb.append(sum(t.numel() * t.element_size() for t in batch.values() if hasattr(t, "numel")) / 2**20)
        if not shapes:
            shapes = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
        del batch
        batch_rss.append(current_rss_mb())
    stage("collator", began, batches=len(batch_s), rows=len(order))

    return {
        "part": part,
        "participants": participants,
        "seconds": seconds,
        "turns": turns,
        "frames": summary["frames"],
        "splits": {k: len(v) for k, v in summary["splits"].items()},
        "stages": stages,
        "per_participant": per_pid,
        "corpus_bytes": corpus_bytes,
        "raw_feature_bytes": sum(v["audio_bytes"] + v["video_bytes"] for v in per_pid.values()),
        "cache_bytes": cache_bytes,
        "rows": rows,
        "distinct_feature_files_referenced": len(referenced),
        "arrow_bytes": arrow_bytes,
        "array_columns": array_columns,
        "columns": {name: str(feature) for name, feature in any_split.features.items()},
        "collator": {
            "batch_size": batch_size,
            "max_transcript_tokens": max_transcript_tokens,
            "first_batch_shapes": shapes,
            "batch_s_total": sum(batch_s),
            "batch_s_median": float(np.median(batch_s)),
            "batch_mb_max": max(batch_mb),
            "rss_mb_first_batch": batch_rss[0],
            "rss_mb_last_batch": batch_rss[-1],
            "rss_mb_max_over_batches": max(batch_rss),
        },
        "peak_ru_maxrss_mb": ru_maxrss_mb(),
        "peak_vm_hwm_mb": proc_status_mb("VmHWM"),
    }


# ------------------------------------------------------------------------------------------ extrapolation
def extrapolate(a: dict[str, Any], participants: int = EDAIC_PARTICIPANTS) -> dict[str, Any]:
    """Totals for ``participants`` at 20 minutes from Part A's per-participant numbers. Byte counts
    use the exact array sizes at 20 minutes plus the file overhead measured in Part A (so they are exact
    for this synthetic layout); times are Part A's per-participant means, scaled linearly in frames when
    Part A was shorter than 20 minutes (rough)."""
    n = a["participants"]
    pp = list(a["per_participant"].values())
    measured = frames_at(a["seconds"])
    full = frames_at(FULL_SECONDS)
    dims = {"audio": AUDIO_DIM, "video": VIDEO_DIM}
    overhead = {
        m: sum(p[f"{m}_bytes"] for p in pp) / n - measured[m] * dims[m] * 4 for m in ("audio", "video")
    }
    raw_pp = sum(full[m] * dims[m] * 4 + overhead[m] for m in dims)
    other_pp = sum(p["disk_bytes"] - p["audio_bytes"] - p["video_bytes"] for p in pp) / n  # transcript CSV
    cache_pp = sum(min(full[m], MAX_FRAMES) * dims[m] * CACHE_ITEM_BYTES + 128 for m in dims)
    frame_scale = sum(full[m] * dims[m] for m in dims) / sum(measured[m] * dims[m] for m in dims)
    kept_scale = sum(min(full[m], MAX_FRAMES) * dims[m] for m in dims) / sum(
        min(measured[m], MAX_FRAMES) * dims[m] for m in dims
    )
    cache_s_pp = sum(p.get("cache_build_s", 0.0) for p in pp) / n
    gen_s_pp = a["stages"]["generate"]["s"] / n
    collate_s_row = a["collator"]["batch_s_total"] / a["rows"]
    rows = participants * EDAIC_ITEMS
    return {
        "participants": participants,
        "seconds": FULL_SECONDS,
        "from_part_a_seconds": a["seconds"],
        "time_scaled_from_shorter_run": a["seconds"] != FULL_SECONDS,
        "raw_feature_bytes_per_participant": raw_pp,
        "raw_feature_bytes": raw_pp * participants,
        "corpus_disk_bytes": (raw_pp + other_pp) * participants,
        "cache_bytes_per_participant": cache_pp,
        "cache_bytes": cache_pp * participants,
        "cache_build_s_per_participant": cache_s_pp * frame_scale,
        "cache_build_s": cache_s_pp * frame_scale * participants,
        "synthetic_generation_s": gen_s_pp * frame_scale * participants,
        "collator_rows": rows,
        "collator_epoch_s": collate_s_row * kept_scale * rows,
    }


# ------------------------------------------------------------------------------------------ report
def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _minutes(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def render(result: dict[str, Any]) -> str:
    a, b, x = result["part_a"], result["part_b"], result["extrapolated"]
    m = result["machine"]
    out = [
        "## Data scale: E-DAIC-sized corpus through loader, feature cache and collator"
        + (" (--quick smoke configuration)" if result["quick"] else ""),
        "",
        f"CPU: {m['cpu_model']} ({m['cpus_usable']} usable CPUs, load average "
        f"{', '.join(f'{v:.2f}' for v in m['load_average_1_5_15'] or [])} at start). Synthetic corpus "
        "(`mllm_dr.synthetic`, E-DAIC layout: HuBERT `.npy` float32 + ResNet `.mat` float32); "
        "cache = uniform policy, 7000 frames, float16; collator = `MllmDrCollator` (mode `full`, score targets) with "
        "a real `MllmDrProcessor` (paper preset, in-process BPE tokenizer, "
        f"{a['collator']['max_transcript_tokens']} transcript tokens), rows shuffled, batches of "
        f"{a['collator']['batch_size']}. Each part ran in a fresh process.",
        "",
        f"### Part A: {a['participants']} participant(s) at {a['seconds']:g} s "
        f"({a['frames']['audio']} HuBERT x {AUDIO_DIM}, {a['frames']['video']} ResNet x {VIDEO_DIM} frames)",
        "",
    ]
    rows = []
    for pid, p in a["per_participant"].items():
        rows.append([
            pid, _gb(p["disk_bytes"]), _gb(p["audio_bytes"]), _gb(p["video_bytes"]),
            f"{p.get('cache_build_s', float('nan')):.2f}", _gb(p["cache_bytes"]),
        ])
    out.append(markdown_table(
        ["participant", "disk (all files)", "HuBERT .npy", "ResNet .mat", "cache build s", "cache size"], rows
    ))
    out.append("")
    out.append(
        f"Generation: {a['stages']['generate']['s']:.2f} s for {a['participants']} "
        f"({a['stages']['generate']['s'] / a['participants']:.2f} s per participant, one call)."
    )
    out += ["", "### Both parts", ""]
    stage_rows = []
    for name, part in (("A", a), ("B", b)):
        st, c = part["stages"], part["collator"]
        cache_key = next(k for k in st if k.startswith("build_feature_cache"))
        cache_s = st[cache_key]["s"] + sum(p.get("cache_build_s", 0.0) for p in part["per_participant"].values())
        stage_rows.append([
            f"{name}: {part['participants']} x {part['seconds']:g} s",
            f"{st['generate']['s']:.1f}", f"{st['load_edaic']['s']:.2f}", f"{cache_s:.2f}",
            f"{c['batch_s_total']:.2f} ({part['rows']} rows, {st['collator']['batches']} batches)",
            f"{st['imports']['rss_mb']:.0f}",
            f"{c['rss_mb_first_batch']:.0f} / {c['rss_mb_max_over_batches']:.0f} / {c['rss_mb_last_batch']:.0f}",
            f"{c['batch_mb_max']:.0f}",
            f"**{part['peak_ru_maxrss_mb']:.0f}** ({'<' if part['peak_ru_maxrss_mb'] < GOAL_MB else '≥'} 2 GB)",
        ])
    out.append(markdown_table(
        ["part", "generate s", "load_edaic s", "cache build s", "collator s", "RSS after imports MiB",
         "RSS first / max / last batch MiB", "largest batch MiB", "peak RSS MiB"],
        stage_rows,
    ))
    out += ["", "### Rows reference files; arrays are not copied into rows", ""]
    ref_rows = []
    for name, part in (("A", a), ("B", b)):
        ref_rows.append([
            name, part["rows"], part["distinct_feature_files_referenced"], _gb(part["arrow_bytes"]),
            f"{part['arrow_bytes'] / part['rows']:.0f} B", _gb(part["raw_feature_bytes"]), _gb(part["cache_bytes"]),
            f"{part['arrow_bytes'] / max(1, part['cache_bytes']):.2e}",
            ", ".join(part["array_columns"]) or "none",
        ])
    out.append(markdown_table(
        ["part", "rows", "distinct cached files referenced", "Arrow size (in memory)", "Arrow per row",
         "raw feature bytes", "cache bytes", "Arrow / cache", "float columns in rows"],
        ref_rows,
    ))
    note = (
        f" Times are Part A's ({x['from_part_a_seconds']:g} s) per-participant means scaled linearly in frames: rough."
        if x["time_scaled_from_shorter_run"] else " Times are Part A's per-participant means x 275."
    )
    out += [
        "",
        f"### EXTRAPOLATED (not measured): all {x['participants']} participants at 20 minutes",
        "",
        markdown_table(["quantity", "extrapolated total", "per participant"], [
            ["raw features on disk (HuBERT .npy + ResNet .mat)", _gb(x["raw_feature_bytes"]),
             _gb(x["raw_feature_bytes_per_participant"])],
            ["corpus on disk (features + transcripts)", _gb(x["corpus_disk_bytes"]), ""],
            ["feature cache (uniform 7000, float16)", _gb(x["cache_bytes"]), _gb(x["cache_bytes_per_participant"])],
            ["feature cache build time (one process)", _minutes(x["cache_build_s"]),
             f"{x['cache_build_s_per_participant']:.2f} s"],
            ["synthetic corpus generation time", _minutes(x["synthetic_generation_s"]), ""],
            [f"one collator pass over all {x['collator_rows']} rows (no model)", _minutes(x["collator_epoch_s"]), ""],
        ]),
        "",
        "Bytes: exact array sizes at 20 minutes plus the file overhead measured in Part A." + note
        + " Peak RSS does not grow with the participant count (Part B) and is set by one batch at full length "
        "(Part A).",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration: 1 x 60 s + 30 x 4 s")
    parser.add_argument(
        "--full-participants", type=int, default=None, help="Part A participants (default 2; --quick 1)"
    )
    parser.add_argument("--full-seconds", type=float, default=None, help="Part A length (default 1200; --quick 60)")
    parser.add_argument("--full-turns", type=int, default=140, help="Part A transcript turns (140 ~ 2,000 tokens)")
    parser.add_argument(
        "--short-participants", type=int, default=None, help="Part B participants (default 275; --quick 30)"
    )
    parser.add_argument("--short-seconds", type=float, default=4.0, help="Part B length (default 4)")
    parser.add_argument("--short-turns", type=int, default=12, help="Part B transcript turns")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-transcript-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the corpora and caches go (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and caches")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="JSON result (default benchmarks/results/data_scale.json; --quick: data_scale.quick.json)",
    )
    parser.add_argument("--worker-result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-part", choices=("A", "B"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-participants", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seconds", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-turns", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_result is not None:  # inside a fresh worker process
        result = worker(
            args.worker_part, args.workdir, args.worker_participants, args.worker_seconds, args.worker_turns,
            args.batch_size, args.seed, per_participant_cache=args.worker_part == "A",
            max_transcript_tokens=args.max_transcript_tokens,
        )
        write_json(args.worker_result, result)
        return 0

    full_n = args.full_participants or (1 if args.quick else 2)
    full_s = args.full_seconds or (60.0 if args.quick else FULL_SECONDS)
    short_n = args.short_participants or (30 if args.quick else EDAIC_PARTICIPANTS)
    if min(full_n, short_n, args.batch_size) < 1 or min(full_s, args.short_seconds) <= 0:
        parser.error("participant counts and --batch-size must be >= 1, lengths > 0")

    began = time.perf_counter()
    machine = machine_facts()
    made_temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mllm-dr-data-scale-")) if made_temp else args.workdir.absolute()
    ours = [workdir / f"part{p}-{kind}" for p in "AB" for kind in ("corpus", "cache")]
    if not made_temp:
        clash = [str(p) for p in ours if p.exists()]
        if clash:
            parser.error(f"--workdir already holds {clash} (a kept earlier run): remove them or pick another folder")
        workdir.mkdir(parents=True, exist_ok=True)
    progress(f"working in {workdir}")
    try:
        parts = {}
        plan = (("A", full_n, full_s, args.full_turns), ("B", short_n, args.short_seconds, args.short_turns))
        for part, n, seconds, turns in plan:
            progress(f"part {part}: {n} participant(s) at {seconds:g} s, fresh worker process")
            parts[part] = run_worker(Path(__file__).resolve(), [
                "--worker-part", part, "--worker-participants", str(n), "--worker-seconds", str(seconds),
                "--worker-turns", str(turns), "--workdir", str(workdir), "--batch-size", str(args.batch_size),
                "--seed", str(args.seed), "--max-transcript-tokens", str(args.max_transcript_tokens),
            ])
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        elif made_temp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for path in ours:
                shutil.rmtree(path, ignore_errors=True)
    result = {
        "benchmark": "data_scale",
        "quick": args.quick,
        "machine": machine,
        "orchestrator_ru_maxrss_mb": ru_maxrss_mb(),
        "wall_s": time.perf_counter() - began,
        "part_a": parts["A"],
        "part_b": parts["B"],
        "extrapolated": extrapolate(parts["A"]),
    }
    output = args.output or RESULTS_DIR / ("data_scale.quick.json" if args.quick else "data_scale.json")
    write_json(output, result)
    print(render(result))
    print(f"\n(JSON: {output}; wall time {result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
