"""Evaluation outputs from prediction records: participant totals, the PHQ metrics (with the MAA
head's scores alone beside them), the figures, the Markdown report and the Table-11-style summary of
several runs; plus the train-mean baseline's predictions."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processing_mllm_dr import parse_score_permissive

from .cards import DISCLAIMER
from .evidence import evidence_lines, mark_quotes
from .inference import choose_score
from .inference.attribution import attribution_lines, mean_absolute_attribution
from .io import atomic_open, read_jsonl, write_text_atomic
from .metrics import compute_phq_metrics
from .uncertainty import probability_metrics

PREDICTIONS = "predictions.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
REPORT = "report.md"


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


def _by_participant(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[str(record["participant_id"])].append(record)
    return dict(sorted(grouped.items()))


def _true_total(records: Sequence[Mapping[str, Any]]) -> float | None:
    """A participant's known PHQ total: the recorded total, else the sum of its item labels when
    every item has one, else None."""
    total = records[0].get("total")
    if total is None and all(r.get("label") is not None for r in records):
        total = sum(r["label"] for r in records)
    return total


MIN_PARTICIPANTS = 2


def check_known_totals(records: Iterable[Mapping[str, Any]], where: str = "") -> int:
    """The number of participants with a known PHQ total among ``records`` (corpus rows or
    prediction records); ``ValueError`` (one line, naming ``where``) below the 2 that the metrics
    need: checkable from the rows, before anything is generated."""
    grouped = _by_participant(records)
    known = sum(_true_total(group) is not None for group in grouped.values())
    if known < MIN_PARTICIPANTS:
        raise ValueError(
            f"{where + ': ' if where else ''}{known} of {len(grouped)} participant(s) have a known PHQ total (item "
            f"labels or a total); the metrics need at least {MIN_PARTICIPANTS}: nothing to evaluate"
        )
    return known


def participant_totals(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for pid, records in _by_participant(predictions).items():
        true_total = _true_total(records)
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


def rescored(
    predictions: Sequence[Mapping[str, Any]], source: str, score_range: tuple[int, int], text_weight: float | None = None
) -> list[dict[str, Any]]:
    """The predictions with ``score`` chosen again by ``source`` from the fields they already hold
    (parsed digit, head, expected score): every score source from one generation."""
    low, high = score_range
    return [
        {**p, "score": choose_score(p["parsed_score"], p["head_score"], source, 0.0, low, high,
                                    expected=p.get("expected_score"), text_weight=text_weight)[0]}
        for p in predictions
    ]  # fmt: skip


def score_source_comparison(
    predictions: Sequence[Mapping[str, Any]], cutoff: float, seed: int, score_range: tuple[int, int],
    text_weight: float | None = None,
) -> dict[str, dict[str, Any]] | None:
    """Point metrics (totals CCC/RMSE/MAE/F1, item MAE, per-item MAE) of every score source these
    predictions support, whatever ``--score_source`` counted: the text's digit with the head's
    fallback, the expected score, the head, and (with a text weight) their combination; and
    ``combined_cross_fitted``, the combination with each participant's weight fitted on the other
    participants of these predictions (:func:`cross_fitted_combination`): what ``combined`` would
    give on this split without fitting on the participants it scores (on dev, where a default is
    chosen and the weight for test is fitted)."""
    labelled = [p for p in predictions if p.get("label") is not None]
    if not labelled:
        return None
    sources = ["generated_with_head_fallback"]
    if any(p.get("expected_score") is not None for p in predictions):
        sources.append("expected")
    if all(p["head_score"] is not None for p in predictions):
        sources.append("head")
        if text_weight is not None:
            sources.append("combined")
    scored_by = {source: rescored(predictions, source, score_range, text_weight) for source in sources}
    if "head" in scored_by:
        cross = cross_fitted_combination(predictions, score_range)
        if cross is not None:
            scored_by["combined_cross_fitted"] = cross
    out = {}
    for source, scored in scored_by.items():
        point = _phq_metrics(scored, cutoff, seed, n_bootstrap=0, with_genders=False)
        items = [p for p in scored if p.get("label") is not None]
        out[source] = {
            **{k: point.get(k) for k in ("ccc", "rmse", "mae", "f1", "per_item_mae")},
            "item_mae": float(np.mean([abs(p["score"] - p["label"]) for p in items])),
        }
    return out


def cross_fitted_combination(
    predictions: Sequence[Mapping[str, Any]], score_range: tuple[int, int] = (0, 3), min_participants: int = 3
) -> list[dict[str, Any]] | None:
    """The labelled participants' predictions scored by ``combined``, each participant's text weight
    fitted (:func:`fit_text_weight`) on the other participants only (leave one participant out).
    None with fewer than ``min_participants`` labelled participants or where a fit has too few items."""
    labelled = _by_participant(p for p in predictions if p.get("label") is not None)
    if len(labelled) < min_participants:
        return None
    out: list[dict[str, Any]] = []
    for pid, own in labelled.items():
        others = [p for other, records in labelled.items() if other != pid for p in records]
        try:
            weight = fit_text_weight(others, score_range)["text_weight"]
        except ValueError:
            return None
        out += rescored(own, "combined", score_range, weight)
    return out


def fit_text_weight(predictions: Sequence[Mapping[str, Any]], score_range: tuple[int, int] = (0, 3)) -> dict[str, Any]:
    """The weight ``w`` in [0, 1] of ``w * text + (1 - w) * head`` (text: the expected score, else the
    parsed digit; head clipped to the range) with the least squared item error on ``predictions``
    (closed form, then clipped). ``ValueError`` when fewer than 2 labelled items have both."""
    low, high = score_range
    pairs = []
    for p in predictions:
        text = p.get("expected_score") if p.get("expected_score") is not None else p.get("parsed_score")
        if p.get("label") is None or text is None or p.get("head_score") is None:
            continue
        pairs.append((float(text), float(min(max(p["head_score"], low), high)), float(p["label"])))
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} labelled item(s) have both a text score and a head score; the fit needs 2")
    text, head, label = (np.array(column) for column in zip(*pairs))
    spread = float(((text - head) ** 2).sum())
    weight = 1.0 if spread == 0 else float(np.clip(((text - head) * (label - head)).sum() / spread, 0.0, 1.0))

    def mse(w: float) -> float:
        return float(np.mean((w * text + (1 - w) * head - label) ** 2))

    return {"text_weight": weight, "n_items": len(pairs), "mse": mse(weight), "mse_text": mse(1.0), "mse_head": mse(0.0)}


def compute_metrics(
    predictions: list[dict[str, Any]],
    *,
    cutoff: float,
    seed: int,
    n_bootstrap: int,
    score_source: str,
    baseline: bool,
    score_range: tuple[int, int] = (0, 3),
    text_weight: float | None = None,
) -> dict[str, Any]:
    """``metrics.json``: the PHQ metrics of the scores that count, format failures, head fallbacks,
    generated-vs-head agreement, for a model with a trained head the head's scores alone, and the
    point metrics of every score source the predictions support (``score_sources``)."""
    check_known_totals(predictions)
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
    lenient = sum(parse_score_permissive(p.get("generated_text") or "", low, high) is None for p in predictions)
    both = [p for p in predictions if p["parsed_score"] is not None and p["head_score"] is not None]
    metrics.update(
        {
            "n_items": n_items,
            "format_failures": None if baseline else failures,
            "format_failure_rate": None if baseline else failures / n_items,
            # A lenient reader's rate (processing_mllm_dr.parse_score_permissive), comparable with the
            # paper's Table 6 metric I; the strict rate above decides which score counts.
            "format_failure_rate_permissive": None if baseline else lenient / n_items,
            "fallback_count": sum(bool(p["fell_back"]) for p in predictions),
            "score_source": score_source,
            "generated_head_agreement": None
            if not both
            else {
                "n_items": len(both),
                "mean_absolute_difference": float(np.mean([abs(p["parsed_score"] - p["head_score"]) for p in both])),
                "exact_agreement_rate": float(np.mean([p["parsed_score"] == round(min(max(p["head_score"], low), high)) for p in both])),
            },
            # Beside the scores used, never instead of them: the LM's probabilities at the score digit
            "score_probabilities": None if baseline else probability_metrics(predictions, cutoff, low, high),
            # --modality_attribution: per item, the mean |change| of the expected score (and of the
            # head's score; with --attribution_effect total, of the score that counts) per withheld modality
            "modality_attribution": None if baseline else mean_absolute_attribution(predictions),
            "modality_attribution_score": None if baseline else mean_absolute_attribution(predictions, of="score"),
            "modality_attribution_head": None if baseline else mean_absolute_attribution(predictions, of="head"),
            "score_sources": None if baseline else score_source_comparison(predictions, cutoff, seed, score_range, text_weight),
        }
    )
    return metrics


# ----------------------------------------------------------------------------- figures
def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> str:
    """Writes ``fig`` to ``path`` atomically (one resolution and framing for every figure) and closes it."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path.name


