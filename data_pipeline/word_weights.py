"""Per-token word weights of the textual attention (docs/method.md section 2.2), computed offline.

    omega_t = 1 + [word of token t is a NOUN, VERB or ADJ and not a stop word]

on every BPE token of the word, and 0 on the start token, the end token and padding (the model
masks those itself; keeping them 0 makes a mistake visible). Tags are computed on the cleaned
caption (`tokenizer.clean_text`: lower case), the text the CLIP word spans refer to.

Two taggers, named by a spec string ("spacy:<model>" or "fallback"):
- `SpacyTagger`: spaCy's statistical tagger. The paper's release tags with `en_core_web_md`
  (docs/method.md section 6.1), the default of `tvr-jax prepare` for the paper's sets, which
  stops with install instructions when spaCy or the model is missing. spaCy's tokens are
  matched to CLIP's words by character overlap: a CLIP word is a content word when a content
  spaCy token overlaps it.
- `FallbackTagger` (no model needed; chosen explicitly, or by default for the synthetic set),
  a documented approximation: a word is a content word unless it
    1. has no letter (punctuation, digits),
    2. is in `STOP_WORDS` (spaCy's English stop list plus the stems CLIP splits off
       contractions: "don" of "don't", ...), which covers determiners, pronouns,
       prepositions, conjunctions, auxiliaries and the commonest adverbs,
    3. or looks like an "-ly" adverb (longer than 4 letters, not in `LY_NON_ADVERBS`).
  Everything else is taken to be a noun, verb or adjective. Caption vocabularies are dominated
  by those, so this agrees with spaCy on most words; it errs on rarer adverbs (e.g. "fast"),
  number words and proper nouns (spaCy: ADV, NUM, PROPN, weight 1; here weight 2).
  benchmarks/notes/tagger_agreement.md measures the agreement.
The tagger used (`Tagger.name`, `Tagger.info`) is recorded in the prepared dataset's metadata
and in prepare_report.json; `check_tagger` compares it with the config's `data.tagger`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # the tokenizer (ftfy) is no dependency of `check_tagger`'s callers
    from data_pipeline.tokenizer import TokenizedCaption

CONTENT_POS = frozenset({"NOUN", "VERB", "ADJ"})
SPACY_MODEL = "en_core_web_md"  # the release's (docs/method.md section 6.1)
SPACY_MODELS = ("en_core_web_md", "en_core_web_sm", "en_core_web_lg")
FALLBACK = "fallback"
PAPER_TAGGER = f"spacy:{SPACY_MODEL}"

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


class TaggerUnavailable(ValueError):
    """spaCy or the requested model is not installed: `reason`, and `hint`, the commands that install them."""

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(f"{reason}; install: {hint}" if hint else reason)
        self.reason, self.hint = reason, hint


class Tagger(Protocol):
    """Marks the content words of cleaned captions, given CLIP's word spans."""

    name: str  # exact identity, with versions: "fallback-stoplist-v1", "spacy-3.8.4/en_core_web_md-3.8.0"
    spec: str  # what `load_tagger` takes: "fallback", "spacy:en_core_web_md"

    @property
    def info(self) -> dict: ...

    def content_flags(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[bool]]: ...


class FallbackTagger:
    """Stop list + "-ly" adverb rule (see the module docstring); needs no model."""

    name = "fallback-stoplist-v1"
    spec = FALLBACK

    @property
    def info(self) -> dict:
        return {"spec": self.spec, "name": self.name}

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

    def __init__(self, nlp, spacy_version: str = "unknown"):
        self.nlp = nlp
        meta = getattr(nlp, "meta", {}) or {}
        self.model = f"{meta.get('lang', 'en')}_{meta.get('name', 'unknown')}"
        self.model_version = str(meta.get("version", "unknown"))
        self.spacy_version = spacy_version
        self.spec = f"spacy:{self.model}"
        self.name = f"spacy-{spacy_version}/{self.model}-{self.model_version}"

    @property
    def info(self) -> dict:
        return {"spec": self.spec, "name": self.name, "spacy_version": self.spacy_version, "model": self.model,
                "model_version": self.model_version}

    def content_flags(self, texts, spans):
        flags = []
        for doc, word_spans in zip(self.nlp.pipe(list(texts), batch_size=512), spans):
            content = [(t.idx, t.idx + len(t.text)) for t in doc if t.pos_ in CONTENT_POS and not t.is_stop]
            flags.append([any(a < ce and cs < b for cs, ce in content) for a, b in word_spans])
        return flags


