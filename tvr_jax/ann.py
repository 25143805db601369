"""First stage of two-stage search: an approximate nearest-neighbour index (faiss) over one vector per video.

What stands for a video is the mean of its valid frame tokens, not renormalised; a query is the
sentence token plus, for the interactions that score words, the textual-attention-weighted mean
of its word tokens, halved. Why: `mean_v <x, f_v> = <x, mean_v f_v>`, so the inner product of
these two vectors is DMAE (docs/method.md 2.3) with every maximum over frames and over words
replaced by a mean. It is a linear lower-bound proxy of the score that ranks candidates; DMAE
re-ranks them. BENCHMARKS.md ("Two-stage search") measures this choice against the alternatives
(the sentence token alone; every frame indexed, results grouped by video) by recall against the
exhaustive DMAE ranking.

Index kinds: exact inner product (`IndexFlatIP`) up to FLAT_MAX videos, where scanning every
vector costs a few milliseconds; above it an inverted file with 8-bit scalar-quantised vectors
(`IVF{nlist},SQ8`, inner product), which scans `nprobe` of `nlist` lists per query. Both accept
`add` after training, which `tvr-jax export --append` uses.
"""

from __future__ import annotations

import os

import numpy as np

FLAT_MAX = 32_768
TRAIN_POINTS_PER_LIST = 32  # k-means sample per list: enough for centroids of a first stage that is re-ranked anyway
WORD_INTERACTIONS = ("att_ti", "att_wti", "att_wti_norm", "words_ti", "words_wti_norm")
SENTENCE_INTERACTIONS = ("ti", "wti", "att_ti", "att_wti", "att_wti_norm", "cosine")
QUERY_DESCRIPTION = "sentence token and textual-attention-weighted mean of word tokens, averaged (as the interaction uses them)"


def _faiss():
    import faiss  # imported late: only search and export need it

    return faiss


def pooled_vectors(frames: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
    """(N, D) float32: the mean of each video's valid frame tokens (not renormalised)."""
    mask = np.asarray(frame_mask, np.float32)
    total = np.einsum("ntd,nt->nd", np.asarray(frames, np.float32), mask)
    return total / np.maximum(mask.sum(1, keepdims=True), 1.0)


def query_vectors(text: dict, interaction: str) -> np.ndarray:
    """(B, D) float32 first-stage queries of encoded texts (`t_cls`, `words`, `word_mask`, `word_weights`)."""
    t_cls = np.asarray(text["t_cls"], np.float32)
    parts = []
    if interaction in SENTENCE_INTERACTIONS:
        parts.append(t_cls)
    if interaction in WORD_INTERACTIONS:
        omega = np.where(np.asarray(text["word_mask"], bool), np.asarray(text["word_weights"], np.float32), 0.0)
        alpha = omega / np.maximum(omega.sum(-1, keepdims=True), 1e-9)
        parts.append(np.einsum("bl,bld->bd", alpha, np.asarray(text["words"], np.float32)))
    if not parts:
        raise ValueError(f"no first-stage query for interaction {interaction!r}")
    return (sum(parts) / len(parts)).astype(np.float32)


def default_nlist(n: int) -> int:
    """Lists of the inverted file: the power of two nearest 4 sqrt(n) (1024 at 100k, 4096 at 1M)."""
    return int(2 ** round(np.log2(max(4.0 * np.sqrt(n), 1.0))))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: 1/8 of them, at least 16. Measured at 20k videos (BENCHMARKS.md, "Two-stage
    search"): 1/64 of the lists lost a third of the re-ranked top-10 at K = 2000, 1/8 came within 0.02 of an
    exact first stage."""
    return max(16, nlist // 8)


def build(vectors: np.ndarray, kind: str | None = None, nlist: int | None = None, seed: int = 0):
    """(faiss index holding `vectors`, description). `kind`: 'flat', 'ivf', or None (flat up to FLAT_MAX)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    kind = kind or ("flat" if n <= FLAT_MAX else "ivf")
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"kind": "flat", "factory": "Flat", "metric": "inner_product", "trained_on": 0}
    if kind != "ivf":
        raise ValueError(f"first-stage index kind {kind!r}: use 'flat' or 'ivf'")
    nlist = nlist or default_nlist(n)
    if n < nlist:
        raise ValueError(f"an inverted file of {nlist} lists needs at least {nlist} videos, got {n}")
    index = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    sample = vectors
    if n > TRAIN_POINTS_PER_LIST * nlist:  # a fixed-seed sample: the same export gives the same index
        sample = vectors[np.sort(np.random.default_rng(seed).choice(n, TRAIN_POINTS_PER_LIST * nlist, replace=False))]
    faiss.extract_index_ivf(index).cp.seed = seed
    index.train(sample)
    index.add(vectors)
    return index, {"kind": "ivf", "factory": f"IVF{nlist},SQ8", "metric": "inner_product", "nlist": nlist,
                   "nprobe": default_nprobe(nlist), "trained_on": int(len(sample))}


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (B, min(k, ntotal)); rows -1 where an inverted file found fewer."""
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(int(k), index.ntotal)
    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        # Per call, not set on the shared index: concurrent requests never see each other's setting.
        return index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=int(nprobe)))
    return index.search(queries, k)


def write(index, path: str) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    _faiss().write_index(index, tmp)
    os.replace(tmp, path)


def read(path: str):
    return _faiss().read_index(path)
