"""Text tokenizers behind one small interface.

Ids returned here live in the tokenizer's own space ``[0, size)``; :meth:`Vocab.text_ids`
shifts them into the model's id space. Two implementations:

- :class:`ByteTokenizer` (default): UTF-8 bytes, 256 ids, needs no files.
- :class:`HFTokenizer`: any ``tokenizers`` JSON file (Chameleon's BPE is one). Used with
  :meth:`Vocab.chameleon_reference`, whose text range is the whole 65,536-id space.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from worldvla.errors import DataError


@runtime_checkable
class TextTokenizer(Protocol):
    size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: id ``b`` is byte ``b``. No special tokens, no files."""

    size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "bytes-utf8"


class HFTokenizer:
    """Adapter for a ``tokenizers`` JSON file (e.g. Chameleon's ``text_tokenizer.json``).

    Special tokens the file might add automatically (BOS/EOS) are *not* added: the sequence
    builder owns the framing of every sample.
    """

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise DataError(f"{self.path}: cannot load tokenizer JSON: {e}") from e
        self.size = self._tok.get_vocab_size(with_added_tokens=True)
        self._hash = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def vocabulary(self) -> dict[str, int]:
        """Every entry of the file, added tokens included: name -> id."""
        return self._tok.get_vocab(with_added_tokens=True)

    def fingerprint(self) -> str:
        return f"hf-{self._hash}"


def load_text_tokenizer(spec: str | None) -> TextTokenizer:
    """``None``/``"bytes"`` -> :class:`ByteTokenizer`; a path -> :class:`HFTokenizer`."""
    if spec in (None, "", "bytes"):
        return ByteTokenizer()
    return HFTokenizer(spec)
