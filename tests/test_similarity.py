"""DMAE similarity (docs/method.md section 2) against a plain per-pair, per-token reference.

The reference is written from the equations with Python loops over pairs and tokens. It runs
twice: in float64 numpy for the forward value, and with jnp float64 values (jax.enable_x64)
under jax.grad for the gradient. Discrete choices (argmaxes) are always made on the float64
numpy copy of the inputs, so the jnp run differentiates the same piecewise-smooth expression.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvr_jax.similarity import INTERACTIONS, WTIHeads, dmae_similarity, pooled_cosine_similarity

B_T, B_V, L, T, D = 3, 5, 5, 4, 8


# ----------------------------------------------------------------------------- inputs
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(seed=0, b_t=B_T, b_v=B_V, num_words=L, num_frames=T, dim=D):
    rng = np.random.default_rng(seed)
    word_mask = np.ones((b_t, num_words), bool)
    word_mask[1, 2:] = False            # two valid words
    word_mask[2, 1:] = False            # one valid word
    frame_mask = np.ones((b_v, num_frames), bool)
    frame_mask[1, 1:] = False           # a video with one valid frame
    frame_mask[2, 2:] = False           # two valid frames
    frame_mask[3, 3:] = False
    words = _unit(rng.normal(size=(b_t, num_words, dim)))
    frames = _unit(rng.normal(size=(b_v, num_frames, dim)))
    # Padding carries large garbage: it must never matter.
    words[~word_mask] = 7.0 * rng.normal(size=(int((~word_mask).sum()), dim))
    frames[~frame_mask] = 7.0 * rng.normal(size=(int((~frame_mask).sum()), dim))
    weights = rng.integers(1, 3, size=(b_t, num_words)).astype(np.float32)
    weights[~word_mask] = 2.0
    word_logits = rng.normal(size=(b_t, num_words))
    frame_logits = rng.normal(size=(b_v, num_frames))
    word_logits[~word_mask] = 50.0
    frame_logits[~frame_mask] = 50.0
    return dict(
        text_cls=_unit(rng.normal(size=(b_t, dim))).astype(np.float32),
        words=words.astype(np.float32), word_weights=weights, word_mask=word_mask,
        frames=frames.astype(np.float32), frame_mask=frame_mask,
        word_logits=word_logits.astype(np.float32), frame_logits=frame_logits.astype(np.float32))


DIFF_KEYS = ("text_cls", "words", "frames", "word_logits", "frame_logits")


# ----------------------------------------------------------------------------- reference
# Which token sets each interaction scores and how it weights them (docs/method.md section 2.3),
# written out independently of the implementation's dispatch.
SENTENCE_SETS = {"ti", "wti", "att_ti", "att_wti", "att_wti_norm"}  # S({t_cls}, F) enters
WORD_SETS = {"att_ti", "att_wti", "att_wti_norm", "words_ti", "words_wti_norm"}  # S(W, F) enters
WORD_WEIGHTING = {"att_ti": "mean", "words_ti": "mean", "att_wti": "release",
                  "words_wti_norm": "renormalised", "att_wti_norm": "renormalised"}
FRAME_SOFTMAX = {"wti", "att_wti", "words_wti_norm", "att_wti_norm"}  # beta = softmax(g_v)


def ref_token_weights(xp, values, masks_np, interaction, textual_attention, a):
    """alpha_a (L,) for the words of text a (docs/method.md 2.2 / 2.3)."""
    mask = masks_np["word_mask"][a]
    omega = [(values["word_weights"][a][t] if textual_attention else 1.0) if mask[t] else 0.0
             for t in range(len(mask))]
    kind = WORD_WEIGHTING[interaction]
    if kind == "release":
        # alpha_t = omega_t * exp(g_t) / sum_{u: omega_u > 0} exp(g_u): a softmax over the words
        # with nonzero omega, then omega, and no renormalisation (sum(alpha) in [1, 2]).
        support = [t for t in range(len(mask)) if mask[t] and float(masks_np["omega"][a][t]) > 0]
        if not support:
            return [0.0] * len(mask)
        z = sum(xp.exp(values["word_logits"][a][t]) for t in support)
        return [omega[t] * xp.exp(values["word_logits"][a][t]) / z if t in support else 0.0
                for t in range(len(mask))]
    if kind == "renormalised":
        omega = [omega[t] * xp.exp(values["word_logits"][a][t]) if mask[t] else 0.0
                 for t in range(len(mask))]
    if not any(mask):
        return omega
    total = sum(omega)
    return [w / total for w in omega]


def ref_frame_weights(xp, values, masks_np, interaction, b):
    mask = masks_np["frame_mask"][b]
    valid = [v for v in range(len(mask)) if mask[v]]
    if not valid:
        return [0.0] * len(mask)
    if interaction in FRAME_SOFTMAX:
        z = sum(xp.exp(values["frame_logits"][b][v]) for v in valid)
        return [xp.exp(values["frame_logits"][b][v]) / z if mask[v] else 0.0
                for v in range(len(mask))]
    return [1.0 / len(valid) if mask[v] else 0.0 for v in range(len(mask))]


def ref_set_similarity(xp, x, x_np, x_valid, alpha, f, f_np, f_valid, beta, va, gamma):
    """S(X_a, F_b) for one text token set and one video.

    The choices (v*, v**, best token of each frame) are made by loops over tokens on the numpy
    copy; the value is then assembled from the chosen entries with a handful of xp operations
    (few enough that jax.grad on jnp inputs stays fast in eager mode).
    """
    vt = [t for t in range(len(x_valid)) if x_valid[t]]
    vv = [v for v in range(len(f_valid)) if f_valid[v]]
    if not vt or not vv:
        return 0.0
    s_np, c_np = x_np @ f_np.T, f_np @ f_np.T
    best, second, has_second = [], [], []
    for t in vt:
        v1 = max(vv, key=lambda v: s_np[t, v])        # first maximum wins ties
        others = [u for u in vv if u != v1]
        v2 = max(others, key=lambda u: c_np[v1, u]) if others else v1
        best.append(v1)
        second.append(v2)
        has_second.append(1.0 if (va and others) else 0.0)
    best_token = [max(vt, key=lambda t: s_np[t, v]) for v in vv]

    s, c = x @ f.T, f @ f.T
    vt_i, v1, v2 = np.array(vt), np.array(best), np.array(second)
    t2v = s[vt_i, v1] + gamma * np.array(has_second) * c[v1, v2] * s[vt_i, v2]
    a = xp.stack([xp.asarray(alpha[t]) for t in vt])
    b = xp.stack([xp.asarray(beta[v]) for v in vv])
    v2t = s[np.array(best_token), np.array(vv)]
    return 0.5 * (xp.sum(a * t2v) + xp.sum(b * v2t))


def ref_dmae(xp, values, inputs_np, interaction, va, ta, gamma=0.5):
    """S (B_t, B_v) with loops over pairs; decisions on inputs_np (float64)."""
    np64 = {k: np.asarray(v, np.float64) if v.dtype != bool else v for k, v in inputs_np.items()}
    np64["omega"] = np.where(np64["word_mask"], np64["word_weights"] if ta else 1.0, 0.0)
    b_t, b_v = len(np64["word_mask"]), len(np64["frame_mask"])
    betas = [ref_frame_weights(xp, values, np64, interaction, b) for b in range(b_v)]
    rows = []
    for a in range(b_t):
        if interaction in WORD_SETS:
            alpha = ref_token_weights(xp, values, np64, interaction, ta, a)
        row = []
        for b in range(b_v):
            beta = betas[b]  # the sentence and the words share the frame weights
            args = (values["frames"][b], np64["frames"][b], np64["frame_mask"][b], beta, va, gamma)
            sims = []
            if interaction in SENTENCE_SETS:  # one token, alpha = 1
                sims.append(ref_set_similarity(xp, values["text_cls"][a][None], np64["text_cls"][a][None],
                                               [True], [1.0], *args))
            if interaction in WORD_SETS:
                sims.append(ref_set_similarity(xp, values["words"][a], np64["words"][a],
                                               np64["word_mask"][a], alpha, *args))
            row.append(sims[0] if len(sims) == 1 else 0.5 * (sims[0] + sims[1]))
        rows.append(row)
    return rows


def _call(inputs, interaction, va, ta, block_size):
    return dmae_similarity(
        inputs["text_cls"], inputs["words"], inputs["word_weights"], inputs["word_mask"],
        inputs["frames"], inputs["frame_mask"], interaction=interaction, visual_attention=va,
        textual_attention=ta, block_size=block_size, word_logits=inputs["word_logits"],
        frame_logits=inputs["frame_logits"])


def _value_and_grad(inputs, probe, **kw):
    @jax.jit
    def f(diff):
        s = _call({**inputs, **diff}, **kw)
        return jnp.sum(s * probe), s
    (_, s), g = jax.value_and_grad(f, has_aux=True)({k: inputs[k] for k in DIFF_KEYS})
    return s, g


# ----------------------------------------------------------------------------- tests
@pytest.fixture
def fast_compile():
    """Skip most XLA optimisation passes: these tests are dominated by compile time."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("interaction,va,ta", list(itertools.product(INTERACTIONS,
                                                                      (True, False),
                                                                      (True, False))))
