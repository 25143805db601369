"""Per-token word weights of the textual attention (method.md section 2.2), computed offline.

    omega_t = 1 + [word of token t is a NOUN, VERB or ADJ and not a stop word]

on every BPE token of the word, and 0 on the start token, the end token and padding (the model
masks those itself; keeping them 0 makes a mistake visible). Tags are computed on the cleaned
caption (`tokenizer.clean_text`: lower case), the text the CLIP word spans refer to.

Two taggers:
- `SpacyTagger`: spaCy's statistical tagger (the release uses `en_core_web_sm`); used whenever
  `spacy.load("en_core_web_sm")` works. spaCy's tokens are matched to CLIP's words by character
  overlap: a CLIP word is a content word when a content spaCy token overlaps it.
- `FallbackTagger` (no model needed, what runs where spaCy or its model is not installed), a
  documented approximation: a word is a content word unless it
    1. has no letter (punctuation, digits),
    2. is in `STOP_WORDS` (spaCy's English stop list plus the stems CLIP splits off
       contractions: "don" of "don't", ...), which covers determiners, pronouns,
       prepositions, conjunctions, auxiliaries and the commonest adverbs,
    3. or looks like an "-ly" adverb (longer than 4 letters, not in `LY_NON_ADVERBS`).
  Everything else is taken to be a noun, verb or adjective. Caption vocabularies are dominated
  by those, so this agrees with spaCy on most words; it errs on rarer adverbs (e.g. "fast")
  and proper nouns (spaCy: PROPN, weight 1; here weight 2).
The tagger used is recorded (`Tagger.name`) in the prepared dataset's metadata.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from data_pipeline.tokenizer import TokenizedCaption

CONTENT_POS = frozenset({"NOUN", "VERB", "ADJ"})
SPACY_MODEL = "en_core_web_sm"

# spaCy 3.x English stop words (MIT licence, spacy/lang/en/stop_words.py), lower case.
_SPACY_STOP_WORDS = """
a about above across after afterwards again against all almost alone along already also although
always am among amongst amount an and another any anyhow anyone anything anyway anywhere are around
as at back be became because become becomes becoming been before beforehand behind being below
beside besides between beyond both bottom but by ca call can cannot could did do does doing done
down due during each eight either eleven else elsewhere empty enough even ever every everyone
everything everywhere except few fifteen fifty first five for former formerly forty four from front
full further get give go had has have he hence her here hereafter hereby herein hereupon hers herself
him himself his how however hundred i if in indeed into is it its itself just keep last latter
latterly least less made make many may me meanwhile might mine more moreover most mostly move much
must my myself name namely neither never nevertheless next nine no nobody none noone nor not nothing
now nowhere of off often on once one only onto or other others otherwise our ours ourselves out over
own part per perhaps please put quite rather re really regarding same say see seem seemed seeming
seems serious several she should show side since six sixty so some somehow someone something
sometime sometimes somewhere still such take ten than that the their them themselves then thence
there thereafter thereby therefore therein thereupon these they third this those though three
through throughout thru thus to together too top toward towards twelve twenty two under unless until
up upon us used using various very via was we well were what whatever when whence whenever where
whereafter whereas whereby wherein whereupon wherever whether which while whither who whoever whole
whom whose why will with within without would yet you your yours yourself yourselves
n't 'd 'll 'm 're 's 've
"""
# CLIP's regex splits "don't" into "don" + "'t": the stems and "'t" are function words too.
_CONTRACTION_STEMS = "'t ain aren couldn didn doesn don hadn hasn haven isn mightn mustn needn shan shouldn wasn weren won wouldn"
STOP_WORDS = frozenset(_SPACY_STOP_WORDS.split()) | frozenset(_CONTRACTION_STEMS.split())
# Common caption words ending in "ly" that are nouns or adjectives, not adverbs.
LY_NON_ADVERBS = frozenset(
    "family belly jelly rally bully lily holly assembly butterfly dragonfly firefly supply reply "
    "ugly silly lovely lonely friendly early daily weekly monthly yearly likely elderly curly "
    "chilly hilly jolly oily woolly wooly smelly bubbly sparkly wiggly wobbly prickly "
    "cuddly deadly costly lively lowly orderly heavenly ghostly homely italy sicily july".split()
)


class Tagger(Protocol):
    """Marks the content words of cleaned captions, given CLIP's word spans."""

    name: str

    def content_flags(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[bool]]: ...


