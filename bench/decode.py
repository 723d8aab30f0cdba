"""Peak memory of reading a huge JPEG for a small output (reduced decode) vs. a 1 MP one.

    python bench/decode.py                   # 48 MP and 1 MP JPEGs, max_side 512
    python bench/decode.py --megapixels 24 --max-side 1024

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
    args = parser.parse_args(argv)
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
