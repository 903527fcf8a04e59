"""The paper's human evaluation (section 5.6, Table 6), made repeatable on the researcher's machine.

* :mod:`.sampling`: the seeded sample, stratified by PHQ item, drawn once from an evaluation folder
  into ``sample.json``; one ratings file (JSON lines) per assessor, appended through :mod:`mllm_dr.io`.
* :mod:`.app`: the local review app (Gradio, bound to 127.0.0.1): PHQ item wording, transcript,
  the model's rationale and score, a blind mode that asks the assessor's own score first.
* :mod:`.analysis`: Table 6's metrics I-IV from every assessor's file (majority vote, median on ties),
  inter-assessor agreement (Krippendorff's alpha) and a Markdown table beside the paper's values.

Gradio is imported only by :func:`mllm_dr.review.app.build_app`, so importing this package is cheap.
"""

from .analysis import PAPER_TABLE6, analyse, consensus, table6_markdown
from .sampling import (
    RATING_SCALE,
    REVIEWS_DIRNAME,
    SAMPLE,
    assessor_slug,
    draw_sample,
    prepare_sample,
    ratings_path,
    read_ratings,
    read_sample,
    record_rating,
)

__all__ = [
    "PAPER_TABLE6",
    "RATING_SCALE",
    "REVIEWS_DIRNAME",
    "SAMPLE",
    "analyse",
    "assessor_slug",
    "consensus",
    "draw_sample",
    "prepare_sample",
    "ratings_path",
    "read_ratings",
    "read_sample",
    "record_rating",
    "table6_markdown",
]