def write_figures(predictions: list[dict[str, Any]], metrics: dict[str, Any], out: Path, cutoff: float) -> list[str]:
    plt = _pyplot()
    totals = [t for t in participant_totals(predictions) if t["true_total"] is not None]
    true = np.array([t["true_total"] for t in totals])
    pred = np.array([t["predicted_total"] for t in totals])
    files = []

    def save(fig, name):
        files.append(_save_png(fig, out / name))

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
    calibration = (metrics.get("score_probabilities") or {}).get("calibration")
    if calibration:
        files.append(write_reliability_diagram(calibration, out / "reliability_diagram.png"))
    return files


def write_reliability_diagram(calibration: Mapping[str, Any], path: Path) -> str:
    """Accuracy against mean confidence per confidence bin (``uncertainty.calibration``'s), the
    diagonal for perfect calibration, and the item count per bin below."""
    plt = _pyplot()
    bins = [b for b in calibration["bins"] if b["count"]]
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / calibration["ece_bins"]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge", alpha=0.7,
           edgecolor="black", label="accuracy of the most likely score")  # fmt: skip
    ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color="black", s=12, zorder=3,
               label="(mean confidence, accuracy) per bin")  # fmt: skip
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Item scores: ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f}")  # fmt: skip
    ax.legend(loc="upper left", fontsize=7)
    counts.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="grey")
    counts.set(xlabel="confidence (largest score probability)", ylabel="items")
    return _save_png(fig, path)


