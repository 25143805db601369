"""Two-stage search (faiss first stage + DMAE re-rank) against exhaustive DMAE and numpy references;
the index's manifest, appends and refusals. Features-only indexes: no model is trained here
(tests/test_end_to_end.py exports and searches a trained one)."""

import json
import os

import numpy as np
import pytest

from tests.test_similarity import np_att_ti
from tvr_jax import ann, search
from tvr_jax.objective import LossConfig

T, D, L = 4, 16, 6
CFG = LossConfig(block_size=8)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_videos(n, seed=0):
    rng = np.random.default_rng(seed)
    frames = _unit(rng.normal(size=(n, T, D)))
    mask = np.arange(T)[None] < rng.integers(1, T + 1, n)[:, None]
    return {"frames": frames.astype(np.float16), "frame_mask": mask}


def make_text(seed=1, like=None):
    """One encoded query; `like` (frames, mask) makes it describe that video."""
    rng = np.random.default_rng(seed)
    words = _unit(rng.normal(size=(1, L, D)))
    if like is not None:
        f = np.asarray(like[0], np.float32)[like[1]]
        words = _unit(f[np.arange(L) % len(f)][None] + 0.1 * rng.normal(size=(1, L, D)))
    mask = np.arange(L)[None] < L - 1
    return {"t_cls": _unit(words[:, :3].mean(1)), "words": words, "word_mask": mask,
            "word_weights": (rng.integers(1, 3, (1, L)) * mask).astype(np.float32)}


def write(tmp_path, name, videos, append=False, chunk=64, **kw):
    n = len(videos["frames"])
    chunks = ({k: v[s : s + chunk] for k, v in videos.items()} for s in range(0, n, chunk))
    return search.write_features_index(str(tmp_path / name), chunks, n, T, D, "att_ti", CFG, append=append, **kw)


def numpy_dmae(text, videos):
    inputs = {"text_cls": text["t_cls"], "words": text["words"], "word_mask": text["word_mask"],
              "word_weights": text["word_weights"], "frames": np.asarray(videos["frames"], np.float32),
              "frame_mask": videos["frame_mask"]}
    return np_att_ti(inputs)[0]


def test_pooled_and_query_vectors_equal_numpy():
    v, t = make_videos(20), make_text()
    f = v["frames"].astype(np.float64)
    pooled = np.stack([f[i][v["frame_mask"][i]].mean(0) for i in range(20)])
    np.testing.assert_allclose(ann.pooled_vectors(v["frames"], v["frame_mask"]), pooled, rtol=1e-5, atol=1e-6)
    alpha = t["word_weights"][0] / t["word_weights"][0].sum()
    q = 0.5 * (t["t_cls"][0] + (alpha[:, None] * t["words"][0]).sum(0))
    np.testing.assert_allclose(ann.query_vectors(t, "att_ti")[0], q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ann.query_vectors(t, "ti")[0], t["t_cls"][0])
    np.testing.assert_allclose(ann.query_vectors(t, "words_ti")[0], (alpha[:, None] * t["words"][0]).sum(0), rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_first_stage_against_numpy_inner_products(kind):
    rng = np.random.default_rng(3)
    vecs, queries = rng.normal(size=(512, D)).astype(np.float32), rng.normal(size=(5, D)).astype(np.float32)
    index, desc = ann.build(vecs, kind=kind, nlist=8 if kind == "ivf" else None)
    scores, rows = ann.search(index, queries, 10, nprobe=8)  # every list: exact up to SQ8 rounding
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    if kind == "flat":
        np.testing.assert_array_equal(rows, truth)
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ vecs.T, truth, 1), rtol=1e-5)
    else:
        assert desc["factory"] == "IVF8,SQ8" and np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)]) >= 0.9


