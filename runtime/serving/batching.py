"""Dynamic batching: concurrent requests for one model version share a forward pass.

The batcher never waits for a batch to fill unless asked to (``wait_s``): a request that finds the model idle runs
in the next turn of the event loop, together with the requests parsed in the same turn; requests that arrive while
a forward pass runs go into the next one, up to ``max_rows``. Latency at low load stays that of a single request;
throughput under load is that of batches.

The forward pass runs on the event loop. A worker thread would let parsing overlap the matrix work, but torch
takes the GIL back between operators, and with the event loop holding it the forward thread waits up to Python's
switch interval (5 ms) per operator: measured, a 1 ms forward pass became 20-100 ms. Requests that arrive during a
forward pass wait in the socket buffers and join the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

#: A forward pass: the model's inputs (one array per input, rows first) -> one output row per input row.
Forward = Callable[[tuple[np.ndarray, ...]], np.ndarray]
Inputs = tuple[np.ndarray, ...]


class MicroBatcher:
    """Queue of pending ``(rows, future)`` for one forward function; one batch in flight at a time."""

    def __init__(self, forward: Forward, *, max_rows: int, wait_s: float = 0.0,
                 on_batch: Callable[[int], None] | None = None):
        self.forward = forward
        self.max_rows = max_rows
        self.wait_s = wait_s
        self.on_batch = on_batch
        self._pending: deque[tuple[Inputs, asyncio.Future[np.ndarray]]] = deque()
        self._pending_rows = 0
        self._running = False

    async def __call__(self, x: Inputs) -> np.ndarray:
        """Run ``forward`` on ``x`` (possibly together with other callers' rows); return this caller's output rows.
        A request of more than ``max_rows`` rows is split into forward passes of at most ``max_rows``."""
        n = len(x[0])
        if n > self.max_rows:
            step = self.max_rows
            parts = await asyncio.gather(*(self(tuple(a[i:i + step] for a in x)) for i in range(0, n, step)))
            return np.concatenate(parts)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((x, fut))
        self._pending_rows += len(x[0])
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[Inputs, asyncio.Future[np.ndarray]]]:
        batch = [self._pending.popleft()]
        rows = len(batch[0][0][0])
        while self._pending and rows + len(self._pending[0][0][0]) <= self.max_rows:
            item = self._pending.popleft()
            rows += len(item[0][0])
            batch.append(item)
        self._pending_rows -= rows
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self.wait_s and self._pending_rows < self.max_rows:
                    await asyncio.sleep(self.wait_s)
                batch = self._take()
                xs = [x for x, _ in batch]
                x = xs[0] if len(xs) == 1 else tuple(map(np.concatenate, zip(*xs)))
                try:
                    y = self.forward(x)
                except Exception as err:  # noqa: BLE001 - handed to every caller of this batch
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(x[0]))
                start = 0
                for xi, fut in batch:
                    end = start + len(xi[0])
                    if not fut.done():
                        fut.set_result(y[start:end])
                    start = end
                await asyncio.sleep(0)  # let requests that arrived meanwhile join the next batch
        finally:
            self._running = False
