"""Image loading + smart-resize: visionr3.processing.fetch_image against qwen-vl-utils' fetch_image, same process.

    .venv/bin/python benchmarks/bench_image_path.py [--repeats 20]

Why: every prompt image (and, with the tools, every crop) goes through this path in the rollout workers. We replaced
qwen-vl-utils (it cannot be imported without torchvision) and must not be slower. qwen-vl-utils' image functions do
not use torchvision, so where torchvision is missing this script loads them with an empty torchvision module in
sys.modules (and imports nothing that would look for the real one). Prints p50 times and the ratio ours/theirs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import types


def _import_qwen_vl_utils():
    try:
        from qwen_vl_utils import vision_process
    except Exception:
        tv = types.ModuleType("torchvision")
        tv.__version__ = "0.0"
        tv.io = types.ModuleType("torchvision.io")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.InterpolationMode = object
        sys.modules.update({"torchvision": tv, "torchvision.io": tv.io, "torchvision.transforms": tv.transforms})
        from qwen_vl_utils import vision_process
    return vision_process


def _p50(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from visionr3.processing import fetch_image

    qv = _import_qwen_vl_utils()
    rng = np.random.default_rng(0)
    budget = {"min_pixels": 4 * 28 * 28, "max_pixels": 1280 * 28 * 28}
    print(f"{'source':>10} {'input':>6} {'qwen-vl-utils p50':>18} {'visionr3 p50':>13} {'ratio':>6}")
    ratios = []
    for label, (w, h) in [("1K", (1024, 768)), ("4K", (3840, 2160)), ("8K", (7680, 4320))]:
        array = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(array).resize((w, h))  # large but compressible, like a photo
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        png = buf.getvalue()
        for kind, source in (("PIL", image), ("PNG", png)):
            theirs = _p50(lambda: qv.fetch_image({"image": source if kind == "PIL" else Image.open(io.BytesIO(source)), **budget}), args.repeats)
            ours = _p50(lambda: fetch_image({"image": source if kind == "PIL" else None, "bytes": png if kind == "PNG" else None, **budget}), args.repeats)
            ratios.append(ours / theirs)
            print(f"{label:>10} {kind:>6} {theirs * 1e3:>15.1f} ms {ours * 1e3:>10.1f} ms {ours / theirs:>6.2f}")
    print(f"summary: visionr3/qwen-vl-utils time ratio, geometric mean over {len(ratios)} cases = "
          f"{statistics.geometric_mean(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
