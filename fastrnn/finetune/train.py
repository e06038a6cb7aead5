"""The training loop: epochs of AdamW steps, dev evaluation, early stopping, checkpoints and exact resume.

Exact resume: the batches of every epoch are a pure function of (seed, epoch, rank, world size) and
are stored in each checkpoint with the model, optimizer, scheduler, every RNG state and the position
in the epoch, so a run stopped after step k and resumed computes what an uninterrupted run would.

Gradient accumulation: an optimizer step takes `gradient_accumulation_steps` consecutive batches of the
epoch's plan (the epoch's last step takes what is left), and its gradient is that of their examples'
mean loss, as one batch of all of them would give. Runs stop, checkpoint and resume only between
optimizer steps: a stop asked for during the accumulation of a step takes effect once that step is done."""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .batching import TokenizingCollator, epoch_batches, token_lengths
from .checkpoint import (CHECKPOINT_FILE, load_checkpoint, replace_directory, rng_state, save_checkpoint,
                         seed_everything, set_rng_state)
from .config import TrainConfig
from .data import TextDataset, check_dev_labels, label_names_of, read_table, split_off
from .encoder import load_tokenizer, resolve_encoder_source
from .errors import CheckpointError
from .inference import MODEL_INPUTS, autocast_for, evaluate, move
from .model import BertRNNClassifier
from .optim import build_optimizer, build_scheduler
from .stopping import StopRequest
from .tracking import METRICS_FILE, RunLog, describe_epoch, describe_evaluation

MODEL_DIR = "model"


@dataclasses.dataclass
class TrainResult:
    output: Path
    stopped: str  # completed | early_stopping | max_steps | interrupted | already_finished
    global_step: int
    history: list[dict]  # one record per epoch (the last one marked partial when stopped mid-epoch)
    best: dict | None  # {"epoch", "metric", "value", "global_step"} of the best dev evaluation
    evaluations: list[dict]  # every dev evaluation: {"epoch", "step_in_epoch", "global_step", "dev"}
    rnn_backend: str | None  # the backend the RNN head ran on (None for the linear head)
    metrics_path: Path


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          context: distributed.Context | None = None) -> TrainResult:
    """Train (or resume) a run into config.output; see the module docstring and TrainConfig."""
    return Trainer(config, context or distributed.setup(config.device), resume=resume, overwrite=overwrite).run()


def _fresh_progress() -> dict:
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "epoch_seconds": 0.0, "epoch_loss_sum": 0.0,
            "history": [], "evaluations": [], "best": None, "bad_epochs": 0, "finished": None, "model_holds": None}


