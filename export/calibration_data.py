"""Calibration and evaluation examples: a TSV with a text/sentence column (and an optional label
column), or a plain text file with one example per line."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError

TEXT_COLUMNS = ("text", "sentence", "sentence1")
LABEL_COLUMNS = ("label", "labels")


@dataclass(frozen=True)
class Examples:
    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: list[int]) -> "Examples":
        labels = tuple(self.labels[i] for i in indices) if self.labels is not None else None
        return Examples(tuple(self.texts[i] for i in indices), labels, self.source)

    def split(self, first: int, second: int, seed: int = 0) -> tuple["Examples", "Examples"]:
        """Two disjoint random parts of at most `first` and `second` examples."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return self.take(order[:first]), self.take(order[first:first + second])


BUNDLED_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "calibration_sentences.txt"  # the default --calib


def read_examples(path: str | Path, label_names: tuple[str, ...] | None, use_labels: bool = True) -> Examples:
    """Examples from a file; labels are parsed (as integers or as `label_names`) unless
    `use_labels` is False, as for embedding models, which have no classes to check them against."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"calibration file {path} does not exist; pass a TSV or a text file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ExportError(f"{path} is not UTF-8 text; pass a TSV or a text file with one example per line") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ExportError(f"{path} has no examples; it needs at least one non-empty line")
    if "\t" in lines[0] or path.suffix.lower() == ".tsv":
        return _read_tsv(path, lines, label_names, use_labels)
    return Examples(tuple(line.strip() for line in lines), None, str(path))


def has_label_column(path: str | Path) -> bool:
    """Whether a calibration file is a TSV whose header names a label column (read no further)."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as file:
        first = file.readline()
    if "\t" not in first and path.suffix.lower() != ".tsv":
        return False
    return any(c in _header(first) for c in LABEL_COLUMNS)


def _header(line: str) -> list[str]:
    return [h.strip().lower() for h in line.split("\t")]


def _read_tsv(path: Path, lines: list[str], label_names: tuple[str, ...] | None, use_labels: bool) -> Examples:
    header = _header(lines[0])
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    if text_col is None:
        raise ExportError(f"{path}: the header {header} has no text column; name one of {list(TEXT_COLUMNS)}")
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None) if use_labels else None
    texts: list[str] = []
    labels: list[int] = []
    for number, row in enumerate(csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE), start=2):
        if len(row) != len(header):
            raise ExportError(f"{path}:{number}: {len(row)} fields where the header has {len(header)}")
        text = row[text_col].strip()
        if not text:
            continue
        texts.append(text)
        if label_col is not None:
            labels.append(_parse_label(row[label_col].strip(), label_names, f"{path}:{number}"))
    if not texts:
        raise ExportError(f"{path} has a header but no examples")
    return Examples(tuple(texts), tuple(labels) if label_col is not None else None, str(path))


def _parse_label(raw: str, label_names: tuple[str, ...] | None, where: str) -> int:
    if label_names is not None and raw in label_names:
        return label_names.index(raw)
    try:
        label = int(raw)
    except ValueError:
        raise ExportError(f"{where}: label {raw!r} is neither an integer nor a label of the model") from None
    if label_names is not None and not 0 <= label < len(label_names):
        raise ExportError(f"{where}: label {label} is outside the model's {len(label_names)} classes")
    return label
