"""TPM-CL pieces (docs/method.md section 4) against plain per-pair, per-token references.

Forward references run in float64 numpy; gradient references run the same code on jnp
float64 (jax.enable_x64) under jax.grad. Discrete choices (masks, maxima) are made on the
numpy copy, so the jnp run differentiates the same piecewise-smooth expression.
"""
import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
import pytest
import scipy.special

from tvr_jax.tpm import (PARTIAL_TYPES, CrossModalWeightPredictor, adaptive_token_mask,
                         mask_visual_tokens, masked_text_globals, pair_similarity, tpm_loss)

B, N_V, L, D = 3, 5, 6, 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype != bool
                        else np.asarray(x), tree)


def _x64_grad(fn, args):
    with jax.enable_x64(True):
        return jax.jit(jax.grad(fn))(jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), args))


def make_tokens(seed=0):
    rng = np.random.default_rng(seed)
    word_mask = np.ones((B, L), bool)
    word_mask[1, 3:] = False
    word_mask[2, 1:] = False          # one valid word
    visual_mask = np.ones((B, N_V), bool)
    visual_mask[0, 4:] = False
    visual_mask[2, 2:] = False
    words = _unit(rng.normal(size=(B, L, D)))
    visual = _unit(rng.normal(size=(B, N_V, D)))
    words[~word_mask] = 5.0 * rng.normal(size=(int((~word_mask).sum()), D))
    visual[~visual_mask] = 5.0 * rng.normal(size=(int((~visual_mask).sum()), D))
    return dict(t_cls=_unit(rng.normal(size=(B, D))).astype(np.float32),
                words=words.astype(np.float32), word_mask=word_mask,
                visual=visual.astype(np.float32), visual_mask=visual_mask)


# ----------------------------------------------------------------------------- references
def ref_predictor(xp, erf, params, q, q_mask, k, k_mask, eps=1e-5):
    """docs/method.md 4.1, one example at a time."""
    p = params["params"]
    out = []
    for b in range(len(q_mask)):
        qb = q[b] * q_mask[b][:, None]
        kb = k[b] * k_mask[b][:, None]
        q_mixed = p["token_mix"]["kernel"].T @ qb                      # (n_k, D)
        h = xp.concatenate([q_mixed, kb], axis=-1)                    # (n_k, 2D)
        mu = xp.mean(h)
        var = xp.mean((h - mu) ** 2)
        h = (h - mu) / xp.sqrt(var + eps) * p["norm"]["scale"] + p["norm"]["bias"]
        z = h @ p["fc1"]["kernel"]
        z = 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
        a = 1.0 / (1.0 + xp.exp(-(z @ p["fc2"]["kernel"])[:, 0]))
        a = a * k_mask[b]
        out.append(a / xp.sum(a))
    return xp.stack(out)


def ref_mask(weights, mask, rho):
    """docs/method.md 4.2 with the 'keep one valid token' rule; loops, float64."""
    weights = np.asarray(weights, np.float64)
    marked = np.zeros(mask.shape, bool)
    for b in range(len(mask)):
        valid = [n for n in range(mask.shape[1]) if mask[b, n]]
        order = sorted(valid, key=lambda n: (-weights[b, n], n))
        c = 0.0
        for rank, n in enumerate(order):
            c += weights[b, n]
            marked[b, n] = c < rho and rank < len(order) - 1
    return marked


def ref_pair(xp, x, x_np, x_valid, y, y_np, y_valid):
    """S_pair (4.3) for one pair: loops over tokens, choices on the numpy copies."""
    xs = [i for i in range(len(x_valid)) if x_valid[i]]
    ys = [j for j in range(len(y_valid)) if y_valid[j]]
    s_np = x_np @ y_np.T
    s = x @ y.T
    best_y = [max(ys, key=lambda j: s_np[i, j]) for i in xs]
    best_x = [max(xs, key=lambda i: s_np[i, j]) for j in ys]
    x2y = xp.mean(s[np.array(xs), np.array(best_y)])
    y2x = xp.mean(s[np.array(best_x), np.array(ys)])
    return 0.5 * (x2y + y2x)


