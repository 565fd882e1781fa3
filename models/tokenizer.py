"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), read from Hugging Face's vocab.json + merges.txt.

Text is cleaned (HTML entities unescaped, whitespace collapsed, lower-cased), split with CLIP's regex,
each piece's UTF-8 bytes are mapped to printable unicode characters, the last character gets the `</w>`
end-of-word suffix, and merges are applied lowest rank first. A prompt becomes
`[<|startoftext|>, tokens..., <|endoftext|>, 0, 0, ...]`: padded with id 0 as OpenAI's `clip.tokenize`
and Karlo do (Hugging Face pads with <|endoftext|>; the text encoder finds the end-of-text token as the
first position holding the largest id, which works with either padding).
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import regex
import torch

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
PAD_ID = 0
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MERGES_HEADER = "#version: 0.2"

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (BPE never sees whitespace
    or control characters): printable Latin-1 bytes map to themselves, the rest to code points 256+."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def clean_text(text: str) -> str:
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE.sub(" ", text).strip().lower()


def pre_tokenize(text: str) -> list[str]:
    """Cleaned text → the regex pieces, each as its byte-level unicode string."""
    byte_chars = bytes_to_unicode()
    return [
        "".join(byte_chars[b] for b in piece.encode("utf-8")) for piece in _PATTERN.findall(clean_text(text))
    ]


def bpe(piece: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split one pre-tokenized piece into BPE symbols, the last one carrying `</w>`."""
    symbols = [*piece[:-1], piece[-1] + END_OF_WORD]
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class Tokenizer:
    context_length: int = 77

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77
    ) -> None:
        for special in (START_OF_TEXT, END_OF_TEXT):
            if special not in vocab:
                raise ValueError(f"the vocabulary has no {special} token")
        self.vocab = vocab
        self.merges = merges
        self.context_length = context_length
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_id = vocab[START_OF_TEXT]
        self.eot_id = vocab[END_OF_TEXT]
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    @classmethod
    def from_folder(cls, path: str | Path, context_length: int = 77) -> Tokenizer:
        folder = Path(path)
        for name in (VOCAB_FILE, MERGES_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"tokenizer file {folder / name} is missing")
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        lines = (folder / MERGES_FILE).read_text(encoding="utf-8").splitlines()
        merges = []
        for line in lines:
            if not line or line.startswith("#version"):
                continue
            first, second = line.split()
            merges.append((first, second))
        return cls(vocab, merges, context_length)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / VOCAB_FILE).write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        lines = [MERGES_HEADER, *(f"{a} {b}" for a, b in self.merges)]
        (folder / MERGES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def tokens(self, text: str) -> list[int]:
        """The ids of `text` without the special tokens, context or padding."""
        return [i for _, ids in self.pieces(text) for i in ids]

    def pieces(self, text: str) -> list[tuple[str, list[int]]]:
        """`text`'s pre-tokenized pieces (a word, a number, punctuation), each with its ids."""
        pieces = []
        for piece in pre_tokenize(text):
            if piece not in self._cache:
                self._cache[piece] = [self.vocab[symbol] for symbol in bpe(piece, self.ranks)]
            pieces.append((piece, self._cache[piece]))
        return pieces

    def encode(self, texts: list[str]) -> tuple[torch.LongTensor, list[bool]]:
        """ids `[B, context_length]` and, per text, whether it was truncated to fit (keeping the EOT)."""
        room = self.context_length - 2
        ids = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        truncated = []
        for row, text in enumerate(texts):
            tokens = self.tokens(text)
            truncated.append(len(tokens) > room)
            sequence = [self.sot_id, *tokens[:room], self.eot_id]
            ids[row, : len(sequence)] = torch.tensor(sequence)
        return ids, truncated  # type: ignore[return-value]


def build_tokenizer(words: Iterable[str], context_length: int = 77) -> Tokenizer:
    """A small valid CLIP vocabulary for our own checkpoints: the 512 byte tokens (with and without
    `</w>`), merges that make every piece of the given words one token, then the two specials."""
    byte_tokens = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate([*byte_tokens, *(t + END_OF_WORD for t in byte_tokens)])}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for piece in pre_tokenize(word):
            # Each new merge has the lowest priority, so it only joins the piece's current segmentation
            # (already a fixed point of the earlier merges): one more merge, one symbol fewer.
            while len(symbols := bpe(piece, ranks)) > 1:
                pair = (symbols[0], symbols[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab[START_OF_TEXT] = len(vocab)
    vocab[END_OF_TEXT] = len(vocab)
    return Tokenizer(vocab, merges, context_length)
