"""Building a 47K-row training set: verl's prompt-length filter (today's path) against VisionRLDataset's.

    .venv/bin/python benchmarks/bench_dataset_scale.py [--rows 47000] [--baseline-rows 50] [--arch qwen2_5_vl]

47K rows is the size of DeepEyes' and Vision-SR1's training sets. The script writes a synthetic parquet of that many
rows in DeepEyes' verl format (``prompt``, ``images``, ``reward_model``, ``extra_info``, ``env_name``), its images
stored as the public sets store them: JPEG bytes under a ``datasets`` ``Image`` feature, so ``datasets`` decodes them
when a row is read. The images have realistic pixel sizes (sides 448-1344, 2x with ``--image-scale``) but flat
content, so they are ~20 KB each (the public sets' are 50-300 KB) and the files fit this machine (0.4 GB of parquet,
~0.9 GB for ``datasets``' arrow copy, 0.4 GB for ``prepare``'s output).

Every build runs in its own process (peak RSS is that process's ``ru_maxrss``), with the tiny checkpoint's real Qwen
tokenizer and processor, ``data.max_pixels`` 1003520:

* **today**: ``VisionRLDataset`` with verl's own ``maybe_filter_out_long_prompts`` — every image decoded by
  ``datasets`` (1000 rows per batch, held together), resized and run through the image processor to count tokens.
  It takes tens of ms a row here, so it runs on ``--baseline-rows`` rows at two image scales (its RSS grows with the
  pixels) and is extrapolated to ``--rows`` (the formula is printed under the table). Its filter runs in-process
  (``filter_overlong_prompts_workers=0``); verl's default forks a one-process pool that holds the same batch.
* **ours**: ``VisionRLDataset`` as shipped — tokens counted from the chat template and image headers, images left
  undecoded, lengths cached beside ``datasets``' cache files. A second build (a new process, same cache) shows the
  cache; a build at 2x the image side shows RSS does not follow the pixels.
* **prepare**: ``visionr3 prepare deepeyes`` on the same source (it decodes each image once to reject broken
  files, on ``--workers`` threads): time and peak RSS (``--skip-prepare`` to leave it out).

Timings are printed, never asserted. Everything is written under a temporary folder (``--workdir`` to choose where)
that is removed at the end (``--keep`` to keep it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

MAX_PIXELS = 1003520
POOL = 64  # distinct images; each row gets its own bytes (a JPEG comment with the row number)


# -- the synthetic source ------------------------------------------------------------------------------------------


def image_pool(scale: float, seed: int = 0) -> list[bytes]:
    """``POOL`` flat JPEGs (a background and a few boxes) with sides drawn from 448-1344 px, times ``scale``."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    pool = []
    for _ in range(POOL):
        width, height = int(rng.randint(448, 1344) * scale), int(rng.randint(448, 1344) * scale)
        image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.randrange(width), rng.randrange(height)
            draw.rectangle([x, y, x + width // 6, y + height // 6], fill=tuple(rng.randrange(256) for _ in range(3)))
        # a patch of noise, so the bytes do not compress away in parquet (~20 KB a file)
        image.paste(Image.frombytes("RGB", (96, 96), rng.randbytes(96 * 96 * 3)), (rng.randrange(width - 96), 0))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=75)
        pool.append(buffer.getvalue())
    return pool


def unique_jpeg(data: bytes, row: int) -> bytes:
    """``data`` with a JPEG comment segment naming ``row`` right after SOI: distinct bytes, the same pixels."""
    comment = f"row {row}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def write_source(path: str, rows: int, scale: float) -> None:
    """DeepEyes-format rows with a ``datasets`` ``Image`` feature, written 1000 rows per row group."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({
        "data_source": datasets.Value("string"),
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
        "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
        "extra_info": {"index": datasets.Value("int64"), "question": datasets.Value("string")},
        "env_name": datasets.Value("string"),
    })
    pool = image_pool(scale)
    colours = ("red", "green", "blue", "yellow", "white", "black")
    with pq.ParquetWriter(path, features.arrow_schema) as writer:
        for start in range(0, rows, 1000):
            batch = []
            for i in range(start, min(rows, start + 1000)):
                question = f"<image>\nWhat colour is the box nearest the top-left corner in picture {i}?"
                batch.append({
                    "data_source": "synthetic_deepeyes",
                    "prompt": [
                        {"role": "system", "content": "You are a helpful assistant. Zoom in when details are small."},
                        {"role": "user", "content": question},
                    ],
                    "images": [{"bytes": unique_jpeg(pool[i % POOL], i), "path": None}],
                    "reward_model": {"style": "rule", "ground_truth": colours[i % len(colours)]},
                    "extra_info": {"index": i, "question": question},
                    "env_name": "visual_toolbox_v2",
                })
            writer.write_table(pa.Table.from_pylist(batch, schema=features.arrow_schema))


# -- one build, in a child process ---------------------------------------------------------------------------------


def child_build(args: argparse.Namespace) -> None:
    """Build the dataset once and print one JSON line: seconds, rows, RSS before the filter and at peak."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from visionr3.data.dataset import VisionRLDataset
    from visionr3.processing import load_processor, load_tokenizer
    from visionr3.testing.tiny_model import tiny_model_dir

    model_dir = tiny_model_dir(args.arch)
    tokenizer, processor = load_tokenizer(model_dir), load_processor(model_dir)
    marks: dict[str, float] = {}

    class Measured(VisionRLDataset):
        def maybe_filter_out_long_prompts(self, dataframe=None):
            marks["filter_start"] = time.perf_counter()
            if args.child == "today":
                dataframe = RLHFDataset.maybe_filter_out_long_prompts(self, dataframe)
            else:
                dataframe = super().maybe_filter_out_long_prompts(dataframe)
            marks["filter_s"] = time.perf_counter() - marks["filter_start"]
            return dataframe

    config = OmegaConf.create({
        "max_prompt_length": 4096, "filter_overlong_prompts": True, "prompt_key": "prompt", "image_key": "images",
        "max_pixels": MAX_PIXELS, "filter_overlong_prompts_workers": 0,
    })
    start = time.perf_counter()
    dataset = Measured(args.parquet, tokenizer, config, processor)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "filter_s": marks["filter_s"], "load_s": marks["filter_start"] - start,
        "rows": len(dataset),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of that process, its stdout); raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out


