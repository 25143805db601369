"""CLIP's byte-level BPE tokenizer, with the word <-> token alignment the method needs.

Same text cleaning, pre-tokenisation and merges as OpenAI CLIP's `simple_tokenizer`, built
offline from the real vocabulary file shipped in `data_pipeline/assets/` (MIT licence, see
`LICENSE.bpe_simple_vocab`). On top of CLIP's tokenizer it reports, for every word of a caption,
the token positions that word produced, so that word-level part-of-speech tags can be turned
into the per-token word weights of the textual attention (docs/method.md section 2.2).

A "word" is one piece of CLIP's pre-tokenisation regex: a run of letters, one digit, a run of
punctuation, or a contraction suffix ('s, 't, ...). Its character span refers to the cleaned
text (`clean_text`), which is what a part-of-speech tagger should be given.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import html
import os
from typing import Sequence

import ftfy
import numpy as np
import regex

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(__file__), "assets", "bpe_simple_vocab_16e6.txt.gz")
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# Merges used by CLIP: the file holds more, CLIP's vocabulary of 49,408 stops here.
_NUM_MERGES = 49152 - 256 - 2
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (BPE runs on these)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) defines the vocabulary ids


def clean_text(text: str) -> str:
    """CLIP's cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


@dataclasses.dataclass(frozen=True)
class TokenizedCaption:
    """One caption: CLIP token ids (start and end token included) and the word alignment.

    `words[i]` is the i-th word of `text` (the cleaned caption), `word_spans[i]` its character
    span in `text`, and `word_positions[i]` the positions in `ids` its BPE tokens occupy (empty
    when truncation cut the word off).
    """

    text: str
    ids: tuple[int, ...]
    words: tuple[str, ...]
    word_spans: tuple[tuple[int, int], ...]
    word_positions: tuple[tuple[int, ...], ...]


class ClipTokenizer:
    """CLIP BPE tokenizer (vocabulary of 49,408: 256 bytes x2, 48,894 merges, 2 special tokens)."""

    def __init__(self, bpe_path: str = DEFAULT_BPE_PATH):
        if not os.path.isfile(bpe_path):
            raise FileNotFoundError(
                f"CLIP BPE vocabulary not found at {bpe_path!r}; it ships in data_pipeline/assets/ "
                "(reinstall the package) or pass the path of bpe_simple_vocab_16e6.txt.gz."
            )
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{bpe_path!r} is not a CLIP BPE merges file: expected {_NUM_MERGES} merge pairs "
                f"after the header line, found {len(merges)}."
            )
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token = self.encoder[START_OF_TEXT]
        self.eot_token = self.encoder[END_OF_TEXT]
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """Merge the symbols of one pre-token greedily by merge rank; last symbol ends in </w>."""
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def _word_ids(self, word: str) -> list[int]:
        if word in (START_OF_TEXT, END_OF_TEXT):
            return [self.encoder[word]]
        chars = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
        return [self.encoder[s] for s in self._bpe(chars)]

    def encode(self, text: str) -> list[int]:
        """BPE ids of a text, without start and end tokens (CLIP's `encode`)."""
        return [i for m in _WORD_PATTERN.finditer(clean_text(text)) for i in self._word_ids(m.group())]

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def tokenize_caption(self, text: str, max_len: int = 77) -> TokenizedCaption:
        """Start token, BPE ids truncated to `max_len - 2`, end token; plus the word alignment."""
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (start and end token), got {max_len}")
        cleaned = clean_text(text)
        ids = [self.sot_token]
        words, spans, positions = [], [], []
        budget = max_len - 2
        for m in _WORD_PATTERN.finditer(cleaned):
            word_ids = self._word_ids(m.group())
            kept = word_ids[: max(0, budget - (len(ids) - 1))]
            words.append(m.group())
            spans.append(m.span())
            positions.append(tuple(range(len(ids), len(ids) + len(kept))))
            ids.extend(kept)
        ids.append(self.eot_token)
        return TokenizedCaption(cleaned, tuple(ids), tuple(words), tuple(spans), tuple(positions))

    def __call__(self, texts: str | Sequence[str], max_len: int = 77) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int32 [N, max_len] (zero padded) and a bool mask of the real tokens."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), max_len), np.int32)
        for row, text in enumerate(texts):
            caption = self.tokenize_caption(text, max_len)
            ids[row, : len(caption.ids)] = caption.ids
        return ids, ids != 0


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> ClipTokenizer:
    """The tokenizer built from the shipped vocabulary (built once per process)."""
    return ClipTokenizer()


def tokenize(texts: str | Sequence[str], max_len: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """CLIP tokenisation: (int32 ids [N, max_len], bool mask), start/end tokens, zero padding."""
    return default_tokenizer()(texts, max_len)
