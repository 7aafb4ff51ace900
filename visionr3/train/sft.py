"""``visionr3 sft``: cold-start SFT on interleaved image reasoning with verl's own SFT trainer — a front, not a copy.

    visionr3 sft --config-name sft_cpu model.path=<tiny model> data.train_files=rows.parquet      # CPU, one process
    visionr3 sft --nproc-per-node 8 model.path=Qwen/Qwen2.5-VL-7B-Instruct data.train_files=vlir.parquet  # 8 GPUs
    visionr3 sft --nnodes 2 --nproc-per-node 8 --rdzv-endpoint head:29500 ...                     # each node runs this

Rows are verl's multi-turn SFT parquet; ``visionr3 prepare vlir`` (VLM-R3's VLIR json) and ``visionr3 prepare
sr1_coldstart`` (Vision-SR1's LLaMA-Factory json) write it (:mod:`visionr3.data.sft_rows`). The config is
``configs/sft_trainer.yaml`` (GPU) or ``configs/sft_cpu.yaml``, composed on verl's ``sft_trainer_engine`` with
Hydra overrides after the options. What runs is ``verl.trainer.sft_trainer.run_sft``: verl's engine-based trainer
(FSDP2 engine, loss on ``loss_mask``, verl's checkpoint handler), fed by
:class:`visionr3.data.sft_dataset.VisionSFTDataset` through verl's ``data.custom_cls`` hook. Its checkpoints are
verl FSDP checkpoints: ``visionr3 merge`` / ``python -m verl.model_merger merge --backend fsdp`` turns
``<trainer.default_local_dir>/global_step_N`` into a Hugging Face directory.

Why a front at all: verl's trainer is SPMD and expects torchrun's environment. One process (the CPU case, or a
debugging run) gets that environment here and runs in this process; more processes are started by torchrun
(``python -m torch.distributed.run``), each running ``python -m visionr3.train.sft`` with the same Hydra arguments. A file
logger is added so the command can end with a one-line summary (steps, loss, checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from visionr3.platform import free_port

DEFAULT_CONFIG = "sft_trainer"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default=DEFAULT_CONFIG, help="config under configs/ (sft_trainer, sft_cpu)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="training processes per node (GPUs per node)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes; run the same command on each")
    parser.add_argument("--rdzv-endpoint", default=None, help="host:port of the rendezvous (multi-node torchrun)")
    parser.add_argument("--cfg", choices=["job", "hydra", "all"], default=None,
                        help="print the composed config instead of training (Hydra's --cfg)")
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    parser.add_argument("hydra_args", nargs=argparse.REMAINDER,
                        help="Hydra overrides, e.g. model.path=... data.train_files=...")


PRINTING_FLAGS = frozenset({"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc"})
"""Hydra's flags that print something and train nothing. Written after the overrides they reach Hydra inside
``hydra_args`` rather than as our ``--cfg``; either way they run in this process, never through torchrun."""


def prints_only(hydra_args: list[str]) -> bool:
    """``hydra_args`` ask Hydra to print (the composed config, its info or help) rather than to train."""
    return any(arg.split("=", 1)[0] in PRINTING_FLAGS for arg in hydra_args)


def run(args: argparse.Namespace) -> int:
    hydra_args = [a for a in args.hydra_args if a != "--"]
    if args.cfg:
        hydra_args = ["--cfg", args.cfg, *(["--resolve"] if args.resolve else []), *hydra_args]
    if prints_only(hydra_args):
        return main(["--config-name", args.config_name, *hydra_args])
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise SystemExit("visionr3 sft: --nproc-per-node and --nnodes must be at least 1")
    if args.nproc_per_node * args.nnodes == 1 and not args.rdzv_endpoint:
        return main(["--config-name", args.config_name, *hydra_args])
    return launch_torchrun(args.config_name, hydra_args, args.nproc_per_node, args.nnodes, args.rdzv_endpoint)


def torchrun_command(config_name: str, hydra_args: list[str], nproc_per_node: int, nnodes: int = 1,
                     rdzv_endpoint: str | None = None) -> list[str]:
    """The torchrun command line that runs ``python -m visionr3.train.sft`` on every rank of this node."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
               f"--nnodes={nnodes}"]
    if rdzv_endpoint:
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        command += ["--standalone"]
    return [*command, "-m", "visionr3.train.sft", "--config-name", config_name, *hydra_args]


