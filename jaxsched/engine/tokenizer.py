"""Tokenizers: byte-level by default, a Hugging Face ``tokenizers`` JSON file when given.

:class:`ByteTokenizer` maps text to its UTF-8 bytes (ids 0-255) after a BOS token (256);
EOS is 257 and PAD 258 (vocabulary 259, the tiny model's). Decoding drops special ids and
replaces invalid UTF-8 with U+FFFD. :class:`HFTokenizer` wraps a local ``tokenizer.json``
(no network: the file must exist).

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``eos_id`` (``None`` when
the tokenizer has none), ``bos_id`` and ``vocab_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import tokenizers

from jaxsched.errors import JaxschedError

__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "load_tokenizer", "TokenizerError"]


class TokenizerError(JaxschedError, ValueError):
    """A tokenizer file that cannot be used."""


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes plus BOS/EOS/PAD."""

    BOS, EOS, PAD = 256, 257, 258
    vocab_size = 259
    bos_id = BOS
    eos_id = EOS

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.BOS] + ids if self.add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON (``tokenizer.json``) read from a local file.

    ``eos_token`` / ``bos_token`` name the special tokens (defaults: the first of ``</s>``,
    ``<|endoftext|>``, ``<eos>`` / ``<s>``, ``<bos>`` present in the vocabulary).
    """

    def __init__(self, path: str | Path, eos_token: str | None = None,
                 bos_token: str | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exceptions
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TokenizerError(f"{path}: cannot load tokenizer: {msg}") from None
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find(eos_token, ("</s>", "<|endoftext|>", "<eos>"), "eos_token")
        self.bos_id = self._find(bos_token, ("<s>", "<bos>"), "bos_token")

    def _find(self, name, defaults, what):
        if name is not None:
            idx = self._tok.token_to_id(name)
            if idx is None:
                raise TokenizerError(f"{self.path}: {what} {name!r} is not in the vocabulary")
            return idx
        for cand in defaults:
            idx = self._tok.token_to_id(cand)
            if idx is not None:
                return idx
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer, or the Hugging Face tokenizer at ``path`` (file or folder)."""
    if path is None:
        return ByteTokenizer()
    return HFTokenizer(path)
