"""How often the built-in fallback tagger gives the word weights spaCy gives (docs/method.md section 2.2).

    python -m benchmarks.tagger_agreement --models en_core_web_md [en_core_web_sm ...] \
        --captions benchmarks/data/captions_msrvtt_style.txt benchmarks/data/captions_activitynet_style.txt

Needs spaCy and the models (`pip install -e '.[spacy]'`, `python -m spacy download en_core_web_md`),
plus the tokenizer's ftfy and regex; not jax. A model is a package name or a model folder,
optionally labelled `LABEL=NAME_OR_FOLDER`. Each caption is cleaned and tokenised exactly as
`tvr-jax prepare` does, tagged by every tagger, and compared:
  - per token: the weight (1 or 2) of each CLIP BPE token between start and end;
  - per word: the content flag of each CLIP word;
  - per caption: all token weights equal;
and the disagreements are grouped by spaCy's part of speech and direction. Also spaCy model
against spaCy model, for scale. Writes benchmarks/results/tagger_agreement.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

from benchmarks.results_io import command_line, cpu_model, table  # standard library only
from data_pipeline import word_weights
from data_pipeline.tokenizer import default_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_spacy(spec: str):
    """(label, SpacyTagger) of `LABEL=NAME_OR_FOLDER` or `NAME_OR_FOLDER`, loaded as `load_tagger` does."""
    import spacy

    label, _, source = spec.rpartition("=")
    nlp = spacy.load(source, exclude=["parser", "ner", "lemmatizer"])
    tagger = word_weights.SpacyTagger(nlp, spacy_version=spacy.__version__)
    return label or tagger.model, tagger


def _shown(arg: str) -> str:
    """A command-line argument as recorded: a model folder (machine-specific) as <model folder>."""
    label, sep, source = arg.rpartition("=")
    return f"{label}{sep}<model folder>" if os.path.isdir(source) and not source.startswith("benchmarks") else arg


def spacy_pos(nlp, texts, spans):
    """Per caption, per CLIP word: the "POS[/stop]" labels of the spaCy tokens overlapping it."""
    out = []
    for doc, word_spans in zip(nlp.pipe(list(texts), batch_size=512), spans):
        out.append(["+".join(f"{t.pos_}{'/stop' if t.is_stop else ''}" for t in doc if a < t.idx + len(t.text) and t.idx < b)
                    for a, b in word_spans])
    return out


def compare(captions, weights_a, weights_b, flags_a, flags_b) -> dict:
    tokens = agree_tokens = words = agree_words = exact = 0
    for c, wa, wb, fa, fb in zip(captions, weights_a, weights_b, flags_a, flags_b):
        inner_a, inner_b = wa[1:-1], wb[1:-1]  # start and end weigh 0 under every tagger
        tokens += len(inner_a)
        agree_tokens += int((inner_a == inner_b).sum())
        words += len(fa)
        agree_words += sum(x == y for x, y in zip(fa, fb))
        exact += bool((wa == wb).all())
    return {"captions": len(captions), "tokens": tokens, "words": words,
            "token_agreement": agree_tokens / tokens, "word_agreement": agree_words / words,
            "caption_exact_agreement": exact / len(captions)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[word_weights.SPACY_MODEL],
                        help="spaCy models (package names or folders), LABEL=... to name one; the first is the reference")
    parser.add_argument("--captions", nargs="+", required=True, help="text files, one caption per line")
    parser.add_argument("--examples", type=int, default=12, help="disagreeing words listed per group")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tagger_agreement.json"))
    args = parser.parse_args()
    import spacy

    tokenizer = default_tokenizer()
    taggers = dict(load_spacy(m) for m in args.models)
    reference = next(iter(taggers))
    fallback = word_weights.FallbackTagger()
    corpora = {}
    for path in args.captions:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        corpora[os.path.basename(path)] = [tokenizer.tokenize_caption(line, 77) for line in lines]
    corpora["all"] = [c for name in list(corpora) for c in corpora[name]]

    results, rows, pair_rows = {}, [], []
    for name, caps in corpora.items():
        texts, spans = [c.text for c in caps], [c.word_spans for c in caps]
        flags = {"fallback": fallback.content_flags(texts, spans)}
        flags.update({label: t.content_flags(texts, spans) for label, t in taggers.items()})
        weights = {k: [word_weights.token_word_weights(c, f) for c, f in zip(caps, fl)] for k, fl in flags.items()}
        results[name] = {}
        for label in taggers:
            r = compare(caps, weights["fallback"], weights[label], flags["fallback"], flags[label])
            r["content_share_fallback"] = sum(map(sum, flags["fallback"])) / r["words"]
            r["content_share_spacy"] = sum(map(sum, flags[label])) / r["words"]
            results[name][f"fallback vs {label}"] = r
            rows.append([name, f"fallback vs {label}", r["captions"], r["words"], r["tokens"],
                         f"{100 * r['word_agreement']:.1f} %", f"{100 * r['token_agreement']:.1f} %",
                         f"{100 * r['caption_exact_agreement']:.1f} %",
                         f"{100 * r['content_share_fallback']:.1f} % / {100 * r['content_share_spacy']:.1f} %"])
        for label in list(taggers)[1:]:
            r = compare(caps, weights[reference], weights[label], flags[reference], flags[label])
            results[name][f"{reference} vs {label}"] = r
            pair_rows.append([name, f"{reference} vs {label}", f"{100 * r['word_agreement']:.1f} %",
                              f"{100 * r['token_agreement']:.1f} %", f"{100 * r['caption_exact_agreement']:.1f} %"])

    # Where the fallback and the reference model disagree, on all captions.
    caps = corpora["all"]
    texts, spans = [c.text for c in caps], [c.word_spans for c in caps]
    pos = spacy_pos(taggers[reference].nlp, texts, spans)
    ref_flags = taggers[reference].content_flags(texts, spans)
    fb_flags = fallback.content_flags(texts, spans)
    groups: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for c, p, fr, ff in zip(caps, pos, ref_flags, fb_flags):
        for word, label, r, f in zip(c.words, p, fr, ff):
            if r != f:
                direction = "fallback 2, spaCy 1" if f else "fallback 1, spaCy 2"
                groups[(direction, label)][word] += 1
    disagreements = sorted(((sum(cnt.values()), d, lab, cnt.most_common(args.examples)) for (d, lab), cnt in groups.items()),
                           key=lambda x: -x[0])
    words_total = sum(len(c.words) for c in caps)
    kind_rows = [[d, lab, n, f"{100 * n / words_total:.2f} %", ", ".join(f"{w} ({k})" for w, k in ex)]
                 for n, d, lab, ex in disagreements]

    models = {label: {"model": t.model, "model_version": t.model_version, "name": t.name} for label, t in taggers.items()}
    meta = {"cpu": cpu_model(), "cpus": os.cpu_count(), "spacy": spacy.__version__, "date": time.strftime("%Y-%m-%d"),
            "command": command_line(_shown), "models": models}
    names = ", ".join(f"{label} = {m['name']}" for label, m in models.items())
    tables = [
        table(f"Word weights: fallback tagger against spaCy ({names})",
              ["captions", "comparison", "captions", "words", "tokens", "per word", "per token", "per caption (exact)",
               "content words fallback / spaCy"], rows),
        table(f"Disagreements of the fallback with {reference}, by spaCy's tag (all captions)",
              ["direction", "spaCy tag(s) of the word", "words", "share of all words", "most frequent"], kind_rows),
    ]
    if pair_rows:
        tables.insert(1, table("For scale: spaCy model against spaCy model",
                               ["captions", "comparison", "per word", "per token", "per caption (exact)"], pair_rows))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump({"meta": meta, "tables": tables, "results": results,
                   "disagreements": [{"direction": d, "spacy_tags": lab, "words": n, "examples": ex}
                                     for n, d, lab, ex in disagreements]}, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    for t in tables:
        print(f"\n{t['title']}\n" + " | ".join(t["columns"]))
        for row in t["rows"]:
            print(" | ".join(map(str, row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