def ref_text_globals(xp, words, word_mask, w, marked, normalize_masked=False):
    t_g, t_pg = [], []
    for b in range(len(word_mask)):
        valid = [l for l in range(word_mask.shape[1]) if word_mask[b, l]]
        kept = [l for l in valid if not marked[b, l]]
        g = sum(w[b][l] * words[b][l] for l in valid)
        t_g.append(g / xp.sqrt(xp.sum(g * g)))
        pg = sum((w[b][l] * words[b][l] for l in kept), 0.0 * words[b][0])
        t_pg.append(pg / xp.sqrt(xp.sum(pg * pg)) if normalize_masked else pg)
    return t_g, t_pg


def ref_tpm(xp, v, v_np, marked_text, partial_type, margin=0.6):
    """L_TPM (4.3), loops over pairs; v: values, v_np: float64 numpy copy for choices."""
    t_g, t_pg = ref_text_globals(xp, v["words"], v_np["word_mask"], v["word_weights"],
                                 marked_text)
    t_g_np, t_pg_np = ref_text_globals(np, v_np["words"], v_np["word_mask"],
                                       v_np["word_weights"], marked_text)
    one = [True]
    l1, l2, l3 = [], [], []
    for i in range(len(v_np["t_cls"])):
        vm = v_np["visual_mask"][i]

        def pair(x, x_np, y_key):
            return ref_pair(xp, x[None], x_np[None], one, v[y_key][i], v_np[y_key][i], vm)

        s_cls = pair(v["t_cls"][i], v_np["t_cls"][i], "visual")
        s_cls_p = pair(v["t_cls"][i], v_np["t_cls"][i], "visual_masked")
        s_g = pair(t_g[i], t_g_np[i], "visual")
        s_g_p = pair(t_g[i], t_g_np[i], "visual_masked")
        s_pg = pair(t_pg[i], t_pg_np[i], "visual")
        l1.append(xp.maximum(margin - s_cls + s_cls_p, 0.0))
        l2.append(xp.maximum(margin - s_g + s_g_p, 0.0))
        l3.append(xp.maximum(margin - s_g + s_pg, 0.0))
    terms = {"l1": sum(l1) / len(l1), "l2": sum(l2) / len(l2), "l3": sum(l3) / len(l3)}
    used = {2: ("l1", "l2"), 3: ("l3",), 4: ("l1", "l2", "l3")}[partial_type]
    return sum(terms[k] for k in used), terms


# ----------------------------------------------------------------------------- predictor
def _predictor_inputs(seed=1, n_q=3, n_k=5):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, n_q, D)).astype(np.float32)
    k = rng.normal(size=(B, n_k, D)).astype(np.float32)
    q_mask = np.ones((B, n_q), bool)
    q_mask[1, 2:] = False
    k_mask = np.ones((B, n_k), bool)
    k_mask[0, 3:] = False
    k_mask[2, 1:] = False
    return q, q_mask, k, k_mask


def _init_predictor(n_q=3, n_k=5, seed=0):
    module = CrossModalWeightPredictor(n_q=n_q, n_k=n_k, dim=D)
    q, q_mask, k, k_mask = _predictor_inputs(n_q=n_q, n_k=n_k)
    params = module.init(jax.random.key(seed), q, q_mask, k, k_mask)
    # Perturb the LayerNorm affine parameters so the test sees them act.
    rng = np.random.default_rng(seed + 10)
    params = jax.tree.map(lambda x: x, params)
    norm = params["params"]["norm"]
    norm["scale"] = norm["scale"] + 0.3 * rng.normal(size=norm["scale"].shape).astype(np.float32)
    norm["bias"] = norm["bias"] + 0.3 * rng.normal(size=norm["bias"].shape).astype(np.float32)
    return module, params


