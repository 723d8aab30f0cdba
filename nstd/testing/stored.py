"""Counting what the cluster's supervisor side stores (exactly-once tests)."""

from __future__ import annotations

from typing import Any


def count_stored_frames(monkeypatch: Any) -> list[int]:
    """The index of every frame a `FrameStore` stores from bytes (what comes back from the
    actors), in order, via ``monkeypatch`` (pytest's): "exactly once" is
    ``sorted(saved) == list(range(frames))``."""
    from nstd.temporal.store import FrameStore

    saved: list[int] = []
    real_save = FrameStore.save_bytes

    def counting(self: FrameStore, index: int, png: bytes, record: dict[str, Any]) -> None:
        saved.append(index)
        real_save(self, index, png, record)

    monkeypatch.setattr(FrameStore, "save_bytes", counting)
    return saved
