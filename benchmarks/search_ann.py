"""Two-stage search (faiss first stage, DMAE re-rank) against exhaustive DMAE, on a collection
built from a trained model's exported features.

The collection: the videos of an exported index (`tvr-jax export`, e.g. the synthetic set's
train split under the demo's model), lifted to D = 512 by a fixed random orthonormal map (inner
products unchanged, so the scores are the model's, at ViT-B/32's width and cost), then
replicated: each video is a base video plus a video-wide shift and per-frame noise drawn in all
512 dimensions, and one in ten is a near-duplicate (noise 0.02) of an earlier video of the
collection. Queries are the index's own captions (encoded at export), drawn without replacement.

    # which vectors to index: recall of the re-ranked top-10 against exhaustive DMAE, first stage exact
    python -m benchmarks.search_ann choose --base INDEX --videos 20000 --queries 200
    # the index at scale: build time, size, serving memory, latency p50/p95, recall vs exhaustive
    python -m benchmarks.search_ann scale --base INDEX --videos 100000 1000000 --queries 200
    # either at test size: --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import jax
import numpy as np

from benchmarks.results_io import print_tables, table, write_results
from tvr_jax import ann, search
from tvr_jax.objective import LossConfig, similarity_matrix

D = 512
NEAR_DUPLICATE_SHARE = 0.1
TEXT_KEYS = ("t_cls", "words", "word_mask", "word_weights")


# ---- the collection ------------------------------------------------------------------------------------------------


def load_base(index_dir: str) -> tuple[dict, dict, dict]:
    """(videos {frames, frame_mask}, texts {t_cls, words, word_mask, word_weights}, manifest) of an index."""
    manifest, _, videos = search.load_index(index_dir)
    videos = {k: np.asarray(videos[k][:], np.float32 if k == "frames" else bool) for k in ("frames", "frame_mask")}
    texts = search.load_captions(index_dir)
    return videos, {k: np.asarray(texts[k], np.float32 if texts[k].dtype == np.float16 else None) for k in TEXT_KEYS}, manifest


def lift(dim_in: int, seed: int = 0) -> np.ndarray:
    """(dim_in, D) with orthonormal rows: x @ lift keeps every inner product."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, dim_in)))
    return q.T.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def collection_chunk(base: dict, proj: np.ndarray, start: int, stop: int, seed: int = 0) -> dict:
    """Videos start..stop of the collection (frames float16 (n, T, D), frame_mask): the same rows whatever the chunking."""
    frames, masks = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        dup = i > 0 and rng.random() < NEAR_DUPLICATE_SHARE
        src = int(rng.integers(i)) if dup else None
        if dup:  # a near-duplicate: an earlier video of the collection, slightly perturbed
            f, m = collection_chunk(base, proj, src, src + 1, seed).values()
            f, m = f[0].astype(np.float32), m[0]
            f = _unit(f + 0.02 * rng.normal(size=f.shape).astype(np.float32) / np.sqrt(D))
        else:
            b = int(rng.integers(len(base["frames"])))
            f, m = base["frames"][b] @ proj, base["frame_mask"][b]
            shift = rng.uniform(0.2, 0.6) * rng.normal(size=(1, D)) / np.sqrt(D)
            f = _unit(f + shift + 0.15 * rng.normal(size=f.shape) / np.sqrt(D))
        frames.append(f.astype(np.float16))
        masks.append(m)
    return {"frames": np.stack(frames), "frame_mask": np.stack(masks)}


