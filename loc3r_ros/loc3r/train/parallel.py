"""Training data on many cores: an order-keeping map over forked worker processes.

Rendering a room and matching its frames is plain CPU work per episode; a GPU machine's cores
build thousands of episodes in the time one core builds a few hundred. Workers are forked, so
what they share (a CUT3R model, configs) is inherited, not pickled per task.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

_SHARED: Any = None  # what `fn` receives besides its item (set before the workers fork)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _call(job: tuple[Callable[[Any, Any], Any], Any]) -> Any:
    fn, item = job
    return fn(item, _SHARED)


def parallel_map(
    fn: Callable[[Any, Any], Any],
    items: Sequence[Any],
    shared: Any = None,
    workers: int = 1,
    desc: str = "",
    progress: bool = True,
) -> list[Any]:
    """[fn(item, shared) for item in items], in order, on `workers` forked processes.

    `fn` must be a module-level function (it is sent by name). workers <= 1 runs in this process.
    """
    global _SHARED
    if workers <= 1 or len(items) <= 1:
        return [fn(item, shared) for item in tqdm(items, desc=desc, disable=not progress)]
    _SHARED = shared
    try:
        context = mp.get_context("fork")
        chunk = max(1, len(items) // (workers * 8))
        with context.Pool(min(workers, len(items)), initializer=_one_thread) as pool:
            jobs = pool.imap(_call, [(fn, item) for item in items], chunksize=chunk)
            return list(tqdm(jobs, total=len(items), desc=desc, disable=not progress))
    finally:
        _SHARED = None
