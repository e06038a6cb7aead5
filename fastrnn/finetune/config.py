"""TrainConfig: every option of a training run (the CLI's `train` flags, one field each)."""

from __future__ import annotations

import dataclasses

from .data import Columns
from .errors import OptionError

METRICS = ("accuracy", "f1", "f1_macro", "loss")
PRECISIONS = ("auto", "bf16", "fp32")

# Options that may differ between a run and its --resume: they do not change the training trajectory.
RESUMABLE_CHANGES = frozenset({
    "output", "max_steps", "save_every", "log_every", "progress", "tensorboard", "num_workers",
    "device", "eval_batch_size", "keep_checkpoint",
})


@dataclasses.dataclass
class TrainConfig:
    train: str
    output: str
    # data
    dev: str | None = None
    dev_fraction: float = 0.1  # held out of --train when no --dev is given (0: no dev set)
    text_column: str | None = None
    label_column: str | None = None
    pair_column: str | None = None
    file_format: str | None = None
    limit: int | None = None  # first N rows of the training file
    dev_limit: int | None = None  # first N rows of the dev file (default: same as limit)
    max_length: int = 128
    bucket_by_length: bool = False
    # model
    encoder: str | None = None
    tokenizer: str | None = None
    head: str = "lstm"
    pooling: str | None = None
    hidden_size: int = 256
    num_layers: int = 1
    bidirectional: bool = True
    rnn_dropout: float = 0.0
    dropout: float = 0.1
    backend: str = "auto"
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_encoder: bool = False
    # optimisation
    epochs: int = 3
    batch_size: int = 32
    gradient_accumulation_steps: int = 1  # batches per optimizer step: it sees batch_size x this examples
    eval_batch_size: int = 64
    encoder_lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    layer_lr_decay: float = 1.0  # encoder layer i of L trains at encoder_lr * this**(L-1-i); 1: no decay
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_ratio
    ema_decay: float = 0.0  # evaluate and keep an exponential moving average of the weights (e.g. 0.999); 0: off
    max_grad_norm: float = 1.0  # 0: no clipping
    seed: int = 42
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    # stopping and bookkeeping
    max_steps: int | None = None  # stop after this many optimizer steps in all; the schedule still spans --epochs
    metric: str = "accuracy"
    patience: int | None = 2  # epochs without dev improvement before stopping; None: never stop early
    eval_every: int = 0  # steps between dev evaluations inside an epoch (each can become the kept model); 0: epoch ends only
    save_every: int = 500  # steps between checkpoints (also written each epoch and on stop); 0: epochs only
    keep_checkpoint: bool = True  # False: delete checkpoint.pt once training completes or stops early
    log_every: int = 20
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise OptionError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise OptionError(f"layer_lr_decay must be in (0, 1] (1: no decay), got {self.layer_lr_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise OptionError(f"ema_decay must be in [0, 1) (0: no moving average), got {self.ema_decay}")
        if self.eval_every < 0:
            raise OptionError(f"eval_every must be >= 0 (0: evaluate at epoch ends only), got {self.eval_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise OptionError(f"max_steps must be at least 1, got {self.max_steps}")

    @property
    def columns(self) -> Columns:
        return Columns(self.text_column, self.label_column, self.pair_column)

    def head_options(self) -> dict:
        """The BertRNNClassifier keyword arguments this run builds its model with."""
        names = ("head", "pooling", "hidden_size", "num_layers", "bidirectional", "rnn_dropout", "dropout",
                 "backend", "freeze_embeddings", "freeze_layers", "freeze_encoder")
        return {name: getattr(self, name) for name in names}

    def differences(self, saved: dict) -> dict[str, tuple]:
        """Options that differ from a checkpoint's and would change the training trajectory."""
        current = dataclasses.asdict(self)
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        # an option newer than the checkpoint counts as its default there (it did not exist, so it was off)
        return {name: (saved.get(name, defaults[name]), value) for name, value in current.items()
                if name not in RESUMABLE_CHANGES and saved.get(name, defaults[name]) != value}
