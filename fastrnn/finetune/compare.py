"""Train the fastrnn head, the same head on torch's nn.LSTM/nn.GRU code, and the linear baseline with
the same data, seed and settings, and tabulate dev accuracy, F1 and time."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import torch

from . import distributed
from .checkpoint import CHECKPOINT_FILE, write_json
from .config import TrainConfig
from .errors import CheckpointError
from .tracking import METRICS_FILE
from .train import TrainResult, train

# dev accuracy/F1: the kept model's; last accuracy: the weights the run ended with
COLUMNS = ("variant", "rnn backend", "dev accuracy", "dev F1", "kept step", "last accuracy", "s/epoch", "ms/step", "steps")


def variants(config: TrainConfig, linear_pooling: str = "cls") -> list[tuple[str, TrainConfig]]:
    """(name, config) of the three runs, each in its own folder under config.output."""
    base = Path(config.output)
    rnn = config.head if config.head != "linear" else "lstm"
    torch_name = "nn.LSTM" if rnn == "lstm" else "nn.GRU"
    return [
        (f"fastrnn {rnn.upper()} head (backend={config.backend})",
         dataclasses.replace(config, head=rnn, output=str(base / f"fastrnn-{rnn}"))),
        (f"{torch_name} head (backend=aten)",
         dataclasses.replace(config, head=rnn, backend="aten", output=str(base / f"aten-{rnn}"))),
        (f"linear head ({linear_pooling} pooling)",
         dataclasses.replace(config, head="linear", pooling=linear_pooling, output=str(base / "linear"))),
    ]


def compare(config: TrainConfig, *, linear_pooling: str = "cls", overwrite: bool = False, resume: bool = False,
            context: distributed.Context | None = None) -> list[dict]:
    """Run every variant; the main process writes compare.json and compare.md to config.output.

    resume: each variant whose folder holds a run continues it (train's --resume), the others start.
    An interrupted variant ends the comparison there (its row last, no table): resume it to go on."""
    ctx = context or distributed.setup(config.device)
    runs = variants(config, linear_pooling)
    if resume and not any(_holds_run(variant) for _, variant in runs):
        raise CheckpointError(f"nothing to resume: no run of the comparison in {config.output} has started "
                              "(start without --resume)")
    rows = []
    for name, variant in runs:
        if ctx.is_main:
            print(f"== {name}", flush=True)
        result = train(variant, resume=resume and _holds_run(variant), overwrite=overwrite, context=ctx)
        rows.append(summarise(name, result))
        if result.stopped == "interrupted":
            return rows
    if ctx.is_main:
        output = Path(config.output)
        write_json(output / "compare.json", {"rows": rows, "environment": environment(ctx), "config": dataclasses.asdict(config)})
        (output / "compare.md").write_text(markdown_table(rows) + "\n")
        print(markdown_table(rows))
    return rows


def _holds_run(variant: TrainConfig) -> bool:
    folder = Path(variant.output)
    return (folder / CHECKPOINT_FILE).is_file() or (folder / METRICS_FILE).is_file()


def summarise(name: str, result: TrainResult) -> dict:
    """One table row: dev metrics of the model the run kept (which --eval-every may have taken inside an epoch)
    and of the run's last weights, and its training time per epoch and per step."""
    full = [record for record in result.history if not record["partial"]]
    timed = full or result.history  # a run stopped inside its first epoch is timed on that partial epoch
    last = (result.history[-1] if result.history else {}).get("dev") or {}
    kept = kept_evaluation(result)
    dev = kept["dev"] if kept else last  # no evaluation kept a model (stopped before any): the last weights
    steps = sum(record["steps"] for record in timed)
    seconds = sum(record["seconds"] for record in timed)
    return {
        "variant": name,
        "rnn backend": result.rnn_backend or "-",
        "dev accuracy": dev.get("accuracy"),
        "dev F1": dev.get("f1"),
        "kept step": kept["global_step"] if kept else result.global_step,
        "last accuracy": last.get("accuracy"),
        "s/epoch": seconds / len(timed) if timed else None,
        "partial epoch": not full,
        "ms/step": 1000 * seconds / steps if steps else None,
        "steps": result.global_step,
        "stopped": result.stopped,
        "output": str(result.output),
    }


def kept_evaluation(result: TrainResult) -> dict | None:
    """The dev evaluation whose model the run kept as model/ (None before any evaluation)."""
    if result.best is None:
        return None
    return next((evaluation for evaluation in result.evaluations
                 if evaluation["global_step"] == result.best["global_step"] and evaluation["epoch"] == result.best["epoch"]),
                None)


def markdown_table(rows: list[dict]) -> str:
    def cell(row: dict, column: str) -> str:
        value = row[column]
        if value is None:
            return "-"
        if column.startswith("dev") or column == "last accuracy":
            return f"{value:.4f}"
        if column == "s/epoch":
            return f"{value:.2f}{' (partial)' if row['partial epoch'] else ''}"
        if column == "ms/step":
            return f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(row, column) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def environment(ctx: distributed.Context) -> dict:
    return {"device": str(ctx.device), "gpu": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None,
            "world_size": ctx.world_size, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}
