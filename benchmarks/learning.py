#!/usr/bin/env python
"""Benchmark 10 (issue 15): does the audio/visual evidence reach the generated score, across corpus
seeds and planted signal layouts? One command runs the matrix recipe x seed x layout:

    python benchmarks/learning.py --run_dir runs/learning [--seeds 0 1 2] [--layouts standard sparse]
        [--recipes demo] [--baselines train_mean] [--seconds 4] [--demo_run runs/demo-<time>]
        [--carry benchmarks/results/learning.json]

Each cell (seed, layout) is a synthetic corpus (``mllm-dr-synthetic-corpus --seed S --signal_layout L``,
the demo's size: ~36/12/12 train/dev/test), on which every recipe is trained with the demo's flags
(``mllm_dr.demo``: stage 1 with the alignment probe, stage 2, SmolLM2-135M, greedy) plus the
recipe's own changes (``RECIPES``: ``score_first`` writes the score before the rationale,
``lora_qkvo`` puts LoRA on all four attention projections, ``stage1_120`` doubles stage 1 in its own
folder, ``detached_head`` keeps the head's MSE out of the LLM, ``mse_quarter`` weights it 0.25), then
evaluated on dev and on test, the test run fitting the text/head weight of ``--score_source combined``
on the dev run (never on test). One generation per model gives every
score source (``metrics.json`` ``score_sources``): the paper's ``generated_with_head_fallback``, the
``expected`` score under the digit probabilities, the MAA ``head`` alone and the dev-fitted
``combined``. Baselines: ``train_mean`` (each item's training mean), ``zero_shot`` (the untrained
backbone) and ``text_only`` (LoRA on the transcript, CE only: the paper's text baseline).

Writes ``benchmarks/results/learning.json`` and ``RUN_DIR/learning.md``: per recipe and score source,
item MAE on the items planted only in the transcript / audio / video (mean and spread over the
cells, and the improvement over train-mean), totals CCC / MAE, and in how many cells the issue's
goal holds. An interrupted run resumes: finished corpora, trainings and evaluations are kept.
``--demo_run`` reuses a finished demo's corpus, stage 1 and stage 2 as the cell (its seed, standard).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mllm_dr.backbones import prepare_backbone
from mllm_dr.demo import (
    ABLATIONS,
    PRECISIONS,
    DemoSettings,
    backbone_dir,
    corpus_command,
    eval_flags,
    stage1_command,
    stage2_command,
)
from mllm_dr.evaluation import score_source_comparison
from mllm_dr.io import read_jsonl, write_text_atomic

from _common import git_commit, machine_facts, markdown_table, result_path, run_command, write_json

GROUPS = {"text": (1, 2, 3, 6), "audio": (4, 8), "video": (5, 7)}  # where the synthetic corpus plants each item


@dataclass(frozen=True)
class Recipe:
    """What a recipe changes from the demo's: ``DemoSettings`` fields (e.g. the stage-1 length) and
    extra stage-2 flags. A recipe whose stage-1 command equals the demo's shares the cell's stage 1."""

    stage2_flags: tuple[str, ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()  # (DemoSettings field, value) pairs

    def applied(self, settings: DemoSettings) -> DemoSettings:
        return replace(settings, **dict(self.settings))


RECIPES: dict[str, Recipe] = {
    "demo": Recipe(),
    "score_first": Recipe(("--answer_order", "score_first")),
    "lora_qkvo": Recipe(("--lora_target_modules", r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj)")),
    "stage1_120": Recipe(settings=(("stage1_steps", 120),)),
    # The joint loss with the head's MSE kept out of the LLM: the LoRA learns from the CE alone (as in
    # "w/o Joint"), the head still reads the hidden states (fallback, head and combined sources).
    "detached_head": Recipe(("--detach_score_head",)),
    # Between the two: the MSE still reaches the LLM, at a quarter of the CE's weight (AdamW normalises
    # the head's own update, so the head learns about as fast; the LoRA's mix of the two gradients changes).
    "mse_quarter": Recipe(("--score_loss_weight", "0.25")),
}
BASELINES = ("train_mean", "zero_shot", "text_only")
SOURCES = ("generated_with_head_fallback", "expected", "head", "combined")
# On dev, where defaults are chosen, the combination cannot be fitted on the split it is scored on:
# each participant gets a weight fitted on the other dev participants (leave one out).
DEV_SOURCES = ("generated_with_head_fallback", "expected", "head", "combined_cross_fitted")
ALL_SOURCES = tuple(dict.fromkeys(SOURCES + DEV_SOURCES))  # a table row per source either split has
TEXT_ONLY = ABLATIONS["LoRA {T} (text only, CE)"]  # (folder, training flags, evaluation flags)
GOAL_GAIN = 0.15  # the goal: >= 15% lower item MAE than train-mean on every group


def check_recipes() -> None:
    """Every recipe flag is one of mllm-dr-train's (checked before any step runs)."""
    from mllm_dr.commands import train

    known = {f"--{prefix}{f.name}" for cls in train.ARGUMENTS for f in fields(cls) for prefix in ("", "no_")}
    settings = {f.name for f in fields(DemoSettings)}
    for name, recipe in RECIPES.items():
        unknown = [flag for flag in recipe.stage2_flags if flag.startswith("--") and flag not in known]
        if unknown:
            raise SystemExit(f"recipe {name!r}: {unknown} are not mllm-dr-train flags")
        unknown = [key for key, _ in recipe.settings if key not in settings]
        if unknown:
            raise SystemExit(f"recipe {name!r}: {unknown} are not DemoSettings fields")


