"""Counted nouns in user-visible text: "1 job", "2 jobs", never "1 jobs" or "job(s)"."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``"1 frame"``, ``"0 frames"``, ``"3 scene cuts"``; ``plural_noun`` for irregular nouns
    (default: ``noun + "s"``). Only the last word of ``noun`` is made plural."""
    return f"{count} {noun if count == 1 else (plural_noun or noun + 's')}"