def probability_lines(section: Mapping[str, Any] | None, cutoff: float) -> list[str]:
    """The report's account of the score probabilities (``metrics.json``'s ``score_probabilities``)."""
    if not section:
        return []
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    calibration = section.get("calibration") or {}
    interval = section["total_interval"]
    level = f"{interval['level']:.0%}"
    lines = [
        "## Score probabilities",
        "",
        "Read from the language model's raw logits at the step where it wrote the score digit (the generated "
        "rationale as context, no extra generation), over the digits 0-3 of the form it wrote, renormalised. "
        "They sit beside the scores used above, which stay the paper's.",
        "",
        f"- Items with probabilities: {section['n_items_with_probabilities']} of {section['n_items']} "
        f"({section['n_items_without_probabilities']} without: {section['missing_items']})",
        f"- Mean probability mass of the four digits before renormalising: {fmt(section['mean_candidate_mass'])}; "
        f"mean entropy {fmt(section['mean_entropy_bits'])} bits (2 = uniform)",
    ]
    if calibration:
        lines += [
            f"- Item calibration ({calibration['n_items']} labelled items): expected calibration error "
            f"{fmt(calibration['ece'])} (top label, {calibration['ece_bins']} equal-width confidence bins), "
            f"multiclass Brier score {fmt(calibration['brier'])} (0 best, 2 worst), accuracy of the most likely "
            f"score {fmt(calibration['accuracy'])} at mean confidence {fmt(calibration['mean_confidence'])}",
        ]
    lines += [
        f"- Totals: {section['independence']}. The equal-tailed {level} interval holds the true total for "
        f"{fmt(interval['coverage'])} of {interval['n_participants']} participants (mean width "
        f"{fmt(interval['mean_width'])}); Brier score of P(total >= {cutoff:g}): {fmt(section['screen_brier'])}",
        "",
    ]
    return lines


