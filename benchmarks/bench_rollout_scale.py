"""Host memory of a rollout as the batch grows: visionr3's image plumbing against the naive way, side by side.

    .venv/bin/python benchmarks/bench_rollout_scale.py            # full: batches 64, 256, 1024 at 1K, 4K, 8K
    .venv/bin/python benchmarks/bench_rollout_scale.py --quick    # ~3 min on 2 cores: batch 16 and 64, 20 steps

verl's real ``AgentLoopWorker`` (:mod:`visionr3.testing.agent_harness`, as ``bench_tools.py`` drives it) runs
``visionr3_agent`` with the crop/zoom and resize tools against the zero-latency
:class:`~visionr3.testing.scripted_server.ScriptedServer` on the tiny Qwen2.5-VL. Sources are synthetic JPEGs of 1K
(1024x768), 4K (3840x2160) and 8K (7680x4320) pixels; rows arrive as a parquet file gives them (``{"bytes": ...}``),
in groups of n = 16 samples sharing one prompt, repeated by reference as verl's trainer repeats a batch. Each sample
makes 3-5 tool calls (crops of different boxes, one resize), then answers.

Two arms, same rows, same scripts, same process:

- **ours**: ``visionr3_agent`` as shipped. A prompt's source is decoded once and shared by its n samples; the view the
  policy sees is made once per group (:func:`visionr3.processing.shared_resize`); crops are rendered from the source
  on each call and live only in the trajectory.
- **baseline**: the naive way peers do it: each trajectory decodes its own full-resolution copy of the row's bytes,
  makes its own resized view, and keeps the copy and every crop until the batch ends.

Reported per trajectory: the peak RSS increment over the batch (MB; RSS sampled every 5 ms by a thread, minus the RSS
before the batch, after ``gc.collect()``), the wall time, and the image data held at the end of the batch, walked
over every live object: ``PIL`` pixels (sources, views, crops; each image object counted once) and the processor
tensors verl keeps for training (``multi_modal_inputs``: ``pixel_values`` and friends, float32, the same in both arms:
they grow with the token budget, not with the source). Then RSS after each of ``--steps`` repeated steps of ``ours``
at 4K (a leak shows as a slope; reported per 100 steps, least squares over the steps after the first two), and the
eval runner (:class:`visionr3.eval.runner.Evaluator`, scripted model) over a benchmark file of ``--eval-rows`` rows:
RSS growth per row, its old retention (every prepared row kept until the run ends) against the runner as shipped.

Budgets (bench-sized so 1,024 trajectories fit a few GB; every number scales with them): prompt image 150,528 pixels
(192 tokens), crops at most 100,352 pixels (128 tokens), the resize tool as shipped (re-renders at the seen size).
glibc's malloc is pinned to mmap allocations above 64 KiB (``MALLOC_MMAP_THRESHOLD_``, the script re-executes itself
with it) so freed image buffers leave the RSS at once and one batch's garbage does not hide the next batch's peak.

The last line is ``rss_mb_per_traj_4k=<x> baseline_mb_per_traj_4k=<y> growth_mb_per_100_steps=<z>`` (ours and the
baseline at 4K and the largest batch run; the growth of ``ours``). Nothing is asserted; the script exits 0 when it
has printed its tables.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = "65536"
if __name__ == "__main__" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD  # read by glibc at start-up: re-execute before allocating
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry  # noqa: E402

from visionr3.agent.loop import VisionAgentLoop  # noqa: E402
from visionr3.testing.scripted_server import ScriptedServer  # noqa: E402

RESOLUTIONS = {"1K": (1024, 768), "4K": (3840, 2160), "8K": (7680, 4320)}
GROUP = 16  # n samples per prompt
PROMPT_PIXELS = 150528
CROP_PIXELS = 100352
ZOOM = "image_zoom_in_tool"
RESIZE = "resize_image"
MB = 1 << 20


# ---- measurement ---------------------------------------------------------------------------------------------------


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakRss:
    """Highest RSS seen by a thread sampling every ``interval`` seconds between ``__enter__`` and ``__exit__``."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> "PeakRss":
        self.peak = rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def image_bytes_held() -> tuple[int, int]:
    """(bytes of PIL pixels, bytes of processor tensors in ``multi_modal_inputs``) of every live object now."""
    import torch

    import warnings

    gc.collect()
    warnings.simplefilter("ignore", FutureWarning)  # isinstance() on torch's deprecated module attributes
    pil, seen = 0, set()
    for obj in gc.get_objects():
        if isinstance(obj, Image.Image) and id(obj) not in seen and getattr(obj, "_im", None) is not None:  # decoded
            seen.add(id(obj))
            pil += obj.width * obj.height * len(obj.getbands())
    tensors, seen_t = 0, set()
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "image_grid_thw" in obj:
            for value in obj.values():
                if isinstance(value, torch.Tensor) and id(value) not in seen_t:
                    seen_t.add(id(value))
                    tensors += value.numel() * value.element_size()
    return pil, tensors


