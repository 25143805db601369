"""Retrieval metrics against hand-computed cases and plain loops, ties included."""

import numpy as np
import pytest

from tvr_jax.metrics import dual_softmax, multi_caption_metrics, retrieval_metrics


def loop_ranks(scores, truth):
    ranks = []
    for i, t in enumerate(truth):
        ranks.append(sum(1 for j in range(scores.shape[1]) if j != t and scores[i, j] >= scores[i, t]))
    return np.array(ranks)


def loop_metrics(ranks):
    return {"R@1": 100 * np.mean(ranks < 1), "R@5": 100 * np.mean(ranks < 5), "R@10": 100 * np.mean(ranks < 10),
            "MdR": np.median(ranks) + 1, "MnR": np.mean(ranks) + 1}


def test_hand_computed():
    sim = np.array([[0.9, 0.1, 0.2],   # truth first: rank 0
                    [0.8, 0.5, 0.7],   # truth 0.5 below 0.8 and 0.7: rank 2
                    [0.1, 0.9, 0.3]])  # truth 0.3 below 0.9: rank 1
    m = retrieval_metrics(sim)
    assert m == {"R@1": pytest.approx(100 / 3), "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0}


def test_ties_count_against_the_truth():
    m = retrieval_metrics(np.ones((4, 4)))
    assert m["R@1"] == 0.0 and m["MdR"] == 4.0 and m["MnR"] == 4.0
    sim = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert retrieval_metrics(sim)["R@1"] == 50.0  # row 0 ties with a negative: not a hit


def test_matches_loops_with_ties():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 5, size=(40, 40)).astype(float)  # many ties
    ref = loop_metrics(loop_ranks(sim, np.arange(40)))
    assert retrieval_metrics(sim) == pytest.approx(ref)


def test_paragraph_queries_are_the_square_case():
    """DiDeMo / ActivityNet: one paragraph per video, so text->video is the square protocol and
    video->text is the transpose."""
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(25, 25)) + 2 * np.eye(25)
    assert retrieval_metrics(sim.T) == pytest.approx(loop_metrics(loop_ranks(sim.T, np.arange(25))))


def test_multi_caption_groups_of_different_sizes():
    rng = np.random.default_rng(2)
    sizes = [1, 4, 2, 7, 3]
    video_index = np.repeat(np.arange(5), sizes)
    rng.shuffle(video_index)
    sim = rng.integers(0, 6, size=(len(video_index), 5)).astype(float)
    m = multi_caption_metrics(sim, video_index)
    assert m["t2v"] == pytest.approx(loop_metrics(loop_ranks(sim, video_index)))
    group = np.array([[max(sim[c, v] for c in range(len(video_index)) if video_index[c] == g) for g in range(5)]
                      for v in range(5)])
    assert m["v2t"] == pytest.approx(loop_metrics(loop_ranks(group, np.arange(5))))
    assert m["counts"] == {"captions": 17, "videos": 5, "captions_per_video_min": 1, "captions_per_video_max": 7}


def test_multi_caption_rejects_videos_without_captions():
    with pytest.raises(ValueError, match="no caption"):
        multi_caption_metrics(np.zeros((2, 3)), np.array([0, 1]))


def test_dual_softmax_matches_loops():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(6, 5)) * 0.1
    out = dual_softmax(sim, temperature=0.05)
    for i in range(6):
        for j in range(5):
            col = np.exp(sim[:, j] / 0.05)
            assert out[i, j] == pytest.approx(sim[i, j] * col[i] / col.sum())


def test_non_finite_similarity_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.array([[np.nan, 0.0], [0.0, 1.0]]))