def group_mae(per_item: dict[str, float]) -> dict[str, float | None]:
    """Mean of the per-item MAE over each planted group (every item has one row per participant)."""
    per_item = {str(item): mae for item, mae in per_item.items()}  # int keys before a JSON round trip
    return {
        group: statistics.fmean(per_item[str(i)] for i in items) if all(str(i) in per_item for i in items) else None
        for group, items in GROUPS.items()
    }


def summarise(metrics: dict[str, Any], source: str | None) -> dict[str, Any]:
    """One evaluation's figures: for a score source from ``score_sources``, else the counted scores."""
    values = metrics if source is None else (metrics.get("score_sources") or {}).get(source)
    if not values:
        return {}
    return {"ccc": values.get("ccc"), "mae": values.get("mae"), "groups": group_mae(values.get("per_item_mae") or {})}


def cell_name(seed: int, layout: str, seconds: float) -> str:
    """``seed<S>-<layout>``, with ``-<seconds>s`` for feature sequences other than the demo's 4 s."""
    return f"seed{seed}-{layout}" + ("" if seconds == DemoSettings.seconds else f"-{seconds:g}s")


class Cell:
    """One (seed, layout): its corpus, shared stage 1 and the folders of its models and evaluations."""

    def __init__(self, root: Path, settings: DemoSettings, layout: str, demo_run: Path | None):
        self.settings, self.layout = settings, layout
        self.name = cell_name(settings.seed, layout, settings.seconds)
        self.root = root / self.name
        self.demo_run = demo_run
        self.corpus = (demo_run / "corpus") if demo_run else self.root / "corpus"
        self.stage1 = (demo_run / "stage1") if demo_run else self.root / "stage1"
        self.logs = self.root / "logs"

    def model(self, recipe: str) -> Path:
        if recipe == "demo" and self.demo_run is not None:
            return self.demo_run / "stage2"
        return self.root / "stage2" / recipe

    def prepare(self, timings: dict[str, float]) -> None:
        if not (self.corpus / "rationales.jsonl").is_file():
            command = corpus_command(self.settings, self.corpus)
            if self.layout != "standard":  # the generator's default
                command += ["--signal_layout", self.layout]
            timings[f"{self.name} corpus"] = run_command(command, self.logs / "corpus.log")
        self.stage1_for("demo", timings)

    def stage1_for(self, recipe: str, timings: dict[str, float]) -> Path:
        """The cell's stage 1, or the recipe's own where its settings change the stage-1 command."""
        settings = RECIPES[recipe].applied(self.settings)
        own = stage1_command(settings, self.corpus, self.stage1) != stage1_command(self.settings, self.corpus, self.stage1)
        folder = self.root / f"stage1_{recipe}" if own else self.stage1
        if not (folder / "mllm_dr_adapter.json").is_file():
            step = f"stage1 {recipe}" if own else "stage1"
            timings[f"{self.name} {step}"] = run_command(
                stage1_command(settings, self.corpus, folder), self.logs / f"{folder.name}.log")
        return folder

    def train(self, recipe: str, timings: dict[str, float]) -> Path:
        return self._stage2(recipe, RECIPES[recipe].applied(self.settings), lambda: self.stage1_for(recipe, timings),
                            list(RECIPES[recipe].stage2_flags), timings)

    def train_text_only(self, timings: dict[str, float]) -> Path:
        folder, flags, _ = TEXT_ONLY
        return self._stage2(folder, self.settings, lambda: None, flags, timings)

    def _stage2(self, name: str, settings: DemoSettings, stage1: Callable[[], Path | None], flags: list[str],
                timings: dict[str, float]) -> Path:
        """Model ``name``'s stage 2 unless it is finished (``stage1`` is asked for only then)."""
        out = self.model(name)
        if not (out / "merged" / "config.json").is_file():
            command = stage2_command(settings, self.corpus, out, stage1(), flags)
            timings[f"{self.name} train {name}"] = run_command(command, self.logs / f"train_{name}.log")
        return out

    def evaluate(self, name: str, flags: list[str], timings: dict[str, float], split: str = "test") -> dict[str, Any]:
        out = self.root / "eval" / f"{name}_{split}"
        if not (out / "metrics.json").is_file():
            base = eval_flags(self.settings, self.corpus)
            base[base.index("--split") + 1] = split
            timings[f"{self.name} eval {name} {split}"] = run_command(
                ["mllm-dr-evaluate", *flags, *base, "--output_dir", str(out)], self.logs / f"eval_{name}_{split}.log")
        return json.loads((out / "metrics.json").read_text())


