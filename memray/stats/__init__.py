"""Distributed-by-construction statistics over global row blocks of the training set (pure numpy/FAISS, no Ray).

Each step is a pure function of its inputs in storage (:mod:`memray.stats.workspace`) run through a ``mapper``
(builtin ``map`` in process, Ray tasks in a job); partial results merge in block order, so results depend only on
the data, ``block_rows`` and the config.

The statistic itself lives here too: the per-layer space (:mod:`~memray.stats.space`), exact search
(:mod:`~memray.stats.index`), C_T (:mod:`~memray.stats.ct`), scoring (:mod:`~memray.stats.score`) and its result tables
(:mod:`~memray.stats.results`).
"""

from collections.abc import Callable, Iterable

Mapper = Callable[[Callable, Iterable], Iterable]
"""``mapper(fn, items)`` with builtin ``map`` semantics: where a stage's work items run (``map``, or Ray tasks)."""


class ScoreInputError(ValueError):
    """Feature sets that cannot be scored; the message names the file and what to do."""