def test_two_stage_with_every_candidate_equals_exhaustive_and_numpy(tmp_path):
    videos = make_videos(150)
    write(tmp_path, "idx", videos)
    engine = search.Searcher(str(tmp_path / "idx"), model=False)
    assert engine.manifest["ann"]["kind"] == "flat" and engine.num_videos == 150
    for seed in range(3):
        text = make_text(seed)
        exact = engine.search_encoded(text, 10, exact=True, chunk=32)
        every = engine.search_encoded(text, 10, candidates=150)
        assert exact.path == "exact" and every.path == "two-stage" and every.candidates == 150
        assert [h.row for h in every.hits] == [h.row for h in exact.hits]
        np.testing.assert_allclose([h.score for h in every.hits], [h.score for h in exact.hits], rtol=1e-6, atol=1e-6)
        ref = numpy_dmae(text, videos)
        np.testing.assert_array_equal([h.row for h in exact.hits], np.argsort(-ref, kind="stable")[:10])
        np.testing.assert_allclose([h.score for h in exact.hits], np.sort(ref)[::-1][:10], rtol=1e-4, atol=1e-5)
        # fewer candidates: the re-ranked scores are the DMAE scores of whichever videos came through
        few = engine.search_encoded(text, 5, candidates=20)
        assert few.candidates == 20 and len(few.hits) == 5
        np.testing.assert_allclose([h.score for h in few.hits], ref[[h.row for h in few.hits]], rtol=1e-4, atol=1e-5)
        assert all(a.score >= b.score for a, b in zip(few.hits, few.hits[1:]))


def test_a_query_describing_a_video_finds_it_through_the_first_stage(tmp_path):
    videos = make_videos(300, seed=4)
    write(tmp_path, "idx", videos)
    engine = search.Searcher(str(tmp_path / "idx"), model=False)
    for row in (0, 77, 299):
        text = make_text(row, like=(videos["frames"][row], videos["frame_mask"][row]))
        assert engine.search_encoded(text, 1, candidates=10).hits[0].row == row


def test_bad_arguments_are_refused(tmp_path):
    write(tmp_path, "idx", make_videos(40))
    engine = search.Searcher(str(tmp_path / "idx"), model=False)
    for k in (0, -1, search.MAX_TOP_K + 1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            engine.search_encoded(make_text(), k)
    with pytest.raises(ValueError, match="candidates"):
        engine.search_encoded(make_text(), 5, candidates=0)
    with pytest.raises(ValueError, match="empty"):
        engine.search("   ")
    with pytest.raises(ValueError, match="without its model"):
        engine.search("a red square")


def test_append_extends_the_index_and_records_it(tmp_path):
    a, b = make_videos(100, seed=5), make_videos(60, seed=6)
    first = write(tmp_path, "idx", a)
    manifest = write(tmp_path, "idx", b, append=True)
    assert [s["num_videos"] for s in manifest["shards"]] == [100, 60] and manifest["num_videos"] == 160
    assert manifest["ann"]["count"] == 160 and manifest["ann"]["generation"] == 1
    assert not os.path.exists(tmp_path / "idx" / first["ann"]["file"])  # the old generation is gone once committed
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    write(tmp_path, "whole", both)
    appended, whole = (search.Searcher(str(tmp_path / n), model=False) for n in ("idx", "whole"))
    assert appended.video_ids == [f"v{r:07d}" for r in range(160)]
    np.testing.assert_array_equal(appended.videos["frames"][np.array([3, 99, 100, 159])],
                                  both["frames"][[3, 99, 100, 159]])
    for seed in range(3):
        text = make_text(seed)
        for kw in ({"exact": True}, {"candidates": 160}, {"candidates": 30}):
            assert [h.row for h in appended.search_encoded(text, 8, **kw).hits] == \
                   [h.row for h in whole.search_encoded(text, 8, **kw).hits], kw


def test_append_from_flat_past_the_threshold_trains_the_inverted_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "FLAT_MAX", 120)
    write(tmp_path, "idx", make_videos(100, seed=7))
    manifest = write(tmp_path, "idx", make_videos(200, seed=8), append=True)
    assert manifest["ann"]["kind"] == "ivf" and manifest["ann"]["count"] == 300
    engine = search.Searcher(str(tmp_path / "idx"), model=False)
    text = make_text(2)
    assert [h.row for h in engine.search_encoded(text, 5, candidates=300, nprobe=64).hits] == \
           [h.row for h in engine.search_encoded(text, 5, exact=True).hits]
    assert len(engine.search_encoded(text, 5, candidates=5, nprobe=1).hits) == 5  # too few found: every list probed