def test_matches_reference_forward_and_gradient(interaction, va, ta, fast_compile):
    _check_against_reference(make_inputs(), interaction, va, ta)


def test_release_att_wti_softmax_skips_words_with_zero_weight(fast_compile):
    """The release takes the word softmax over omega > 0 (its masked_fill on the textual weight
    mask), so a valid word with omega = 0 changes the other words' alpha."""
    inputs = make_inputs()
    inputs["word_weights"][0, 1] = 0.0
    _check_against_reference(inputs, "att_wti", True, True)
    with_zero = np.asarray(_call(inputs, "att_wti", True, True, 64))
    inputs["word_logits"][0, 1] += 3.0  # the zero-weight word's logit must not matter
    np.testing.assert_array_equal(np.asarray(_call(inputs, "att_wti", True, True, 64)), with_zero)


def _check_against_reference(inputs, interaction, va, ta):
    b_t, b_v = len(inputs["word_mask"]), len(inputs["frame_mask"])
    probe = np.random.default_rng(1).normal(size=(b_t, b_v)).astype(np.float32)
    # block_size 2 does not divide B_v = 5: exercises the padded, blocked path.
    s, grads = _value_and_grad(inputs, probe, interaction=interaction, va=va, ta=ta, block_size=2)

    s_ref = np.array(ref_dmae(np, {k: (v.astype(np.float64) if v.dtype != bool else v)
                                   for k, v in inputs.items()}, inputs, interaction, va, ta),
                     dtype=np.float64)
    np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-5, atol=1e-6)

    def ref_objective(diff):
        rows = ref_dmae(jnp, {**inputs, **diff}, inputs, interaction, va, ta)
        return sum(rows[a][b] * probe[a, b] for a in range(b_t) for b in range(b_v))

    with jax.enable_x64(True):
        ref_grads = jax.grad(ref_objective)({k: jnp.asarray(inputs[k], jnp.float64)
                                             for k in DIFF_KEYS})
    for k in DIFF_KEYS:
        np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(ref_grads[k]),
                                   rtol=1e-4, atol=1e-5, err_msg=k)
    # Padding receives no gradient.
    assert not np.any(np.asarray(grads["words"])[~inputs["word_mask"]])
    assert not np.any(np.asarray(grads["frames"])[~inputs["frame_mask"]])