def launch_torchrun(config_name: str, hydra_args: list[str], nproc_per_node: int, nnodes: int,
                    rdzv_endpoint: str | None) -> int:
    command = torchrun_command(config_name, hydra_args, nproc_per_node, nnodes, rdzv_endpoint)
    print("visionr3 sft: " + " ".join(command), flush=True)
    return subprocess.call(command)


def single_process_env() -> dict[str, str]:
    """torchrun's environment for a world of one process (only the variables that are not set already)."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    if "MASTER_PORT" not in os.environ:
        env["MASTER_PORT"] = str(free_port())
    return env


def run_config(config) -> dict:
    """Run verl's SFT trainer on a composed config in this process (one rank); returns the run's summary."""
    from verl.trainer.sft_trainer import run_sft
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    out_dir = Path(config.trainer.default_local_dir)
    metrics_file = None
    if "file" in list(config.trainer.logger):
        metrics_file = Path(os.environ.setdefault("VERL_FILE_LOGGER_PATH", str(out_dir / "metrics.jsonl")))
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
    run_sft(config)
    summary = {"checkpoint_dir": str(out_dir), "metrics_file": str(metrics_file) if metrics_file else None}
    if metrics_file is not None and int(os.environ.get("RANK", "0")) == 0 and metrics_file.exists():
        losses = [row["data"]["train/loss"] for row in map(json.loads, metrics_file.read_text().splitlines())
                  if row.get("data", {}).get("train/loss") is not None]
        summary.update(steps=len(losses), first_loss=losses[0] if losses else None,
                       last_loss=losses[-1] if losses else None)
    steps = sorted(out_dir.glob("global_step_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    summary["last_checkpoint"] = str(steps[-1]) if steps else None
    summary["total_training_steps"] = config.trainer.total_training_steps
    return summary


def format_summary(summary: dict) -> str:
    """The command's last line: steps, loss, and the checkpoint to merge (or why there is none)."""
    loss = ""
    if summary.get("first_loss") is not None:
        loss = f", loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}"
    if summary.get("last_checkpoint"):
        last = summary["last_checkpoint"]
        checkpoint = f"checkpoint {last} (to Hugging Face: visionr3 merge {last} <dir>)"
    else:
        # verl saves at its last step and every trainer.save_freq steps; a total_training_steps beyond the data's
        # epochs is never reached, and verl then ends without saving.
        checkpoint = (f"no checkpoint in {summary['checkpoint_dir']}: verl saves at trainer.total_training_steps "
                      f"({summary.get('total_training_steps')}) and every trainer.save_freq steps")
    return f"visionr3 sft: {summary.get('steps', '?')} steps{loss}; {checkpoint}"


def main(argv: list[str]) -> int:
    """Hydra's command line (``--config-name``, overrides) for one rank; sets up a one-process world if needed."""
    import visionr3.plugin  # noqa: F401  (CPU platform, processor runtime and resolvers in this process too)
    from visionr3.config import config_path, run_hydra

    result: dict = {}

    def train(config) -> None:  # Hydra calls it only to train: `--cfg job` prints and sets up nothing
        if "RANK" not in os.environ:  # not started by torchrun: a world of one process
            os.environ.update(single_process_env())
        result.update(run_config(config))

    run_hydra("visionr3 sft", config_path(), DEFAULT_CONFIG, argv, train)
    if int(os.environ.get("RANK", "0")) == 0 and result:
        print(format_summary(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
