"""Shared thread-pool helpers: image decoding and file I/O release the GIL, so threads scale."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

# One rule for every pool: enough threads to keep a GPU fed, not so many that a small machine thrashes.
WORKERS = max(2, min(16, os.cpu_count() or 2))


def prefetch(items: Sequence[Any], work: Callable[[Any], Any], ahead: int, name: str = "prefetch") -> Iterator[tuple[int, Any]]:
    """Run `work` over `items` in threads, at most `ahead` in flight; yield (index, result) in order.

    A call that raised yields its exception instead of a result, so one bad file never stops the
    rest. Stopping early (cancel, an error in the caller) drops the items not yet started.
    """
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=name) as pool:
        pending: deque[tuple[int, Future]] = deque()
        next_item = 0
        try:
            while pending or next_item < len(items):
                while next_item < len(items) and len(pending) < ahead:
                    pending.append((next_item, pool.submit(work, items[next_item])))
                    next_item += 1
                i, future = pending.popleft()
                error = future.exception()
                yield i, (error if error is not None else future.result())
        finally:
            for _, future in pending:
                future.cancel()
