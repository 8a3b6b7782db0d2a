"""Training data on many cores: an order-keeping map over forked worker processes.

Rendering a room and matching its frames is plain CPU work per episode; a GPU machine's cores
build thousands of episodes in the time one core builds a few hundred. Workers are forked, so
what they share (a CUT3R model, configs) is inherited, not pickled per task. Results come back
as plain pickles: sent the multiprocessing way, every tensor in them would arrive as a shared-
memory segment that keeps a file descriptor open for as long as it lives (five tensors a room,
thousands of rooms: past the usual limit of 1024 open files, and into /dev/shm).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

_SHARED: Any = None  # what `fn` receives besides its item (set before the workers fork)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _call(job: tuple[Callable[[Any, Any], Any], Any]) -> bytes:
    fn, item = job
    return pickle.dumps(fn(item, _SHARED), protocol=pickle.HIGHEST_PROTOCOL)  # tensors as bytes


def parallel_map(
    fn: Callable[[Any, Any], Any],
    items: Sequence[Any],
    shared: Any = None,
    workers: int = 1,
    desc: str = "",
    progress: bool = True,
    deadline: float | None = None,
) -> list[Any]:
    """[fn(item, shared) for item in items], in order, on `workers` forked processes.

    `fn` must be a module-level function (it is sent by name). workers <= 1 runs in this process.
    `deadline` (a `time.monotonic()` value) stops at that time and returns the results finished
    by then, in order: a prefix of the full list, never empty (the first item is always waited
    for); the workers still running are terminated.
    """
    global _SHARED
    if workers <= 1 or len(items) <= 1:
        return _until((fn(item, shared) for item in items), len(items), deadline, desc, progress)
    _SHARED = shared
    try:
        context = mp.get_context("fork")
        # small chunks when a deadline may cut the list, so the results stop close to it
        chunk = 1 if deadline is not None else max(1, len(items) // (workers * 8))
        with context.Pool(min(workers, len(items)), initializer=_one_thread) as pool:
            jobs = pool.imap(_call, [(fn, item) for item in items], chunksize=chunk)
            results = (pickle.loads(job) for job in jobs)
            return _until(results, len(items), deadline, desc, progress)  # the pool then ends
    finally:
        _SHARED = None


def _until(
    results: Iterator[Any], total: int, deadline: float | None, desc: str, progress: bool
) -> list[Any]:
    """The results in order, stopping (after at least one) once `deadline` has passed."""
    done = []
    for result in tqdm(results, total=total, desc=desc, disable=not progress):
        done.append(result)
        if deadline is not None and time.monotonic() >= deadline:
            break
    return done
