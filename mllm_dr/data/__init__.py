"""Corpora, features and rationales: everything between the files on disk and a batch.

* :func:`load_corpus` reads a registered corpus layout (:data:`CORPORA`: E-DAIC-WOZ, DAIC-WOZ,
  CMDC, prepared ``save_to_disk`` folders; add one with :func:`register_corpus`) into a
  ``DatasetDict`` with one row per (participant, PHQ item) whose columns are :data:`ROW_FEATURES`;
  rows only reference feature files. Broken data is reported naming participant, file and problem
  (``on_error="raise"`` or ``"skip"``; see :class:`LoadReport`). :func:`hold_out_dev` carves a
  participant-disjoint dev split out of train for a corpus without one (``--dev_fraction``).
* :func:`build_feature_cache` converts each referenced feature sequence once (the model's frame
  policy applied, cast to float16) into memory-mappable ``.npy`` files; :func:`row_features` gives a
  row's frames to the model; :func:`read_features` is the one reader of ``.npy`` / ``.mat`` / OpenFace
  CSV files.
* :class:`CorpusArguments` is the corpus options of every command line; :func:`load_splits` turns
  them into rows, and :meth:`LoadedCorpus.check_targets` checks that every row a run trains on has
  its label and rationale (``checks.py``, also the :func:`data_fingerprint` a resume compares).
* ``rationales.jsonl``: :class:`Rationale`, :class:`RationaleWriter`, :func:`load_rationales`,
  :func:`attach_rationales`.
* :func:`tokenize_rows` and :class:`MllmDrCollator` build model inputs from rows.
"""

from .arguments import CorpusArguments, FeatureCacheArguments, LoadedCorpus, load_splits
from .cache import build_feature_cache, cache_path_for, check_feature_sequences
from .checks import data_fingerprint
from .cmdc import OPENFACE_DIM as CMDC_OPENFACE_DIM
from .cmdc import cmdc_protocol_split, cmdc_subject_id, load_cmdc, load_question_map
from .collator import MllmDrCollator, tokenize_rows, tokenize_samples
from .daic import AUDIO_DIM, EDAIC_OPENFACE_DIM, RESNET_DIM, load_daic_woz, load_edaic
from .features import feature_key, feature_shape, read_feature_file, read_features, row_features
from .rationales import (
    Rationale,
    RationaleWriter,
    attach_rationales,
    failures_path,
    iter_rationales,
    load_rationales,
    write_rationales,
)
from .registry import (
    CORPORA,
    CorpusSpec,
    concatenate_corpora,
    get_corpus,
    hold_out_dev,
    load_corpus,
    load_prepared,
    register_corpus,
)
from .report import ON_ERROR, LoadReport, Problem
from .tables import ROW_FEATURES, SPLITS
from .transcripts import read_transcript

__all__ = [
    "AUDIO_DIM",
    "CMDC_OPENFACE_DIM",
    "CORPORA",
    "CorpusArguments",
    "CorpusSpec",
    "EDAIC_OPENFACE_DIM",
    "FeatureCacheArguments",
    "LoadReport",
    "LoadedCorpus",
    "MllmDrCollator",
    "ON_ERROR",
    "Problem",
    "RESNET_DIM",
    "ROW_FEATURES",
    "Rationale",
    "RationaleWriter",
    "SPLITS",
    "attach_rationales",
    "build_feature_cache",
    "cache_path_for",
    "check_feature_sequences",
    "cmdc_protocol_split",
    "cmdc_subject_id",
    "concatenate_corpora",
    "data_fingerprint",
    "failures_path",
    "feature_key",
    "feature_shape",
    "get_corpus",
    "hold_out_dev",
    "iter_rationales",
    "load_cmdc",
    "load_corpus",
    "load_daic_woz",
    "load_edaic",
    "load_prepared",
    "load_question_map",
    "load_rationales",
    "load_splits",
    "read_feature_file",
    "read_features",
    "read_transcript",
    "register_corpus",
    "row_features",
    "tokenize_rows",
    "tokenize_samples",
    "write_rationales",
]