def test_predictor_matches_reference_forward_and_gradient():
    module, params = _init_predictor()
    q, q_mask, k, k_mask = _predictor_inputs()
    assert params["params"]["token_mix"]["kernel"].shape == (3, 5)
    assert params["params"]["norm"]["scale"].shape == (5, 2 * D)
    assert params["params"]["fc1"]["kernel"].shape == (2 * D, D // 2)
    assert params["params"]["fc2"]["kernel"].shape == (D // 2, 1)
    assert "bias" not in params["params"]["fc1"] and "bias" not in params["params"]["token_mix"]

    w = module.apply(params, q, q_mask, k, k_mask)
    w_ref = ref_predictor(np, scipy.special.erf, _f64(params), *_f64((q, q_mask, k, k_mask)))
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5, atol=1e-6)

    probe = np.random.default_rng(3).normal(size=w.shape)
    diff = dict(params=params, q=q, k=k)
    grads = jax.jit(jax.grad(lambda d: jnp.sum(
        module.apply(d["params"], d["q"], q_mask, d["k"], k_mask) * probe)))(diff)
    ref_grads = _x64_grad(lambda d: jnp.sum(ref_predictor(
        jnp, jax.scipy.special.erf, d["params"], d["q"], q_mask, d["k"], k_mask) * probe), diff)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        r = dict(jax.tree_util.tree_leaves_with_path(ref_grads))[path]
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def test_predictor_padding_gets_zero_weight_and_is_ignored():
    module, params = _init_predictor()
    q, q_mask, k, k_mask = _predictor_inputs()
    w = np.asarray(module.apply(params, q, q_mask, k, k_mask))
    np.testing.assert_array_equal(w[~k_mask], 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[2, 0], 1.0)  # a single valid key takes all the weight
    q2, k2 = q.copy(), k.copy()
    q2[~q_mask] = 100.0
    k2[~k_mask] = -100.0
    np.testing.assert_array_equal(np.asarray(module.apply(params, q2, q_mask, k2, k_mask)), w)


def test_predictor_validation():
    module, params = _init_predictor()
    q, q_mask, k, k_mask = _predictor_inputs()
    with pytest.raises(ValueError, match="n_q=3"):
        module.apply(params, q[:, :2], q_mask[:, :2], k, k_mask)
    with pytest.raises(ValueError, match="mask"):
        module.apply(params, q, q_mask, k, k_mask[:, :2])
    with pytest.raises(ValueError, match="feature size"):
        module.apply(params, q, q_mask, k[..., :4], k_mask)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_adaptive_mask_matches_reference(rho):
    rng = np.random.default_rng(4)
    mask = rng.random((8, 7)) < 0.8
    mask[:, 0] = True
    weights = np.where(mask, rng.random((8, 7)), 3.0)   # padding carries big garbage weights
    weights = (weights / np.where(mask, weights, 0).sum(-1, keepdims=True)).astype(np.float32)
    marked = np.asarray(adaptive_token_mask(jnp.asarray(weights), mask, rho))
    np.testing.assert_array_equal(marked, ref_mask(np.where(mask, weights, 0), mask, rho))
    assert not marked[~mask].any()
    assert np.all((mask & ~marked).sum(-1) >= 1)


def test_adaptive_mask_edge_cases():
    def run(w, m, rho=0.6):
        return np.asarray(adaptive_token_mask(jnp.asarray(w, jnp.float32),
                                              np.asarray(m, bool), rho)).tolist()

    # Uniform over 4: cumulative 0.25, 0.5 < 0.6 <= 0.75: the first two (ties: lower index).
    assert run([[0.25] * 4], [[1] * 4]) == [[True, True, False, False]]
    # One valid token: never masked.
    assert run([[1.0, 0.0, 0.0]], [[1, 0, 0]]) == [[False, False, False]]
    # All weight on one token: its cumulative weight 1 >= rho, nothing masked.
    assert run([[0.0, 1.0, 0.0]], [[1, 1, 1]]) == [[False, False, False]]
    # Order follows the weights, not the positions.
    assert run([[0.1, 0.5, 0.4]], [[1, 1, 1]]) == [[False, True, False]]
    # Padding is never marked even with the largest weight, and does not count (if it did,
    # its 0.9 would come first and nothing would be marked).
    assert run([[0.9, 0.3, 0.3, 0.4]], [[0, 1, 1, 1]]) == [[False, False, False, True]]
    assert run([[0.9, 0.7, 0.2, 0.1]], [[0, 1, 1, 1]]) == [[False, False, False, False]]
    # rho above the total weight: all but the least important valid token are marked.
    assert run([[0.2, 0.5, 0.3, 0.0]], [[1, 1, 1, 0]], rho=1.5) == [[False, True, True, False]]
    # A row without valid tokens marks nothing.
    assert run([[0.5, 0.5]], [[0, 0]]) == [[False, False]]


def test_masking_carries_no_gradient():
    x = make_tokens()
    w = jnp.asarray(np.random.default_rng(5).random((B, N_V)), jnp.float32)

    def f(w, visual):
        v_masked, _ = mask_visual_tokens(visual, x["visual_mask"], w, 0.6, straight_through=False)
        return jnp.sum(v_masked * 1.7)

    g_w, g_v = jax.grad(f, argnums=(0, 1))(w, x["visual"])
    np.testing.assert_array_equal(np.asarray(g_w), 0.0)
    _, marked = mask_visual_tokens(x["visual"], x["visual_mask"], w, 0.6)
    expected = np.where(np.asarray(marked)[..., None], np.float32(0), np.float32(1.7))
    expected = np.broadcast_to(expected, x["visual"].shape)
    np.testing.assert_array_equal(np.asarray(g_v), expected)


def test_straight_through_masking_same_forward_gradient_minus_token():
    """Straight-through: V' unchanged, d sum(c * V') / d w_n = -sum_d c V_nd on valid tokens."""
    x = make_tokens()
    w = jnp.asarray(np.random.default_rng(5).random((B, N_V)), jnp.float32)
    c = jnp.asarray(np.random.default_rng(6).normal(size=x["visual"].shape), jnp.float32)
    hard, _ = mask_visual_tokens(x["visual"], x["visual_mask"], w, 0.6, straight_through=False)
    soft, _ = mask_visual_tokens(x["visual"], x["visual_mask"], w, 0.6, straight_through=True)
    np.testing.assert_array_equal(np.asarray(soft), np.asarray(hard))
    g = jax.grad(lambda w: jnp.sum(c * mask_visual_tokens(x["visual"], x["visual_mask"], w, 0.6)[0]))(w)
    ref = -np.sum(np.asarray(c) * np.asarray(x["visual"]), axis=-1) * np.asarray(x["visual_mask"])
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-5, atol=1e-6)


