"""Evaluation outputs from prediction records: participant totals, the PHQ metrics (with the MAA
head's scores alone beside them), the figures, the Markdown report and the Table-11-style summary of
several runs; plus the train-mean baseline's predictions."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inference import choose_score
from .io import atomic_open, read_jsonl, write_text_atomic
from .metrics import compute_phq_metrics

PREDICTIONS = "predictions.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
REPORT = "report.md"
DISCLAIMER = (
    "MLlm-DR is a research tool, not a diagnostic device: these scores and rationales are not a clinical "
    "assessment and must not be used to diagnose, screen or treat anyone."
)


def read_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of ``predictions.jsonl``, one per (participant, item): a line repeated verbatim (a
    stray copy) counts once; two different records for one item (two runs into one folder) and a
    record whose label or total is no longer the corpus's (``rows``) raise ``ValueError`` naming
    file and lines. A torn last line (a killed write) is dropped; a damaged line elsewhere raises."""
    truth = {(str(r["participant_id"]), int(r["item_index"])): r for r in rows}
    kept: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
    for number, record in read_jsonl(path):
        try:
            key = (str(record["participant_id"]), int(record["item_index"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{number}: not a prediction record (no participant_id / item_index)") from None
        if key in kept:
            if kept[key][1] != record:
                raise ValueError(
                    f"{path}:{number}: participant {key[0]}, item {key[1]} was already predicted differently on line "
                    f"{kept[key][0]} (two evaluations wrote into one folder?): use a new --output_dir"
                )
            continue
        row = truth.get(key)
        if row is not None:
            for name in ("label", "total"):
                if name in record and row.get(name) != record[name]:
                    raise ValueError(
                        f"{path}:{number}: participant {key[0]}, item {key[1]} was predicted when its {name} was "
                        f"{record[name]}; the corpus now says {row.get(name)}: the labels changed since, so evaluate "
                        "into a new --output_dir"
                    )
        kept[key] = (number, record)
    return [record for _number, record in kept.values()]


def train_mean_predictions(train_rows: Iterable[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What 'learned nothing' scores: every item predicted as its training-set mean."""
    sums: dict[int, list[float]] = defaultdict(list)
    for row in train_rows:
        if row.get("label") is not None:
            sums[int(row["item_index"])].append(float(row["label"]))
    if not sums:
        raise ValueError("the train-mean baseline needs item labels in the train split")
    means = {item: float(np.mean(values)) for item, values in sums.items()}
    return [
        {
            "participant_id": str(r["participant_id"]), "item_index": int(r["item_index"]), "item_name": r["item_name"],
            "generated_text": "", "rationale": "", "parsed_score": None, "head_score": None,
            "score": means[int(r["item_index"])], "label": r.get("label"), "fell_back": False,
            "total": r.get("total"), "gender": r.get("gender"),
        }
        for r in rows
    ]  # fmt: skip


def participant_totals(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_participant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in predictions:
        by_participant[record["participant_id"]].append(record)
    out = []
    for pid, records in sorted(by_participant.items()):
        true_total = records[0].get("total")
        if true_total is None and all(r.get("label") is not None for r in records):
            true_total = sum(r["label"] for r in records)
        out.append(
            {
                "participant_id": pid,
                "predicted_total": float(sum(r["score"] for r in records)),
                "true_total": None if true_total is None else float(true_total),
                "gender": records[0].get("gender"),
                "items": len(records),
            }
        )
    return out


def _phq_metrics(predictions: list[dict[str, Any]], cutoff: float, seed: int, n_bootstrap: int, with_genders: bool):
    """PHQ metrics of the predictions' ``score`` fields: participant totals plus per-item errors."""
    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    genders = [t["gender"] for t in totals]
    labelled = [p for p in predictions if p.get("label") is not None]
    return compute_phq_metrics(
        [t["predicted_total"] for t in totals],
        [t["true_total"] for t in totals],
        cutoff=cutoff,
        genders=genders if with_genders and all(g is not None for g in genders) else None,
        item_predictions=[p["score"] for p in labelled] or None,
        item_references=[p["label"] for p in labelled] or None,
        item_indices=[p["item_index"] for p in labelled] or None,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def compute_metrics(
    predictions: list[dict[str, Any]],
    *,
    cutoff: float,
    seed: int,
    n_bootstrap: int,
    score_source: str,
    baseline: bool,
    score_range: tuple[int, int] = (0, 3),
) -> dict[str, Any]:
    """``metrics.json``: the PHQ metrics of the scores that count, format failures, head fallbacks,
    generated-vs-head agreement and, for a model with a trained head, the head's scores alone."""
    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    if len(totals) < 2:
        raise ValueError("fewer than 2 participants with a known PHQ total: nothing to evaluate")
    metrics = _phq_metrics(predictions, cutoff, seed, n_bootstrap, with_genders=True)
    labelled = any(p.get("label") is not None for p in predictions)
    low, high = score_range
    if not baseline and score_source != "head" and labelled and all(p["head_score"] is not None for p in predictions):
        # The MAA head's own scores, whatever the text said: how far the regression path alone gets.
        head_scored = [{**p, "score": choose_score(None, p["head_score"], "head", 0.0, low, high)[0]} for p in predictions]
        head_metrics = _phq_metrics(head_scored, cutoff, seed, n_bootstrap=0, with_genders=False)
        metrics["head_only"] = {k: v for k, v in head_metrics.items() if not k.endswith("_ci95")}
    n_items = len(predictions)
    failures = sum(p["parsed_score"] is None for p in predictions)
    both = [p for p in predictions if p["parsed_score"] is not None and p["head_score"] is not None]
    metrics.update(
        {
            "n_items": n_items,
            "format_failures": None if baseline else failures,
            "format_failure_rate": None if baseline else failures / n_items,
            "fallback_count": sum(bool(p["fell_back"]) for p in predictions),
            "score_source": score_source,
            "generated_head_agreement": None
            if not both
            else {
                "n_items": len(both),
                "mean_absolute_difference": float(np.mean([abs(p["parsed_score"] - p["head_score"]) for p in both])),
                "exact_agreement_rate": float(np.mean([p["parsed_score"] == round(min(max(p["head_score"], low), high)) for p in both])),
            },
        }
    )
    return metrics


def write_figures(predictions: list[dict[str, Any]], metrics: dict[str, Any], out: Path, cutoff: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    true = np.array([t["true_total"] for t in totals])
    pred = np.array([t["predicted_total"] for t in totals])
    files = []

    def save(fig, name):
        with atomic_open(out / name, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(name)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max(24.0, float(true.max(initial=0)), float(pred.max(initial=0)))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="identity")
    ax.scatter(true, pred, alpha=0.7)
    ax.axvline(cutoff, color="red", linewidth=0.8)
    ax.axhline(cutoff, color="red", linewidth=0.8)
    ax.set(xlabel="true PHQ total", ylabel="predicted PHQ total", xlim=(0, top), ylim=(0, top),
           title=f"CCC {metrics['ccc']:.2f}, MAE {metrics['mae']:.2f}")
    ax.legend(loc="upper left")
    save(fig, "totals_scatter.png")

    y_true, y_pred = true >= cutoff, pred >= cutoff
    matrix = np.array([[np.sum(~y_true & ~y_pred), np.sum(~y_true & y_pred)], [np.sum(y_true & ~y_pred), np.sum(y_true & y_pred)]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=[f"< {cutoff:g}", f">= {cutoff:g}"],
           yticklabels=[f"< {cutoff:g}", f">= {cutoff:g}"], xlabel="predicted", ylabel="true",
           title=f"Binary screen at cut-off {cutoff:g}")
    save(fig, "confusion_matrix.png")

    per_item = metrics.get("per_item_mae") or {}
    if per_item:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = {p["item_index"]: p["item_name"] for p in predictions}
        keys = sorted(per_item, key=int)
        ax.bar([names.get(int(k), str(k)) for k in keys], [per_item[k] for k in keys])
        ax.set(ylabel="MAE (item score)", title="Per-item error")
        ax.tick_params(axis="x", rotation=45)
        save(fig, "per_item_mae.png")
    return files


def left_out_lines(left_out: Mapping[str, Any] | None) -> list[str]:
    """The report's account of what the metrics do not cover."""
    if not left_out:
        return []
    lines = []
    if left_out.get("skipped"):
        lines += ["## Left out (--on_error skip)", ""]
        lines += [
            f"- participant {p['participant_id']}" + (f", item {p['item_index']}" if "item_index" in p else "")
            + f": `{p['path']}`: {p['problem']}"
            for p in left_out["skipped"]
        ]  # fmt: skip
        lines.append("")
    for modality, ids in (left_out.get("missing_modality") or {}).items():
        if ids:
            lines += [f"Scored without {modality} features (no {modality} file): {', '.join(ids)}.", ""]
    return lines


def write_report(predictions, metrics, manifest, out: Path, figures: list[str]) -> None:
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    ci = lambda key: "" if not metrics.get(key) else f" [{metrics[key][0]:.3f}, {metrics[key][1]:.3f}]"  # noqa: E731
    lines = [
        "# MLlm-DR evaluation report",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Model: `{manifest['model']['path']}` ({manifest['model']['kind']})",
        f"- Data: `{manifest['data']['format']}`, split `{manifest['data']['split']}`, "
        f"{metrics['n_participants']} participants, {metrics['n_items']} items",
        f"- Score source: `{metrics['score_source']}`; binary cut-off: total >= {metrics['cutoff']:g}",
        f"- Generation: {manifest['generation']}",
        "",
        "| metric | value (95% bootstrap interval) |",
        "|---|---|",
        f"| CCC | {fmt(metrics['ccc'])}{ci('ccc_ci95')} |",
        f"| Pearson r | {fmt(metrics.get('pearson_r'))} |",
        f"| RMSE | {fmt(metrics['rmse'])} |",
        f"| MAE | {fmt(metrics['mae'])}{ci('mae_ci95')} |",
        f"| Precision / Recall / F1 | {fmt(metrics['precision'])} / {fmt(metrics['recall'])} / {fmt(metrics['f1'])}{ci('f1_ci95')} |",
        f"| Severity-band accuracy | {fmt(metrics.get('severity_accuracy'))} |",
        f"| Format failures (Table 6, I) | {fmt(metrics['format_failure_rate'])} ({fmt(metrics['format_failures'])} items) |",
        f"| Head fallbacks | {metrics['fallback_count']} |",
        "",
    ]
    head = metrics.get("head_only")
    if head:
        lines += [
            f"The MAA head's scores alone (no text): CCC {fmt(head['ccc'])}, RMSE {fmt(head['rmse'])}, "
            f"MAE {fmt(head['mae'])}, F1 {fmt(head['f1'])}.",
            "",
        ]
    lines += left_out_lines(manifest["data"].get("left_out"))
    lines += [f"![{name}]({name})" for name in figures]
    example = next((p for p in predictions if p.get("rationale")), None)
    if example is not None:
        lines += [
            "",
            "## One explainable prediction",
            "",
            f"Participant {example['participant_id']}, item {example['item_index']} ({example['item_name']}): "
            f"score {example['score']:g} (generated {fmt(example['parsed_score'])}, head {fmt(example['head_score'])}, "
            f"true {fmt(example['label'])})",
            "",
            f"> {example['rationale']}",
            "",
            "This report contains text generated from licensed interview data: keep it local.",
        ]
    write_text_atomic(out / REPORT, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- aggregate
AGGREGATE_METRICS = ("ccc", "precision", "recall", "f1", "rmse", "mae", "format_failure_rate")


def aggregate(run_dirs: Sequence[str]) -> str:
    """Table 11: each metric per run, then the mean and the (sample) standard deviation."""
    rows = []
    for run in run_dirs:
        path = Path(run) / METRICS
        if not path.is_file():
            raise ValueError(f"{run}: no {METRICS}")
        rows.append((Path(run).name, json.loads(path.read_text())))
    header = "| run | " + " | ".join(AGGREGATE_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(AGGREGATE_METRICS) + 1)]
    for name, metrics in rows:
        cells = [("n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}") for k in AGGREGATE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)):
        cells = []
        for key in AGGREGATE_METRICS:
            values = [m[key] for _, m in rows if m.get(key) is not None]
            cells.append("n/a" if not values else f"{fn(values):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