def run_cell(cell: Cell, recipes: list[str], baselines: list[str], timings: dict[str, float]) -> dict[str, Any]:
    """The cell's test figures per recipe (every score source) and baseline, and under ``dev`` the
    same for the dev split (recipes and train-mean: where defaults are chosen, never on test)."""
    cell.prepare(timings)
    results: dict[str, Any] = {}
    dev: dict[str, Any] = {}
    for recipe in recipes:
        model = cell.train(recipe, timings)
        dev_metrics = cell.evaluate(recipe, ["--model", str(model / "merged")], timings, split="dev")
        dev_dir = cell.root / "eval" / f"{recipe}_dev"
        dev[recipe] = {source: summarise(dev_metrics, source) for source in DEV_SOURCES}
        if not dev[recipe]["combined_cross_fitted"]:  # an evaluation from before the cross-fitted source
            records = [record for _, record in read_jsonl(dev_dir / "predictions.jsonl")]
            seed = json.loads((dev_dir / "manifest.json").read_text()).get("seed", 0)  # PHQ items: scores 0-3
            sources = score_source_comparison(records, dev_metrics.get("cutoff", 10), seed, (0, 3))
            dev[recipe]["combined_cross_fitted"] = summarise({"score_sources": sources}, "combined_cross_fitted")
        metrics = cell.evaluate(recipe, ["--model", str(model / "merged"), "--fit_text_weight_on", str(dev_dir)], timings)
        results[recipe] = {source: summarise(metrics, source) for source in SOURCES}
        weight = json.loads((cell.root / "eval" / f"{recipe}_test" / "manifest.json").read_text()).get("text_weight")
        results[recipe]["text_weight"] = None if weight is None else weight["value"]
    if "train_mean" in baselines:
        results["train_mean"] = summarise(cell.evaluate("train_mean", ["--train_mean"], timings), None)
        if recipes:
            dev["train_mean"] = summarise(cell.evaluate("train_mean", ["--train_mean"], timings, split="dev"), None)
    if "zero_shot" in baselines:
        results["zero_shot"] = summarise(cell.evaluate("zero_shot", ["--zero_shot", "--model", str(backbone_dir())], timings), None)
    if "text_only" in baselines:
        folder, _, eval_extra = TEXT_ONLY
        model = cell.train_text_only(timings)
        results["text_only"] = summarise(cell.evaluate(folder, ["--model", str(model / "merged"), *eval_extra], timings), None)
    if dev:
        results["dev"] = dev
    return results


