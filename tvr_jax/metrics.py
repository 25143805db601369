"""Retrieval metrics in the CLIP4Clip protocol (docs/method.md section 7), in numpy.

Ranks are 0-based positions of the true candidate after sorting a query's scores in descending
order. Ties are broken pessimistically: every other candidate scoring *at least* as high as the
truth is ranked before it, so a constant similarity gives the worst rank, never the best.
  R@K = 100 * mean(rank < K),  MdR = median(rank) + 1,  MnR = mean(rank) + 1.
"""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10)


def ranks_of_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based pessimistic rank of candidate truth[i] in row i of scores (Q, C)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or truth.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (queries, candidates) and truth (queries,), got {scores.shape}, {truth.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("similarity matrix has non-finite entries: metrics would be meaningless")
    true_score = scores[np.arange(len(truth)), truth][:, None]
    return (scores >= true_score).sum(axis=1) - 1  # candidates other than the truth at or above it


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in RECALL_AT}
    out["MdR"] = float(np.median(ranks) + 1)
    out["MnR"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """R@1/5/10, MdR, MnR for a square query x candidate matrix with the truth on the diagonal."""
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"retrieval_metrics needs a square matrix with the truth on the diagonal, got {sim.shape}")
    return metrics_from_ranks(ranks_of_truth(sim, np.arange(sim.shape[0])))


def multi_caption_metrics(sim: np.ndarray, video_index: np.ndarray) -> dict[str, dict]:
    """Both directions for sets with several captions per video (MSVD).

    sim (num_captions, num_videos), rows = captions; video_index[i] = true video of caption i.
    Text->video ranks the true video for every caption. Video->text scores each video against
    each caption group by the group's best caption (CLIP4Clip), then ranks the video's own group.
    """
    sim = np.asarray(sim)
    video_index = np.asarray(video_index)
    num_captions, num_videos = sim.shape
    if video_index.shape != (num_captions,) or video_index.min() < 0 or video_index.max() >= num_videos:
        raise ValueError(f"video_index must hold one video in [0, {num_videos}) per caption, got shape "
                         f"{video_index.shape}")
    counts = np.bincount(video_index, minlength=num_videos)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} video(s) have no caption: video->text is undefined for them")
    t2v = metrics_from_ranks(ranks_of_truth(sim, video_index))
    # group_scores[v, g] = max over captions c of video g of sim[c, v]
    group_scores = np.full((num_videos, num_videos), -np.inf)
    np.maximum.at(group_scores.T, video_index, sim)
    v2t = metrics_from_ranks(ranks_of_truth(group_scores, np.arange(num_videos)))
    return {"t2v": t2v, "v2t": v2t, "counts": {"captions": int(num_captions), "videos": int(num_videos),
                                               "captions_per_video_min": int(counts.min()),
                                               "captions_per_video_max": int(counts.max())}}


def dual_softmax(sim: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """DSL (test-time trick): S * softmax over the query axis (axis 0), for ranking each row.

    Report its numbers under their own name ('dsl'), never as the headline: it uses the whole
    test set's queries at once.
    """
    sim = np.asarray(sim, np.float64)
    logits = sim / temperature
    logits -= logits.max(axis=0, keepdims=True)
    prior = np.exp(logits)
    return sim * prior / prior.sum(axis=0, keepdims=True)
