"""Word weights (docs/method.md 2.2): content words 2 on all their BPE tokens, others 1, start/end 0."""

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
    """Stands in for spacy.load('en_core_web_md'): tags from a table, spaCy-style tokens and offsets."""

    meta = {"lang": "en", "name": "core_web_md", "version": "3.8.0"}

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
    tagger = word_weights.SpacyTagger(nlp, spacy_version="3.8.4")
    assert tagger.name == "spacy-3.8.4/en_core_web_md-3.8.0" and tagger.spec == "spacy:en_core_web_md"
    assert tagger.info == {"spec": "spacy:en_core_web_md", "name": tagger.name, "spacy_version": "3.8.4",
                           "model": "en_core_web_md", "model_version": "3.8.0"}
    caption, weights = _weights(text, tagger)
    by_word = _by_word(caption, weights)
    assert by_word["run"] == [2] and by_word["dog"] == [2]
    # ADV is not content; a VERB that spaCy marks as a stop word is not content either.
    assert by_word["fast"] == [1] and by_word["does"] == [1] and by_word["doesn"] == [1] and by_word["'t"] == [1]


def test_load_tagger_never_falls_back_silently_and_explains_how_to_get_spacy(monkeypatch):
    assert isinstance(word_weights.load_tagger("fallback"), word_weights.FallbackTagger)
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(word_weights.TaggerUnavailable, match=r"pip install -e '\.\[spacy\]' && python -m spacy download en_core_web_md"):
        word_weights.load_tagger("spacy")

    def no_model(name, exclude=()):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(__version__="3.8.4", load=no_model))
    with pytest.raises(word_weights.TaggerUnavailable, match="en_core_web_lg model does not load.*spacy download en_core_web_lg"):
        word_weights.load_tagger("spacy:en_core_web_lg")
    for bad in ("auto", "nltk", "spacy:en_core_web_trf", "fallback:x"):
        with pytest.raises(ValueError, match="tagger must be"):
            word_weights.load_tagger(bad)


def test_load_tagger_uses_the_requested_spacy_model(monkeypatch):
    loaded = []

    def load(name, exclude=()):
        loaded.append(name)
        nlp = _FakeNlp({})
        nlp.meta = {"lang": "en", "name": name[3:], "version": "3.8.0"}
        return nlp

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(__version__="3.8.4", load=load))
    tagger = word_weights.load_tagger("spacy")  # the release's model
    assert isinstance(tagger, word_weights.SpacyTagger) and tagger.name == "spacy-3.8.4/en_core_web_md-3.8.0"
    assert word_weights.load_tagger("spacy:en_core_web_sm").spec == "spacy:en_core_web_sm"
    assert loaded == ["en_core_web_md", "en_core_web_sm"]


def test_tagger_spec_of_reads_new_and_older_metadata():
    info = {"spec": "spacy:en_core_web_md", "name": "spacy-3.8.4/en_core_web_md-3.8.0"}
    assert word_weights.tagger_spec_of({"tagger": info["name"], "tagger_info": info}) == "spacy:en_core_web_md"
    assert word_weights.tagger_spec_of({"tagger": "spacy-3.7.5/core_web_sm-3.7.1"}) == "spacy:en_core_web_sm"
    assert word_weights.tagger_spec_of({"tagger": "fallback-stoplist-v1"}) == "fallback"
    assert word_weights.tagger_spec_of({}) is None


def test_check_tagger_warns_on_a_different_or_unknown_tagger():
    fallback = {"dataset": "msrvtt", "tagger": "fallback-stoplist-v1", "tagger_info": word_weights.FallbackTagger().info}
    assert word_weights.check_tagger("fallback", fallback) is None
    warning = word_weights.check_tagger("spacy:en_core_web_md", fallback)
    assert "WORD WEIGHTS MISMATCH" in warning and "'fallback' (fallback-stoplist-v1)" in warning
    assert "--tagger spacy --spacy-model en_core_web_md --rebuild" in warning and "--config.data.tagger=fallback" in warning
    assert "docs/method.md section 6.1" in warning
    md = {"dataset": "msvd", "tagger": "spacy-3.8.4/en_core_web_md-3.8.0"}
    assert word_weights.check_tagger("spacy", md) is None  # "spacy" alone is the release's model
    assert "--tagger spacy --spacy-model en_core_web_sm" in word_weights.check_tagger("spacy:en_core_web_sm", md)
    assert "--tagger fallback" in word_weights.check_tagger("fallback", md)
    assert "no recorded tagger" in word_weights.check_tagger("fallback", {"dataset": "msvd"})
    with pytest.raises(ValueError, match="tagger must be"):
        word_weights.check_tagger("spacy:en_core_web_xl", md)


def test_misaligned_flags_are_an_error():
    caption = default_tokenizer().tokenize_caption("a dog", 77)
    with pytest.raises(ValueError, match="content flags"):
        word_weights.token_word_weights(caption, [True])


def test_search_weighs_queries_with_the_tagger_of_the_index_dataset(tmp_path, monkeypatch):
    import json
    import os

    import ml_collections

    from data_pipeline import prepare
    from tvr_jax import search

    cfg = ml_collections.ConfigDict({"data_dir": "", "dataset": "msrvtt"})
    assert isinstance(search.index_tagger({"tagger": "fallback"}, cfg), word_weights.FallbackTagger)
    monkeypatch.setitem(sys.modules, "spacy", None)  # never "whatever is installed": the index's tagger or an error
    with pytest.raises(word_weights.TaggerUnavailable, match="queries must be weighed the same way.*spacy download en_core_web_md"):
        search.index_tagger({"tagger": "spacy:en_core_web_md", "dataset": "msrvtt"}, cfg)
    with pytest.raises(ValueError, match="records no word-weight tagger"):
        search.index_tagger({}, cfg)
    # An index whose manifest predates the field: the prepared dataset's metadata tells.
    folder = prepare.dataset_dir(str(tmp_path), "msrvtt")
    os.makedirs(folder)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"dataset": "msrvtt", "tagger": "fallback-stoplist-v1"}, f)
    cfg.data_dir = str(tmp_path)
    assert isinstance(search.index_tagger({}, cfg), word_weights.FallbackTagger)