def spread(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), (statistics.stdev(known) if len(known) > 1 else 0.0)


def table(cells: dict[str, dict[str, Any]]) -> str:
    """Per recipe/source and baseline: group MAE mean +- sd over the cells, the gain over train-mean,
    totals CCC and MAE, and the cells meeting the goal (>= 15% gain on every group; for a recipe
    also below the text-only baseline on the audio and video groups, where it was run)."""
    rows_out: list[list[Any]] = []
    names: list[tuple[str, str | None]] = []
    for results in cells.values():
        for key, value in results.items():
            if key == "dev":
                continue
            entries = [(key, s) for s in ALL_SOURCES if value.get(s)] if key in RECIPES else [(key, None)]
            names += [n for n in entries if n not in names]
    fmt = lambda m, s: "n/a" if m is None else f"{m:.3f} ± {s:.3f}"  # noqa: E731
    for key, source in names:
        figures = [(c, r[key] if source is None else r[key][source]) for c, r in cells.items()
                   if key in r and (source is None or r[key].get(source))]  # a carried cell may lack a source
        row: list[Any] = [key if source is None else f"{key}: {source}", len(figures)]
        for group in GROUPS:
            mean, sd = spread([f["groups"].get(group) for _, f in figures])
            gains = [1 - f["groups"][group] / cells[c]["train_mean"]["groups"][group] for c, f in figures
                     if "train_mean" in cells[c] and f["groups"].get(group) is not None]
            row += [fmt(mean, sd), "n/a" if not gains else f"{100 * statistics.fmean(gains):+.0f}%"]
        for metric in ("ccc", "mae"):
            row.append(fmt(*spread([f.get(metric) for _, f in figures])))
        met = 0
        for c, f in figures:
            base, text = cells[c].get("train_mean"), cells[c].get("text_only")
            ok = base is not None and all(
                f["groups"].get(g) is not None and f["groups"][g] <= (1 - GOAL_GAIN) * base["groups"][g] for g in GROUPS)
            if key in RECIPES and text is not None:
                ok = ok and all(f["groups"][g] < text["groups"][g] for g in ("audio", "video"))
            met += ok
        row.append(f"{met}/{len(figures)}")
        rows_out.append(row)
    headers = ["model: score source", "cells"]
    for group in GROUPS:
        headers += [f"{group} items MAE", "vs train-mean"]
    headers += ["totals CCC", "totals MAE", "goal met"]
    return markdown_table(headers, rows_out)


def dev_table(cells: dict[str, dict[str, Any]]) -> str:
    """The same table on the dev split, for the cells that recorded one: the split on which a default
    is chosen (``combined_cross_fitted`` in place of ``combined``, whose weight is fitted there)."""
    return table({name: results["dev"] for name, results in cells.items() if "dev" in results})