def parse_tagger(spec: str) -> str:
    """The normal form of a tagger spec: "fallback" or "spacy:<model>" ("spacy" alone: the release's model)."""
    kind, _, model = str(spec).partition(":")
    if kind == FALLBACK and not model:
        return FALLBACK
    if kind == "spacy" and (model or SPACY_MODEL) in SPACY_MODELS:
        return f"spacy:{model or SPACY_MODEL}"
    raise ValueError(f"tagger must be 'fallback' or 'spacy:MODEL' with MODEL one of {', '.join(SPACY_MODELS)}; got {spec!r}")


def install_hint(model: str = SPACY_MODEL) -> str:
    return f"pip install -e '.[spacy]' && python -m spacy download {model}"


def load_tagger(spec: str) -> Tagger:
    """The tagger of `spec` (see `parse_tagger`); `TaggerUnavailable`, with how to install, when spaCy
    or its model is missing: never a silent switch to the fallback, whose weights differ."""
    spec = parse_tagger(spec)
    if spec == FALLBACK:
        return FallbackTagger()
    model = spec.partition(":")[2]
    try:
        import spacy
    except ImportError:
        raise TaggerUnavailable("spaCy is not installed", install_hint(model)) from None
    try:
        # POS tags need the tagger and attribute ruler only; the rest would just cost time.
        nlp = spacy.load(model, exclude=["parser", "ner", "lemmatizer"])
    except Exception as e:  # OSError when the model is not installed
        raise TaggerUnavailable(f"spaCy's {model} model does not load ({type(e).__name__}: {e})",
                                f"python -m spacy download {model}") from None
    return SpacyTagger(nlp, spacy_version=spacy.__version__)


def tagger_spec_of(metadata: dict) -> str | None:
    """The spec of the tagger a prepared dataset's metadata records; None when it records none."""
    info = metadata.get("tagger_info")
    if isinstance(info, dict) and info.get("spec"):
        return str(info["spec"])
    name = metadata.get("tagger")  # sets prepared before `tagger_info`: "spacy-3.7.5/core_web_sm-3.7.1"
    if not name:
        return None
    if str(name).startswith(FALLBACK):
        return FALLBACK
    model = str(name).rsplit("/", 1)[-1].rsplit("-", 1)[0]
    return f"spacy:{model if model.startswith('en_') else 'en_' + model}"


def check_tagger(expected: str, metadata: dict) -> str | None:
    """A warning when a prepared dataset's word weights come from another tagger than `expected`
    (the config's `data.tagger`), None when they match."""
    expected = parse_tagger(expected)
    found = tagger_spec_of(metadata)
    if found == expected:
        return None
    dataset = metadata.get("dataset", "?")
    recorded = f"tagger {found!r} ({metadata.get('tagger')})" if found else "no recorded tagger"
    option = "--tagger fallback" if expected == FALLBACK else f"--tagger spacy --spacy-model {expected.partition(':')[2]}"
    paper = ", the paper's release tags with spaCy's en_core_web_md (docs/method.md section 6.1)" if found and found != PAPER_TAGGER else ""
    return (f"WORD WEIGHTS MISMATCH: dataset {dataset} was prepared with {recorded}, but data.tagger is {expected!r}: "
            f"the textual attention's word weights (docs/method.md section 2.2) are not the ones the config asks for{paper}. "
            f"Prepare the set again (tvr-jax prepare --dataset {dataset} {option} --rebuild ...) or set "
            f"--config.data.tagger={found or '...'} to accept them.")


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