class FallbackTagger:
    """Stop list + "-ly" adverb rule (see the module docstring); needs no model."""

    name = "fallback-stoplist-v1"

    @staticmethod
    def is_content_word(word: str) -> bool:
        word = word.lower()
        if not any(c.isalpha() for c in word) or word in STOP_WORDS:
            return False
        return not (len(word) > 4 and word.endswith("ly") and word not in LY_NON_ADVERBS)

    def content_flags(self, texts, spans):
        return [[self.is_content_word(text[a:b]) for a, b in word_spans] for text, word_spans in zip(texts, spans)]


class SpacyTagger:
    """spaCy POS tags: content = NOUN/VERB/ADJ and not `is_stop`, mapped to CLIP words by overlap."""

    def __init__(self, nlp, name: str | None = None):
        self.nlp = nlp
        meta = getattr(nlp, "meta", {}) or {}
        self.name = name or f"spacy/{meta.get('name', 'unknown')}-{meta.get('version', 'unknown')}"

    def content_flags(self, texts, spans):
        flags = []
        for doc, word_spans in zip(self.nlp.pipe(list(texts), batch_size=512), spans):
            content = [(t.idx, t.idx + len(t.text)) for t in doc if t.pos_ in CONTENT_POS and not t.is_stop]
            flags.append([any(a < ce and cs < b for cs, ce in content) for a, b in word_spans])
        return flags


def load_tagger(kind: str = "auto") -> Tagger:
    """"auto": spaCy with en_core_web_sm when it loads, else the fallback; "spacy"; "fallback"."""
    if kind not in ("auto", "spacy", "fallback"):
        raise ValueError(f"tagger must be 'auto', 'spacy' or 'fallback', got {kind!r}")
    if kind == "fallback":
        return FallbackTagger()
    try:
        import spacy

        nlp = spacy.load(SPACY_MODEL, exclude=["parser", "ner", "lemmatizer"])
    except Exception as e:  # ImportError, or OSError when the model is not installed
        if kind == "spacy":
            raise ValueError(
                f"tagger 'spacy' needs spaCy and its {SPACY_MODEL} model ({type(e).__name__}: {e}); fix: "
                f"pip install 'tvr-jax[spacy]' && python -m spacy download {SPACY_MODEL}, or use the fallback tagger"
            ) from None
        return FallbackTagger()
    return SpacyTagger(nlp, name=f"spacy-{spacy.__version__}/{nlp.meta['name']}-{nlp.meta['version']}")


def token_word_weights(caption: TokenizedCaption, content: Sequence[bool]) -> np.ndarray:
    """uint8 (len(caption.ids),): 2 on every token of a content word, 1 on other words, 0 on start/end."""
    if len(content) != len(caption.words):
        raise ValueError(f"{len(content)} content flags for {len(caption.words)} words of {caption.text!r}")
    weights = np.zeros(len(caption.ids), np.uint8)
    for positions, is_content in zip(caption.word_positions, content):
        weights[list(positions)] = 2 if is_content else 1
    # Every token between start and end belongs to exactly one word: none may stay 0.
    if len(caption.ids) > 2 and not weights[1:-1].all():
        raise AssertionError(f"tokens without a word in {caption.text!r}: {caption.ids}")
    return weights


def caption_weights(captions: Sequence[TokenizedCaption], tagger: Tagger) -> list[np.ndarray]:
    """Word weights of many tokenised captions (tagged in one batch)."""
    flags = tagger.content_flags([c.text for c in captions], [c.word_spans for c in captions])
    return [token_word_weights(c, f) for c, f in zip(captions, flags)]
