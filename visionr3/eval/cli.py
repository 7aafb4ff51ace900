"""``visionr3 eval``: evaluate a checkpoint with a recipe's agent loop, tools and reward on prepared benchmark files.

    visionr3 eval --model ckpt/ --recipe zoom --data vstar.parquet hrbench.parquet --out results/vstar.jsonl

Writes one JSONL record per (question, sample) as it finishes, then ``<out>.summary.md``/``.json`` (accuracy per
benchmark and category; the protocol on top) and prints the table. Run it again with the same ``--out`` after a crash:
finished samples are kept, the rest is computed. Trailing ``key=value`` arguments are Hydra overrides on the recipe.
"""

from __future__ import annotations

import argparse
import sys

from visionr3.eval.protocol import EvalProtocol


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "backends: hf (transformers in this process: CPU, or one GPU), vllm (vLLM's engine in this process: GPU, or\n"
        "vLLM's CPU build in float32, eager), openai (any OpenAI-compatible chat endpoint, e.g. `vllm serve <ckpt>`:\n"
        "--base-url http://host:8000/v1).\n"
        "Every knob below is written into each record's `protocol`; resuming under other knobs is refused."
    )
    parser.add_argument("--model", required=True, help="a Hugging Face checkpoint directory (`visionr3 merge` output)")
    parser.add_argument("--data", nargs="+", required=True, help="parquet files written by `visionr3 prepare`")
    parser.add_argument("--out", required=True, help="results JSONL (appended to and resumed from)")
    parser.add_argument("--recipe", default="zoom", choices=["zoom", "vlm_r3", "visionthink", "vision_sr1"], help="agent loop, tools, prompt style and reward to evaluate with (default: zoom)")
    parser.add_argument("--config-name", default="config", help="the recipe's config: config (GPU) or cpu (default: config)")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", default="hf", choices=["hf", "vllm", "openai"], help="inference engine (default: hf)")
    backend.add_argument("--base-url", help="openai backend: the endpoint, e.g. http://127.0.0.1:8000/v1")
    backend.add_argument("--served-model", help="openai backend: the model name the server knows (default: --model)")
    backend.add_argument("--api-key-env", help="openai backend: NAME of the environment variable with the API key")
    backend.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend (default: 1)")
    backend.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm backend on GPU (default: 0.85; on CPU the KV cache is VLLM_CPU_KVCACHE_SPACE GiB, default 1)")
    p = parser.add_argument_group("protocol")
    defaults = EvalProtocol()
    p.add_argument("--samples", type=int, default=1, help="k answers per question, accuracy averaged (default: 1)")
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy in every turn (default)")
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed (default: 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep multiple-choice options in source order")
    p.add_argument("--shuffle-seed", type=int, default=defaults.shuffle_seed, help="option-order seed (default: 0)")
    p.add_argument("--max-turns", type=int, help="assistant turns per trajectory (default: the recipe's loop)")
    p.add_argument("--min-pixels", type=int, help="main image budget, min (default: the recipe's)")
    p.add_argument("--max-pixels", type=int, help="main image budget, max (default: the recipe's)")
    p.add_argument("--crop-min-pixels", type=int, help="tool image budget, min (default: the tool YAML's)")
    p.add_argument("--crop-max-pixels", type=int, help="tool image budget, max (default: the tool YAML's)")
    p.add_argument("--max-response-tokens", type=int, default=defaults.max_response_tokens, help="all turns together (default: %(default)s)")
    p.add_argument("--max-prompt-tokens", type=int, default=defaults.max_prompt_tokens, help="(default: %(default)s)")
    p.add_argument("--scoring", default="rules", choices=["rules", "judge"], help="rules, or the recipe's judge (default: rules)")
    p.add_argument("--judge-base-url", help="scoring=judge: OpenAI-compatible endpoint of the judge")
    p.add_argument("--judge-model", help="scoring=judge: the judge model name")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=16, help="trajectories in flight together (default: 16)")
    run.add_argument("--limit", type=int, help="first N rows of each data file")
    run.add_argument("--no-images", action="store_true", help="do not save display images for `visionr3 view`")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides on the recipe config")


def settings_from_args(args: argparse.Namespace):
    from visionr3.eval.runner import EvalSettings

    overrides = list(args.overrides)
    for value in overrides:
        if "=" not in value:
            raise SystemExit(f"visionr3 eval: {value!r} is not a key=value override")
    if args.judge_base_url:
        overrides.append(f"visionr3.reward.judge.base_url={args.judge_base_url}")
    if args.judge_model:
        overrides.append(f"visionr3.reward.judge.model={args.judge_model}")
    protocol = EvalProtocol(
        recipe=args.recipe, samples=args.samples, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, shuffle_options=not args.no_shuffle, shuffle_seed=args.shuffle_seed, max_turns=args.max_turns,
        max_response_tokens=args.max_response_tokens, max_prompt_tokens=args.max_prompt_tokens,
        min_pixels=args.min_pixels, max_pixels=args.max_pixels, crop_min_pixels=args.crop_min_pixels,
        crop_max_pixels=args.crop_max_pixels, scoring=args.scoring, backend=args.backend,
        extra={"config_name": args.config_name, "overrides": [o for o in overrides if "api_key" not in o.lower()]},
    )
    return EvalSettings(
        model=args.model, out=args.out, protocol=protocol, data=list(args.data), config_name=args.config_name,
        overrides=overrides, batch_size=args.batch_size, limit=args.limit, base_url=args.base_url,
        served_model=args.served_model, api_key_env=args.api_key_env, tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization, save_images=not args.no_images, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from visionr3.eval.runner import EvalError, Evaluator
    from visionr3.eval.summary import render_table, summarize, write_summary

    try:
        settings = settings_from_args(args)
        with Evaluator(settings) as evaluator:
            records = evaluator.run()
            protocol = evaluator.protocol.as_dict()
    except (EvalError, ValueError) as exc:
        print(f"visionr3 eval: {exc}", file=sys.stderr)
        return 2
    json_path, md_path = write_summary(records, settings.out, protocol)
    print(render_table(summarize(records)))
    errors = sum(1 for r in records if r.error)
    print(f"\n{len(records)} records in {settings.out} ({errors} failed); summary: {md_path}, {json_path}")
    return 0


__all__ = ["configure", "run", "settings_from_args"]