def test_single_valid_frame_has_no_visual_attention_term(fast_compile):
    inputs = make_inputs()
    call = jax.jit(_call, static_argnums=(1, 2, 3, 4))
    on = np.asarray(call(inputs, "att_ti", True, True, 64))
    off = np.asarray(call(inputs, "att_ti", False, True, 64))
    np.testing.assert_array_equal(on[:, 1], off[:, 1])  # video 1 has one valid frame
    assert np.all(np.abs(on[:, [0, 2, 3, 4]] - off[:, [0, 2, 3, 4]]) > 0)


def test_visual_attention_by_hand():
    """One text token, one video of three frames: t2v = s(v*) + gamma C(v*, v**) s(v**)."""
    f = np.array([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]], np.float32)      # (1, 3, 2)
    x = np.array([[[0.8, 0.6]]], np.float32)                              # (1, 1, 2)
    # s = [0.8, 0.96, 0.6]: v* = 1; C(1, .) = [0.6, -, 0.8]: v** = 2.
    t2v = 0.96 + 0.5 * 0.8 * 0.6
    v2t = np.mean([0.8, 0.96, 0.6])
    s = dmae_similarity(x[:, 0], x, np.ones((1, 1)), np.ones((1, 1), bool), f,
                        np.ones((1, 3), bool), interaction="ti")
    np.testing.assert_allclose(np.asarray(s), [[0.5 * (t2v + v2t)]], rtol=1e-6)