def build_collection(base: dict, n: int, seed: int = 0, chunk: int = 10_000) -> dict:
    parts = [collection_chunk(base, lift(base["frames"].shape[-1]), s, min(n, s + chunk), seed) for s in range(0, n, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def pick_queries(texts: dict, q: int, proj: np.ndarray, seed: int = 0) -> dict:
    rows = np.sort(np.random.default_rng(seed + 1).choice(len(texts["t_cls"]), min(q, len(texts["t_cls"])), replace=False))
    out = {k: v[rows] for k, v in texts.items()}
    out["t_cls"], out["words"] = out["t_cls"] @ proj, out["words"] @ proj
    return out


# ---- exhaustive reference --------------------------------------------------------------------------------------------


def exhaustive_scores(texts: dict, videos: dict, cfg: LossConfig, chunk: int = 4096, keep: int | None = None):
    """DMAE of every query against every video: the (Q, N) matrix, or with `keep` the running top-`keep` (rows, scores)."""
    fn = jax.jit(lambda t, v: similarity_matrix(t, v, "att_ti", cfg))
    n = len(videos["frames"])
    full, best_s, best_r = [], None, None
    for start in range(0, n, chunk):
        part = {k: np.asarray(v[start : start + chunk]) for k, v in videos.items()}
        part["frames"] = part["frames"].astype(np.float32)
        s = np.asarray(fn(texts, part))
        if keep is None:
            full.append(s)
            continue
        rows = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s = s if best_s is None else np.concatenate([best_s, s], 1)
        rows = rows if best_r is None else np.concatenate([best_r, rows], 1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :keep]  # rows ascend along axis 1: ties to the lower row
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(rows, order, 1)
    return np.concatenate(full, 1) if keep is None else (best_r, best_s)


def recall_of_candidates(sim: np.ndarray, candidates: np.ndarray, top: int = 10) -> float:
    """Mean over queries of |top-`top` of DMAE within the candidates  ∩  exhaustive top-`top`| / top."""
    truth = np.argsort(-sim, axis=1, kind="stable")[:, :top]
    hits = []
    for q in range(len(sim)):
        c = candidates[q][candidates[q] >= 0]
        reranked = c[np.argsort(-sim[q, c], kind="stable")[:top]]
        hits.append(len(set(reranked.tolist()) & set(truth[q].tolist())) / top)
    return float(np.mean(hits))


# ---- choose: what stands for a video ---------------------------------------------------------------------------------


def first_stage_candidates(variant: str, texts: dict, videos: dict, k: int) -> np.ndarray:
    """(Q, k) candidate rows by exact inner product for one representation variant."""
    mask = videos["frame_mask"]
    frames = videos["frames"].astype(np.float32)
    if variant.startswith("pooled"):
        vecs = ann.pooled_vectors(frames, mask)
        if variant == "pooled-cosine/sentence":
            vecs = _unit(vecs)
        q = texts["t_cls"] if variant.endswith("/sentence") else ann.query_vectors(texts, "att_ti")
        return np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :k]
    if variant == "frames+pooled/sentence-max+linearised-DMAE":
        # the sentence half of DMAE without visual attention (1/2 [max_v + mean_v]) exactly, the word half linearised
        per_frame = np.einsum("qd,ntd->qnt", texts["t_cls"], frames)
        best = np.where(mask[None], per_frame, -np.inf).max(-1)
        pooled = ann.pooled_vectors(frames, mask)
        words = 2 * ann.query_vectors(texts, "att_ti") - texts["t_cls"]
        proxy = 0.25 * (best + texts["t_cls"] @ pooled.T) + 0.5 * (words @ pooled.T)
        return np.argsort(-proxy, axis=1, kind="stable")[:, :k]
    if variant == MULTI_VECTOR:
        return multi_vector_candidates(texts, frames, mask, k)
    q = texts["t_cls"] if variant.endswith("/sentence") else ann.query_vectors(texts, "att_ti")
    # every frame indexed; a video's first-stage score is its best frame's
    per_frame = np.einsum("qd,ntd->qnt", q, frames)
    per_video = np.where(mask[None], per_frame, -np.inf).max(-1)
    return np.argsort(-per_video, axis=1, kind="stable")[:, :k]


MULTI_VECTOR = "frames/each query token's top frames (multi-vector)"
FRAMES_PER_TOKEN = 256


def multi_vector_candidates(texts: dict, frames: np.ndarray, mask: np.ndarray, k: int,
                            per_token: int = FRAMES_PER_TOKEN) -> np.ndarray:
    """(Q, k) rows, ColBERT-style: every frame indexed; each query token (the sentence token, weight
    1/2, and each word, 1/2 its textual-attention weight) retrieves its `per_token` nearest frames,
    and a video's proxy is the weighted sum over tokens of its best retrieved frame, or the
    token's cut-off score where none of its frames was retrieved: the t2v maxima of DMAE, read from
    a frame index (exact here, so only the proxy is measured)."""
    n, t, d = frames.shape
    flat, owner, valid = frames.reshape(n * t, d), np.repeat(np.arange(n), t), mask.reshape(-1)
    omega = np.where(texts["word_mask"], texts["word_weights"], 0.0)
    alpha = omega / np.maximum(omega.sum(-1, keepdims=True), 1e-9)
    out = np.empty((len(texts["t_cls"]), k), np.int64)
    for q in range(len(out)):
        words = texts["word_mask"][q].astype(bool)
        tokens = np.concatenate([texts["t_cls"][q][None], texts["words"][q][words]])
        weights = np.concatenate([[0.5], 0.5 * alpha[q][words]])
        sims = tokens @ flat.T
        sims[:, ~valid] = -np.inf
        top = np.argpartition(-sims, per_token, axis=1)[:, :per_token]
        top_sims = np.take_along_axis(sims, top, 1)
        cutoff = top_sims.min(1)
        proxy = np.full(n, float(weights @ cutoff))
        for w, rows, vals, c in zip(weights, top, top_sims, cutoff):
            best = np.full(n, c)
            np.maximum.at(best, owner[rows], vals)
            proxy += w * (best - c)
        out[q] = np.argsort(-proxy, kind="stable")[:k]
    return out


VARIANTS = ("pooled/linearised-DMAE", "pooled/sentence", "pooled-cosine/sentence", "frames/linearised-DMAE",
            "frames/sentence", "frames+pooled/sentence-max+linearised-DMAE", MULTI_VECTOR)


def choose(args) -> None:
    base_videos, base_texts, manifest = load_base(args.base)
    proj = lift(base_videos["frames"].shape[-1])
    t0 = time.perf_counter()
    videos = build_collection(base_videos, args.videos[0], args.seed)
    texts = pick_queries(base_texts, args.queries, proj, args.seed)
    cfg = LossConfig(block_size=64)
    sim = exhaustive_scores(texts, videos, cfg)
    print(f"collection + exhaustive DMAE of {len(sim)} queries x {sim.shape[1]} videos: {time.perf_counter() - t0:.0f} s", flush=True)
    ks = [k for k in args.candidates if k <= sim.shape[1]]
    rows = []
    for variant in VARIANTS:
        cand = first_stage_candidates(variant, texts, videos, max(ks))
        rows.append({"variant": variant, "recall": {k: recall_of_candidates(sim, cand[:, :k]) for k in ks}})
        print(json.dumps(rows[-1]), flush=True)
    # The chosen representation behind the approximate index, per nprobe.
    vecs = ann.pooled_vectors(videos["frames"].astype(np.float32), videos["frame_mask"])
    index, desc = ann.build(vecs, kind="ivf")
    ivf = []
    for nprobe in args.nprobe:
        _, cand = ann.search(index, ann.query_vectors(texts, "att_ti"), max(ks), nprobe=nprobe)
        ivf.append({"nprobe": nprobe, "factory": desc["factory"], "recall": {k: recall_of_candidates(sim, cand[:, :k]) for k in ks}})
        print(json.dumps(ivf[-1]), flush=True)
    raw = {"videos": int(sim.shape[1]), "queries": int(len(sim)), "base": base_description(manifest), "candidates": ks,
           "variants": rows, "ivf": ivf, "seed": args.seed}
    tables = choose_tables(raw)
    print_tables(tables)
    if not args.quick or args.out:
        write_results(args.out or "benchmarks/results/search_choose.json", tables=tables, **raw)


def base_description(manifest: dict) -> dict:
    return {"dataset": manifest.get("dataset"), "split": [s.get("split") for s in manifest.get("shards", [])],
            "videos": manifest.get("num_videos"), "captions": manifest.get("num_captions"),
            "step": (manifest.get("run") or {}).get("step")}


def choose_tables(raw: dict) -> list[dict]:
    ks = raw["candidates"]
    fmt = lambda r: [f"{r[str(k)] if str(k) in r else r[k]:.3f}" for k in ks]
    return [
        table(f"Recall@10 of the re-ranked top-10 against exhaustive DMAE, first stage exact ({raw['videos']:,} videos, "
              f"{raw['queries']} queries)", ["indexed / query vector", *[f"K = {k}" for k in ks]],
              [[r["variant"], *fmt(r["recall"])] for r in raw["variants"]]),
        table("The same through the approximate index (pooled / linearised DMAE)",
              ["index", "nprobe", *[f"K = {k}" for k in ks]],
              [[r["factory"], r["nprobe"], *fmt(r["recall"])] for r in raw["ivf"]]),
    ]


# ---- scale: the real index at 100k and 1M -----------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scale_one(base_videos: dict, base_texts: dict, n: int, args, workdir: str) -> dict:
    proj = lift(base_videos["frames"].shape[-1])
    texts = pick_queries(base_texts, args.queries, proj, args.seed)
    index_dir = os.path.join(workdir, f"index_{n}")
    cfg = LossConfig(block_size=64)
    t0 = time.perf_counter()
    chunks = (collection_chunk(base_videos, proj, s, min(n, s + args.chunk), args.seed) for s in range(0, n, args.chunk))
    search.write_features_index(index_dir, chunks, n, base_videos["frames"].shape[1], D, interaction="att_ti", loss=cfg)
    build_s = time.perf_counter() - t0
    size = {name: sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(index_dir) for f in fs
                      if (name == "all" or f.startswith(name)))
            for name in ("all", "ann", "frames")}
    rss0 = rss_mib()
    engine = search.Searcher(index_dir, model=False)
    one = {k: v[:1] for k, v in texts.items()}
    engine.search_encoded(one, 10)  # compile + page in
    lat, two_stage, k_used = [], [], None
    for q in range(len(texts["t_cls"])):
        t = {k: v[q : q + 1] for k, v in texts.items()}
        t1 = time.perf_counter()
        res = engine.search_encoded(t, 10, candidates=args.candidates_k)
        lat.append(time.perf_counter() - t1)
        two_stage.append([h.row for h in res.hits])
        k_used = res.candidates
    rss_serving = rss_mib()
    t1 = time.perf_counter()
    truth, _ = exhaustive_scores(texts, engine.videos, cfg, keep=10)
    batch_exhaustive_s = time.perf_counter() - t1
    exact_lat = []
    for q in range(min(args.exact_queries, len(texts["t_cls"]))):
        t = {k: v[q : q + 1] for k, v in texts.items()}
        t1 = time.perf_counter()
        engine.search_encoded(t, 10, exact=True)
        exact_lat.append(time.perf_counter() - t1)
    recall = float(np.mean([len(set(a) & set(b.tolist())) / 10 for a, b in zip(two_stage, truth)]))
    out = {"videos": n, "queries": len(lat), "candidates": k_used, "first_stage": engine.ann_desc,
           "recall_at_10": round(recall, 4), "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 2),
           "p95_ms": round(1e3 * float(np.percentile(lat, 95)), 2),
           "exact_p50_s": round(float(np.median(exact_lat)), 3) if exact_lat else None, "exact_queries": len(exact_lat),
           "exhaustive_batch_s": round(batch_exhaustive_s, 1), "build_s": round(build_s, 1),
           "index_GB": round(size["all"] / 1e9, 3), "ann_MB": round(size["ann"] / 1e6, 1),
           "rss_before_MiB": round(rss0, 1), "rss_serving_MiB": round(rss_serving, 1),
           "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(out), flush=True)
    return out


def scale_tables(raw: dict) -> list[dict]:
    return [table("Two-stage against exhaustive DMAE, one query at a time, top-10 (query encoding excluded)",
                  ["videos", "first stage", "K", "recall@10", "p50 ms", "p95 ms", "exhaustive s/query",
                   "exhaustive / two-stage p50", "build s", "index GB", "ANN MB", "RSS serving MiB"],
                  [[r["videos"], r["first_stage"], r["candidates"], r["recall_at_10"], r["p50_ms"], r["p95_ms"],
                    r["exact_p50_s"] if r["exact_p50_s"] is not None else "",
                    f"{1e3 * r['exact_p50_s'] / r['p50_ms']:.0f}x" if r["exact_p50_s"] else "",
                    r["build_s"], r["index_GB"], r["ann_MB"], r["rss_serving_MiB"]] for r in raw["rows"]])]


def scale(args) -> None:
    base_videos, base_texts, manifest = load_base(args.base)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tvr-search-bench-")
    try:
        rows = [scale_one(base_videos, base_texts, n, args, workdir) for n in args.videos]
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    raw = {"rows": rows, "base": base_description(manifest), "seed": args.seed}
    tables = scale_tables(raw)
    print_tables(tables)
    if not args.quick or args.out:
        write_results(args.out or "benchmarks/results/search_scale.json", tables=tables, **raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["choose", "scale"])
    parser.add_argument("--base", required=True, help="an index written by `tvr-jax export`: its videos and captions")
    parser.add_argument("--videos", type=int, nargs="+", default=None, help="collection sizes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 500, 1000, 2000], help="choose: K values")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="choose: nprobe values")
    parser.add_argument("--candidates-k", type=int, default=None, help="scale: K (default: the index's)")
    parser.add_argument("--exact-queries", type=int, default=3, help="scale: queries timed on the exhaustive path")
    parser.add_argument("--chunk", type=int, default=10_000, help="scale: videos generated and written at a time")
    parser.add_argument("--workdir", default=None, help="scale: keep the built indexes here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="test size; writes results only with --out")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.videos is None:
        args.videos = [2000] if args.quick else ([20_000] if args.mode == "choose" else [100_000, 1_000_000])
    if args.quick:
        args.queries = min(args.queries, 8)
        args.candidates = [k for k in args.candidates if k <= 200] or [100]
        args.nprobe = args.nprobe[:2]
        args.exact_queries = min(args.exact_queries, 1)
    (choose if args.mode == "choose" else scale)(args)


if __name__ == "__main__":
    main()
