"""Peak memory of reading a huge JPEG for a small output (reduced decode) vs. a 1 MP one,
and of decoding a 4K/8K video's frames for a small output.

    python bench/decode.py                   # 48 MP and 1 MP JPEGs, max_side 512
    python bench/decode.py --megapixels 24 --max-side 1024
    python bench/decode.py --video 3840x2160 --frames 8    # a 4K clip, frames at max_side

Writes the two JPEGs (smooth random colours, quality 90) into a temporary folder, then reads
each in a fresh subprocess as the image job does (`read_image(..., max_side)` then
`resize_max_side`), and once more the huge one without `max_side` (a full-size decode, as
before reduced decoding). Prints the peak resident memory each read adds (VmHWM, reset just
before the read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from nstd.media.images import read_image, resize_max_side
from nstd.testing.rss import current_bytes, peak_bytes, reset_peak
path, side, out = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = current_bytes()
reset_peak()
loaded = read_image(path, 200_000_000, max_side=None if side == "none" else int(side))
rgb = resize_max_side(loaded.rgb, out)
print(json.dumps({"peak_mb": (peak_bytes() - before) / 2**20, "shape": list(rgb.shape)}))
"""


VIDEO_PROBE = """
import json, sys
from collections import deque
import cv2
from nstd.config import LimitsConfig
from nstd.media.container import iter_frames, probe_video
from nstd.temporal.plan import output_size
from nstd.testing.rss import current_bytes, peak_bytes, reset_peak
path, side, reduced = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reduced"
info = probe_video(path, LimitsConfig())
w, h = output_size(info.width, info.height, side)
before = current_bytes()
reset_peak()
queue = deque(maxlen=5)  # the job's decode queue (4) and the frame being stylized
for frame in iter_frames(path, info, size=(w, h) if reduced else None):
    rgb = frame.rgb
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    queue.append((frame.rgb, rgb))
print(json.dumps({"peak_mb": (peak_bytes() - before) / 2**20, "shape": list(rgb.shape)}))
"""


def clip(path: Path, width: int, height: int, frames: int) -> Path:
    """A smooth panning H.264 clip at (width, height): random colours at 1/16 of the size,
    enlarged once, each frame shifted by 8 pixels (cheap to make even at 8K)."""
    import av
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2 + frames, 3))
    world = cv2.resize(small.astype(np.uint8), (small.shape[1] * 16, small.shape[0] * 16),
                       interpolation=cv2.INTER_LINEAR)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(frames):
            rgb = np.ascontiguousarray(world[:height, 8 * i: 8 * i + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def video_rows(size: str, frames: int, side: int) -> None:
    width, height = (int(v) for v in size.lower().split("x"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="nstd-decode-") as name:
        path = clip(Path(name) / "big.mp4", width, height, frames)
        for mode in ("reduced", "full"):
            result = subprocess.run([sys.executable, "-c", VIDEO_PROBE, str(path), str(side),
                                     mode], env=env, capture_output=True, text=True, check=True)
            row = json.loads(result.stdout)
            label = f"{size} video, {'converted small' if mode == 'reduced' else 'full frames'}"
            print(f"{label:>34}: peak +{row['peak_mb']:7.1f} MB -> {row['shape']}")


def photo(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3))
    Image.fromarray(small.astype(np.uint8)).resize((width, height),
                                                    Image.Resampling.BILINEAR).save(path,
                                                                                    quality=90)
    return path


def probe(path: Path, side: str, out: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PROBE, str(path), side, str(out)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=48.0)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--video", help="WxH: measure a video's frames instead")
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    if args.video:
        video_rows(args.video, args.frames, args.max_side)
        return 0
    with tempfile.TemporaryDirectory(prefix="nstd-decode-") as name:
        width = int(round((args.megapixels * 1e6 * 4 / 3) ** 0.5))
        height = int(round(width * 3 / 4))
        huge = photo(Path(name) / "huge.jpg", width, height)
        small = photo(Path(name) / "small.jpg", 1200, 900)
        side = str(args.max_side)
        rows = [("1 MP, reduced", probe(small, side, args.max_side)),
                (f"{width * height / 1e6:.0f} MP, reduced", probe(huge, side, args.max_side)),
                (f"{width * height / 1e6:.0f} MP, full decode", probe(huge, "none",
                                                                      args.max_side))]
    for label, row in rows:
        print(f"{label:>22}: peak +{row['peak_mb']:7.1f} MB -> {row['shape']}")
    print(f"huge minus 1 MP (reduced): {rows[1][1]['peak_mb'] - rows[0][1]['peak_mb']:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