def test_block_size_does_not_change_result(fast_compile):
    """Blocked (with and without padding) == one block; block_size >= B_v == one block."""
    inputs = make_inputs(seed=3, b_v=7)
    probe = np.random.default_rng(2).normal(size=(B_T, 7)).astype(np.float32)
    kw = dict(interaction="att_wti", va=True, ta=True)
    s_full, g_full = _value_and_grad(inputs, probe, block_size=64, **kw)
    for block_size in (1, 3):
        s, g = _value_and_grad(inputs, probe, block_size=block_size, **kw)
        np.testing.assert_allclose(np.asarray(s), np.asarray(s_full), rtol=1e-6, atol=1e-7)
        for k in DIFF_KEYS:
            np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g_full[k]),
                                       rtol=1e-5, atol=1e-7, err_msg=f"{k} block {block_size}")


def np_att_ti(inputs):
    """S of `att_ti` with visual and textual attention, vectorised numpy (float64) from docs/method.md 2."""
    x = {k: np.asarray(v, np.float64) if v.dtype != bool else v for k, v in inputs.items()}
    fm = x["frame_mask"]
    c = np.einsum("bvd,bud->bvu", x["frames"], x["frames"])
    ok = fm[:, :, None] & fm[:, None, :] & ~np.eye(fm.shape[1], dtype=bool)
    nn_idx = np.where(ok, c, -np.inf).argmax(-1)
    c_nn = np.where(ok.any(-1), np.take_along_axis(c, nn_idx[..., None], -1)[..., 0], 0.0)
    beta = fm / fm.sum(-1, keepdims=True)
    b = np.arange(len(fm))[None, :, None]

    def set_sim(tokens, mask, alpha):
        s = np.where(mask[:, None, :, None] & fm[None, :, None, :],
                     np.einsum("and,btd->abnt", tokens, x["frames"]), 0.0)
        v1 = np.where(fm[None, :, None, :], s, -np.inf).argmax(-1)
        v2 = nn_idx[b, v1]
        pick = lambda v: np.take_along_axis(s, v[..., None], -1)[..., 0]
        t2v = pick(v1) + 0.5 * c_nn[b, v1] * pick(v2)
        v2t = np.take_along_axis(s, np.where(mask[:, None, :, None], s, -np.inf).argmax(2)[:, :, None], 2)[:, :, 0]
        return 0.5 * ((alpha[:, None] * t2v).sum(-1) + (beta[None] * v2t).sum(-1))

    omega = np.where(x["word_mask"], x["word_weights"], 0.0)
    one = np.ones((len(omega), 1))
    return 0.5 * (set_sim(x["text_cls"][:, None], one.astype(bool), one)
                  + set_sim(x["words"], x["word_mask"], omega / omega.sum(-1, keepdims=True)))


