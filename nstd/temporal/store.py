"""A video job's work folder: the resume points.

    <work>/manifest.json        what the frames were made from (the fingerprint) and the plan
    <work>/frames/000042.png    stylized frame 42, 16-bit RGB PNG (lossless at our precision)
    <work>/frames/000042.json   its losses (so a resumed run still reports every frame)

Each frame is written under a temporary name, fsynced and renamed, so a kill -9 or a power cut
never leaves a half-written frame under a final name. Frames made with other settings are never
mixed in: opening a folder whose fingerprint differs is refused unless `restart` is asked for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nstd.errors import StaleFramesError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Keys that fingerprints once held although no frame depends on them (the unit cut, now in
# the config's cluster: section): dropped when a stored fingerprint is read, so frames stored
# before the move are still resumed.
_NOT_FRAME_KEYS = ("max_segment_frames", "segment_overlap")

log = logging.getLogger(__name__)


class FrameStore:
    """Stored stylized frames of one job, keyed by frame index."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.frames_dir = root / "frames"
        self.manifest = manifest

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, root: Path, fingerprint: dict[str, Any], *, restart: bool = False,
             replace_stale: bool = False) -> FrameStore:
        """Open (or create) the work folder for a job with this `fingerprint`: the one place
        that decides whether stored frames may be resumed.

        Frames made with a different fingerprint are deleted first when `restart` or
        `replace_stale` is true, and refused with StaleFramesError (naming what changed)
        otherwise. `restart` deletes matching frames too.
        """
        manifest_path = root / MANIFEST
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                manifest = None  # unreadable: nothing in it can be trusted
            stored = _current((manifest or {}).get("fingerprint"))
            if manifest is not None and stored == fingerprint and not restart:
                return cls(root, manifest)
            if manifest is not None and stored != fingerprint:
                changed = sorted(k for k in set(stored or {}) | set(fingerprint)
                                 if (stored or {}).get(k) != fingerprint.get(k))
                what = ", ".join(changed) or "format"
                if not (restart or replace_stale):
                    raise StaleFramesError(f"{root} holds frames made with other settings or "
                                           f"input (changed: {what})")
                log.info("%s: stored frames were made with other settings (changed: %s); "
                         "starting over", root, what)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        store = cls(root, {"version": FORMAT_VERSION, "fingerprint": fingerprint})
        store.frames_dir.mkdir()
        store._write_manifest()
        return store

    @staticmethod
    def stored_fingerprint(root: Path) -> dict[str, Any] | None:
        """The fingerprint the frames in ``root`` were made with; None when there are none
        (or the manifest is unreadable: nothing in it can be trusted)."""
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        stored = _current(manifest.get("fingerprint") if isinstance(manifest, dict) else None)
        return stored if isinstance(stored, dict) else None

    def _write_manifest(self) -> None:
        _write_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    # ----------------------------------------------------------------- plan

    @property
    def plan(self) -> dict[str, Any] | None:
        """The video plan stored by the first run (frame count, cuts, pts, unit cut), or None."""
        return self.manifest.get("plan")

    def save_plan(self, plan: dict[str, Any]) -> None:
        self.manifest["plan"] = plan
        self._write_manifest()

    # ----------------------------------------------------------------- frames

    def _frame_path(self, index: int, suffix: str = ".png") -> Path:
        return self.frames_dir / f"{index:06d}{suffix}"

    def has(self, index: int) -> bool:
        """True when frame `index` and its losses are both stored completely."""
        return self._frame_path(index).is_file() and self._frame_path(index, ".json").is_file()

    def stored_count(self) -> int:
        return sum(1 for p in self.frames_dir.glob("*.json"))

    def save(self, index: int, rgb: np.ndarray, record: dict[str, Any]) -> None:
        """Store frame `index`: (H, W, 3) float32 RGB in [0, 1], and its losses `record`.

        The PNG is renamed into place before the JSON, and `has` needs both, so a crash
        between the two leaves a frame that is simply recomputed.
        """
        _write_atomic(self._frame_path(index), encode_png(rgb))
        _write_atomic(self._frame_path(index, ".json"), json.dumps(record).encode())

    def load(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) float32 RGB in [0, 1]."""
        return _read_png(self._frame_path(index))

    def record(self, index: int) -> dict[str, Any]:
        return json.loads(self._frame_path(index, ".json").read_text())

    # ----------------------------------------------------------------- encoded frames
    # For frames that arrive already encoded (from a Ray actor, `nstd.cluster`): stored as
    # they came, nothing decoded or re-encoded on the supervisor.

    def save_bytes(self, index: int, png: bytes, record: dict[str, Any]) -> None:
        """Store frame `index` given as 16-bit (or 8-bit: cluster.wire_format) RGB PNG bytes,
        and its losses `record`."""
        _write_atomic(self._frame_path(index), png)
        _write_atomic(self._frame_path(index, ".json"), json.dumps(record).encode())

    # Beside the frames a unit owns, two kinds of frames for the same indices:
    #   overlap/  a split unit's warm-up frames (what the next unit made of them)
    #   seam/     the seam pass's frames, which replace both at encoding
    SIDES = ("overlap", "seam")

    def _side_path(self, index: int, side: str) -> Path:
        if side not in self.SIDES:
            raise ValueError(f"unknown kind of side frame {side!r}")
        return self.root / side / f"{index:06d}.png"

    def save_side_bytes(self, index: int, png: bytes, side: str) -> None:
        """Store frame `index` of `side` ("overlap" or "seam") given as 16-bit RGB PNG bytes."""
        path = self._side_path(index, side)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, png)

    def has_side(self, index: int, side: str) -> bool:
        return self._side_path(index, side).is_file()

    def load_side(self, index: int, side: str) -> np.ndarray:
        """Side frame `index` as (H, W, 3) float32 RGB in [0, 1]."""
        return _read_png(self._side_path(index, side))

    def frame_bytes(self, index: int, side: str | None = None) -> bytes | None:
        """The stored PNG of frame `index` (or of a side frame), None when missing."""
        path = self._frame_path(index) if side is None else self._side_path(index, side)
        try:
            return path.read_bytes()
        except OSError:
            return None

    def remove(self) -> None:
        """Delete the whole work folder (the job's output is complete)."""
        shutil.rmtree(self.root, ignore_errors=True)


def encode_png(rgb: np.ndarray, bits: int = 16) -> bytes:
    """(H, W, 3) float32 RGB in [0, 1] -> RGB PNG bytes, 16 bits per channel (the store's
    format: lossless at the optimizer's precision) or 8 (``cluster.wire_format: png8``: the
    precision the H.264 encoder keeps). The one frame codec of the project: the store, the
    Ray actors and the wire all use it."""
    top = 65535.0 if bits == 16 else 255.0
    pixels = np.round(np.clip(rgb, 0.0, 1.0) * top).astype(np.uint16 if bits == 16
                                                              else np.uint8)
    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV failing to encode a plain array
        raise OSError("could not encode a frame as PNG")
    return data.tobytes()


def decode_png(data: bytes | np.ndarray, what: str = "a frame") -> np.ndarray:
    """16- or 8-bit RGB PNG bytes -> (H, W, 3) float32 RGB in [0, 1]; OSError naming
    ``what`` when the bytes are not such a PNG. 8-bit: a frame an actor sent with
    ``cluster.wire_format: png8`` (stored as it came)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype not in (np.uint16, np.uint8) or pixels.ndim != 3:
        raise OSError(f"{what} is not an RGB PNG (damaged)")
    top = 65535.0 if pixels.dtype == np.uint16 else 255.0
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB).astype(np.float32) / top


def _read_png(path: Path) -> np.ndarray:
    return decode_png(np.fromfile(path, dtype=np.uint8), f"stored frame {path}")


def _current(fingerprint: Any) -> Any:
    """A stored fingerprint without the keys of `_NOT_FRAME_KEYS` (anything else as it is)."""
    frames_from = fingerprint.get("frames_from") if isinstance(fingerprint, dict) else None
    video = frames_from.get("video") if isinstance(frames_from, dict) else None
    if not isinstance(video, dict) or not any(k in video for k in _NOT_FRAME_KEYS):
        return fingerprint
    video = {k: v for k, v in video.items() if k not in _NOT_FRAME_KEYS}
    return {**fingerprint, "frames_from": {**frames_from, "video": video}}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
