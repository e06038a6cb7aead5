"""Where a run reports: the console, TensorBoard (when it can be imported) and metrics.json."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import write_json

METRICS_FILE = "metrics.json"


class RunLog:
    """Reports of the main process; every method is a no-op elsewhere (`enabled` False)."""

    def __init__(self, output: Path, *, enabled: bool, tensorboard: bool) -> None:
        self.output = output
        self.enabled = enabled
        self.writer = _tensorboard_writer(output / "tensorboard") if enabled and tensorboard else None

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)  # keeps an open progress bar intact

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def write_metrics(self, summary: dict) -> Path:
        path = self.output / METRICS_FILE
        if self.enabled:
            write_json(path, summary)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(folder: Path):
    """A SummaryWriter, or None where torch.utils.tensorboard cannot be used (tensorboard not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except Exception:  # ImportError, or a broken tensorboard/protobuf install: logging is optional
        return None


def describe_epoch(record: dict, metric: str) -> str:
    """One console line for an epoch record."""
    text = (f"epoch {record['epoch']}{' (partial)' if record.get('partial') else ''}: {record['steps']} steps in "
            f"{record['seconds']:.1f}s ({record['ms_per_step']:.0f} ms/step), train loss {record['train_loss']:.4f}")
    if record.get("dev"):
        text += f"; {_describe_dev(record['dev'], metric)}"
    return text


def describe_evaluation(evaluation: dict, steps_in_epoch: int, metric: str, *, best: bool) -> str:
    """One console line for a dev evaluation inside an epoch (--eval-every)."""
    return (f"step {evaluation['global_step']} (epoch {evaluation['epoch']}, {evaluation['step_in_epoch']}/{steps_in_epoch}): "
            f"{_describe_dev(evaluation['dev'], metric)}{' (best so far, kept)' if best else ''}")


def _describe_dev(dev: dict, metric: str) -> str:
    """Dev accuracy, F1 and loss, plus the selection metric when it is none of those."""
    return (f"dev accuracy {dev['accuracy']:.4f}, F1 {dev['f1']:.4f}, loss {dev['loss']:.4f}"
            f"{'' if metric in ('accuracy', 'f1', 'loss') else f', {metric} {dev[metric]:.4f}'}")