def test_vectorised_reference_equals_the_loop_reference():
    inputs = make_inputs(seed=5)
    # The loop reference takes its values from the float32 inputs, this one from float64 copies.
    np.testing.assert_allclose(np_att_ti(inputs), ref_dmae(np, inputs, inputs, "att_ti", True, True), atol=1e-7)


def test_more_than_512_texts_against_wide_video_blocks():
    """Rows past 512, compiled with every optimisation. jaxlib 0.10.2's CPU compiler fuses the token
    grid's product with the weighted sums after it (YNNPACK reduce fusion) and got rows 512+ wrong
    while the broadcast weights were the products' first operand (see `_set_similarity`)."""
    inputs = make_inputs(seed=6, b_t=600, b_v=100, num_words=3, num_frames=12, dim=64)  # two blocks, one padded
    s = jax.jit(lambda i: _call(i, "att_ti", True, True, block_size=64))(inputs)
    np.testing.assert_allclose(np.asarray(s), np_att_ti(inputs), atol=1e-5)


def _loss_and_grads_past_512() -> dict:
    """NegNCE over S of 600 texts x 64 videos, and its gradients, for both DMAE weightings."""
    from tvr_jax.losses import dmae_loss

    inputs = make_inputs(seed=7, b_t=600, b_v=64, num_words=3, num_frames=12, dim=64)
    inputs["frames"] = np.concatenate([inputs["frames"]] * 10)[:600]  # square S: 600 videos
    inputs["frame_mask"] = np.concatenate([inputs["frame_mask"]] * 10)[:600]
    inputs["frame_logits"] = np.concatenate([inputs["frame_logits"]] * 10)[:600]
    out = {}
    for interaction in ("att_ti", "att_wti"):
        loss = lambda d: dmae_loss(_call({**inputs, **d}, interaction, True, True, block_size=64), temperature=0.05)
        value, grads = jax.jit(jax.value_and_grad(loss))({k: inputs[k] for k in DIFF_KEYS})
        out.update({f"{interaction}/loss": np.asarray(value), **{f"{interaction}/{k}": np.asarray(g) for k, g in grads.items()}})
    return out


