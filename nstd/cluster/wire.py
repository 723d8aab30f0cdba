"""What crosses the network between the supervisor and an actor, as plain, picklable data.

Per job, once per node: the compressed source file (a Ray object; an actor that finds it in
its node's cache does not fetch it) and the style image files (bytes, small).
Per unit, supervisor -> actor: a `UnitSpec` (a few hundred bytes) and, when a unit resumes
after its actor died, up to `HISTORY_FRAMES` stored frames as 16-bit PNG (the flow history);
a seam pass gets the two units' frames of its overlap (2 PNGs per overlap frame).
Per frame, actor -> supervisor: a `FrameOut`: the stylized frame as a 16-bit RGB PNG (the frame
store's own format, written to disk as it arrives, so nothing is re-encoded) or, with
``cluster.wire_format: png8``, an 8-bit one (what the encoder keeps), and its losses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class UnitSpec:
    """One unit of a job for one actor.

    Image: ``kind == "image"``; the actor stylizes the source and returns the encoded file.
    Video: frames ``start`` .. ``stop - 1`` are the unit's own; ``first`` .. ``start - 1`` are
    overlap frames (computed from a cold start at ``first`` to warm the unit up, returned marked
    ``overlap``); decoding starts at ``decode_from`` (``seek_pts``), and frames
    ``decode_from`` .. ``first - 1`` are the ``known`` history a resumed unit starts from.
    """

    job_id: int
    job_key: str  # names the source in an actor's node cache (the ledger's content key)
    name: str  # the source's file name (its extension tells the container)
    kind: str  # image | video
    config: dict[str, Any]  # the job's merged config mapping
    styles: tuple[str, ...]  # style file names, matching the bytes shipped with the job
    masks: tuple[str, ...] = ()  # one style mask file name per style (shipped likewise), or none
    output_name: str = ""  # image: the output's name (its extension picks the format)
    decode_from: int = 0
    seek_pts: int | None = None
    first: int = 0
    start: int = 0
    stop: int = 0
    cold: tuple[int, ...] = ()
    size: tuple[int, int] = (0, 0)  # (w, h) of the stylized frames
    known: tuple[int, ...] = field(default=())  # indices whose PNGs ride along in `known_png`
    # A seam pass (`nstd.temporal.seam`): frame -> (the previous unit's PNG, the next unit's
    # overlap PNG), for an overlap that began at `seam_first` and ends at `start`... here
    # `stop` (the next unit's own start).
    seam_png: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    seam_first: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def frames(self) -> int:
        """Frames the unit computes (its length for scheduling)."""
        return 1 if self.kind == "image" else self.stop - self.first


@dataclass(frozen=True)
class FrameOut:
    """One stylized frame back from an actor (or, for an image job, the encoded file)."""

    index: int
    png: bytes  # video: 16-bit (or 8-bit: cluster.wire_format) RGB PNG; image: the output file
    record: dict[str, Any]  # the frame's losses and mode (image: the job report's fields)
    overlap: bool = False
