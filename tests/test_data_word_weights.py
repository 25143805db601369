"""Word weights (method.md 2.2): content words 2 on all their BPE tokens, others 1, start/end 0."""

import sys
import types

import numpy as np
import pytest

from data_pipeline import word_weights
from data_pipeline.tokenizer import default_tokenizer


def _weights(text, tagger=None, max_len=77):
    caption = default_tokenizer().tokenize_caption(text, max_len)
    return caption, word_weights.caption_weights([caption], tagger or word_weights.FallbackTagger())[0]


def _by_word(caption, weights):
    return {w: [int(weights[p]) for p in pos] for w, pos in zip(caption.words, caption.word_positions)}


def test_fallback_marks_nouns_verbs_adjectives_not_function_words():
    caption, weights = _weights("A man is quickly cooking spaghetti in the family kitchen, then eats it.")
    by_word = _by_word(caption, weights)
    for content in ("man", "cooking", "spaghetti", "family", "kitchen", "eats"):
        assert set(by_word[content]) == {2}, content
    for function in ("a", "is", "quickly", "in", "the", ",", "then", "it", "."):
        assert set(by_word[function]) == {1}, function
    assert weights[0] == 0 and weights[-1] == 0 and len(weights) == len(caption.ids)
    assert caption.ids[0] == 49406 and caption.ids[-1] == 49407


def test_every_subtoken_of_a_content_word_weighs_two():
    caption, weights = _weights("a skateboarder performs kickflips")
    multi = [(w, p) for w, p in zip(caption.words, caption.word_positions) if len(p) > 1]
    assert multi, f"expected a word split into several BPE tokens: {caption.words} -> {caption.ids}"
    for _, positions in multi:
        assert [weights[p] for p in positions] == [2] * len(positions)


def test_contraction_pieces_and_digits_are_not_content():
    caption, weights = _weights("the dog doesn't jump 3 times")
    by_word = _by_word(caption, weights)
    assert by_word["doesn"] == [1] and by_word["'t"] == [1] and by_word["3"] == [1]
    assert by_word["dog"] == [2] and by_word["jump"] == [2] and by_word["times"] == [2]


def test_truncation_keeps_alignment_and_zero_end_weight():
    caption, weights = _weights("a red square moves north and a blue circle moves west", max_len=6)
    assert len(caption.ids) == 6 and caption.ids[-1] == 49407
    np.testing.assert_array_equal(weights, [0, 1, 2, 2, 2, 0])


class _Token:
    def __init__(self, text, idx, pos, is_stop=False):
        self.text, self.idx, self.pos_, self.is_stop = text, idx, pos, is_stop


class _FakeNlp:
    """Stands in for spacy.load('en_core_web_sm'): tags from a table, spaCy-style tokens and offsets."""

    meta = {"name": "core_web_fake", "version": "0.0"}

    def __init__(self, tags):
        self.tags = tags

    def pipe(self, texts, batch_size=None):
        for text in texts:
            tokens, start = [], 0
            for piece, pos, stop in self.tags[text]:
                idx = text.index(piece, start)
                tokens.append(_Token(piece, idx, pos, stop))
                start = idx + len(piece)
            yield tokens


def test_spacy_tagger_maps_tokens_to_clip_words_by_overlap():
    text = "she doesn't run fast, the dog does"
    nlp = _FakeNlp({text: [("she", "PRON", True), ("does", "AUX", True), ("n't", "PART", True), ("run", "VERB", False),
                           ("fast", "ADV", False), (",", "PUNCT", False), ("the", "DET", True), ("dog", "NOUN", False),
                           ("does", "VERB", True)]})
    tagger = word_weights.SpacyTagger(nlp)
    assert tagger.name == "spacy/core_web_fake-0.0"
    caption, weights = _weights(text, tagger)
    by_word = _by_word(caption, weights)
    assert by_word["run"] == [2] and by_word["dog"] == [2]
    # ADV is not content; a VERB that spaCy marks as a stop word is not content either.
    assert by_word["fast"] == [1] and by_word["does"] == [1] and by_word["doesn"] == [1] and by_word["'t"] == [1]


def test_load_tagger_falls_back_or_explains_how_to_get_spacy(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    assert isinstance(word_weights.load_tagger("auto"), word_weights.FallbackTagger)
    with pytest.raises(ValueError, match="spacy download en_core_web_sm"):
        word_weights.load_tagger("spacy")
    with pytest.raises(ValueError, match="tagger must be"):
        word_weights.load_tagger("nltk")


def test_load_tagger_uses_spacy_when_the_model_loads(monkeypatch):
    nlp = _FakeNlp({})
    fake = types.SimpleNamespace(__version__="3.9.9", load=lambda name, exclude=(): nlp if name == "en_core_web_sm" else None)
    monkeypatch.setitem(sys.modules, "spacy", fake)
    tagger = word_weights.load_tagger("auto")
    assert isinstance(tagger, word_weights.SpacyTagger) and tagger.name == "spacy-3.9.9/core_web_fake-0.0"


def test_misaligned_flags_are_an_error():
    caption = default_tokenizer().tokenize_caption("a dog", 77)
    with pytest.raises(ValueError, match="content flags"):
        word_weights.token_word_weights(caption, [True])
