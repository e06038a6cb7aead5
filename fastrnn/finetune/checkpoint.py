"""Crash-safe files: atomic writes, training checkpoints, and the random-number state they carry."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def atomic_write(path: Path, write) -> None:
    """Call write(temp_path) for a temp file in path's folder, then move it over `path`: a reader
    (or a resumed run after a kill) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb+") as flushed:
            os.fsync(flushed.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(value, indent=2) + "\n"))


def replace_directory(path: Path, write) -> None:
    """Call write(temp_dir) for a fresh folder beside `path`, then swap it in for `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(temp)
        os.chmod(temp, 0o777 & ~_umask())
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(temp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def give_usual_permissions(folder: Path) -> None:
    """Every file under `folder` readable as a file created by open() would be (0666 less the umask):
    some writers (safetensors' save_file, mkstemp) make their files private to their owner."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(directory: Path, state: dict) -> Path:
    path = directory / CHECKPOINT_FILE
    atomic_write(path, lambda temp: torch.save({"format": CHECKPOINT_FORMAT, **state}, temp))
    return path


def load_checkpoint(directory: Path) -> dict:
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        # Holds RNG states, the data order and run options besides tensors; written by this program.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')}; this fastrnn reads {CHECKPOINT_FORMAT}")
    return state


def rng_state() -> dict:
    """Every random-number generator training draws from (dropout uses torch's)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    try:
        import numpy
    except ImportError:
        pass
    else:
        state["numpy"] = numpy.random.get_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed % 2**32)
