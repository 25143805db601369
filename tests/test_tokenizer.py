"""CLIP tokenizer: real vocabulary ids, CLIP's padding/truncation convention, word alignment."""

import numpy as np
import pytest

from data_pipeline.tokenizer import ClipTokenizer, default_tokenizer, tokenize

CAPTIONS = [
    "a photo of a cat",
    "A man's dog doesn't like 3 eggplants!!",
    "Crème brûlée at 10:30 — naïve café",
    "hello   world\t\nfoo",
    "x-ray's 1999 <b>bold</b> 😀 dog",
    "a red square moves left while a blue circle spins",
]


def test_reference_ids():
    ids, mask = tokenize("a photo of a cat", max_len=10)
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert ids.tolist() == [[49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]]
    assert mask.tolist() == [[True] * 7 + [False] * 3]
    assert default_tokenizer().vocab_size == 49408


def test_matches_transformers_clip_tokenizer():
    """transformers' (Rust BPE) CLIP tokenizer on the same vocabulary gives the same ids."""
    transformers = pytest.importorskip("transformers")
    tok = default_tokenizer()
    merges = [m for m, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    reference = transformers.CLIPTokenizer(vocab=dict(tok.encoder), merges=merges)
    for caption in CAPTIONS:
        assert [tok.sot_token] + tok.encode(caption) + [tok.eot_token] == reference(caption)["input_ids"], caption


def test_html_unescaped_like_openai_clip():
    tok = default_tokenizer()
    assert tok.encode("fish &amp; chips") == tok.encode("fish & chips")


def test_truncation_keeps_end_token():
    ids, mask = tokenize([CAPTIONS[-1], "a cat"], max_len=6)
    tok = default_tokenizer()
    full = tok.encode(CAPTIONS[-1])
    assert ids[0].tolist() == [tok.sot_token, *full[:4], tok.eot_token]
    assert mask[0].all()
    assert ids[1].tolist() == [tok.sot_token, *tok.encode("a cat"), tok.eot_token, 0, 0]
    with pytest.raises(ValueError, match="max_len"):
        tokenize("a", max_len=1)


@pytest.mark.parametrize("caption", CAPTIONS)
def test_word_alignment_covers_every_token_once(caption):
    tok = default_tokenizer()
    c = tok.tokenize_caption(caption, max_len=77)
    flat = [p for positions in c.word_positions for p in positions]
    assert flat == list(range(1, len(c.ids) - 1))  # each BPE token belongs to exactly one word, in order
    for word, (start, end), positions in zip(c.words, c.word_spans, c.word_positions):
        assert c.text[start:end] == word
        assert tok.decode([c.ids[p] for p in positions]).replace(" ", "") == word.replace(" ", "")


def test_word_alignment_under_truncation():
    c = default_tokenizer().tokenize_caption("unbelievable eggplants are purple", max_len=5)
    assert c.words == ("unbelievable", "eggplants", "are", "purple")
    assert c.word_positions[0] == (1,) and len(c.word_positions[1]) == 2  # 'eggplants' cut to 2 tokens
    assert c.word_positions[2:] == ((), ())
    assert len(c.ids) == 5 and c.ids[-1] == 49407


def test_decode_roundtrip():
    tok = default_tokenizer()
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat"


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt.gz"):
        ClipTokenizer(str(tmp_path / "nothing.txt.gz"))
