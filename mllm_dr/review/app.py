"""The local review app: one page per sample with the PHQ item's wording, the transcript the model
saw, the assessor's own score, then the model's rationale and score to rate 3/2/1 (paper section 5.6).

Built on Gradio (the Hugging Face ecosystem's web UI library). It serves on 127.0.0.1 by default,
with Gradio's analytics and version check off, no share link, no run history kept in the browser and
the theme's fonts served by the app itself: nothing is sent anywhere. The browser keeps only the
assessor's name and mode (Gradio's ``BrowserState``), so a reload or a reopened browser goes straight
back to the first sample this assessor has not rated; every rating is in the assessor's file already.

In blind mode the model's rationale and score stay hidden until the assessor has given (and locked)
their own score; the reveal itself is recorded, so the score given blind cannot change afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processing_mllm_dr import QUESTIONNAIRES

from .sampling import RATING_SCALE, ratings_path, read_ratings, record_rating

ANSWERS = {0: "Not at all", 1: "Several days", 2: "More than half the days", 3: "Nearly every day"}  # PHQ's answer options
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BROWSER_KEY = "mllm-dr-review"


def _complete(rating: Mapping[str, Any] | None) -> bool:
    return bool(rating) and rating.get("rationale_rating") is not None and rating.get("expert_score") is not None


def build_app(
    sample: Mapping[str, Any],
    transcripts: Mapping[tuple[str, int], str],
    reviews_dir: str | Path,
    assessor: str | None = None,
):
    """The ``gradio.Blocks`` app over ``sample`` (``sample.json``), writing into ``reviews_dir``;
    ``transcripts`` maps (participant, item) to the text the model saw; ``assessor`` pre-fills the name."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and by every Blocks
    import gradio as gr

    samples = sample["samples"]
    items = {item.index: item for item in QUESTIONNAIRES[sample["questionnaire"]]}
    questionnaire = sample["questionnaire"].upper().replace("PHQ", "PHQ-")

    def ratings_of(who: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        return read_ratings(ratings_path(reviews_dir, who["assessor"]), sample)

    def first_open(ratings: Mapping[int, Any], after: int = -1) -> int:
        """The next sample (0-based) after ``after`` this assessor has not rated; wraps round once."""
        order = list(range(after + 1, len(samples))) + list(range(0, after + 1))
        return next((i for i in order if not _complete(ratings.get(samples[i]["sample_id"]))), min(after + 1, len(samples) - 1))

    def page(position: int, who: Mapping[str, Any], note: str = "") -> tuple:
        """Every output's value for sample ``position`` (0-based) as ``who`` sees it."""
        ratings = ratings_of(who)
        entry = samples[position]
        saved = ratings.get(entry["sample_id"])
        blind = bool(who.get("blind"))
        revealed = not blind or saved is not None  # a blind score is locked once the model's is shown
        item = items[entry["item_index"]]
        done = sum(_complete(ratings.get(s["sample_id"])) for s in samples)
        mode = "blind: your score first" if blind else "open"
        progress = (
            f"**Sample {position + 1} of {len(samples)}** · {done} of {len(samples)} rated · "
            f"assessor **{who['assessor']}** ({mode})"
        )
        if done == len(samples) and not note:
            note = "All samples are rated: you may close the browser (a rating can still be changed here)."
        heading = (
            f"### {questionnaire} item {item.index}: {item.wording}\n"
            f"Over the last two weeks, how often was the participant bothered by this? "
            f"(participant {entry['participant_id']})"
        )
        model = f"**The model's score: {entry['model_score']}** ({ANSWERS.get(entry['model_score'], '')})"
        return (
            gr.update(visible=False),
            gr.update(visible=True),
            progress,
            heading,
            transcripts.get((entry["participant_id"], entry["item_index"]), "(no transcript found for this item)"),
            gr.update(value=None if saved is None else saved.get("expert_score"), interactive=not (blind and revealed)),
            gr.update(visible=blind and not revealed),
            gr.update(visible=revealed),
            entry["rationale"],
            model,
            gr.update(value=None if saved is None else saved.get("rationale_rating")),
            note,
            position,
        )

    def start_page(note: str = "") -> tuple:
        return (gr.update(visible=True), gr.update(visible=False), "", "", "", gr.update(value=None), gr.update(),
                gr.update(visible=False), "", "", gr.update(value=None), note, 0)  # fmt: skip

    with gr.Blocks(title="MLlm-DR rationale review", analytics_enabled=False) as app:
        remembered = gr.BrowserState({"assessor": None, "blind": True}, storage_key=BROWSER_KEY, secret=sample["fingerprint"])
        position = gr.State(0)
        gr.Markdown(
            "## MLlm-DR rationale review (paper section 5.6)\n"
            f"{len(samples)} samples from `{sample['eval_dir']}`. This page runs on this machine and sends nothing "
            "anywhere; every rating is saved as you go."
        )
        with gr.Column(visible=True) as start:
            name = gr.Textbox(label="Your name (asked once; your ratings file is named after it)", value=assessor or "",
                              elem_id="assessor-name")  # fmt: skip
            mode = gr.Radio(
                [("Blind: give my own score before seeing the model's rationale and score", "blind"),
                 ("Open: show me everything at once", "open")],
                value="blind", label="Mode", elem_id="mode",
            )  # fmt: skip
            begin = gr.Button("Start reviewing", variant="primary", elem_id="start")
        with gr.Column(visible=False) as review:
            progress = gr.Markdown(elem_id="progress")
            heading = gr.Markdown(elem_id="item")
            transcript = gr.Textbox(label="Transcript (what the model saw for this item)", lines=8, max_lines=14,
                                    interactive=False, autoscroll=False, elem_id="transcript")  # fmt: skip
            own = gr.Radio([(f"{k}: {v}", k) for k, v in ANSWERS.items()], label="Your score for this item",
                           elem_id="own-score")  # fmt: skip
            reveal = gr.Button("Lock my score and show the model's rationale", elem_id="reveal")
            with gr.Column(visible=False) as shown:
                rationale = gr.Textbox(label="The model's rationale", lines=3, interactive=False, elem_id="rationale")
                model_score = gr.Markdown(elem_id="model-score")
                rating = gr.Radio([(f"{k}: {v}", k) for k, v in RATING_SCALE.items()], label="Your rating of the rationale",
                                  elem_id="rating")  # fmt: skip
            with gr.Row():
                previous = gr.Button("Previous", elem_id="previous")
                skip = gr.Button("Skip", elem_id="skip")
                save = gr.Button("Save and next", variant="primary", elem_id="save")
            status = gr.Markdown(elem_id="status")
            switch = gr.Button("Not you? Change assessor", size="sm", elem_id="switch")
        outputs = [start, review, progress, heading, transcript, own, reveal, shown, rationale, model_score, rating,
                   status, position]  # fmt: skip

        def on_load(who):
            if who and who.get("assessor"):
                return page(first_open(ratings_of(who)), who)
            # The page opens on the start form already; leaving it untouched means a load that ends
            # after a quick click on Start cannot undo that click.
            return tuple(gr.skip() for _ in outputs)

        def on_start(typed, chosen):
            typed = (typed or "").strip()
            try:
                ratings_path(reviews_dir, typed)
            except ValueError as error:
                return (*start_page(f"**{error}**"), gr.update())
            who = {"assessor": typed, "blind": chosen == "blind"}
            return (*page(first_open(ratings_of(who)), who), who)

        def on_reveal(where, score, who):
            if score is None:
                return page(where, who, "**Choose your own score first.**")
            record_rating(reviews_dir, sample, who["assessor"], samples[where]["sample_id"], None, int(score), blind=True)
            return page(where, who)

        def on_save(where, score, judged, who):
            if score is None or judged is None:
                return page(where, who, "**Give your own score and rate the rationale before saving.**")
            saved = ratings_of(who).get(samples[where]["sample_id"])
            blind = bool(who.get("blind")) and saved is not None and bool(saved.get("blind"))
            record_rating(reviews_dir, sample, who["assessor"], samples[where]["sample_id"], int(judged), int(score), blind)
            return page(first_open(ratings_of(who), where), who, f"Saved sample {where + 1}.")

        def on_move(where, step, who):
            return page((where + step) % len(samples), who)

        app.load(on_load, inputs=[remembered], outputs=outputs)
        begin.click(on_start, inputs=[name, mode], outputs=[*outputs, remembered])
        reveal.click(on_reveal, inputs=[position, own, remembered], outputs=outputs)
        save.click(on_save, inputs=[position, own, rating, remembered], outputs=outputs)
        previous.click(lambda where, who: on_move(where, -1, who), inputs=[position, remembered], outputs=outputs)
        skip.click(lambda where, who: on_move(where, 1, who), inputs=[position, remembered], outputs=outputs)
        switch.click(lambda: (*start_page(), {"assessor": None, "blind": True}), outputs=[*outputs, remembered])
    return app


def launch(app, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serves ``app`` on ``host``:``port`` with nothing shared or reported; returns Gradio's
    ``(app, local_url, share_url)`` (``block=False`` returns at once, for tests)."""
    return app.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block, quiet=True,
        footer_links=[], run_history=False, mcp_server=False, ssr_mode=False, pwa=False, show_error=True,
    )  # fmt: skip