def test_loss_and_gradients_past_512_texts_equal_a_compile_without_ynn_reduce_fusions(tmp_path):
    """The backward pass has its own fused products and sums: compare the default compile with one
    where XLA keeps YNNPACK's reduce fusions out (the fusion type that miscompiled the forward)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "reference.npz"
    # `python -c` imports from its working directory: this file's folder.
    code = "import sys, numpy as np, test_similarity as t; np.savez(sys.argv[1], **t._loss_and_grads_past_512())"
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-reduce", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=os.path.dirname(os.path.abspath(__file__)),
                         env=env, capture_output=True, text=True, timeout=600)
    if run.returncode and "Unknown flag" in run.stderr:
        pytest.skip("this jaxlib does not know --xla_cpu_experimental_ynn_fusion_type")
    assert run.returncode == 0, run.stderr[-3000:]
    reference = np.load(out)
    ours = _loss_and_grads_past_512()
    assert sorted(ours) == sorted(reference.files)
    for k, v in ours.items():
        scale = float(np.abs(reference[k]).max())
        np.testing.assert_allclose(v, reference[k], atol=1e-5 * scale, rtol=0, err_msg=k)


@pytest.mark.parametrize("interaction", ["ti", "words_ti", "att_wti", "words_wti_norm"])
def test_empty_text_and_video_rows_are_finite(interaction, fast_compile):
    inputs = make_inputs()
    inputs["word_mask"][2] = False   # a text without words
    inputs["frame_mask"][4] = False  # a video without frames
    probe = np.ones((B_T, B_V), np.float32)
    s, grads = _value_and_grad(inputs, probe, interaction=interaction, va=True, ta=True,
                               block_size=2)
    assert np.all(np.isfinite(np.asarray(s)))
    for k in DIFF_KEYS:
        assert np.all(np.isfinite(np.asarray(grads[k]))), k
    np.testing.assert_array_equal(np.asarray(s)[:, 4], 0.0)
    if interaction.startswith("words_"):  # only the words enter
        np.testing.assert_array_equal(np.asarray(s)[2, :], 0.0)


def test_sentence_only_interactions_ignore_the_words(fast_compile):
    """The release's 'ti' and 'wti' score t_cls against the frames: words, their weights and
    their logits do not enter (the word logits may be absent)."""
    x = make_inputs()
    other = make_inputs(seed=9)
    for interaction in ("ti", "wti"):
        s = dmae_similarity(x["text_cls"], x["words"], x["word_weights"], x["word_mask"], x["frames"],
                            x["frame_mask"], interaction=interaction, frame_logits=x["frame_logits"])
        s_other_words = dmae_similarity(
            x["text_cls"], other["words"], other["word_weights"], other["word_mask"], x["frames"],
            x["frame_mask"], interaction=interaction, word_logits=other["word_logits"],
            frame_logits=x["frame_logits"])
        np.testing.assert_array_equal(np.asarray(s), np.asarray(s_other_words))


def test_release_and_renormalised_wti_agree_exactly_when_the_weights_sum_to_one(fast_compile):
    """Without textual attention omega = m, so omega * softmax already sums to 1: 'att_wti' (the
    release) and 'att_wti_norm' (ours) coincide; with omega in {1, 2} they differ."""
    x = make_inputs()
    call = jax.jit(_call, static_argnums=(1, 2, 3, 4))
    np.testing.assert_allclose(np.asarray(call(x, "att_wti", True, False, 64)),
                               np.asarray(call(x, "att_wti_norm", True, False, 64)), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(np.asarray(call(x, "att_wti", True, True, 64))
                         - np.asarray(call(x, "att_wti_norm", True, True, 64)))) > 1e-3


def test_argument_validation():
    x = make_inputs()
    args = [x[k] for k in ("text_cls", "words", "word_weights", "word_mask", "frames",
                           "frame_mask")]
    with pytest.raises(ValueError, match="interaction must be one of"):
        dmae_similarity(*args, interaction="cosine")
    for interaction in ("att_wti", "words_wti_norm", "att_wti_norm"):
        with pytest.raises(ValueError, match="word_logits"):
            dmae_similarity(*args, interaction=interaction, frame_logits=x["frame_logits"])
    with pytest.raises(ValueError, match="frame_logits"):
        dmae_similarity(*args, interaction="wti")
    with pytest.raises(ValueError, match="frame_logits"):
        dmae_similarity(*args, interaction="words_wti_norm", word_logits=x["word_logits"])
    with pytest.raises(ValueError, match="frame_mask"):
        dmae_similarity(*args[:5], x["frame_mask"][:, :2])
    with pytest.raises(ValueError, match="frames"):
        dmae_similarity(*args[:4], x["frames"][..., :3], x["frame_mask"])
    with pytest.raises(ValueError, match="word_weights"):
        dmae_similarity(args[0], args[1], args[2][:, :2], *args[3:])
    with pytest.raises(ValueError, match="block_size"):
        dmae_similarity(*args, block_size=0)
    with pytest.raises(ValueError, match="frame_logits"):
        dmae_similarity(*args, interaction="att_wti", word_logits=x["word_logits"],
                        frame_logits=x["word_logits"])


@pytest.mark.parametrize("mlp", [False, True])
def test_wti_heads(mlp):
    x = make_inputs()
    heads = WTIHeads(mlp=mlp)
    params = heads.init(jax.random.key(0), x["words"], x["frames"])
    word_logits, frame_logits = heads.apply(params, x["words"], x["frames"])
    assert word_logits.shape == (B_T, L) and frame_logits.shape == (B_V, T)
    assert set(params["params"]) == {"word_head", "frame_head"}
    expected = {"hidden", "out"} if mlp else {"out"}
    assert set(params["params"]["word_head"]) == set(params["params"]["frame_head"]) == expected
    # Only the per-token logits enter: same features give the same logit.
    head = jax.tree.map(np.asarray, params["params"]["word_head"]["out"])
    if not mlp:
        np.testing.assert_allclose(np.asarray(word_logits),
                                   x["words"] @ head["kernel"][:, 0] + head["bias"],
                                   rtol=1e-5, atol=1e-6)


def _memory(b_v, b_t=32, num_words=16, num_frames=8, dim=8, block_size=16, grad=False):
    x = jax.ShapeDtypeStruct
    shapes = (x((b_t, dim), jnp.float32), x((b_t, num_words, dim), jnp.float32),
              x((b_t, num_words), jnp.float32), x((b_t, num_words), bool),
              x((b_v, num_frames, dim), jnp.float32), x((b_v, num_frames), bool))

    def f(*args):
        return dmae_similarity(*args, block_size=block_size)

    if grad:
        def g(*args):
            return jax.grad(lambda w, fr: jnp.sum(f(args[0], w, *args[2:4], fr, args[5])),
                            argnums=(0, 1))(args[1], args[4])
        f_compiled = jax.jit(g).lower(*shapes).compile()
    else:
        f_compiled = jax.jit(f).lower(*shapes).compile()
    full_grid = b_t * b_v * num_words * num_frames * 4
    return f_compiled.memory_analysis(), full_grid, b_t * b_v * 4, b_v * num_frames * dim * 4


@pytest.mark.parametrize("grad", [False, True])
def test_memory_is_bounded_by_the_block_loop(grad):
    small, _, out_small, in_small = _memory(256, grad=grad)
    large, full_grid, out_large, in_large = _memory(1024, grad=grad)
    growth = large.temp_size_in_bytes - small.temp_size_in_bytes
    # Forward: only output-sized buffers (stacked block results and their transpose) may grow.
    # Gradient: also the frames' cotangent, an input-sized buffer.
    allowed = 2 * (out_large - out_small) + (2 * (in_large - in_small) if grad else 0)
    assert growth <= allowed, (growth, allowed)
    # The full (B_t, B_v, L, T) float32 grid would be 16.8 MB; one block is 1/64 of it and
    # the backward pass keeps a few block-sized buffers.
    assert large.temp_size_in_bytes < full_grid / 8, (large.temp_size_in_bytes, full_grid)


def test_pooled_cosine_baseline_matches_loops():
    x = make_inputs()

    def ref(text_cls, frames):
        out = []
        for a in range(text_cls.shape[0]):
            row = []
            for b in range(frames.shape[0]):
                valid = [v for v in range(frames.shape[1]) if x["frame_mask"][b, v]]
                pooled = sum(frames[b, v] for v in valid) / max(len(valid), 1)
                row.append(jnp.dot(text_cls[a], pooled) / jnp.linalg.norm(pooled))
            out.append(row)
        return jnp.array(out)

    with jax.enable_x64(True):  # the reference in float64
        args = (jnp.asarray(x["text_cls"], jnp.float64), jnp.asarray(x["frames"], jnp.float64))
        want = np.asarray(ref(*args))
        probe = np.random.default_rng(4).normal(size=want.shape)
        g_ref = jax.grad(lambda t, f: jnp.sum(ref(t, f) * probe), argnums=(0, 1))(*args)
    got = pooled_cosine_similarity(x["text_cls"], x["frames"], x["frame_mask"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda t, f: jnp.sum(pooled_cosine_similarity(t, f, x["frame_mask"]) * probe),
                 argnums=(0, 1))(x["text_cls"], x["frames"])
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