def carried_cells(path: Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The cells of an earlier results file, and where each of their entries (recipe or baseline, with
    its dev figures) came from: that file's command, date and commit, or its own record of an earlier
    one (``entry_sources``; files from before it recorded ``cell_sources``, one origin per cell)."""
    if path is None:
        return {}, {}
    earlier = json.loads(path.read_text())
    origin = {key: earlier.get(key) for key in ("command", "date", "git_commit")}
    entry_sources = earlier.get("entry_sources") or {}
    cell_sources = earlier.get("cell_sources") or {}
    sources = {
        name: entry_sources.get(name) or {entry: cell_sources.get(name, origin) for entry in value if entry != "dev"}
        for name, value in earlier["cells"].items()
    }
    return earlier["cells"], sources


def merged_cell(earlier: dict[str, Any], computed: dict[str, Any]) -> dict[str, Any]:
    """A carried cell with this run's entries in place of its own (the dev figures likewise, per entry)."""
    cell = {**earlier, **{k: v for k, v in computed.items() if k != "dev"}}
    dev = {**earlier.get("dev", {}), **computed.get("dev", {})}
    if dev:
        cell["dev"] = dev
    return cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layouts", nargs="+", default=["standard", "sparse"], help="mllm-dr-synthetic-corpus --signal_layout names")
    parser.add_argument("--recipes", nargs="+", default=["demo"], choices=list(RECIPES))
    parser.add_argument("--baselines", nargs="*", default=["train_mean"], choices=list(BASELINES))
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto")
    parser.add_argument("--demo_run", type=Path, default=None,
                        help="a finished `make demo` run: its corpus, stage 1 and stage 2 are the cell (its seed, standard)")
    parser.add_argument("--seconds", type=float, default=DemoSettings.seconds,
                        help="feature length of the cells' corpora in seconds (the demo's: 4; the issue asks up to 20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 participants, 2 stage-1 steps, 0.1 epoch")
    parser.add_argument("--output", default=None, help="results JSON (default benchmarks/results/learning.json)")
    parser.add_argument("--carry", type=Path, default=None,
                        help="an earlier results JSON whose cells join the table (each entry with its command, date "
                             "and commit under entry_sources); in a cell this run computes, the recipes and baselines it "
                             "lists are computed anew and the cell's others are kept (the corpus generator and stage 1 "
                             "are deterministic: the same seed and layout give the same corpus)")
    args = parser.parse_args(argv)
    check_recipes()
    argv_text = " ".join(["python benchmarks/learning.py", *(argv if argv is not None else sys.argv[1:])])
    this_run = {"command": argv_text, "date": time.strftime("%Y-%m-%d"), "git_commit": git_commit()}
    carried, entry_sources = carried_cells(args.carry)

    settings = DemoSettings(precision=args.precision, seconds=args.seconds).resolved()
    if args.quick:
        settings = replace(settings, participants=12, stage1_steps=2, stage2_epochs=0.1, max_new_tokens=24)
    demo_settings = None
    if args.demo_run is not None:
        demo_settings = DemoSettings.from_json(json.loads((args.demo_run / "settings.json").read_text())).resolved()
    print(f"backbone: {prepare_backbone(backbone_dir())}", flush=True)
    timings_path = args.run_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    cells: dict[str, dict[str, Any]] = dict(carried)
    for layout in args.layouts:
        for seed in args.seeds:
            reuse = demo_settings is not None and layout == "standard" and (seed, args.seconds) == (
                demo_settings.seed, demo_settings.seconds)
            cell_settings = demo_settings if reuse else replace(settings, seed=seed)
            cell = Cell(args.run_dir, cell_settings, layout, args.demo_run if reuse else None)
            started = time.perf_counter()
            computed = run_cell(cell, args.recipes, args.baselines, timings)
            cells[cell.name] = merged_cell(cells.get(cell.name, {}), computed)
            entry_sources.setdefault(cell.name, {}).update({entry: this_run for entry in computed if entry != "dev"})
            write_json(timings_path, timings)
            print(f"{cell.name}: done in {time.perf_counter() - started:.0f} s", flush=True)
            result = {
                **this_run, "machine": machine_facts(), "settings": asdict(settings),
                "demo_run": None if args.demo_run is None else str(args.demo_run),
                "timings_s": {k: round(v, 1) for k, v in timings.items()}, "cells": cells, "entry_sources": entry_sources,
                "table": table(cells), "dev_table": dev_table(cells),
            }  # fmt: skip
            write_json(result_path("learning", args.quick, args.output), result)  # after every cell: partial results
            write_text_atomic(args.run_dir / "learning.md",
                              f"## Test\n\n{result['table']}\n\n## Dev\n\n{result['dev_table']}\n")
    print(table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