class Trainer:
    def __init__(self, config: TrainConfig, ctx: distributed.Context, *, resume: bool, overwrite: bool) -> None:
        self.config, self.ctx = config, ctx
        self.output = Path(config.output)
        saved = self._saved_state(resume, overwrite)
        seed_everything(config.seed)

        train_table, dev_table = self._read_tables()
        self.labels = saved["labels"] if saved else label_names_of(train_table.labels)
        if dev_table is not None:
            check_dev_labels(dev_table.labels, self.labels, config.dev or f"the dev set held out of {config.train}",
                             config.train)
        self.train_set = TextDataset(train_table, self.labels)
        self.dev_set = TextDataset(dev_table, self.labels) if dev_table else None
        self.model = BertRNNClassifier(config.encoder, labels=self.labels, **config.head_options()).to(ctx.device)
        self.tokenizer = tokenizer = load_tokenizer(config.tokenizer or config.encoder)
        self.collator = TokenizingCollator(tokenizer, config.max_length)
        self.train_lengths = token_lengths(tokenizer, train_table, config.max_length) if config.bucket_by_length else None
        self.dev_lengths = token_lengths(tokenizer, dev_table, config.max_length) if dev_table else None

        self.steps_per_epoch = self._steps_in(self._plan(0))
        self.total_steps = config.epochs * self.steps_per_epoch
        warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * self.total_steps)
        self.optimizer = build_optimizer(self.model, config.encoder_lr, config.head_lr, config.weight_decay,
                                         config.layer_lr_decay)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # --ema-decay: an exponential moving average of the weights, updated after every step; it is what
        # dev evaluation scores and what model/ holds (the raw weights stay in the checkpoint for resuming)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
                    if config.ema_decay else None)
        self.progress = _fresh_progress()
        self.saved_plan: list[list[int]] | None = None
        if saved:
            self._restore(saved)
        self.net = (DistributedDataParallel(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
                    if ctx.distributed else self.model)
        if ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.output, enabled=ctx.is_main, tensorboard=config.tensorboard)
        if saved:
            set_rng_state(saved["rng"][ctx.rank])  # last: nothing above may draw from the restored streams

    # --- setup -----------------------------------------------------------------------------------

    def _saved_state(self, resume: bool, overwrite: bool) -> dict | None:
        """The checkpoint to resume from (checked against the options), or None for a fresh run."""
        has_checkpoint = (self.output / CHECKPOINT_FILE).is_file()
        finished_without_checkpoint = not has_checkpoint and (self.output / METRICS_FILE).is_file()
        if not resume:
            if (has_checkpoint or finished_without_checkpoint) and not overwrite:
                raise CheckpointError(f"{self.output} already holds a run; continue it with --resume, "
                                      "or start afresh with --overwrite (or another --output)")
            return None
        if finished_without_checkpoint:
            raise CheckpointError(f"nothing to resume in {self.output}: it holds a run's {METRICS_FILE} and "
                                  f"{MODEL_DIR}/ but no {CHECKPOINT_FILE} (deleted at the end by --no-keep-checkpoint); "
                                  "start afresh with --overwrite (or another --output)")
        saved = load_checkpoint(self.output)
        changed = self.config.differences(saved["config"])
        if changed:
            described = ", ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in sorted(changed.items()))
            raise CheckpointError(f"cannot resume {self.output}: options differ from the checkpoint's ({described}); "
                                  "resume with the original options (only --max-steps and bookkeeping flags may change)")
        if saved["world_size"] != self.ctx.world_size:
            raise CheckpointError(f"the checkpoint was written by {saved['world_size']} process(es); "
                                  f"resume with the same number (now {self.ctx.world_size})")
        return saved

    def _read_tables(self):
        config = self.config
        train = read_table(config.train, config.columns, limit=config.limit, file_format=config.file_format)
        if config.dev:
            dev_limit = config.dev_limit if config.dev_limit is not None else config.limit
            return train, read_table(config.dev, config.columns, limit=dev_limit, file_format=config.file_format)
        if config.dev_fraction > 0:
            return split_off(train, config.dev_fraction, config.seed)
        return train, None

    def _plan(self, epoch: int) -> list[list[int]]:
        """This process's batches for `epoch` (empty past the last epoch)."""
        if epoch >= self.config.epochs:
            return []
        return epoch_batches(len(self.train_set), self.config.batch_size, epoch=epoch, seed=self.config.seed,
                             rank=self.ctx.rank, world_size=self.ctx.world_size, lengths=self.train_lengths)

    def _steps_in(self, plan: list[list[int]]) -> int:
        """Optimizer steps an epoch of `plan`'s batches takes (the last one may accumulate fewer batches)."""
        return -(-len(plan) // self.config.gradient_accumulation_steps)

    def _restore(self, saved: dict) -> None:
        if saved["total_steps"] != self.total_steps:
            raise CheckpointError(f"the checkpoint planned {saved['total_steps']} steps but the data now gives "
                                  f"{self.total_steps}: the data files changed since it was written")
        self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.progress = saved["progress"]
        self.progress.setdefault("evaluations", [])  # absent from checkpoints written before --eval-every
        self.saved_plan = saved["plans"][self.ctx.rank]

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        p, config = self.progress, self.config
        if p["finished"]:
            self.log.print(f"{self.output}: training already finished ({p['finished']}); nothing to do")
            return self._result("already_finished", p["history"])
        if config.max_steps is not None and p["global_step"] >= config.max_steps:
            self.log.print(f"{self.output}: already at step {p['global_step']} >= --max-steps {config.max_steps}; nothing to do")
            return self._result("max_steps", p["history"])
        self.log.print(self._describe_run())
        self.log.print(f"training {len(self.train_set)} examples ({self.steps_per_epoch} steps/epoch x {config.epochs} epochs"
                       f"{f' x {self.ctx.world_size} processes' if self.ctx.distributed else ''}), dev "
                       f"{len(self.dev_set) if self.dev_set else 0} examples, on {self.ctx.device}"
                       f"{'' if not p['global_step'] else ', resuming after step %d' % p['global_step']}")
        try:
            with StopRequest() as stop:
                return self._run_epochs(stop)
        finally:
            self.log.close()

    def _describe_run(self) -> str:
        """Where the run goes and what it trains: folder, encoder, head, and the RNN backend that will run."""
        config, head = self.config, self.model.config
        if self.model.rnn is None:
            head_text = f"linear head ({head.pooling} pooling)"
        else:
            rnn = self.model.rnn
            shape = f"{'bidirectional ' if rnn.bidirectional else ''}{head.head.upper()}, {rnn.num_layers} layer(s) of {rnn.hidden_size}"
            head_text = f"{shape}, {head.pooling} pooling; RNN backend {self._rnn_backend_to_run()} (asked: {rnn.backend})"
        return (f"run folder {self.output}; encoder {resolve_encoder_source(config.encoder)}; head: {head_text}")

    def _rnn_backend_to_run(self) -> str:
        """What the head's RNN will run on: its choice for the input it gets (packed real tokens of the
        encoder's output, under the run's autocast), asked with a one-token probe."""
        rnn = self.model.rnn
        weight = next(rnn.parameters())
        probe = PackedSequence(weight.new_zeros(1, rnn.input_size), torch.ones(1, dtype=torch.long))
        with autocast_for(self.ctx.device, self.config.precision):
            return rnn.selected_backend(self.ctx.device, probe)

    def _run_epochs(self, stop: StopRequest) -> TrainResult:
        p = self.progress
        while p["epoch"] < self.config.epochs:
            plan = self._plan(p["epoch"])
            if self.saved_plan is not None and self.saved_plan != plan:
                raise CheckpointError("the batch order differs from the checkpoint's: the data files, --limit or the "
                                      "batching options changed since it was written")
            self.saved_plan = None
            reason = self._train_epoch(plan, stop)
            if reason:
                return self._stop_mid_epoch(reason, plan)
            reason = self._end_epoch()
            if stop.requested and not reason:
                reason = "interrupted"
            if reason:
                return self._finish(reason, p["history"])
        return self._finish("completed", p["history"])

    def _train_epoch(self, plan: list[list[int]], stop: StopRequest) -> str | None:
        """Steps through the rest of the epoch; returns why it stopped early, or None at the epoch's end."""
        p, config = self.progress, self.config
        accumulate, steps = config.gradient_accumulation_steps, self._steps_in(plan)
        self.model.train()
        loader = DataLoader(self.train_set, batch_sampler=plan[p["step_in_epoch"] * accumulate:],
                            collate_fn=self.collator, num_workers=config.num_workers,
                            pin_memory=self.ctx.device.type == "cuda",
                            generator=torch.Generator())  # its own generator: never draws from the global RNG
        bar = tqdm(total=steps, initial=p["step_in_epoch"], desc=f"epoch {p['epoch'] + 1}/{config.epochs}",
                   disable=not (self.ctx.is_main and config.progress), dynamic_ncols=True, leave=False)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        window_loss, window_steps = torch.zeros((), dtype=torch.float64, device=self.ctx.device), 0
        self._start_clock()
        with bar:
            for batches in _groups_of(loader, accumulate):
                loss = self._step(batches)
                p["global_step"] += 1
                p["step_in_epoch"] += 1
                self.loss_sum += loss
                window_loss += loss
                window_steps += 1
                bar.update(1)
                if window_steps == config.log_every:
                    self._log_training(bar, window_loss.item() / window_steps)
                    window_loss.zero_()
                    window_steps = 0
                mid_epoch = p["step_in_epoch"] < steps
                reason = self._stop_reason(stop)
                if reason and mid_epoch:
                    return reason
                if mid_epoch and config.eval_every and p["global_step"] % config.eval_every == 0:
                    self._evaluate_mid_epoch(plan)  # checkpoints as well
                elif mid_epoch and config.save_every and p["global_step"] % config.save_every == 0:
                    self._lap()
                    self._save_checkpoint(plan)
        return None

    def _step(self, batches: list[dict]) -> torch.Tensor:
        """One optimizer step on the gradient of the mean loss over all examples of `batches`; returns that loss."""
        examples = sum(len(batch["labels"]) for batch in batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.ctx.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            # DDP all-reduces gradients on every backward unless told not to: once per step is enough
            with self.net.no_sync() if self.ctx.distributed and not last else nullcontext():
                share = self._loss_share(move(batch, self.ctx.device), examples)
                share.backward()
            loss += share.detach()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss

    def _loss_share(self, batch: dict, examples: int) -> torch.Tensor:
        """This batch's part of the step's mean loss: its examples' summed cross-entropy over the step's `examples`."""
        with autocast_for(self.ctx.device, self.config.precision):
            logits = self.net(**{name: batch[name] for name in MODEL_INPUTS if name in batch})
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum") / examples

    def _stop_reason(self, stop: StopRequest) -> str | None:
        requested = stop.requested
        if self.ctx.distributed:  # every process must stop at the same step, or DDP's next all-reduce hangs
            flag = torch.tensor([int(requested)], device=self.ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            return "interrupted"
        if self.config.max_steps is not None and self.progress["global_step"] >= self.config.max_steps:
            return "max_steps"
        return None

    def _log_training(self, bar, loss: float) -> None:
        lrs = {}  # each part's highest rate (the encoder's top layer under --layer-lr-decay)
        for group in self.optimizer.param_groups:
            part = group["name"].split("/")[0]  # "encoder" or "head" (optim.parameter_groups)
            lrs[part] = max(lrs.get(part, 0.0), group["lr"])
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if bar.disable:  # without a progress bar (--no-progress, logs to a file) report progress as lines
            rates = ", ".join(f"lr/{name} {lr:.2e}" for name, lr in lrs.items())
            self.log.print(f"step {self.progress['global_step']}: train loss {loss:.4f}, {rates}")
        self.log.scalars(self.progress["global_step"], {"train/loss": loss, **{f"lr/{name}": lr for name, lr in lrs.items()}})

    # --- timing ----------------------------------------------------------------------------------

    def _start_clock(self) -> None:
        self._sync()
        self.clock = time.perf_counter()

    def _lap(self) -> None:
        """Add the training time since the clock started to this epoch's, and fold in the loss sum."""
        self._sync()
        now = time.perf_counter()
        self.progress["epoch_seconds"] += now - self.clock
        self.progress["epoch_loss_sum"] += self.loss_sum.item()
        self.loss_sum.zero_()
        self.clock = now

    def _sync(self) -> None:
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)

    # --- epoch ends, stops, evaluation -----------------------------------------------------------

    def _epoch_record(self, partial: bool) -> dict:
        p = self.progress
        steps = p["step_in_epoch"]
        return {"epoch": p["epoch"] + 1, "partial": partial, "steps": steps, "global_step": p["global_step"],
                "seconds": p["epoch_seconds"], "ms_per_step": 1000 * p["epoch_seconds"] / max(steps, 1),
                "train_loss": p["epoch_loss_sum"] / max(steps, 1)}

    def _end_epoch(self) -> str | None:
        """Evaluate, keep the best model, decide on early stopping, checkpoint. Returns why to stop, if so."""
        p, config = self.progress, self.config
        self._lap()
        record = self._epoch_record(partial=False)
        record["dev"] = self._evaluate()
        p["history"].append(record)
        reason = None
        if record["dev"] is None:
            self._save_model(f"epoch {record['epoch']}, the latest (no dev set)")
        else:
            self._record_evaluation(record["dev"], at_epoch_end=True)
            if p["best"]["epoch"] == record["epoch"]:  # its end, or an evaluation inside it, improved on the best
                p["bad_epochs"] = 0
            else:
                p["bad_epochs"] += 1
                if config.patience is not None and p["bad_epochs"] >= config.patience and record["epoch"] < config.epochs:
                    reason = "early_stopping"
        if record["epoch"] == config.epochs:
            reason = "completed"
        elif not reason and config.max_steps is not None and p["global_step"] >= config.max_steps:
            reason = "max_steps"
        p.update(epoch=p["epoch"] + 1, step_in_epoch=0, epoch_seconds=0.0, epoch_loss_sum=0.0)
        if reason in ("completed", "early_stopping"):
            p["finished"] = reason
        self._save_checkpoint(self._plan(p["epoch"]))
        self.log.print(describe_epoch(record, config.metric))
        self.log.scalars(p["global_step"], _epoch_scalars(record))
        self.log.write_metrics(self._summary("running", p["history"]))
        return reason

    def _evaluate_mid_epoch(self, plan: list[list[int]]) -> None:
        """A dev evaluation between two steps (--eval-every). It is checkpointed at once, so that a resumed run
        agrees with model/ on which evaluation is the best."""
        self._lap()  # evaluating is not training time
        dev = self._evaluate()
        improved = self._record_evaluation(dev, at_epoch_end=False)
        self.log.print(describe_evaluation(self.progress["evaluations"][-1], self._steps_in(plan), self.config.metric,
                                           best=improved))
        self.log.scalars(self.progress["global_step"], _dev_scalars(dev))
        self._save_checkpoint(plan)

    def _record_evaluation(self, dev: dict, *, at_epoch_end: bool) -> bool:
        """Adds a dev evaluation to the run's curve; when it beats the best so far, it becomes the kept model."""
        p, metric = self.progress, self.config.metric
        epoch = p["epoch"] + 1
        p["evaluations"].append({"epoch": epoch, "step_in_epoch": p["step_in_epoch"], "global_step": p["global_step"],
                                 "dev": dev})
        if not self._improves(dev):
            return False
        p["best"] = {"epoch": epoch, "metric": metric, "value": dev[metric], "global_step": p["global_step"]}
        where = f"epoch {epoch}" if at_epoch_end else f"epoch {epoch} at step {p['global_step']}"
        self._save_model(f"{where}, best dev {metric}")
        return True

    def _stop_mid_epoch(self, reason: str, plan: list[list[int]]) -> TrainResult:
        p = self.progress
        self._lap()
        self._save_checkpoint(plan)
        record = self._epoch_record(partial=True)
        if reason == "max_steps":
            record["dev"] = self._evaluate()
            if p["model_holds"] is None:  # no epoch has ended yet: keep this model until one does
                self._save_model(f"step {p['global_step']}, stopped by --max-steps before an epoch ended")
        self.log.print(describe_epoch(record, self.config.metric))
        return self._finish(reason, [*p["history"], record])

    def _improves(self, dev: dict) -> bool:
        best = self.progress["best"]
        if best is None:
            return True
        value = dev[self.config.metric]
        return value < best["value"] if self.config.metric == "loss" else value > best["value"]

    def _evaluate(self) -> dict | None:
        """Dev metrics, computed by the main process and shared with the others."""
        if self.dev_set is None:
            return None
        metrics = None
        if self.ctx.is_main:
            metrics = evaluate(self._kept_model(), self.dev_set, self.collator, batch_size=self.config.eval_batch_size,
                               device=self.ctx.device, precision=self.config.precision, lengths=self.dev_lengths)
        return self.ctx.broadcast(metrics)

    # --- writing ---------------------------------------------------------------------------------

    def _save_checkpoint(self, plan: list[list[int]]) -> None:
        """Everything a resumed run needs, written atomically by the main process (callers _lap() first)."""
        rng, plans = self.ctx.gather(rng_state()), self.ctx.gather(plan)
        if self.ctx.is_main:
            save_checkpoint(self.output, {
                "config": dataclasses.asdict(self.config), "labels": self.labels, "world_size": self.ctx.world_size,
                "total_steps": self.total_steps, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng, "plans": plans, "progress": self.progress,
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            })
        self.ctx.barrier()
        self._start_clock()  # checkpoint writing is not training time

    def _save_model(self, holds: str) -> None:
        if self.ctx.is_main:
            model = self._kept_model()
            replace_directory(self.output / MODEL_DIR, lambda folder: model.save_pretrained(folder, self.tokenizer))
        self.progress["model_holds"] = holds
        self.ctx.barrier()

    def _kept_model(self) -> BertRNNClassifier:
        """The weights dev evaluation scores and model/ holds: their moving average under --ema-decay."""
        return self.ema.module if self.ema is not None else self.model

    def _finish(self, reason: str, history: list[dict]) -> TrainResult:
        p = self.progress
        result = self._result(reason, history)
        self.log.write_metrics(self._summary(reason, history))
        if reason == "interrupted":
            self.log.print(f"interrupted at step {p['global_step']}; checkpoint in {self.output / CHECKPOINT_FILE}; "
                           "continue with the same command plus --resume")
        elif reason == "max_steps":
            self.log.print(f"stopped at --max-steps {self.config.max_steps} (step {p['global_step']} of "
                           f"{self.total_steps}); continue with --resume and a larger --max-steps (or none)")
        else:
            self.log.print(f"training {reason.replace('_', ' ')} at step {p['global_step']}; model: "
                           f"{self.output / MODEL_DIR} ({p['model_holds']})")
            if not self.config.keep_checkpoint:
                self._delete_checkpoint()
        return result

    def _delete_checkpoint(self) -> None:
        """--no-keep-checkpoint: a finished run keeps model/ and metrics.json, not the means to resume it."""
        if self.ctx.is_main:
            path = self.output / CHECKPOINT_FILE
            path.unlink(missing_ok=True)
            self.log.print(f"deleted {path} (--no-keep-checkpoint): the finished run cannot be resumed")
        self.ctx.barrier()

    def _result(self, reason: str, history: list[dict]) -> TrainResult:
        p = self.progress
        return TrainResult(self.output, reason, p["global_step"], history, p["best"], p["evaluations"],
                           self._rnn_backend(), self.output / METRICS_FILE)

    def _rnn_backend(self) -> str | None:
        rnn = self.model.rnn
        return None if rnn is None else (rnn.last_backend or rnn.selected_backend())

    def _summary(self, stopped: str, history: list[dict]) -> dict:
        p = self.progress
        return {"stopped": stopped, "global_step": p["global_step"], "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "history": history, "evaluations": p["evaluations"], "best": p["best"],
                "model": {"path": MODEL_DIR, "holds": p["model_holds"]}, "labels": self.labels,
                "rnn_backend": self._rnn_backend(), "world_size": self.ctx.world_size,
                "device": str(self.ctx.device), "config": dataclasses.asdict(self.config)}


def _groups_of(batches, size: int):
    """Consecutive lists of `size` batches (the last list may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _epoch_scalars(record: dict) -> dict[str, float]:
    return {"epoch/seconds": record["seconds"], "epoch/train_loss": record["train_loss"], **_dev_scalars(record["dev"])}


def _dev_scalars(dev: dict | None) -> dict[str, float]:
    return {f"dev/{name}": dev[name] for name in ("accuracy", "precision", "recall", "f1", "loss")} if dev else {}
