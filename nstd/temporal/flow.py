"""Optical flow, warping, occlusion masks, scene cuts and segment planning for video.

Everything here is numpy/OpenCV maths on frames; nothing decodes, encodes or touches torch.

Conventions (shared with the pipeline and nstd/temporal/ewarp.py):

- Frames: numpy uint8 (H, W, 3) RGB. Stylized frames: float32 (H, W, 3) RGB in [0, 1].
  BGR exists only inside OpenCV calls.
- Flow: numpy float32 (H, W, 2), channel 0 = dx, channel 1 = dy, in pixels.
  ``flow = FlowEstimator()(src, dst)`` maps the pixel x of ``src`` to its position
  ``x + flow(x)`` in ``dst``.
- ``warp(image, flow)(x) = image(x + flow(x))``: it pulls ``image`` (a picture of ``dst``)
  back onto the pixel grid of ``src``.
- To bring the previous stylized frame S[t-1] onto frame t, compute ``flow_bw`` from input
  frame t to input frame t-1 and take ``warp(S[t-1], flow_bw)``. The reliability of that
  prediction is ``consistency_mask(flow_bw, flow_fw)`` with ``flow_fw`` from t-1 to t.
  `estimate_motion` + `warp_prior` do exactly this.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "DEFAULT_SCENE_CUT_THRESHOLD",
    "FlowEstimator",
    "Motion",
    "Prior",
    "consistency_mask",
    "estimate_motion",
    "is_scene_cut",
    "scene_cut_score",
    "thumbnail",
    "warp",
    "warp_prior",
]

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


# --------------------------------------------------------------------------------------------
# Flow


def _to_grey(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB or (H, W) grey -> contiguous uint8 (H, W) grey."""
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"frames must be (H, W, 3) RGB or (H, W) grey, got shape {frame.shape}")


def _check_pair(src: np.ndarray, dst: np.ndarray) -> None:
    if src.shape[:2] != dst.shape[:2]:
        raise ValueError(f"frames differ in size: {src.shape[:2]} vs {dst.shape[:2]}")