def test_mask_visual_tokens_zeroes_marked_tokens_only():
    x = make_tokens()
    w = np.random.default_rng(6).random((B, N_V)).astype(np.float32)
    v_masked, marked = mask_visual_tokens(x["visual"], x["visual_mask"], w, 0.6)
    marked = np.asarray(marked)
    np.testing.assert_array_equal(marked, ref_mask(np.where(x["visual_mask"], w, 0),
                                                   x["visual_mask"], 0.6))
    np.testing.assert_array_equal(np.asarray(v_masked)[marked], 0.0)
    np.testing.assert_array_equal(np.asarray(v_masked)[~marked], x["visual"][~marked])


# ----------------------------------------------------------------------------- S_pair
def test_pair_similarity_matches_reference_forward_and_gradient():
    x = make_tokens()
    args = (x["words"], x["word_mask"], x["visual"], x["visual_mask"])
    s = pair_similarity(*args)
    v64 = _f64(x)
    s_ref = [ref_pair(np, v64["words"][i], v64["words"][i], x["word_mask"][i], v64["visual"][i],
                      v64["visual"][i], x["visual_mask"][i]) for i in range(B)]
    np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-5, atol=1e-6)

    probe = np.array([0.7, -1.3, 2.0])
    g = jax.jit(jax.grad(lambda w, v: jnp.sum(pair_similarity(w, x["word_mask"], v,
                                                              x["visual_mask"]) * probe),
                         argnums=(0, 1)))(x["words"], x["visual"])
    g_ref = _x64_grad(lambda d: sum(probe[i] * ref_pair(
        jnp, d[0][i], v64["words"][i], x["word_mask"][i], d[1][i], v64["visual"][i],
        x["visual_mask"][i]) for i in range(B)), (x["words"], x["visual"]))
    for a, r in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- text globals
