"""Corpora, tokenizers and token caches for language-model training (all offline).

* :func:`load_corpus` - bundled ``"tinyshakespeare"`` / ``"wikitext2"`` or any UTF-8 text file or directory, as
  memory-mapped token arrays cached under ``$ATTNLAB_CACHE_DIR`` (default ``~/.cache/attnlab``).
* Tokenizers: :class:`CharTokenizer`, :class:`WordTokenizer`, :class:`GPT2Tokenizer` (bundled ranks, no
  network), all following the :class:`Tokenizer` protocol; :func:`tokenizer_from_dict` rebuilds one.
* Batching: :func:`sample_batch` (random training windows) and :func:`iterate_eval_batches` (the whole split).
* Translation: :func:`load_parallel` (bundled ``"multi30k"`` or aligned files) gives a :class:`ParallelCorpus`;
  :func:`build_subword_tokenizer` trains (and caches) a joint BPE :class:`SubwordTokenizer`; :func:`encode_parallel`
  encodes the splits; :func:`global_batch`, :func:`rank_rows`, :func:`pad_batch` and :func:`eval_batches` make
  length-bucketed batches. The subword tokenizer needs ``pip install attnlab[mt]``, imported only when used.
* Time series: :func:`load_timeseries` (bundled ``"etth1"`` or any CSV of a ``date`` column then numeric columns)
  gives a :class:`TimeSeries`; :func:`prepare_forecast_data` splits it (standard borders), z-scores it with the
  training rows' statistics and cuts windows of look-back L and horizon T (:mod:`attnlab.data.timeseries`).

Sources and licences of the bundled files: ``attnlab/data/corpora/LICENSES.md`` and ``docs/data.md``.
"""

from attnlab.data.batching import count_eval_targets, iterate_eval_batches, sample_batch
from attnlab.data.bundled import BUNDLED, read_bundled, read_bundled_text
from attnlab.data.corpus import BUNDLED_CORPORA, Corpus, default_cache_dir, load_corpus, read_text_source
from attnlab.data.mt_batching import (
    IGNORE_INDEX,
    EncodedSplit,
    MTBatch,
    batches_per_epoch,
    eval_batches,
    global_batch,
    pad_batch,
    rank_rows,
)
from attnlab.data.restore import tokenizer_from_dict
from attnlab.data.parallel import ParallelCorpus, ParallelFiles, load_parallel
from attnlab.data.subword import SubwordConfig, SubwordTokenizer, build_subword_tokenizer, encode_parallel
from attnlab.data.timeseries import ForecastData, ForecastSplit, TimeSeries, load_timeseries, prepare_forecast_data
from attnlab.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    WordTokenizer,
)

__all__ = [
    "BUNDLED",
    "BUNDLED_CORPORA",
    "CharTokenizer",
    "Corpus",
    "EncodedSplit",
    "ForecastData",
    "ForecastSplit",
    "GPT2Tokenizer",
    "IGNORE_INDEX",
    "MTBatch",
    "ParallelCorpus",
    "ParallelFiles",
    "SubwordConfig",
    "SubwordTokenizer",
    "TimeSeries",
    "Tokenizer",
    "WordTokenizer",
    "batches_per_epoch",
    "build_subword_tokenizer",
    "count_eval_targets",
    "default_cache_dir",
    "encode_parallel",
    "eval_batches",
    "global_batch",
    "iterate_eval_batches",
    "load_corpus",
    "load_parallel",
    "load_timeseries",
    "pad_batch",
    "prepare_forecast_data",
    "rank_rows",
    "read_bundled",
    "read_bundled_text",
    "read_text_source",
    "sample_batch",
    "tokenizer_from_dict",
]
