"""Temporal stability measurement: the warping error E_warp of Lai et al. 2018.

"Learning Blind Video Temporal Consistency" (ECCV 2018), as in their evaluation code
(evaluate_WarpError.py + utils.detect_occlusion). For each consecutive pair (t, t+1):

- flow F (t -> t+1) and B (t+1 -> t) on the *source* frames, with OpenCV Farneback: a
  different method from the stylizer's DIS, so the metric does not reward agreeing with the
  stylizer's own flow errors;
- M_t = 0 where ``|F + B(x+F)|^2 > 0.01 (|F|^2 + |B(x+F)|^2) + 0.5`` (occlusion), or
  ``|grad F|^2 > 0.01 |F|^2 + 0.002`` (motion boundary, forward differences as in their code),
  and 1 elsewhere;
- ``E_t = sum(M_t * ||O_t - warp(O_{t+1}, F)||^2) / (3 * sum(M_t))`` with O float in [0, 1]
  (a masked per-channel MSE);
- E_warp = mean of E_t over pairs.

One deliberate difference from their code: pixels whose flow leaves the frame are masked out
too (their resampler clamps to the border, so such pixels are compared with replicated edge
content and punish even a perfect output when the camera pans).
If a pair has no reliable pixel at all (sum(M_t) = 0, e.g. across a scene cut with nothing
matched), E_t = 0, as in their code. Pairs across a hard cut whose frame is known (a clip made
with known shots, `new_shots`) are not pairs of one shot and are left out: there is nothing
for an output to stay consistent with there, yet the flow still finds some "reliable" pixels
and their error would dominate the mean (on the panel's cuts clip, 3 such pairs made the
source's own E_warp 200x that of a clip without cuts).

Sizes: everything is compared at the size of the output frames (stylized outputs are often
smaller than the source, limited by ``style.max_side``): source frames are resized to it
(INTER_AREA) before the flow. The source's own E_warp (the floor any output can reach) is
measured at that size as well.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nstd.errors import InputError
from nstd.temporal.flow import warp
from nstd.text import plural

__all__ = ["WarpingErrorMeter", "evaluate_videos", "farneback_flow", "lai_mask",
           "warping_error"]

log = logging.getLogger(__name__)


def farneback_flow(src_grey: np.ndarray, dst_grey: np.ndarray) -> np.ndarray:
    """Dense Farneback flow from ``src_grey`` to ``dst_grey`` (uint8 (H, W) each).

    Returns float32 (H, W, 2) (dx, dy): pixel x of src is at x + flow(x) in dst.
    """
    # Gaussian window (more accurate than the box window for the same size); 5 levels cover
    # motions of tens of pixels, OpenCV stops early on small frames.
    return cv2.calcOpticalFlowFarneback(
        src_grey, dst_grey, None, pyr_scale=0.5, levels=5, winsize=15, iterations=3,
        poly_n=5, poly_sigma=1.2, flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN,
    )


def lai_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Non-occlusion mask M_t of Lai et al. for the pixels of frame t.

    Args:
        flow_fw: float32 (H, W, 2), F: frame t -> t+1 (starts at the pixels being judged).
        flow_bw: float32 (H, W, 2), B: frame t+1 -> t.

    Returns:
        float32 (H, W) in {0, 1}: 0 = occluded, motion boundary or flow leaving the frame.
    """
    h, w = flow_fw.shape[:2]
    there = warp(flow_bw, flow_fw)  # B(x + F(x))
    sq = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2  # noqa: E731
    occluded = sq(flow_fw + there) > 0.01 * (sq(flow_fw) + sq(there)) + 0.5
    grad = np.zeros((h, w), np.float32)
    for c in range(2):  # forward differences, zero in the last column/row (as in their code)
        f = flow_fw[..., c]
        du = np.zeros((h, w), np.float32)
        dv = np.zeros((h, w), np.float32)
        du[:, :-1] = f[:, :-1] - f[:, 1:]
        dv[:-1, :] = f[:-1, :] - f[1:, :]
        grad += du**2 + dv**2
    boundary = grad > 0.01 * sq(flow_fw) + 0.002
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx, ty = xs + flow_fw[..., 0], ys + flow_fw[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (~occluded & ~boundary & inside).astype(np.float32)


def _fit(frame: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) of ``size_wh`` (unchanged if it already fits)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
    if (frame.shape[1], frame.shape[0]) == size_wh:
        return frame
    shrink = frame.shape[1] * frame.shape[0] > size_wh[0] * size_wh[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), size_wh, interpolation=interp)