@pytest.mark.parametrize("normalize", [False, True])
def test_masked_text_globals(normalize):
    x = make_tokens()
    w = np.random.default_rng(7).random((B, L)).astype(np.float32)
    w = w * x["word_mask"] / (w * x["word_mask"]).sum(-1, keepdims=True)
    t_g, t_pg, marked = masked_text_globals(x["words"], x["word_mask"], w, 0.6,
                                            normalize_masked_text=normalize)
    ref_marked = ref_mask(w, x["word_mask"], 0.6)
    np.testing.assert_array_equal(np.asarray(marked), ref_marked)
    assert ref_marked.any()
    g_ref, pg_ref = ref_text_globals(np, _f64(x["words"]), x["word_mask"], _f64(w), ref_marked,
                                     normalize_masked=normalize)
    np.testing.assert_allclose(np.asarray(t_g), np.stack(g_ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(t_pg), np.stack(pg_ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(t_g), axis=-1), 1.0, rtol=1e-6)
    if not normalize:   # the masked global is shorter where words were masked (docs/method.md 4.2)
        assert np.all(np.linalg.norm(np.asarray(t_pg), axis=-1)[ref_marked.any(-1)] < 1.0)


# ----------------------------------------------------------------------------- L_TPM
def _tpm_inputs(seed=8):
    x = make_tokens(seed)
    rng = np.random.default_rng(seed)
    w = rng.random((B, L)).astype(np.float32) * x["word_mask"]
    x["word_weights"] = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    v_w = rng.random((B, N_V)).astype(np.float32) * x["visual_mask"]
    x["visual_masked"], visual_marked = mask_visual_tokens(x["visual"], x["visual_mask"],
                                                           v_w / v_w.sum(-1, keepdims=True))
    x["visual_masked"] = np.asarray(x["visual_masked"])
    x["visual_marked"] = np.asarray(visual_marked)
    return x


TPM_DIFF = ("t_cls", "words", "word_weights", "visual", "visual_masked")


def _call_tpm(x, partial_type, **kw):
    return tpm_loss(x["t_cls"], x["words"], x["word_mask"], x["word_weights"], x["visual"],
                    x["visual_mask"], x["visual_masked"], partial_type=partial_type,
                    visual_marked=x["visual_marked"], **kw)


@pytest.mark.parametrize("partial_type", PARTIAL_TYPES)
def test_tpm_loss_matches_reference_forward_and_gradient(partial_type):
    x = _tpm_inputs()
    marked_text = ref_mask(x["word_weights"], x["word_mask"], 0.6)
    assert marked_text.any() and x["visual_marked"].any()

    (loss, parts), grads = jax.jit(jax.value_and_grad(
        lambda d: _call_tpm({**x, **d}, partial_type), has_aux=True))({k: x[k] for k in TPM_DIFF})
    v64 = _f64(x)
    ref_loss, ref_terms = ref_tpm(np, v64, v64, marked_text, partial_type)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
    expected_keys = {2: {"l1", "l2"}, 3: {"l3"}, 4: {"l1", "l2", "l3"}}[partial_type]
    assert expected_keys | {"loss", "text_masked_frac", "visual_masked_frac"} == set(parts)
    for k in expected_keys:
        np.testing.assert_allclose(float(parts[k]), ref_terms[k], rtol=1e-5, atol=1e-6)
        assert 0 < ref_terms[k]  # the hinge is active, so gradients are exercised
    frac = np.mean(marked_text.sum(-1) / x["word_mask"].sum(-1))
    np.testing.assert_allclose(float(parts["text_masked_frac"]), frac, rtol=1e-6)
    vfrac = np.mean(x["visual_marked"].sum(-1) / x["visual_mask"].sum(-1))
    np.testing.assert_allclose(float(parts["visual_masked_frac"]), vfrac, rtol=1e-6)

    ref_grads = _x64_grad(lambda d: ref_tpm(jnp, {**v64, **d}, v64, marked_text,
                                            partial_type)[0], {k: x[k] for k in TPM_DIFF})
    for k in TPM_DIFF:
        np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(ref_grads[k]),
                                   rtol=1e-4, atol=1e-6, err_msg=k)