def write_item_figure(items: Sequence[Mapping[str, Any]], path: Path, score_range: tuple[int, int] = (0, 3)) -> str:
    """One interview's items (``prediction.json``'s): the generated (text) score and the MAA head's
    score side by side per item, the score that counts as a marker, and each flagged item's flags
    written under its bar (``item["flags"]``: short labels). Returns the file name."""
    plt = _pyplot()
    low, high = score_range
    x = np.arange(len(items))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(items)), 3.6))
    text = [np.nan if i["parsed_score"] is None else float(i["parsed_score"]) for i in items]
    head = [np.nan if i["head_score"] is None else float(min(max(i["head_score"], low), high)) for i in items]
    ax.bar(x - 0.2, text, width=0.4, label="text score")
    ax.bar(x + 0.2, head, width=0.4, label="head score (clipped)")
    ax.scatter(x, [float(i["score"]) for i in items], color="black", marker="_", s=300, zorder=3, label="score used")
    for position, item in zip(x, items):  # each flag above its item, wrapped to the bar's width
        if item.get("flags"):
            label = "\n".join(line for flag in item["flags"] for line in textwrap.wrap(flag, 10))
            ax.text(position, high + 1.2, label, ha="center", va="top", fontsize=7, color="red")
    ax.set_xticks(x, [str(i["item_index"]) for i in items])
    ax.set(xlabel="PHQ item", ylabel="item score", ylim=(low, high + 1.3), yticks=range(low, high + 1),
           title="Per-item scores (red: flags)")  # fmt: skip
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncols=3, frameon=False)
    return _save_png(fig, path)


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


def transcript_line(cuts: Mapping[str, Any] | None) -> list[str]:
    """The report's line on transcripts cut to the model's budget (none when the prompt has no transcript)."""
    if not cuts:
        return []
    worst = f", by at most {cuts['max_cut_tokens']} tokens" if cuts["truncated"] else ""
    return [f"- Transcripts: budget {cuts['budget']} tokens; {cuts['truncated']} of {cuts['participants']} "
            f"participants' transcripts were cut{worst} (per participant in `manifest.json`)"]  # fmt: skip