def _resize_flow(flow: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resample a (h, w, 2) flow to (H, W, 2), scaling the vectors with the grid."""
    h, w = flow.shape[:2]
    out = cv2.resize(flow, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= size_hw[1] / w
    out[..., 1] *= size_hw[0] / h
    return out


class FlowEstimator:
    """Dense optical flow with OpenCV DIS (Kroeger et al. 2016), one instance reused per video.

    DIS is used because it is the fastest dense method in OpenCV with sub-pixel accuracy on
    textured content, and it runs on the CPU beside the GPU stylizer. The DIS object is created
    once (it keeps its buffers between calls); a lock makes one estimator safe to share between
    threads, but calls are then serialized: give each thread its own estimator for parallelism.

    Args:
        preset: "ultrafast" | "fast" | "medium" (default; the ultrafast/fast presets skip the
            finest pyramid level, which costs accuracy at the sizes nstd works at).
        max_side: compute the flow on greyscale frames downscaled so that their longest side is
            at most this (then upsample the flow); None = full resolution. Trades accuracy for
            speed on large frames.
    """

    def __init__(self, preset: str = "medium", *, max_side: int | None = None) -> None:
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {sorted(_PRESETS)}, got {preset!r}")
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be >= 16 or None, got {max_side}")
        self.preset = preset
        self.max_side = max_side
        self._dis = cv2.DISOpticalFlow_create(_PRESETS[preset])
        self._lock = threading.Lock()

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Flow from ``src`` to ``dst``.

        Args:
            src, dst: uint8 (H, W, 3) RGB (or (H, W) grey), same size.

        Returns:
            float32 (H, W, 2): pixel x of ``src`` is at ``x + flow(x)`` in ``dst``.
        """
        _check_pair(src, dst)
        g0, g1 = _to_grey(src), _to_grey(dst)
        h, w = g0.shape
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            g0 = cv2.resize(g0, size, interpolation=cv2.INTER_AREA)
            g1 = cv2.resize(g1, size, interpolation=cv2.INTER_AREA)
        with self._lock:
            flow = self._dis.calc(g0, g1, None)
        if scale != 1.0:
            flow = _resize_flow(flow, (h, w))
        return flow.astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each float32 (H, W); cached per size, read-only."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _check_flow(flow: np.ndarray, size_hw: tuple[int, int]) -> None:
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got shape {flow.shape}")
    if flow.shape[:2] != tuple(size_hw):
        raise ValueError(f"flow is {flow.shape[:2]} but the image is {tuple(size_hw)}")


def warp(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR
         ) -> np.ndarray:
    """Backward warp: ``out(x) = image(x + flow(x))``, bilinear (default), border replicated.

    Args:
        image: float32 (H, W, C) or (H, W), any range (frames are [0, 1]; flows work too).
        flow: float32 (H, W, 2) (dx, dy) in pixels, defined on the *output* grid.
        interpolation: an OpenCV mode; cv2.INTER_CUBIC keeps fine texture that bilinear
            interpolation blurs at sub-pixel shifts (it may overshoot the input's range).

    Returns:
        float32, same shape as ``image``. The input is not modified.
    """
    h, w = image.shape[:2]
    _check_flow(flow, (h, w))
    xs, ys = pixel_grid(h, w)
    map_x = xs + flow[..., 0]
    map_y = ys + flow[..., 1]
    src = np.ascontiguousarray(image, dtype=np.float32)
    # cv2.remap handles at most 4 channels; larger stacks are warped in chunks.
    if src.ndim == 3 and src.shape[2] > 4:
        chunks = [
            cv2.remap(
                np.ascontiguousarray(src[..., i : i + 4]), map_x, map_y, interpolation,
                borderMode=cv2.BORDER_REPLICATE,
            ).reshape(h, w, -1)
            for i in range(0, src.shape[2], 4)
        ]
        return np.concatenate(chunks, axis=2)
    out = cv2.remap(src, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def _inside(flow: np.ndarray) -> np.ndarray:
    """bool (H, W): the flow's target x + flow(x) lies inside the frame."""
    h, w = flow.shape[:2]
    xs, ys = pixel_grid(h, w)
    tx = xs + flow[..., 0]
    ty = ys + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def consistency_mask(flow_bw: np.ndarray, flow_fw: np.ndarray) -> np.ndarray:
    """Reliability of a warped prediction, per pixel of frame t (Ruder et al. 2016, sec. 3.2).

    Args:
        flow_bw: float32 (H, W, 2), flow from frame t to frame t-1 (the flow that `warp` uses
            to bring frame t-1 content onto frame t). Its pixels are the ones being judged.
        flow_fw: float32 (H, W, 2), flow from frame t-1 to frame t.

    Returns:
        float32 (H, W) in {0, 1}: 1 = reliable; 0 = disoccluded (forward-backward check fails),
        on a motion boundary, or its source position lies outside frame t-1.

    With ``w = flow_bw(x)`` and ``w~ = flow_fw(x + w)``:
    disoccluded where ``|w~ + w|^2 > 0.01 (|w~|^2 + |w|^2) + 0.5``;
    motion boundary where ``|grad w|^2 > 0.01 |w|^2 + 0.002``.
    """
    h, w = flow_bw.shape[:2]
    _check_flow(flow_bw, (h, w))
    _check_flow(flow_fw, (h, w))
    back = flow_bw.astype(np.float32, copy=False)
    there = warp(flow_fw, back)  # w~: the forward flow read at each pixel's source position
    sq = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2  # noqa: E731
    occluded = sq(there + back) > 0.01 * (sq(there) + sq(back)) + 0.5
    # Motion boundaries: Ruder's eq. (6) takes the gradient of the backward flow w^ (here
    # flow_bw, the flow that starts at the pixels being judged), and so does his reference
    # consistencyChecker (gradient of "flow1"), with 3-tap central differences, and Lai et al.'s
    # evaluation code. The gradient of the *warped* flow w~ would mark edges of frame t-1's
    # motion, transported, which is the other frame's boundary; we follow the paper's code.
    grad = np.zeros((h, w), np.float32)
    for c in range(2):
        gy, gx = np.gradient(back[..., c])  # central differences inside, one-sided at edges
        grad += gx**2 + gy**2
    boundary = grad > 0.01 * sq(back) + 0.002
    reliable = ~occluded & ~boundary & _inside(back)
    return reliable.astype(np.float32)


class Motion(NamedTuple):
    """Motion between input frames t-1 and t, everything on frame t's pixel grid.

    flow_bw: float32 (H, W, 2), t -> t-1; flow_fw: float32 (H, W, 2), t-1 -> t;
    mask: float32 (H, W) in {0, 1}, `consistency_mask(flow_bw, flow_fw)`.
    """

    flow_bw: np.ndarray
    flow_fw: np.ndarray
    mask: np.ndarray


class Prior(NamedTuple):
    """A temporal prior for frame t: ``warped`` float32 (H, W, 3) in [0, 1] (the stylized
    frame t-k carried onto frame t) and ``mask`` float32 (H, W) in [0, 1] (where to trust it)."""

    warped: np.ndarray
    mask: np.ndarray


def estimate_motion(
    prev_input: np.ndarray, cur_input: np.ndarray, estimator: FlowEstimator | None = None
) -> Motion:
    """Both flows and the consistency mask between two *input* frames.

    Depends only on the input frames, so the pipeline can run it (for frame t+1) in a
    background thread while the stylizer works on frame t.

    Args:
        prev_input: uint8 (H, W, 3) RGB, frame t-1 (or t-k for a long-term prior).
        cur_input: uint8 (H, W, 3) RGB, frame t, same size.
        estimator: the video's `FlowEstimator` (None: a temporary "medium" one).
    """
    est = estimator or FlowEstimator()
    flow_bw = est(cur_input, prev_input)
    flow_fw = est(prev_input, cur_input)
    return Motion(flow_bw, flow_fw, consistency_mask(flow_bw, flow_fw))


def warp_prior(prev_stylized: np.ndarray, motion: Motion,
               interpolation: int = cv2.INTER_LINEAR) -> Prior:
    """Carry the stylized frame t-1 onto frame t along ``motion.flow_bw``.

    Args:
        prev_stylized: float32 (H, W, 3) RGB in [0, 1], same size as the frames the motion was
            estimated on (compute flow on inputs resized to the output size).
        motion: from `estimate_motion`.
        interpolation: see `warp` (the video job uses cv2.INTER_CUBIC).

    Returns:
        `Prior` (warped float32 (H, W, 3) in [0, 1], mask float32 (H, W) in {0, 1}).
    """
    if prev_stylized.shape[:2] != motion.flow_bw.shape[:2]:
        raise ValueError(
            f"stylized frame is {prev_stylized.shape[:2]} but the flow is "
            f"{motion.flow_bw.shape[:2]}: estimate motion on inputs resized to the output size"
        )
    warped = np.clip(warp(prev_stylized, motion.flow_bw, interpolation), 0.0, 1.0)
    return Prior(warped, motion.mask)


# --------------------------------------------------------------------------------------------
# Scene cuts

# Measured on 128x96 synthetic frames: cuts between unrelated textures score 0.58-1.0 (20 pairs,
# most >= 0.75), cuts between flat colours 1.0; one texture moving up to 1/8 of the width per
# frame < 0.07, a 16 px/frame pan across changing colours <= 0.22, zoom/rotation ~0.1, a
# +30 grey-level brightness jump 0.44 (does not fire). Motion beyond ~1/5 of the frame per
# frame (0.33 at 24 px of 128) and gradual dissolves are the known weak spots.
DEFAULT_SCENE_CUT_THRESHOLD = 0.5
"""Default for `is_scene_cut` (config `video.scene_cut_threshold`). Scores in [0, 1]."""

_CUT_SIDE = 96  # analysis size: longest side in pixels; cheap and still resolves texture


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """``frame`` downscaled (INTER_AREA) to a longest side of 96 px (at least 8x8): the size
    scene cuts are judged at. Already small frames are returned at their size."""
    h, w = frame.shape[:2]
    scale = min(1.0, _CUT_SIDE / max(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(frame), size, interpolation=cv2.INTER_AREA)


#: A change of mean brightness by more than this factor between two frames is a cut; less is
#: what a fade does from one frame to the next (a 0.3 s fade to black: x0.6-0.86 per frame).
MAX_FADE_STEP = 2.0


def _colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance in [0, 1] of hue-saturation and value histograms (max of both).

    The value histograms are compared at a common mean brightness: a fade multiplies every
    value by one factor, and raw value histograms scored 0.6-1.0 on every frame of a fade to
    black (each frame then started cold, as after a cut). A jump of mean brightness by more
    than `MAX_FADE_STEP` still counts as a cut (flat grey to light grey has no other cue).
    """
    ha, hb = cv2.cvtColor(a, cv2.COLOR_RGB2HSV), cv2.cvtColor(b, cv2.COLOR_RGB2HSV)
    h1 = cv2.calcHist([ha], [0, 1], None, [16, 8], [0, 180, 0, 256])
    h2 = cv2.calcHist([hb], [0, 1], None, [16, 8], [0, 180, 0, 256])
    dist = float(cv2.compareHist(h1, h2, cv2.HISTCMP_BHATTACHARYYA))
    va, vb = ha[..., 2].astype(np.float32), hb[..., 2].astype(np.float32)
    ma, mb = float(va.mean()) + 1.0, float(vb.mean()) + 1.0
    if max(ma / mb, mb / ma) > MAX_FADE_STEP:
        return 1.0
    v1 = cv2.calcHist([np.clip(va * (128.0 / ma), 0, 255)], [0], None, [16], [0, 256])
    v2 = cv2.calcHist([np.clip(vb * (128.0 / mb), 0, 255)], [0], None, [16], [0, 256])
    dist = max(dist, float(cv2.compareHist(v1, v2, cv2.HISTCMP_BHATTACHARYYA)))
    return min(1.0, max(0.0, dist))


def _structure_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Motion-compensated grey difference in [0, 1], relative to the frames' own contrast.

    DIS flow a -> b lines ``b`` up with ``a``; what motion cannot explain is left. Means are
    removed first (a brightness change is the colour cue's business) and the residual is
    divided by the frames' mean absolute deviation, so the value does not depend on the
    texture's contrast: two unrelated textures give >= ~0.7 (about 1.8 for independent
    signals before the flow finds partial matches), one texture moved even by 1/8 of the
    frame per frame gives < ~0.1.
    """
    ga, gb = _to_grey(a).astype(np.float32), _to_grey(b).astype(np.float32)
    ga -= ga.mean()
    gb -= gb.mean()
    flow = FlowEstimator("medium")(a, b)  # a -> b, so warp(b, flow) lines b up with a
    inside = _inside(flow)
    if inside.mean() < 0.25:  # almost every pixel "left the frame": no usable alignment
        return 1.0
    residual = float(np.abs(ga - warp(gb, flow))[inside].mean())
    contrast = 0.5 * float(np.abs(ga).mean() + np.abs(gb).mean())
    # +4 grey levels: flat, noisy frames (noise only, no structure to align) must not score
    # high; a cut between flat frames is the colour cue's job.
    return min(1.0, residual / (contrast + 4.0))


def scene_cut_score(a: np.ndarray, b: np.ndarray) -> float:
    """How likely frame ``b`` starts a new shot after frame ``a``: float in [0, 1].

    Method (both on frames downscaled to a longest side of 96 px, ~1 ms):
    max of (1) a colour cue, the Bhattacharyya distance of HSV histograms, which motion leaves
    almost unchanged, and (2) a structure cue, the grey difference left after aligning ``b`` to
    ``a`` with DIS flow, relative to the frames' contrast. Plain frame differences (the usual
    cheap detector) also fire on fast motion and camera pans; motion compensation removes that,
    while the colour cue catches cuts between flat or blurry shots that a flow can "explain".

    Args:
        a, b: uint8 (H, W, 3) RGB, same size.
    """
    _check_pair(a, b)
    sa, sb = thumbnail(a), thumbnail(b)
    return max(_colour_distance(sa, sb), _structure_distance(sa, sb))


def is_scene_cut(
    a: np.ndarray, b: np.ndarray, threshold: float = DEFAULT_SCENE_CUT_THRESHOLD
) -> bool:
    """True when `scene_cut_score(a, b)` exceeds ``threshold`` (0..1; higher fires less)."""
    return scene_cut_score(a, b) > threshold