class WarpingErrorMeter:
    """Streaming E_warp for one source and any number of outputs that share its flow.

    Feed frames in order with `add`; only the previous frame of each stream is kept, so memory
    does not grow with the video. The comparison size is the first output frame's (without
    outputs: the source's); see the module docstring.
    """

    def __init__(self) -> None:
        self._size: tuple[int, int] | None = None  # (W, H)
        self._prev_grey: np.ndarray | None = None
        self._prev_outputs: list[np.ndarray] = []
        self._sums: list[float] = []
        self.last: list[float] = []  # E_t of the latest pair, per output (seam figures)
        self.frames = 0
        self.pairs = 0
        self.skipped = 0  # pairs across a known cut, left out

    def add(self, source: np.ndarray, *outputs: np.ndarray, new_shot: bool = False) -> None:
        """Add frame t: ``source`` uint8 (H, W, 3) RGB and each output uint8 (h, w, 3) RGB.
        ``new_shot``: frame t starts a new shot (a known hard cut): the pair (t-1, t) is left
        out."""
        if self._size is None:
            first = outputs[0] if outputs else source
            self._size = (first.shape[1], first.shape[0])
            self._sums = [0.0] * len(outputs)
        if len(outputs) != len(self._sums):
            raise ValueError(f"expected {len(self._sums)} outputs per frame, got {len(outputs)}")
        grey = cv2.cvtColor(_fit(source, self._size), cv2.COLOR_RGB2GRAY)
        outs = [_fit(o, self._size).astype(np.float32) / 255.0 for o in outputs]
        if self._prev_grey is not None and new_shot:
            self.skipped += 1
        elif self._prev_grey is not None:
            flow_fw = farneback_flow(self._prev_grey, grey)
            flow_bw = farneback_flow(grey, self._prev_grey)
            mask = lai_mask(flow_fw, flow_bw)
            count = float(mask.sum())
            self.last = [0.0] * len(outs)
            for i, (prev, cur) in enumerate(zip(self._prev_outputs, outs, strict=True)):
                if count > 0:
                    diff = prev - warp(cur, flow_fw)
                    self.last[i] = float((mask * (diff**2).sum(axis=2)).sum()) / (3.0 * count)
                    self._sums[i] += self.last[i]
            self.pairs += 1
        self._prev_grey = grey
        self._prev_outputs = outs
        self.frames += 1

    @property
    def size(self) -> tuple[int, int] | None:
        """(W, H) the frames are compared at; None before the first frame."""
        return self._size

    def values(self) -> list[float]:
        """E_warp of each output (mean over pairs so far); raises InputError before 2 frames."""
        if self.pairs == 0:
            raise InputError(
                f"E_warp needs at least 2 frames, got {self.frames}: use a longer clip"
            )
        return [s / self.pairs for s in self._sums]


def warping_error(
    source_frames: Iterable[np.ndarray], output_frames: Iterable[np.ndarray]
) -> float:
    """E_warp (Lai et al. 2018) of ``output_frames`` with the flow of ``source_frames``.

    Args:
        source_frames: uint8 (H, W, 3) RGB frames in order (an iterator is fine: streamed).
        output_frames: uint8 (h, w, 3) RGB frames, as many as the source; the source is resized
            to their size when it differs.

    Returns:
        E_warp >= 0, a mean masked per-channel squared error of values in [0, 1]
        (0 = perfectly consistent with the source's motion).

    Raises:
        InputError: the two sequences differ in length, or have fewer than 2 frames.
    """
    meter = WarpingErrorMeter()
    for src, out in _paired(source_frames, output_frames, "source", "output"):
        meter.add(src, out)
    return meter.values()[0]


def _paired(
    a: Iterable[np.ndarray], b: Iterable[np.ndarray], name_a: str, name_b: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    missing = object()
    count = 0
    for x, y in zip_longest(a, b, fillvalue=missing):
        if x is missing or y is missing:
            more, fewer = (name_a, name_b) if y is missing else (name_b, name_a)
            raise InputError(
                f"{fewer} has {plural(count, 'frame')} but {more} has more: "
                "E_warp compares the two frame by frame"
            )
        count += 1
        yield x, y  # type: ignore[misc]


def _iter_rgb(path: Path) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` as uint8 (H, W, 3) RGB frames, in order.

    Minimal local decoder (PyAV); rotation metadata is not applied, which is harmless here as
    long as both videos carry the same rotation. To be replaced by nstd.media.container.iter_frames.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"{path}: cannot be opened as a video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise InputError(f"{path}: cannot be decoded to the end ({exc})") from exc


def evaluate_videos(source_path: Path | str, stylized_path: Path | str,
                    new_shots: Collection[int] = ()) -> dict[str, Any]:
    """E_warp of a stylized video and of its source (the floor), in one streaming pass.
    ``new_shots``: the frames that start a shot (known hard cuts); the pairs ending on them
    are left out.

    Returns:
        {"ewarp": float, "source_ewarp": float, "pairs": int, "pairs_across_cuts": int,
         "frames": int, "width": int, "height": int} — width/height: the size compared at
        (the stylized video's).

    Raises:
        InputError: a file is not a decodable video, the frame counts differ, or < 2 frames.
    """
    source_path, stylized_path = Path(source_path), Path(stylized_path)
    meter = WarpingErrorMeter()
    pairs = _paired(_iter_rgb(source_path), _iter_rgb(stylized_path),
                    str(source_path), str(stylized_path))
    for index, (src, out) in enumerate(pairs):
        # The source as a second "output": its own E_warp, at the same size, same flow.
        meter.add(src, out, _fit(src, (out.shape[1], out.shape[0])),
                  new_shot=index in new_shots)
    ewarp, source_ewarp = meter.values()
    log.debug("E_warp %.6f (source %.6f) over %d pairs", ewarp, source_ewarp, meter.pairs)
    width, height = meter.size or (0, 0)
    return {"ewarp": ewarp, "source_ewarp": source_ewarp, "pairs": meter.pairs,
            "pairs_across_cuts": meter.skipped, "frames": meter.frames, "width": width,
            "height": height}