def test_refusals_name_the_index_and_the_fix(tmp_path):
    write(tmp_path, "idx", make_videos(30))
    with pytest.raises(FileExistsError, match="--append"):
        write(tmp_path, "idx", make_videos(30))
    with pytest.raises(FileNotFoundError, match="no index to append to"):
        write(tmp_path, "none", make_videos(30), append=True)
    with pytest.raises(ValueError, match="another model"):
        write(tmp_path, "idx", make_videos(30), append=True, fingerprint="another")
    path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format": "tvr_jax.index/1"}))
    for call in (lambda: search.Searcher(str(tmp_path / "idx"), model=False),
                 lambda: write(tmp_path, "idx", make_videos(30), append=True)):
        with pytest.raises(ValueError, match="older tvr-jax .*export it again"):
            call()
    with pytest.raises(FileNotFoundError, match="not an index"):
        search.load_index(str(tmp_path))


def test_an_interrupted_append_leaves_the_old_index_whole(tmp_path, monkeypatch):
    videos = make_videos(50, seed=9)
    write(tmp_path, "idx", videos)
    before = (tmp_path / "idx" / "manifest.json").read_text()
    text = make_text(1)
    expected = [h.row for h in search.Searcher(str(tmp_path / "idx"), model=False).search_encoded(text, 5).hits]

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing the first stage")

    monkeypatch.setattr(ann, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, "idx", make_videos(40, seed=10), append=True)
    monkeypatch.undo()
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    engine = search.Searcher(str(tmp_path / "idx"), model=False)
    assert engine.num_videos == 50 and [h.row for h in engine.search_encoded(text, 5).hits] == expected
    # the next append replaces the leftover shard folder
    manifest = write(tmp_path, "idx", make_videos(40, seed=10), append=True)
    assert manifest["num_videos"] == 90 and search.Searcher(str(tmp_path / "idx"), model=False).num_videos == 90


def test_search_benchmark_runs_at_test_size(tmp_path):
    """benchmarks/search_ann.py end to end (choose and scale) on a tiny base index."""
    from benchmarks import search_ann

    base = str(tmp_path / "base")
    videos = make_videos(40, seed=11)
    write(tmp_path, "base", videos)
    # a base needs captions: add them to the shard as export writes them
    shard = tmp_path / "base" / "shard-00000"
    texts = [make_text(s, like=(videos["frames"][s], videos["frame_mask"][s])) for s in range(40)]
    for key in ("t_cls", "words", "word_mask", "word_weights"):
        np.save(shard / f"text_{key}.npy", np.concatenate([t[key] for t in texts]))
    manifest = json.loads((tmp_path / "base" / "manifest.json").read_text())
    manifest["shards"][0]["arrays"].update({f"text_{k}": {} for k in ("t_cls", "words", "word_mask", "word_weights")})
    (tmp_path / "base" / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "choose.json"
    search_ann.main(["choose", "--base", base, "--quick", "--videos", "600", "--out", str(out)])
    raw = json.loads(out.read_text())
    assert raw["videos"] == 600 and len(raw["variants"]) == len(search_ann.VARIANTS)
    assert all(0.0 <= r <= 1.0 for v in raw["variants"] for r in v["recall"].values())
    out = tmp_path / "scale.json"
    search_ann.main(["scale", "--base", base, "--quick", "--videos", "700", "--candidates-k", "50", "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["videos"] == 700 and row["candidates"] == 50 and 0.0 <= row["recall_at_10"] <= 1.0
    assert row["p95_ms"] >= row["p50_ms"] > 0 and row["index_GB"] > 0
