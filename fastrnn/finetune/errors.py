"""Errors the user can fix: the CLI prints their message as one line and exits with status 2."""

from __future__ import annotations


class FinetuneError(Exception):
    """A problem with the inputs (paths, data, options, checkpoints) rather than a bug."""


class EncoderNotFoundError(FinetuneError, RuntimeError):
    """No encoder could be loaded; the message lists what was tried and how to fix it."""


class DataError(FinetuneError, ValueError):
    """A data file is missing, unreadable or lacks the expected columns or labels."""


class CheckpointError(FinetuneError, RuntimeError):
    """A checkpoint or saved model is missing, incompatible with the options, or corrupt."""


class OptionError(FinetuneError, ValueError):
    """An option value that cannot work (unknown choice, out of range, contradicting another)."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (without a final full stop), for a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__
