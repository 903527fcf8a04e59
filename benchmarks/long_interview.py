#!/usr/bin/env python
"""Long interviews: what the two LQ-formers cost on one 20-minute interview, per frame policy.

A 20-minute E-DAIC interview is 60,000 HuBERT frames x 768 and 36,000 ResNet frames x 2048. The
frame policy decides how many frames the LQ-formers attend to, which drives both time and memory.
For each policy (``uniform`` = the default, ``truncate_maxpool`` = the authors', ``none`` = full
length) a FRESH worker process builds the paper preset's two LQ-formers and projectors (to a
4096-dim LLM; the 8B LLM itself is never built), makes one interview's features and measures, per
modality, the processor's feature preparation (``apply_frame_policy`` + float32 copy + finiteness
check + padding, i.e. ``MllmDrProcessor.pad_features`` on the raw arrays) and the LQ-former +
projector forward under ``torch.inference_mode``: median of ``--repeats`` runs after one warm-up.
Peak memory is the worker's ``ru_maxrss``, next to its RSS right after imports + model build +
feature creation.

    python benchmarks/long_interview.py            # full: 20 min, 5 repeats, all three policies
    python benchmarks/long_interview.py --quick    # smoke: 2 min of frames, 1 repeat

Goal for the default policy (issue "Long interviews"): under 2 s and under 2 GB on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
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

POLICIES = ("uniform", "truncate_maxpool", "none")
AUDIO_RATE, VIDEO_RATE = 50, 30  # HuBERT frames/s, ResNet frames/s (E-DAIC)
GOAL_SECONDS, GOAL_MB = 2.0, 2048.0


# ------------------------------------------------------------------------------------------ worker
def worker(policy: str, seconds: float, repeats: int, source: str, threads: int | None, seed: int) -> dict[str, Any]:
    """Runs in a fresh process: build, make features, then time preparation + forward per modality."""
    started = time.perf_counter()
    rss_at_start = {"ru_maxrss_mb": ru_maxrss_mb(), "vm_rss_mb": current_rss_mb()}
    import gc
    import shutil
    import tempfile

    import numpy as np
    import torch

    from configuration_mllm_dr import MllmDrConfig
    from modeling_mllm_dr import LQFormer, MllmDrProjector
    from processing_mllm_dr import MllmDrProcessor

    from _common import make_tokenizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = MllmDrConfig.paper_preset()  # builds only the (Llama-3-8B-shaped) config, no weights
    text_hidden = config.text_config.hidden_size
    processor = MllmDrProcessor.from_config(
        make_tokenizer(), config, audio_frame_policy=policy, video_frame_policy=policy
    )
    modules: dict[str, tuple[Any, Any]] = {}
    parameters = 0
    for modality in ("audio", "video"):
        sub = getattr(config, f"{modality}_config")
        lqformer, projector = LQFormer(sub).eval(), MllmDrProjector(sub, text_hidden).eval()
        modules[modality] = (lqformer, projector)
        parameters += sum(p.numel() for m in (lqformer, projector) for p in m.parameters())

    frames = {"audio": int(round(AUDIO_RATE * seconds)), "video": int(round(VIDEO_RATE * seconds))}
    dims = {"audio": config.audio_config.feature_dim, "video": config.video_config.feature_dim}
    rng = np.random.default_rng(seed)
    features: dict[str, np.ndarray] = {}
    temp_dir = None
    for modality in ("audio", "video"):
        shape = (frames[modality], dims[modality])
        if source == "memory":
            features[modality] = rng.standard_normal(shape, dtype=np.float32)
            continue
        # Written chunk by chunk through a plain file handle, so the whole array is never in this
        # process's memory (it would set ru_maxrss before the measurement starts).
        temp_dir = temp_dir or tempfile.mkdtemp(prefix="mllm-dr-long-interview-")
        path = Path(temp_dir) / f"{modality}.npy"
        with path.open("wb") as handle:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(handle, header)
            for start in range(0, shape[0], 4096):
                rows = min(4096, shape[0] - start)
                handle.write(rng.standard_normal((rows, shape[1]), dtype=np.float32).tobytes())
        features[modality] = np.load(path, mmap_mode="r", allow_pickle=False)  # pages enter RSS only when read
    gc.collect()
    baseline = {"ru_maxrss_mb": ru_maxrss_mb(), "vm_rss_mb": current_rss_mb()}
    setup_s = time.perf_counter() - started

    def once(modality: str) -> tuple[float, float, int, list[int]]:
        lqformer, projector = modules[modality]
        t0 = time.perf_counter()
        # the raw interview through the processor: frame policy, float32 copy, checks, padding
        padded, mask = processor.pad_features(modality, [features[modality]], 1, frames_reduced=False)
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = projector(lqformer(padded, mask))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, int(padded.shape[1]), list(out.shape)

    per_modality: dict[str, Any] = {}
    try:
        for modality in ("audio", "video"):
            progress(f"[{policy}] {modality}: warm-up + {repeats} repeat(s) on {frames[modality]} frames")
            once(modality)  # warm-up (allocator, oneDNN kernels)
            prep, forward, kept, shape = [], [], 0, []
            for _ in range(repeats):
                p, f, kept, shape = once(modality)
                prep.append(p)
                forward.append(f)
            totals = [p + f for p, f in zip(prep, forward)]
            per_modality[modality] = {
                "frames_in": frames[modality],
                "feature_dim": dims[modality],
                "input_mb": frames[modality] * dims[modality] * 4 / 2**20,
                "frames_after_policy": kept,
                "output_shape": shape,
                "prepare_s_median": statistics.median(prep),
                "forward_s_median": statistics.median(forward),
                "total_s_median": statistics.median(totals),
                "prepare_s_all": prep,
                "forward_s_all": forward,
                "rss_after_mb": current_rss_mb(),
                "ru_maxrss_after_mb": ru_maxrss_mb(),
            }
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    peak = ru_maxrss_mb()
    return {
        "policy": policy,
        "settings": {
            "max_frames": config.audio_config.max_frames,
            "truncate_frames": config.audio_config.truncate_frames,
            "pool_size": config.audio_config.pool_size,
        },
        "seconds": seconds,
        "repeats": repeats,
        "feature_source": source,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lqformer_projector_parameters": parameters,
        "text_hidden_size": text_hidden,
        "rss_at_start": rss_at_start,
        "rss_after_build": baseline,
        "setup_s": setup_s,
        "modalities": per_modality,
        "sum_total_s_median": sum(m["total_s_median"] for m in per_modality.values()),
        "peak_ru_maxrss_mb": peak,
        "peak_vm_hwm_mb": proc_status_mb("VmHWM"),
        "peak_minus_build_mb": peak - (baseline["vm_rss_mb"] or 0.0),
    }


# ------------------------------------------------------------------------------------------ report
def render(result: dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        a, v = r["modalities"]["audio"], r["modalities"]["video"]
        rows.append([
            f"`{r['policy']}`" + (" (default)" if r["policy"] == "uniform" else ""),
            f"{a['frames_in']} → {a['frames_after_policy']}",
            f"{v['frames_in']} → {v['frames_after_policy']}",
            f"{a['prepare_s_median']:.3f} + {a['forward_s_median']:.3f}",
            f"{v['prepare_s_median']:.3f} + {v['forward_s_median']:.3f}",
            f"**{r['sum_total_s_median']:.3f}**",
            f"{r['rss_after_build']['vm_rss_mb']:.0f}",
            f"**{r['peak_ru_maxrss_mb']:.0f}**",
            f"{r['peak_minus_build_mb']:.0f}",
            f"{r['peak_vm_hwm_mb']:.0f}" if r["peak_vm_hwm_mb"] is not None else "n/a",
        ])
    table = markdown_table(
        [
            "policy", "audio frames in → kept", "video frames in → kept", "audio s (prep + LQ)",
            "video s (prep + LQ)", "sum s", "RSS after build MiB", "peak RSS MiB", "peak − build MiB",
            "VmHWM MiB",
        ],
        rows,
    )
    m, first = result["machine"], result["runs"][0]
    lines = [
        f"## LQ-formers on one {result['seconds'] / 60:g}-minute interview"
        + (" (--quick smoke configuration)" if result["quick"] else ""),
        "",
        f"CPU: {m['cpu_model']} ({m['cpus_usable']} usable of {m['logical_cpus']} logical CPUs, load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_1_5_15'] or [])} at start); torch "
        f"{first['torch_version']}, {first['torch_threads']} thread(s); paper preset LQ-formers + projectors to "
        f"{first['text_hidden_size']} ({first['lqformer_projector_parameters'] / 1e6:.1f} M parameters, float32); "
        f"features: random float32 "
        + ("arrays in memory" if result["feature_source"] == "memory" else "memory-mapped .npy files in a temp dir")
        + f"; median of {result['repeats']} run(s) after one warm-up; one fresh process per policy.",
        "",
        table,
        "",
        "Times are seconds for one interview (batch 1): `prep` = `MllmDrProcessor.pad_features` (frame policy, "
        "float32 copy, finiteness check, padding), `LQ` = LQ-former + projector forward under `torch.inference_mode`. "
        "RSS after build = the worker's RSS after imports, model build and feature creation (the input arrays count "
        f"there when in memory: {sum(first['modalities'][m]['input_mb'] for m in ('audio', 'video')):.0f} "
        "MiB); peak RSS = `ru_maxrss`; VmHWM = the same peak from `/proc/self/status` (a cross-check: `ru_maxrss` "
        "also includes the parent's RSS at spawn, which this light orchestrator keeps at "
        f"{result['orchestrator_ru_maxrss_mb']:.0f} MiB).",
    ]
    default = next((r for r in result["runs"] if r["policy"] == "uniform"), None)
    if default is not None:
        fast = default["sum_total_s_median"] < GOAL_SECONDS
        small = default["peak_ru_maxrss_mb"] < GOAL_MB
        lines += [
            "",
            f"Goal for the default policy (`uniform`, {default['settings']['max_frames']} frames): under "
            f"{GOAL_SECONDS:g} s: **{'met' if fast else 'NOT met'}** ({default['sum_total_s_median']:.2f} s); under "
            f"2 GB peak RSS: **{'met' if small else 'NOT met'}** ({default['peak_ru_maxrss_mb']:.0f} MiB)"
            + (" — a --quick run is below full length and does not test the goal." if result["quick"] else "."),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration: 2 minutes of frames, 1 repeat")
    parser.add_argument("--seconds", type=float, default=None, help="interview length (default 1200; --quick 120)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default 5; --quick 1)")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument(
        "--source", choices=("memory", "mmap"), default="memory",
        help="features as in-memory float32 arrays (default) or memory-mapped .npy files in a temp dir",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, default=None,
        help="JSON result (default benchmarks/results/long_interview.json; --quick: long_interview.quick.json)",
    )
    parser.add_argument("--worker-result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-policy", choices=POLICIES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (120.0 if args.quick else 1200.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if seconds <= 0 or repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1")

    if args.worker_result is not None:  # inside a fresh worker process
        result = worker(args.worker_policy, seconds, repeats, args.source, args.threads, args.seed)
        write_json(args.worker_result, result)
        return 0

    began = time.perf_counter()
    machine = machine_facts()
    runs = []
    for policy in args.policies:
        progress(f"policy {policy}: fresh worker process")
        arguments = ["--worker-policy", policy, "--seconds", str(seconds), "--repeats", str(repeats)]
        arguments += ["--source", args.source, "--seed", str(args.seed)]
        if args.threads:
            arguments += ["--threads", str(args.threads)]
        runs.append(run_worker(Path(__file__).resolve(), arguments))
    result = {
        "benchmark": "long_interview",
        "quick": args.quick,
        "seconds": seconds,
        "repeats": repeats,
        "feature_source": args.source,
        "machine": machine,
        "orchestrator_ru_maxrss_mb": ru_maxrss_mb(),
        "wall_s": time.perf_counter() - began,
        "runs": runs,
    }
    output = args.output or RESULTS_DIR / ("long_interview.quick.json" if args.quick else "long_interview.json")
    write_json(output, result)
    print(render(result))
    print(f"\n(JSON: {output}; wall time {result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