def score_source_lines(
    sources: Mapping[str, Mapping[str, Any]] | None, counted: str, text_weight: Mapping[str, Any] | None
) -> list[str]:
    """The report's table of :func:`score_source_comparison` (the same generation, scored each way)."""
    if not sources:
        return []
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "## The same outputs, scored each way",
        "",
        "Point metrics of every score source these outputs support (`--score_source`; the one that counts "
        f"here is `{counted}`; the paper's is `generated_with_head_fallback`).",
    ]
    if text_weight:
        lines.append(
            f"`combined` weighs the expected score by {text_weight['value']:.3f} and the head by the rest"
            + (f", fitted on `{text_weight['fitted_on']}` (split {text_weight['split']}, {text_weight['n_items']} items)."
               if text_weight.get("fitted_on") else " (given).")
        )  # fmt: skip
    if "combined_cross_fitted" in sources:
        lines.append("`combined_cross_fitted` scores each participant by the combination with its weight fitted on the "
                     "other participants here (leave one out): an estimate of `combined` on this split, not a "
                     "`--score_source`.")
    lines += ["", "| score source | CCC | RMSE | MAE | F1 | item MAE |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {fmt(m['ccc'])} | {fmt(m['rmse'])} | {fmt(m['mae'])} | {fmt(m['f1'])} | {fmt(m['item_mae'])} |"
              for name, m in sources.items()]  # fmt: skip
    return lines + [""]


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
        *transcript_line(manifest["data"].get("transcripts")),
        "",
        "| metric | value (95% bootstrap interval) |",
        "|---|---|",
        f"| CCC | {fmt(metrics['ccc'])}{ci('ccc_ci95')} |",
        f"| Pearson r | {fmt(metrics.get('pearson_r'))} |",
        f"| RMSE | {fmt(metrics['rmse'])} |",
        f"| MAE | {fmt(metrics['mae'])}{ci('mae_ci95')} |",
        f"| Precision / Recall / F1 | {fmt(metrics['precision'])} / {fmt(metrics['recall'])} / {fmt(metrics['f1'])}{ci('f1_ci95')} |",
        f"| Severity-band accuracy | {fmt(metrics.get('severity_accuracy'))} |",
        f"| Format failures, strict (these items fall back) | {fmt(metrics['format_failure_rate'])} ({fmt(metrics['format_failures'])} items) |",
        f"| Format failures, permissive (comparable with Table 6, I) | {fmt(metrics.get('format_failure_rate_permissive'))} |",
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
    lines += score_source_lines(metrics.get("score_sources"), metrics["score_source"], manifest.get("text_weight"))
    lines += probability_lines(metrics.get("score_probabilities"), metrics["cutoff"])
    effect = manifest.get("attribution_effect", "direct")
    lines += attribution_lines(metrics.get("modality_attribution_score"), of="score", effect=effect)
    lines += attribution_lines(metrics.get("modality_attribution"), effect=effect)
    lines += attribution_lines(metrics.get("modality_attribution_head"), of="head", effect=effect)
    lines += left_out_lines(manifest["data"].get("left_out"))
    lines += evidence_lines(metrics.get("evidence"))
    lines += [f"![{name}]({name})" for name in figures]
    example = next((p for p in predictions if p.get("quotes")), None)  # one that quotes the interview, if any
    example = example or next((p for p in predictions if p.get("rationale")), None)
    if example is not None:
        lines += [
            "",
            "## One explainable prediction",
            "",
            f"Participant {example['participant_id']}, item {example['item_index']} ({example['item_name']}): "
            f"score {example['score']:g} (generated {fmt(example['parsed_score'])}, head {fmt(example['head_score'])}, "
            f"true {fmt(example['label'])})",
            "",
            f"> {mark_quotes(example['rationale'], example.get('quotes') or [])}",
            "",
            "This report contains text generated from licensed interview data: keep it local.",
        ]
    write_text_atomic(out / REPORT, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- aggregate
AGGREGATE_METRICS = ("ccc", "precision", "recall", "f1", "rmse", "mae", "format_failure_rate")

# What must agree between the runs of one Table-11 row: where each field is read in a run's
# manifest.json or metrics.json. Seeds are not here: runs that differ only in their seed are what
# is aggregated.
RUN_FIELDS: dict[str, tuple[str, ...]] = {
    "kind": (MANIFEST, "model", "kind"),  # checkpoint, adapter_export, zero_shot_backbone, train_mean_baseline
    "model": (MANIFEST, "model", "fingerprint"),  # every byte of the model folder (None: no model)
    "generation": (MANIFEST, "generation"),  # greedy, or sampling with its temperature and top_k
    "max_new_tokens": (MANIFEST, "max_new_tokens"),
    "score_source": (MANIFEST, "score_source"),
    "unparsed_score": (MANIFEST, "unparsed_score"),
    "prefix_reuse": (MANIFEST, "prefix_reuse"),
    "dtype": (MANIFEST, "dtype"),
    "mode": (MANIFEST, "mode"),
    "max_transcript_tokens": (MANIFEST, "max_transcript_tokens"),
    "questionnaire": (MANIFEST, "questionnaire"),
    "data_format": (MANIFEST, "data", "format"),
    "data_dir": (MANIFEST, "data", "dir"),
    "split": (MANIFEST, "data", "split"),
    "participants": (MANIFEST, "data", "participants"),
    "cutoff": (METRICS, "cutoff"),
}


def _run_field(files: Mapping[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = files
    for key in where:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _read_run(run: str) -> dict[str, Any]:
    """``{file name: contents}`` of one evaluation folder's manifest and metrics."""
    found = {}
    for name in (MANIFEST, METRICS):
        path = Path(run) / name
        if not path.is_file():
            raise ValueError(f"{run}: no {name} (not a finished evaluation folder)")
        found[name] = json.loads(path.read_text())
    return found


def _differences(runs: Sequence[tuple[str, dict[str, Any]]], ignore: Sequence[str]) -> list[str]:
    """``'field (value: run, run; value: run)'`` for every field (but ``ignore``) the runs disagree on."""
    out = []
    for name in RUN_FIELDS:
        if name in ignore:
            continue
        by_value: dict[str, list[str]] = defaultdict(list)
        for run, fields in runs:
            by_value[json.dumps(fields[name], sort_keys=True)].append(run)
        if len(by_value) > 1:
            out.append(f"{name} (" + "; ".join(f"{value}: {', '.join(r)}" for value, r in by_value.items()) + ")")
    return out


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    lines = ["| run | " + " | ".join(AGGREGATE_METRICS) + " |", "|" + "---|" * (len(AGGREGATE_METRICS) + 1)]
    for name, metrics in rows:
        cells = [("n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}") for k in AGGREGATE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)):
        cells = []
        for key in AGGREGATE_METRICS:
            values = [m[key] for _, m in rows if m.get(key) is not None]
            cells.append("n/a" if not values else f"{fn(values):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def aggregate(run_dirs: Sequence[str], group_by: Sequence[str] = ()) -> str:
    """Table 11: each metric per run, then the mean and the (sample) standard deviation.

    The runs must agree on every :data:`RUN_FIELDS` field (model kind and fingerprint, generation
    settings, score source, cut-off, data, split, questionnaire...); ``ValueError`` names each field
    that differs and the folders on either side. ``group_by``: fields that may differ; the runs are
    then summarised separately per combination of their values (every other field must still agree
    within a group)."""
    unknown = [name for name in group_by if name not in RUN_FIELDS]
    if unknown:
        raise ValueError(f"--group_by {','.join(unknown)}: not a run field (fields: {', '.join(RUN_FIELDS)})")
    seen: dict[Path, str] = {}
    runs = []
    for run in run_dirs:
        resolved = Path(run).resolve()
        if resolved in seen:
            raise ValueError(f"--aggregate: {run} is given twice (also as {seen[resolved]}): each run counts once")
        seen[resolved] = run
        files = _read_run(run)
        runs.append((run, files[METRICS], {name: _run_field(files, where) for name, where in RUN_FIELDS.items()}))
    groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for run in runs:
        groups[tuple(json.dumps(run[2][name], sort_keys=True) for name in group_by)].append(run)
    differing = [d for members in groups.values() for d in _differences([(r, f) for r, _m, f in members], group_by)]
    if differing:
        hint = ",".join(dict.fromkeys(d.split(" ", 1)[0] for d in differing))
        raise ValueError(
            f"--aggregate: the runs are not of one model and settings: they differ in {'; '.join(differing)}. "
            f"Aggregate comparable runs only, or name the fields to group them by: --group_by {hint}"
        )
    lines: list[str] = []
    for key, members in groups.items():
        if group_by:
            heading = ", ".join(f"{name} {value}" for name, value in zip(group_by, key))
            lines += ([""] if lines else []) + [f"### {heading} ({len(members)} run(s))", ""]
        lines += _table([(Path(run).name, metrics) for run, metrics, _f in members])
    return "\n".join(lines)
