"""Latency of the image tools and of the agent loop's own work per turn.

    .venv/bin/python benchmarks/bench_tools.py [--repeats 30] [--trajectories 8]

Part 1: p50/p95 of one crop/zoom and one VisionThink resize (``execute`` of the verl tool, thread hop included) on
1K, 4K and 8K sources, next to the bare PIL operation the tool wraps (``Image.crop`` + ``resize`` to the same output
size), so the ratio shows what validation, coordinate mapping and the executor hop cost on top of the pixel work.

Part 2: the agent loop's overhead per turn. verl's real ``AgentLoopWorker`` runs ``visionr3_agent`` with the crop tool
against the zero-latency :class:`~visionr3.testing.scripted_server.ScriptedServer` on the tiny Qwen2.5-VL, side by
side with verl's stock ``tool_agent`` loop on the same scripts. With the model's time at zero, the per-turn time is
the loop's own: templating, tokenisation, image-token expansion, tool execution, masks and the final
multi-modal/M-RoPE post-processing.

Timings are printed, never asserted (CPU speed varies); the script exits 0 when it has printed its tables.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def bench_tools(repeats: int) -> None:
    import numpy as np
    from PIL import Image
    from verl.tools.tool_registry import initialize_tools_from_config

    from visionr3.config import config_path
    from visionr3.tools.geometry import plan_crop
    from visionr3.tools.image_tools import call_tool

    crop_tool = initialize_tools_from_config(str(config_path("tools", "crop_zoom.yaml")))[0]
    resize_tool = initialize_tools_from_config(str(config_path("tools", "resize.yaml")))[0]
    rng = np.random.default_rng(0)

    def timed(fn) -> list[float]:
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    print(f"{'op':<8}{'source':>8}{'tool p50':>11}{'tool p95':>11}{'PIL p50':>10}{'ratio':>7}")
    for label, (w, h) in [("1K", (1024, 768)), ("4K", (3840, 2160)), ("8K", (7680, 4320))]:
        source = Image.fromarray(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h))
        source.load()
        seen = (448 * w // max(w, h) // 28 * 28, 448 * h // max(w, h) // 28 * 28)
        kwargs = {"source_images": [source], "seen_sizes": [seen], "full_sizes": [(w // 2, h // 2)]}
        box = [seen[0] // 4, seen[1] // 4, seen[0] // 2, seen[1] // 2]
        plan = plan_crop(box, frame="model_pixels", seen_size=seen, source_size=(w, h), max_pixels=802816)
        loop = asyncio.new_event_loop()
        try:
            crop = timed(lambda: loop.run_until_complete(call_tool(crop_tool, {"bbox_2d": box}, kwargs)))
            resize = timed(lambda: loop.run_until_complete(call_tool(resize_tool, {"action": "resize"}, kwargs)))
        finally:
            loop.close()
        pil_crop = timed(lambda: source.crop(plan.source_box).resize(plan.output_size, Image.Resampling.BICUBIC))
        resize_out = loop_free_resize_size(w // 2, h // 2)
        pil_resize = timed(lambda: source.resize(resize_out, Image.Resampling.LANCZOS))
        for name, tool_t, base_t in (("crop", crop, pil_crop), ("resize", resize, pil_resize)):
            p50, p95 = _percentiles(tool_t)
            base = statistics.median(base_t)
            print(f"{name:<8}{label:>8}{p50 * 1e3:>9.2f}ms{p95 * 1e3:>9.2f}ms{base * 1e3:>8.2f}ms{p50 / base:>7.2f}")


def loop_free_resize_size(width: int, height: int) -> tuple[int, int]:
    from visionr3.tools.geometry import smart_resize

    h, w = smart_resize(height, width, 28, 3136, 4194304)
    return w, h


def bench_agent_loop(trajectories: int, repeats: int) -> None:
    import io
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from visionr3.config import config_path
    from visionr3.processing import fetch_image
    from visionr3.testing.agent_harness import build_gen_batch, compose_verl_config, dataset_row, make_agent_loop_worker
    from visionr3.testing.conversations import marked_canvas
    from visionr3.testing.scripted_server import ScriptedServer
    from visionr3.testing.tiny_model import tiny_model_dir

    model_dir = tiny_model_dir("qwen2_5_vl")
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            f"actor_rollout_ref.rollout.multi_turn.tool_config_path={config_path('tools', 'crop_zoom.yaml')}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('agent_loop.yaml')}",
            "+data.max_pixels=150528",
            "data.max_response_length=3072",
        ]
    )
    canvas = marked_canvas(size=(1792, 1344))
    png = io.BytesIO()
    canvas.image.save(png, format="PNG")
    seen = fetch_image(canvas.image, max_pixels=150528).size
    call = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [%d, %d, %d, %d]}}\n</tool_call>'
    script = [call % (280, 190, 340, 250), call % (10, 10, 120, 90), "<answer>red</answer>"]
    # The stock loop does not pass sources to tools: give both loops the same source through the row's tools_kwargs.
    tools_kwargs = {"image_zoom_in_tool": {"create_kwargs": {"image": {"bytes": png.getvalue()}, "seen_sizes": [seen]}}}
    worker = make_agent_loop_worker(config, None)
    rollout = config.actor_rollout_ref.rollout

    print(f"{'loop':<16}{'trajectories':>13}{'turns':>7}{'p50 total':>11}{'per turn':>10}{'ratio':>7}")
    results = {}
    for agent_name in ("tool_agent", "visionr3_agent"):
        times = []
        for _ in range(repeats):
            rows = [
                dataset_row("<image>What colour is the square?", [canvas.image], agent_name=agent_name, index=i, tools_kwargs=tools_kwargs)
                for i in range(trajectories)
            ]
            worker.llm_client = ScriptedServer(worker.tokenizer, [script] * trajectories, prompt_length=rollout.prompt_length, response_length=rollout.response_length)
            batch = build_gen_batch(rows)
            start = time.perf_counter()
            out = asyncio.run(worker.generate_sequences(batch))
            times.append(time.perf_counter() - start)
            assert int(out.non_tensor_batch["__num_turns__"].sum()) == trajectories * 6
        turns = trajectories * len(script)
        p50 = statistics.median(times)
        results[agent_name] = p50 / turns
        ratio = results[agent_name] / results["tool_agent"]
        print(f"{agent_name:<16}{trajectories:>13}{turns:>7}{p50 * 1e3:>9.0f}ms{p50 / turns * 1e3:>8.1f}ms{ratio:>7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--trajectories", type=int, default=8)
    args = parser.parse_args()
    print("== image tools: execute() vs the bare PIL work ==")
    bench_tools(args.repeats)
    print("\n== agent loop per turn, zero-latency scripted server (verl AgentLoopWorker, tiny Qwen2.5-VL) ==")
    bench_agent_loop(args.trajectories, max(3, args.repeats // 10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