def build(mode: str, parquet: str, cache: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", mode, "--parquet", parquet, "--arch", args.arch]
    _, peak, out = run(cmd, env)
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = max(result["peak_rss_mb"], peak)
    return result


# -- the report ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=47000, help="rows of the full-size set")
    parser.add_argument("--baseline-rows", type=int, default=50, help="rows today's path runs on (it is slow)")
    parser.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--image-scale", type=float, default=2.0, help="image side of the RSS check, times the base")
    parser.add_argument("--workers", type=int, default=2, help="visionr3 prepare --workers")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", choices=["today", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_build(args)
        return

    def progress(what: str) -> None:
        print(f"[bench_dataset_scale] {what} ...", file=sys.stderr, flush=True)

    work = tempfile.mkdtemp(prefix="bench_dataset_scale-", dir=args.workdir)
    try:
        small = {}
        for scale in (1.0, args.image_scale):
            small[scale] = os.path.join(work, f"small_x{scale:g}.parquet")
            write_source(small[scale], args.baseline_rows, scale)
        full = os.path.join(work, "full.parquet")
        progress(f"writing {args.rows} rows")
        t0 = time.perf_counter()
        write_source(full, args.rows, 1.0)
        write_s = time.perf_counter() - t0
        size_mb = os.path.getsize(full) / 2**20

        rows: list[tuple[str, int, str, dict]] = []
        for scale, path in small.items():
            for mode in ("today", "ours"):
                progress(f"{mode}, {args.baseline_rows} rows, image scale {scale:g}")
                rows.append((mode, args.baseline_rows, f"{scale:g}x", build(mode, path, os.path.join(work, f"c-{mode}-{scale:g}"), args)))
        progress(f"today, {args.baseline_rows} rows, second build")
        today_again = build("today", small[1.0], os.path.join(work, "c-today-1"), args)
        progress(f"ours, {args.rows} rows, first build")
        ours = build("ours", full, os.path.join(work, "c-full"), args)
        progress(f"ours, {args.rows} rows, second build (new process, same cache)")
        ours_again = build("ours", full, os.path.join(work, "c-full"), args)
        prepared = None
        if not args.skip_prepare:
            progress(f"visionr3 prepare deepeyes, {args.rows} rows")
            out = os.path.join(work, "prepared.parquet")
            cmd = [sys.executable, "-m", "visionr3.cli", "prepare", "deepeyes", full, "--out", out,
                   "--workers", str(args.workers)]
            seconds, peak, _ = run(cmd)
            prepared = (seconds, peak, os.path.getsize(out) / 2**20)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    today, ours_small = rows[0][3], rows[1][3]
    # The filter's fixed cost (datasets fingerprints it by pickling the tokenizer and processor) is paid again by a
    # second build, which then reads the cached result; the difference is the per-row work.
    per_row = max(0.0, today["filter_s"] - today_again["filter_s"]) / args.baseline_rows
    extrapolated_s = ours["load_s"] + today_again["filter_s"] + per_row * args.rows
    # The same small set built both ways: what today's path holds per row above ours is its decoded images.
    rss_per_row = max(0.0, today["peak_rss_mb"] - ours_small["peak_rss_mb"]) / args.baseline_rows
    extrapolated_rss = ours["peak_rss_mb"] + rss_per_row * min(1000, args.rows)

    print()
    print(f"== dataset build: {args.rows} rows ({size_mb:.0f} MB parquet, written in {write_s:.0f} s), tiny "
          f"{args.arch} tokenizer/processor, max_pixels {MAX_PIXELS}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} ==")
    header = f"{'path':<44}{'rows':>7}{'images':>8}{'build s':>9}{'filter ms/row':>14}{'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    for mode, n, scale, r in rows:
        name = "today (verl's filter)" if mode == "today" else "ours (VisionRLDataset)"
        print(f"{name:<44}{n:>7}{scale:>8}{r['seconds']:>9.1f}{r['filter_s'] / n * 1e3:>14.2f}{r['peak_rss_mb']:>12.0f}")
    print(f"{'today, second build (datasets filter cache)':<44}{args.baseline_rows:>7}{'1x':>8}"
          f"{today_again['seconds']:>9.1f}{today_again['filter_s'] / args.baseline_rows * 1e3:>14.2f}"
          f"{today_again['peak_rss_mb']:>12.0f}")
    print(f"{'today, extrapolated':<44}{args.rows:>7}{'1x':>8}{extrapolated_s:>9.0f}{per_row * 1e3:>14.2f}"
          f"{extrapolated_rss:>12.0f}")
    print(f"{'ours, first build':<44}{args.rows:>7}{'1x':>8}{ours['seconds']:>9.1f}"
          f"{ours['filter_s'] / args.rows * 1e3:>14.2f}{ours['peak_rss_mb']:>12.0f}")
    print(f"{'ours, second build (lengths cache)':<44}{args.rows:>7}{'1x':>8}{ours_again['seconds']:>9.1f}"
          f"{ours_again['filter_s'] / args.rows * 1e3:>14.2f}{ours_again['peak_rss_mb']:>12.0f}")
    if prepared:
        seconds, peak, out_mb = prepared
        print(f"{'visionr3 prepare deepeyes (process wall)':<44}{args.rows:>7}{'1x':>8}{seconds:>9.0f}"
              f"{seconds / args.rows * 1e3:>14.2f}{peak:>12.0f}   ({out_mb:.0f} MB written)")
    print("   build s: the dataset constructor (load_dataset + filter), without imports. today extrapolated: ours' "
          "load at full size + today's fixed filter cost (its second build's) + its per-row filter cost (first minus "
          "second build) x rows; its RSS: ours at full size + 1000 rows (datasets' batch) x the MB per row it held "
          "above ours on the small set")
    print(f"   kept rows: ours {ours['rows']}/{args.rows}, ours second build {ours_again['rows']}, today "
          f"{today['rows']}/{args.baseline_rows}")
    print(f"build_s={ours['seconds']:.1f} second_build_s={ours_again['seconds']:.1f} "
          f"peak_rss_mb={ours['peak_rss_mb']:.0f} today_extrapolated_s={extrapolated_s:.0f} "
          f"speedup={extrapolated_s / ours['seconds']:.1f}")


if __name__ == "__main__":
    main()
