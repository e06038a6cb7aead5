"""Read labelled text from TSV/CSV/JSONL, map labels to ids, split off a dev set."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import DataError

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category")
FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass
class Columns:
    """Which columns hold the text, the optional second text (sentence pairs) and the label.
    None: the first of TEXT_COLUMNS / LABEL_COLUMNS present in the file."""

    text: str | None = None
    label: str | None = None
    pair: str | None = None


@dataclasses.dataclass
class TextTable:
    """The rows of one data file: texts, optional second texts, and labels as strings (or None)."""

    texts: list[str]
    pairs: list[str] | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: list[int]) -> "TextTable":
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return TextTable([self.texts[i] for i in indices], pick(self.pairs), pick(self.labels))


class TextDataset(Dataset):
    """Examples as dicts: index, text, optional text_pair, and label id when labels are known."""

    def __init__(self, table: TextTable, label_names: list[str] | None = None) -> None:
        self.table = table
        self.label_ids = encode_labels(table.labels, label_names) if table.labels is not None and label_names else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        example = {"index": index, "text": self.table.texts[index]}
        if self.table.pairs is not None:
            example["text_pair"] = self.table.pairs[index]
        if self.label_ids is not None:
            example["label"] = self.label_ids[index]
        return example


def read_table(path: str | Path, columns: Columns | None = None, *, limit: int | None = None,
               file_format: str | None = None, require_labels: bool = True) -> TextTable:
    """The first `limit` rows (all when None) of a TSV/CSV file with a header row, or of a JSONL file."""
    path = Path(path)
    columns = columns or Columns()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    file_format = file_format or FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise DataError(f"cannot tell the format of {path} from its suffix; pass the format (tsv, csv or jsonl)")
    with path.open(encoding="utf-8", newline="") as handle, _utf8_only(path), _any_field_size():
        rows = _jsonl_rows(handle, path) if file_format == "jsonl" else _delimited_rows(handle, path, file_format)
        records = []  # (line number, row)
        for record in rows:
            if limit is not None and len(records) >= limit:
                break
            records.append(record)
    if not records:
        raise DataError(f"{path} holds no rows")
    return _to_table(records, columns, path, require_labels)


def read_lines(path: str | Path | None) -> list[str]:
    """Texts one per line from a file, or from stdin when path is None or "-". An empty (or blank)
    line is refused: it holds no text to label, and skipping it would shift output line i away from
    input line i."""
    if path is None or str(path) == "-":
        with _utf8_only("standard input"):
            lines = [line.rstrip("\r\n") for line in sys.stdin]
        _refuse_empty_lines(lines, "standard input")
        return lines
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    with _utf8_only(path):
        lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    _refuse_empty_lines(lines, path)
    return lines


def _refuse_empty_lines(lines: list[str], source: Path | str) -> None:
    empty = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    if empty:
        count = f" ({len(empty)} empty lines in all)" if len(empty) > 1 else ""
        raise DataError(f"{source}:{empty[0]}: empty line{count}; each input line must hold a text to label: "
                        "remove the empty lines, e.g. `grep -v '^[[:space:]]*$' IN > OUT`")


@contextlib.contextmanager
def _utf8_only(source: Path | str):
    """Turns a decoding failure into a DataError that says where (for a file) and how to convert it."""
    try:
        yield
    except UnicodeDecodeError as error:
        where = ""
        if isinstance(source, Path):  # the error's offset is into one read chunk: find the byte in the file
            raw = source.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as in_file:
                line = raw.count(b"\n", 0, in_file.start) + 1
                where = f":{line}"
                error = in_file
        raise DataError(f"{source}{where} is not UTF-8 text (byte 0x{error.object[error.start]:02x} cannot be "
                        "decoded); convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`") from None


@contextlib.contextmanager
def _any_field_size():
    """Lifts the csv module's field size limit (131072 characters) while a file is read: a long
    document is a valid row (the tokenizer truncates it to --max-length tokens), not an error."""
    previous = csv.field_size_limit()
    csv.field_size_limit(_LARGEST_FIELD)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


_LARGEST_FIELD = 2**31 - 1  # the largest limit csv accepts on every platform (a C long)


def _delimited_rows(handle, path: Path, file_format: str):
    # GLUE-style TSV is unquoted: a sentence may start with a quote character, so no quote handling.
    reader = (csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if file_format == "tsv"
              else csv.reader(handle))
    try:
        yield from _numbered_rows(reader, path)
    except csv.Error as error:  # e.g. a CSV quote left open: say where, as for every other data error
        raise DataError(f"{path}:{reader.line_num}: not valid {file_format.upper()} ({error})") from None


def _numbered_rows(reader, path: Path):
    header = next(reader, None)
    if header is None:
        return
    for line_number, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{line_number}: {len(fields)} fields but the header has {len(header)} ({header})")
        yield line_number, dict(zip(header, fields))


def _jsonl_rows(handle, path: Path):
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_number}: each line must be a JSON object, got {type(row).__name__}")
        yield line_number, row


def _to_table(records: list[tuple[int, dict]], columns: Columns, path: Path, require_labels: bool) -> TextTable:
    available = list(records[0][1])
    text = _pick_column(columns.text, TEXT_COLUMNS, available, "text", path)
    label = _pick_column(columns.label, LABEL_COLUMNS, available, "label", path, required=require_labels)
    pair = _pick_column(columns.pair, (), available, "text pair", path) if columns.pair else None

    def column(name: str) -> list[str]:
        values = []
        for line_number, row in records:
            if name not in row:
                raise DataError(f"{path}:{line_number}: no column '{name}' in this row")
            values.append(_as_text(row[name]))
        return values

    labels = column(label) if label else None
    for (line_number, _), value in zip(records, labels or ()):
        if not value.strip():  # else an empty cell would silently become a class of its own
            raise DataError(f"{path}:{line_number}: empty label in column '{label}'; every row needs a label")
    return TextTable(column(text), column(pair) if pair else None, labels)


def _pick_column(wanted: str | None, candidates: tuple[str, ...], available: list[str], role: str,
                 path: Path, required: bool = True) -> str | None:
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"{path} has no {role} column '{wanted}'; its columns are {available}")
        return wanted
    found = next((name for name in candidates if name in available), None)
    if found is None and required:
        raise DataError(f"{path}: no {role} column found (looked for {list(candidates)}); its columns are "
                        f"{available}; name it with --{role.replace(' ', '-')}-column")
    return found


def _as_text(value) -> str:
    if value is None:  # JSON null: no value, as an empty cell
        return ""
    if isinstance(value, bool):  # JSON true/false: a label written as a boolean
        return str(value).lower()
    return value if isinstance(value, str) else str(value)


# --- labels ----------------------------------------------------------------------------------------

def label_names_of(*label_lists: list[str] | None) -> list[str]:
    """The sorted distinct labels of all lists: numerically when every label is an integer
    (so "2" < "10"), else as strings. Ids are positions in this list."""
    names = {label for labels in label_lists if labels for label in labels}
    if not names:
        raise DataError("no labels found")
    if all(_is_int(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def check_dev_labels(dev_labels: list[str], label_names: list[str], dev_source, train_source) -> None:
    """A dev label that training never saw would be a class the model cannot predict (and a class of
    its own in the metrics): refuse it, naming both files."""
    unknown = sorted(set(dev_labels) - set(label_names))
    if unknown:
        raise DataError(f"{dev_source} has labels {unknown[:10]} that {train_source} lacks (its labels: "
                        f"{label_names[:20]}); fix those labels or drop their rows")


def encode_labels(labels: list[str], label_names: list[str]) -> list[int]:
    ids = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({label for label in labels if label not in ids})
    if unknown:
        raise DataError(f"labels {unknown[:10]} are not among the model's labels {label_names}")
    return [ids[label] for label in labels]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --- splitting -------------------------------------------------------------------------------------

def split_off(table: TextTable, fraction: float, seed: int) -> tuple[TextTable, TextTable]:
    """(rest, held-out): a seeded random `fraction` of the rows held out as a dev set."""
    if not 0 < fraction < 1:
        raise DataError(f"the dev fraction must be between 0 and 1, got {fraction}")
    held = max(1, round(len(table) * fraction))
    if held >= len(table):
        raise DataError(f"cannot hold out {fraction:.0%} of only {len(table)} rows and keep any for training")
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed)).tolist()
    return table.select(sorted(order[held:])), table.select(sorted(order[:held]))
