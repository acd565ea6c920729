"""Run a block-wise computation on all cores with torch worker threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


def run_in_blocks(n: int, block_size: int, work: Callable[[slice], None]) -> None:
    """Call ``work(slice(start, stop))`` for consecutive blocks covering ``range(n)``.

    Blocks are processed by ``torch.get_num_threads()`` worker threads,
    each running its torch operations single-threaded: these fits are made
    of many medium-sized operations (small matrix products, batched
    eigendecompositions) whose intra-op parallelism costs more in
    synchronisation than it gains, especially on a shared CPU. ``work``
    must write its results to disjoint places.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks = [slice(start, min(start + block_size, n)) for start in range(0, n, block_size)]
    workers = max(1, torch.get_num_threads())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1 or len(blocks) <= 1:
            for block in blocks:
                work(block)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, blocks))
    finally:
        torch.set_num_threads(previous)
