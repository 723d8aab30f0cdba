"""What crosses the network per frame on the Ray path, measured at 1080p.

    python bench/wire_bytes.py                 # ~1-2 min on 2 CPU cores
    python bench/wire_bytes.py --json bench/results/wire-1080p.json

Per computed frame an actor returns the stylized frame as a 16-bit RGB PNG (the frame store's
own format: lossless at the precision the next frame's warm start and the resume points use;
`nstd.cluster.wire`) plus its losses as a small dict. This prints, for 1920x1080 frames:
- raw: 1920*1080*3*2 bytes (16-bit RGB, no compression): the upper bound;
- png16 of the synthetic input frame (smooth moving texture, as in the test clips);
- png16 of engine outputs: the slim random-weights network (nstd.testing.weights, 1/8 width),
  N iterations from that frame at full 1080p. Random weights paint high-frequency texture,
  which compresses worse than a smooth photo: a pessimistic stand-in for a real painting;
- the record (losses) as pickled bytes;
- the time the actor spends encoding one PNG (compression level 1).
Once per unit: nothing else but the unit spec (a few hundred bytes); a resumed unit also gets up
to 5 stored frames (the flow history). Once per job and node: the compressed source file.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from nstd.config import parse_config
    from nstd.daemon.engines import EngineCache
    from nstd.job import to_array, to_tensor
    from nstd.temporal.store import encode_png
    from nstd.testing.media import smooth_texture, write_test_image
    from nstd.testing.weights import write_random_vgg19

    w, h = 1920, 1080
    frame = (smooth_texture(h, w, seed=1) * 215.0 + 20.5).astype(np.uint8)
    folder = Path(tempfile.mkdtemp(prefix="nstd-wire-"))
    weights = write_random_vgg19(folder / "vgg.pth", seed=0, width_divisor=8)
    style = write_test_image(folder / "style.png", size=(256, 256), seed=3)
    config = parse_config({"model": {"weights": str(weights), "device": "cpu"},
                           "style": {"max_side": w, "iterations": args.iterations,
                                     "scales": [1.0]}})
    engines = EngineCache.load(config.model)
    stylizer = engines.stylizer(config)
    from nstd.media.images import read_image

    target = stylizer.prepare_style([to_tensor(read_image(style, 10**8).rgb)], [1.0])
    started = time.monotonic()
    result = stylizer.run(to_tensor(frame), target, coarse_to_fine=False)
    stylize_seconds = time.monotonic() - started
    out = to_array(result.image)
    record = {"loss": result.final_loss, "losses": dict(result.losses),
              "iterations": result.iterations, "initial_loss": result.initial_loss,
              "final_loss": result.final_loss, "mode": "warped", "seconds": 1.0}
    t0 = time.monotonic()
    png_out = encode_png(out)
    encode_seconds = time.monotonic() - t0
    png_in = encode_png(frame.astype(np.float32) / 255.0)
    import cv2

    ok, png8 = cv2.imencode(".png", np.round(out * 255.0).astype(np.uint8),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
    figures = {
        "size": [w, h], "raw_bytes": w * h * 3 * 2,
        "png16_input_bytes": len(png_in), "png16_stylized_bytes": len(png_out),
        "png8_stylized_bytes": len(png8),
        "record_bytes": len(pickle.dumps(record)), "png_encode_seconds": encode_seconds,
        "stylize_iterations": result.iterations, "stylize_seconds_cpu": stylize_seconds,
        "net": "slim random VGG-19 (1/8 width)", "torch": torch.__version__,
    }
    print("1080p per frame on the wire (actor -> supervisor):")
    print(f"  raw 16-bit RGB           {figures['raw_bytes'] / 1e6:8.2f} MB (upper bound)")
    print(f"  png16, synthetic input   {len(png_in) / 1e6:8.2f} MB")
    print(f"  png16, engine output     {len(png_out) / 1e6:8.2f} MB "
          f"({result.iterations} iterations, slim random net)")
    print(f"  png8, engine output      {len(png8) / 1e6:8.2f} MB (what the encoder uses; "
          "cluster.wire_format: png8)")
    print(f"  losses record            {figures['record_bytes']:8d} B")
    print(f"  PNG encode on the actor  {encode_seconds * 1000:8.0f} ms")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