# ---- the rollout -----------------------------------------------------------------------------------------------------


def tool_config(folder: Path) -> str:
    """The shipped crop/zoom and resize tools in one YAML, the crop budget set to the bench's."""
    import yaml

    from visionr3.config import config_path

    tools = []
    for name in ("crop_zoom.yaml", "resize.yaml"):
        tools += yaml.safe_load(Path(config_path("tools", name)).read_text())["tools"]
    tools[0]["config"]["crop_max_pixels"] = CROP_PIXELS
    path = folder / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": tools}))
    return str(path)


def source_jpeg(size: tuple[int, int], seed: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.fromarray(rng.integers(0, 255, (h // 32, w // 32, 3), dtype=np.uint8)).resize((w, h))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def scripts_for(groups: int, seen: tuple[int, int]) -> list[list[str]]:
    """One script per trajectory: 3, 4 or 5 tool calls (crops of different boxes, the third a resize), then an answer."""
    call = '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
    w, h = seen
    scripts = []
    for t in range(groups * GROUP):
        turns = []
        for k in range(3 + t % 3):
            if k == 2:
                turns.append(call % (RESIZE, '{"action": "resize"}'))
                continue
            x, y = (t * 37 + k * 53) % (w // 2), (t * 29 + k * 41) % (h // 2)
            turns.append(call % (ZOOM, '{"bbox_2d": [%d, %d, %d, %d]}' % (x, y, x + w // 8 + 28, y + h // 8 + 28)))
        scripts.append(turns + ["<answer>red</answer>"])
    return scripts


KEPT: list = []
"""What the baseline's trajectories keep until the batch ends (cleared by :meth:`Rollout.end_batch`)."""


class NaiveAgentLoop(VisionAgentLoop):
    """The baseline, registered as ``naive_agent``: each trajectory decodes its own full-resolution copy of the row's
    bytes (so its resized view is its own too) and keeps the copy and every crop until the batch ends."""

    async def run(self, sampling_params, **kwargs):
        prompt = []
        for message in kwargs["raw_prompt"]:
            content = message.get("content")
            if isinstance(content, list):
                content = [self._own_copy(item) for item in content]
            prompt.append({**message, "content": content})
        return await super().run(sampling_params, **{**kwargs, "raw_prompt": prompt})

    def _own_copy(self, item):
        if not (isinstance(item, dict) and item.get("type") == "image"):
            return item
        image = Image.open(io.BytesIO(item["bytes"])).convert("RGB")  # decoded for this trajectory alone
        KEPT.append(image)
        return {"type": "image", "image": image}

    async def _call_tool(self, tool_call, tools_kwargs, agent_data):
        response, reward, info = await super()._call_tool(tool_call, tools_kwargs, agent_data)
        KEPT.extend(response.image or [])
        return response, reward, info


class QuietServer(ScriptedServer):
    """The scripted server without its call log (it keeps every call's token ids: the bench's own growth, not ours)."""

    async def generate(self, *args, **kwargs):
        out = await super().generate(*args, **kwargs)
        self.calls.clear()
        return out


class Rollout:
    """verl's AgentLoopWorker with the tools, built once; :meth:`step` runs one batch of trajectories."""

    def __init__(self, folder: Path):
        from visionr3.config import config_path
        from visionr3.testing.agent_harness import compose_verl_config, make_agent_loop_worker
        from visionr3.testing.tiny_model import tiny_model_dir

        config = compose_verl_config(
            [
                f"actor_rollout_ref.model.path={tiny_model_dir('qwen2_5_vl')}",
                f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tool_config(folder)}",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('agent_loop.yaml')}",
                f"+data.max_pixels={PROMPT_PIXELS}",
                "data.max_response_length=3072",
            ]
        )
        self.worker = make_agent_loop_worker(config, None)
        self.rollout = config.actor_rollout_ref.rollout
        _agent_loop_registry["naive_agent"] = {"_target_": f"{__name__}.NaiveAgentLoop"}

    def step(self, data: bytes, seen: tuple[int, int], trajectories: int, agent_name: str):
        """One batch: ``trajectories // GROUP`` prompts of ``data``, each repeated GROUP times by reference."""
        from visionr3.testing.agent_harness import build_gen_batch, dataset_row

        groups = max(1, trajectories // GROUP)
        rows = []
        for g in range(groups):
            row = dataset_row("<image>Which colour is the mark?", [{"bytes": data}], agent_name=agent_name, index=g)
            rows += [row] * GROUP  # the trainer's batch.repeat(n, interleave=True): the same objects n times
        self.worker.llm_client = QuietServer(
            self.worker.tokenizer, scripts_for(groups, seen), prompt_length=self.rollout.prompt_length,
            response_length=self.rollout.response_length,
        )
        out = asyncio.run(self.worker.generate_sequences(build_gen_batch(rows)))
        return out

    def end_batch(self) -> None:
        KEPT.clear()


def seen_of(size: tuple[int, int]) -> tuple[int, int]:
    from visionr3.tools.geometry import smart_resize

    h, w = smart_resize(size[1], size[0], factor=28, min_pixels=3136, max_pixels=PROMPT_PIXELS)
    return w, h


def measure(rollout: Rollout, data: bytes, seen, trajectories: int, agent_name: str) -> dict:
    gc.collect()
    before = rss()
    start = time.perf_counter()
    with PeakRss() as peak:
        out = rollout.step(data, seen, trajectories, agent_name)
        pil, tensors = image_bytes_held()  # at the end of the batch, while its output and what it kept are alive
    wall = time.perf_counter() - start
    n = len(out)
    del out
    rollout.end_batch()
    gc.collect()
    return {"peak": (peak.peak - before) / n / MB, "wall": wall / n, "pil": pil / n / MB, "tensors": tensors / n / MB}


# ---- the eval runner -------------------------------------------------------------------------------------------------


def eval_rows_growth(folder: Path, rows: int, size: tuple[int, int], retain: bool) -> dict:
    """RSS growth per row of the eval runner over a file of ``rows`` rows; ``retain``: the old runner's retention
    (every prepared row, with the source its trajectory decoded, kept until the run ends)."""
    import pandas as pd

    from visionr3.eval.protocol import EvalProtocol
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.testing.tiny_model import tiny_model_dir

    data = source_jpeg(size, seed=3)
    path = folder / f"bench_{rows}.parquet"
    pd.DataFrame(
        [
            {
                "data_source": "bench", "prompt": [{"role": "user", "content": "<image>Which colour is the mark?"}],
                "images": [{"bytes": data}], "reward_model": {"style": "rule", "ground_truth": "red"},
                "extra_info": {"index": i, "question": "Which colour is the mark?"},
            }
            for i in range(rows)
        ]
    ).to_parquet(path)
    settings = EvalSettings(
        model=str(tiny_model_dir("qwen2_5_vl")), out=str(folder / f"eval_{rows}_{retain}.jsonl"),
        protocol=EvalProtocol(recipe="zoom", max_response_tokens=512, max_prompt_tokens=1024, min_pixels=3136, max_pixels=PROMPT_PIXELS),
        data=[str(path)], config_name="cpu", batch_size=16, progress=False, save_images=False,
    )
    seen = seen_of(size)
    with Evaluator(settings) as evaluator:
        scripts = [s[:1] + ["<answer>red</answer>"] for s in scripts_for(rows // GROUP + 1, seen)]
        evaluator.inner_client = QuietServer(evaluator.tokenizer, scripts, prompt_length=1024, response_length=512)
        gc.collect()
        before = rss()
        with PeakRss() as peak:
            if retain:
                prepared = [evaluator.prepare_row(r, data_file=str(path), row_number=i) for i, r in enumerate(evaluator.read_rows(str(path)))]
                for start in range(0, len(prepared), 16):
                    evaluator.run_prepared(prepared[start : start + 16], sample=0)
            else:
                evaluator.run()
            gc.collect()
            after = rss()
    return {"growth": (after - before) / rows / MB, "peak": (peak.peak - before) / MB}  # growth: left after the run


# ---- main ------------------------------------------------------------------------------------------------------------


def baseline_batch(batch: int, size: tuple[int, int], budget_mb: float) -> int:
    """The baseline's batch, cut to what ``budget_mb`` of RSS allows (its own source copy and ~16 MB more per
    trajectory), in whole groups; its numbers are per trajectory, so a smaller batch measures the same thing."""
    per_trajectory = size[0] * size[1] * 3 / MB + 16
    return max(GROUP, min(batch, int(budget_mb / per_trajectory) // GROUP * GROUP))


def growth_per_100_steps(samples: list[int]) -> float:
    import numpy as np

    ys = np.array(samples[2:], dtype=float) / MB
    if len(ys) < 2:
        return 0.0
    slope = np.polyfit(np.arange(len(ys), dtype=float), ys, 1)[0]
    return float(slope * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, 20 steps of 16 on a 1K source, 64 eval rows")
    parser.add_argument("--leak-source", choices=sorted(RESOLUTIONS), default=None, help="source of the repeated steps (default 4K; --quick: 1K)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="trajectories per batch (multiples of 16)")
    parser.add_argument("--steps", type=int, default=None, help="repeated steps for the leak check (default 50)")
    parser.add_argument("--leak-batch", type=int, default=16, help="trajectories per repeated step")
    parser.add_argument("--max-increment-mb", type=float, default=1500, help="RSS budget of one baseline batch")
    parser.add_argument("--eval-rows", type=int, default=None, help="rows of the eval file (default 1000)")
    parser.add_argument("--eval-baseline-rows", type=int, default=None, help="rows for the old runner (default 32)")
    args = parser.parse_args()
    batches = args.batches or ([16] if args.quick else [16, 64, 128])
    steps = args.steps or (20 if args.quick else 50)
    eval_rows = args.eval_rows or (64 if args.quick else 1000)
    eval_baseline_rows = args.eval_baseline_rows or 32
    leak_source = args.leak_source or ("1K" if args.quick else "4K")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rollout = Rollout(folder)
        rollout.step(source_jpeg((1024, 768), 0), seen_of((1024, 768)), GROUP, "visionr3_agent")  # warm-up
        print(f"== rollout memory per trajectory (n={GROUP}, 3-5 tool calls each; MB unless said) ==")
        print(f"{'source':<7}{'batch':>6}{'arm':>10}{'peak RSS':>10}{'wall ms':>9}{'PIL MB':>8}{'tensors':>9}{'RSS ratio':>10}{'PIL ratio':>10}")
        results: dict = {}
        for label, size in RESOLUTIONS.items():
            data, seen = source_jpeg(size, seed=1), seen_of(size)
            for batch in batches:
                row = {}
                for arm, agent in (("ours", "visionr3_agent"), ("baseline", "naive_agent")):
                    run = batch if arm == "ours" else baseline_batch(batch, size, args.max_increment_mb)
                    row[arm] = measure(rollout, data, seen, run, agent)
                    row[arm]["batch"] = run
                    r = row[arm]
                    print(f"{label:<7}{row[arm]['batch']:>6}{arm:>10}{r['peak']:>10.2f}{r['wall'] * 1e3:>9.1f}{r['pil']:>8.2f}{r['tensors']:>9.2f}", end="")
                    if arm == "baseline":
                        print(f"{row['ours']['peak'] / r['peak']:>10.3f}{row['ours']['pil'] / max(r['pil'], 1e-9):>10.3f}")
                    else:
                        print()
                results[(label, batch)] = row
            sys.stdout.flush()

        largest = max(batches)
        ours4k, base4k = results[("4K", largest)]["ours"]["peak"], results[("4K", largest)]["baseline"]["peak"]
        print(f"\n4,096 trajectories at 4K, extrapolated per trajectory from batch {largest}: ours {ours4k * 4096 / 1024:.1f} GB, "
              f"baseline {base4k * 4096 / 1024:.1f} GB")

        print(f"\n== RSS across {steps} repeated steps (ours, {leak_source}, {args.leak_batch} trajectories per step) ==")
        data, seen = source_jpeg(RESOLUTIONS[leak_source], seed=2), seen_of(RESOLUTIONS[leak_source])
        samples = []
        for _ in range(steps):
            out = rollout.step(data, seen, args.leak_batch, "visionr3_agent")
            del out
            gc.collect()
            samples.append(rss())
        growth = growth_per_100_steps(samples)
        marks = ", ".join(f"{samples[i] / MB:.0f}" for i in sorted({0, 1, 2, steps // 2, steps - 1}))
        print(f"RSS MB at steps 1, 2, 3, mid, last: {marks}; growth {growth:+.2f} MB per 100 steps (fit over steps 3..{steps})")
        del rollout

        print(f"\n== eval runner, 4K sources, batch 16: peak RSS increment over the run, and what is left after it ==")
        print(f"{'runner':<28}{'rows':>6}{'peak MB':>9}{'peak/row':>9}{'left/row':>9}")
        old = eval_rows_growth(folder, eval_baseline_rows, RESOLUTIONS["4K"], retain=True)
        print(f"{'old (rows kept to the end)':<28}{eval_baseline_rows:>6}{old['peak']:>9.0f}{old['peak'] / eval_baseline_rows:>9.2f}"
              f"{old['growth']:>9.2f}   -> peak {old['peak'] / eval_baseline_rows * 1000 / 1024:.1f} GB at 1,000 rows")
        new = eval_rows_growth(folder, eval_rows, RESOLUTIONS["4K"], retain=False)
        print(f"{'ours':<28}{eval_rows:>6}{new['peak']:>9.0f}{new['peak'] / eval_rows:>9.2f}{new['growth']:>9.2f}")

    print(f"rss_mb_per_traj_4k={ours4k:.2f} baseline_mb_per_traj_4k={base4k:.2f} growth_mb_per_100_steps={growth:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