def test_tpm_loss_inactive_margin_and_validation():
    x = _tpm_inputs()
    loss, grads = jax.value_and_grad(lambda v: _call_tpm({**x, "visual": v}, 4,
                                                         margin=-3.0)[0])(x["visual"])
    assert float(loss) == 0.0 and not np.any(np.asarray(grads))
    # Type 3 needs no masked visual tokens.
    loss3, _ = tpm_loss(x["t_cls"], x["words"], x["word_mask"], x["word_weights"], x["visual"],
                        x["visual_mask"], partial_type=3)
    np.testing.assert_allclose(float(loss3), float(_call_tpm(x, 3)[0]))
    with pytest.raises(ValueError, match="partial_type"):
        _call_tpm(x, 1)
    with pytest.raises(ValueError, match="visual_masked"):
        tpm_loss(x["t_cls"], x["words"], x["word_mask"], x["word_weights"], x["visual"],
                 x["visual_mask"], partial_type=4)
    with pytest.raises(ValueError, match="words"):
        tpm_loss(x["t_cls"], x["words"][:2], x["word_mask"][:2], x["word_weights"][:2],
                 x["visual"], x["visual_mask"], partial_type=3)


@pytest.mark.parametrize("straight_through", [True, False])
def test_tpm_gradients_reach_both_weight_predictors(straight_through):
    """w^t reaches L2/L3 continuously (t_g, t^p_g). w^v only chooses the discrete mask M: with the
    straight-through masking (default) it learns too; without it (the release's behaviour, where
    the pooled visual global is computed but unused) it gets exactly zero gradient."""
    x = make_tokens(9)
    word_xwp = CrossModalWeightPredictor(n_q=N_V, n_k=L, dim=D)
    visual_xwp = CrossModalWeightPredictor(n_q=1, n_k=N_V, dim=D)
    one = np.ones((B, 1), bool)
    params = dict(
        word=word_xwp.init(jax.random.key(1), x["visual"], x["visual_mask"], x["words"],
                           x["word_mask"]),
        visual=visual_xwp.init(jax.random.key(2), x["t_cls"][:, None], one, x["visual"],
                               x["visual_mask"]))

    def loss_fn(p):
        w_t = word_xwp.apply(p["word"], x["visual"], x["visual_mask"], x["words"], x["word_mask"])
        w_v = visual_xwp.apply(p["visual"], x["t_cls"][:, None], one, x["visual"],
                               x["visual_mask"])
        v_masked, _ = mask_visual_tokens(x["visual"], x["visual_mask"], w_v, straight_through=straight_through)
        return tpm_loss(x["t_cls"], x["words"], x["word_mask"], w_t, x["visual"],
                        x["visual_mask"], v_masked, partial_type=4)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert float(loss) > 0
    word_leaves = jax.tree.leaves(grads["word"])
    assert all(np.all(np.isfinite(np.asarray(g))) for g in word_leaves)
    assert all(np.any(np.asarray(g) != 0) for g in word_leaves), "every word-XWP leaf learns"
    visual_leaves = jax.tree.leaves(grads["visual"])
    assert all(np.all(np.isfinite(np.asarray(g))) for g in visual_leaves)
    if straight_through:
        assert all(np.any(np.asarray(g) != 0) for g in visual_leaves), "every visual-XWP leaf learns"
    else:
        assert all(not np.any(np.asarray(g)) for g in visual_leaves)
