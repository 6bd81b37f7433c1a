"""Text to padded id arrays, with the package's own tokenizer.json.

tokenizer.json files often carry padding/truncation settings (all-MiniLM-L6-v2 pads
every input to 128 tokens), which made short inputs ~5x slower. We clear both and set our own:
pad to the longest text of the batch, truncate at the package's max_length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from ..errors import InputError, PackageError
from ..manifest import PAD_BIAS, TokenizerSpec

if TYPE_CHECKING:
    from .package import Package


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64, 1 for real tokens
    token_type_ids: np.ndarray  # [B, T] int64
    special_mask: np.ndarray  # [B, T] bool, True for [CLS]/[SEP]-like tokens that pruning keeps
    truncated: tuple[bool, ...]

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)

    @property
    def attention_bias(self) -> np.ndarray:
        """The mask as the graphs take it: 0 for a token, PAD_BIAS for padding (docs/manifest.md)."""
        return np.where(self.attention_mask > 0, 0.0, PAD_BIAS).astype(np.float32)

    def span_feeds(self) -> dict[str, np.ndarray]:
        """What a graph starting at the embedding may take (callers keep the inputs it names)."""
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_bias": self.attention_bias}

    def row(self, index: int) -> "EncodedBatch":
        """One text of the batch, as if encoded alone (its padding cut away)."""
        width = max(int(self.attention_mask[index].sum()), 1)
        return EncodedBatch(self.input_ids[index:index + 1, :width], self.attention_mask[index:index + 1, :width],
                            self.token_type_ids[index:index + 1, :width], self.special_mask[index:index + 1, :width],
                            (self.truncated[index],))


def length_batches(texts: list[str], size: int) -> list[list[int]]:
    """Indices of the texts in batches of similar length, so that padding wastes least."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) if isinstance(texts[i], str) else 0)
    return [order[start:start + size] for start in range(0, len(order), size)]


def package_tokenizer(package: Package) -> Tokenizer:
    """The package's tokenizer, parsed from the bytes that pass its sha256 check."""
    relative = package.manifest.tokenizer.path
    return read_tokenizer(package.verified_bytes(relative), relative)


def read_tokenizer(data: bytes, name: str) -> Tokenizer:
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as err:  # the tokenizers library raises its own untyped errors
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise PackageError(f"{name} is not a tokenizer the tokenizers library can read ({first}); "
                           f"re-export the package") from None


class TextEncoder:
    def __init__(self, tokenizer: Path | Tokenizer, spec: TokenizerSpec):
        """tokenizer: a tokenizer.json path (the exporter's own files) or a parsed Tokenizer."""
        self.spec = spec
        self._tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else read_tokenizer(
            Path(tokenizer).read_bytes(), Path(tokenizer).name)
        try:
            self._tokenizer.no_padding()
            self._tokenizer.enable_truncation(max_length=spec.max_length)
        except Exception as err:  # the tokenizers library raises its own untyped errors
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise PackageError(f"the package's tokenizer cannot truncate at {spec.max_length} tokens ({first}); "
                               f"re-export the package") from None
        vocabulary = self._tokenizer.get_vocab_size()
        outside = [i for i in (spec.pad_id, *spec.special_ids) if not 0 <= i < vocabulary]
        if outside:
            raise PackageError(f"the manifest's tokenizer ids {outside} (pad_id, special_ids) are outside the "
                               f"tokenizer's vocabulary of {vocabulary}; re-export the package")
        # a lookup table, not np.isin: isin cost ~0.1-0.2 ms per request, a fifth of the runtime's own overhead
        self._is_special = np.zeros(vocabulary, dtype=bool)  # every special id is inside it (checked above)
        self._is_special[list(spec.special_ids)] = True

    def encode(self, texts: list[str]) -> EncodedBatch:
        check_texts(texts)
        if len(texts) == 1:  # the common case, without padding arithmetic
            encoding = self._tokenizer.encode(texts[0])
            ids = np.array([encoding.ids], dtype=np.int64)
            return EncodedBatch(ids, np.ones_like(ids), np.array([encoding.type_ids], dtype=np.int64),
                                self._is_special[ids], (bool(encoding.overflowing),))
        encodings = self._tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), longest), self.spec.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        types = np.zeros((len(texts), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        special = self._is_special[ids] & (mask == 1)
        truncated = tuple(bool(e.overflowing) for e in encodings)
        return EncodedBatch(ids, mask, types, special, truncated)


MAX_TEXT_CHARACTERS = 1_000_000  # tokenizing 16 MB took 30 s; no model reads past its max_length


def check_texts(texts: list[str]) -> None:
    if not texts:
        raise InputError("no texts given; pass at least one non-empty string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"input {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"input {i} is empty; pass text with at least one visible character")
        if len(text) > MAX_TEXT_CHARACTERS:
            raise InputError(f"input {i} has {len(text):,} characters, over the {MAX_TEXT_CHARACTERS:,} limit "
                             f"(a model reads at most a few hundred tokens); split or shorten it")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"input {i} is not valid Unicode (a lone surrogate at character {err.start}); "
                             f"decode it with errors='replace' first") from None
