"""Small thread helpers that let decoding run ahead of, and encoding behind, the GPU work.

Both propagate a worker's exception to the caller at the next `next()` / `put()` / `close()`,
and both are bounded, so memory does not grow with the length of a video.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetch(Generic[T]):
    """Iterate `source` in a background thread, at most `depth` items ahead of the consumer."""

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "prefetch") -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._error = exc
        finally:
            self._put_final()

    def _put_final(self) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(_DONE, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the worker early (the consumer gave up); safe to call more than once."""
        self._stop.set()
        self._thread.join(timeout=5)


class Drain(Generic[T]):
    """Hand items to `consume` in a background thread, at most `depth` waiting."""

    def __init__(self, consume: Callable[[T], None], depth: int = 4, name: str = "drain") -> None:
        self._consume = consume
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._consume(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def put(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is consumed; re-raise the first error of the consumer."""
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop after the items already queued, without raising (the producer failed)."""
        self._queue.put(_DONE)
        self._thread.join()
