"""The Flax CLIP matches transformers' PyTorch CLIPModel (random weights) loaded from local files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tvr_jax import clip  # noqa: E402
from tvr_jax.models import clip_weights  # noqa: E402
from tvr_jax.models.clip import REMAT_POLICIES, MultiHeadAttention  # noqa: E402
from trees import assert_trees_close, largest_entry  # noqa: E402

# Two architectures: one like the tiny preset, one with a patch size, widths, head counts and
# MLP sizes that no preset has (and unequal tower depths).
SHAPES = {
    "small": dict(
        projection_dim=48, vocab=500,
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1),
        vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1, image_size=32, patch_size=8),
    ),
    "odd": dict(
        projection_dim=40, vocab=300,
        # OpenAI files carry no head count (64-wide heads are implied): widths are multiples of 64.
        text=dict(hidden_size=128, intermediate_size=200, num_hidden_layers=3, num_attention_heads=2),
        vision=dict(hidden_size=192, intermediate_size=136, num_hidden_layers=1, num_attention_heads=3, image_size=30, patch_size=6),
    ),
}


def _torch_clip(shape: dict, seed: int):
    torch.manual_seed(seed)
    vocab = shape["vocab"]
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab, max_position_embeddings=77, eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=0, **shape["text"]),
        vision_config=dict(**shape["vision"]),
        projection_dim=shape["projection_dim"],
    )
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1/0 and biases to 0: randomise everything.
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(shape: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    size, vocab = shape["vision"]["image_size"], shape["vocab"]
    images = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    ids = np.zeros((3, 16), np.int64)
    for row, length in enumerate((16, 9, 4)):  # start token, random words, end token, zero padding
        ids[row, 0] = vocab - 2
        ids[row, 1 : length - 1] = rng.integers(1, vocab - 2, size=length - 2)
        ids[row, length - 1] = vocab - 1
    return images, ids


def _torch_reference(model, images, ids):
    with torch.no_grad():
        vis = model.vision_model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
        txt = model.text_model(input_ids=torch.from_numpy(ids))
        return dict(
            image_tokens=model.visual_projection(model.vision_model.post_layernorm(vis.last_hidden_state)).numpy(),
            image=model.visual_projection(vis.pooler_output).numpy(),
            text_tokens=model.text_projection(txt.last_hidden_state).numpy(),
            text=model.text_projection(txt.pooler_output).numpy(),
        )


def _flax_outputs(model, params, images, ids):
    apply = lambda method, x: np.asarray(model.apply({"params": params}, jnp.asarray(x), method=method))
    return dict(
        image_tokens=apply(model.image_tokens, images), image=apply(model.encode_image, images),
        text_tokens=apply(model.text_tokens, ids.astype(np.int32)), text=apply(model.encode_text, ids.astype(np.int32)),
    )


def assert_close(ours: dict, ref: dict, rtol: float = 1e-4):
    for name in ref:
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(ours[name], ref[name], rtol=rtol, atol=rtol * scale, err_msg=name)


def _openai_state_dict(hf_model) -> dict:
    """The same weights in OpenAI CLIP's layout (fused in_proj, (W, D) projections)."""
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    out = {"logit_scale": sd["logit_scale"]}
    rename = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        n = sum(1 for k in sd if k.startswith(f"{tower}.encoder.layers.") and k.endswith("self_attn.q_proj.weight"))
        for i in range(n):
            src, dst = f"{tower}.encoder.layers.{i}", f"{prefix}transformer.resblocks.{i}"
            for part in ("weight", "bias"):
                out[f"{dst}.attn.in_proj_{part}"] = torch.cat([sd[f"{src}.self_attn.{q}_proj.{part}"] for q in "qkv"])
                out[f"{dst}.attn.out_proj.{part}"] = sd[f"{src}.self_attn.out_proj.{part}"]
                for a, b in rename.items():
                    out[f"{dst}.{b}.{part}"] = sd[f"{src}.{a}.{part}"]
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for part in ("weight", "bias"):
            out[f"visual.{ours}.{part}"] = sd[f"vision_model.{theirs}.{part}"]
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    return out


@pytest.fixture(scope="module", params=sorted(SHAPES))
def saved(request, tmp_path_factory):
    shape = SHAPES[request.param]
    model = _torch_clip(shape, seed=len(request.param))
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "hf")
    torch.save(_openai_state_dict(model), root / "openai.pt")
    images, ids = _inputs(shape)
    return dict(shape=shape, root=root, images=images, ids=ids, ref=_torch_reference(model, images, ids), torch_model=model)


def test_hf_folder_matches_pytorch(saved):
    model, params = clip.load(saved["root"] / "hf")
    assert model.config.patch_size == saved["shape"]["vision"]["patch_size"]
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"])


def test_openai_state_dict_matches_pytorch(saved):
    model, params = clip.load(saved["root"] / "openai.pt")
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"])


def test_pytorch_bin_folder(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved["root"] / "hf" / "config.json").read_text())
    torch.save(saved["torch_model"].state_dict(), tmp_path / "pytorch_model.bin")
    model, params = clip.load(tmp_path)
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"])


class _ParamHolder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_torchscript_archive(saved, tmp_path):
    """OpenAI's released .pt files are TorchScript archives: parameters under the same names."""
    state = torch.load(saved["root"] / "openai.pt")
    holder = _ParamHolder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = holder
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, _ParamHolder())
            node = getattr(node, name)
        node.register_parameter(leaf, torch.nn.Parameter(value.half(), requires_grad=False))  # released files are fp16
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(holder), path)
    model, params = clip.load(path)
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"], rtol=2e-2)


@pytest.mark.parametrize("compute", [dict(scan_layers=True), dict(remat=True), dict(scan_layers=True, remat=True),
                                     dict(remat=True, remat_policy="dots_with_no_batch_dims_saveable")])
def test_scan_and_remat_layouts_same_numbers(saved, compute):
    """Per-layer checkpoint parameters, stacked at load time for the scanned (and rematerialised) blocks."""
    model, params = clip.load(saved["root"] / "hf", **compute)
    assert model.config.stacked_layers
    for tower in ("visual", "text"):
        assert set(params[tower]["transformer"]) == {"resblocks"}
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"])


def test_bfloat16_compute_close(saved):
    model, params = clip.load(saved["root"] / "hf", dtype="bfloat16")
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # parameters stay float32
    ours = _flax_outputs(model, params, saved["images"], saved["ids"])
    for name, ref in saved["ref"].items():
        got = ours[name].astype(np.float32)
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
        assert cos.min() > 0.99, (name, cos.min())


def test_convert_weights_roundtrip(saved, tmp_path):
    model, params = clip.load(saved["root"] / "hf")
    clip.save_converted(model.config, params, tmp_path / "converted")
    model2, params2 = clip.load(tmp_path / "converted", scan_layers=True)
    assert model2.config.replace(scan_layers=False) == model.config
    assert_close(_flax_outputs(model2, params2, saved["images"], saved["ids"]), saved["ref"])
    with pytest.raises(FileExistsError, match="already holds"):
        clip.save_converted(model.config, params, tmp_path / "converted")


def test_gradients_flow_through_both_towers(saved):
    model, params = clip.load(saved["root"] / "hf")
    images, ids = jnp.asarray(saved["images"]), jnp.asarray(saved["ids"], jnp.int32)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images, ids)[0] @ model.apply({"params": p}, images, ids)[1].T))(params)
    for tower in ("visual", "text"):
        norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[tower])]
        assert all(np.isfinite(norms)) and min(norms) > 0, tower


# ----------------------------------------------------------------------------------------------
# Bad checkpoints: clear errors.
# ----------------------------------------------------------------------------------------------
def test_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        clip.load(tmp_path / "nowhere.pt")


def test_wrong_shape_names_parameter_and_shapes(saved, tmp_path):
    state = torch.load(saved["root"] / "openai.pt")
    state["visual.ln_post.bias"] = state["visual.ln_post.bias"][:-1].contiguous()
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(clip.CheckpointError, match=r"'visual\.ln_post\.bias' has shape \(\d+,\).*needs \(\d+,\)"):
        clip.load(tmp_path / "bad.pt")


def test_missing_parameter_named(saved, tmp_path):
    state = torch.load(saved["root"] / "openai.pt")
    del state["visual.transformer.resblocks.0.mlp.c_fc.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(clip.CheckpointError, match="resblocks.0.mlp.c_fc.bias"):
        clip.load(tmp_path / "missing.pt")


def test_hf_shape_mismatch_with_config(saved, tmp_path):
    import shutil

    shutil.copytree(saved["root"] / "hf", tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["projection_dim"] += 1
    cfg_path.write_text(json.dumps(cfg))
    d = saved["shape"]["projection_dim"]
    with pytest.raises(clip.CheckpointError, match=rf"'text_projection.weight' has shape \({d}, \d+\) .* needs \(\d+, {d + 1}\)"):
        clip.load(tmp_path / "hf")


def test_unknown_architecture_lists_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "text_config": {}}))
    with pytest.raises(clip.CheckpointError, match=r"model_type='siglip'.*fields found: \['model_type', 'text_config'\]"):
        clip.load(tmp_path)
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(clip.CheckpointError, match=r"unknown architecture.*foo\.weight"):
        clip.load(tmp_path / "other.pt")


def test_hf_folder_without_weights(tmp_path, saved):
    (tmp_path / "config.json").write_text((saved["root"] / "hf" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        clip.load(tmp_path)


def test_load_refuses_architecture_overrides(saved):
    with pytest.raises(ValueError, match="compute fields"):
        clip.load(saved["root"] / "hf", vision_layers=3)


def test_presets_have_published_shapes():
    n_params = lambda cfg: sum(int(np.prod(s)) for s in clip_weights.expected_shapes(cfg).values())
    assert n_params(clip.PRESETS["vit_b32"]) == 151_277_313  # OpenAI ViT-B/32
    assert n_params(clip.PRESETS["vit_b16"]) == 149_620_737  # OpenAI ViT-B/16
    assert clip.PRESETS["vit_b16"].grid_size == 14 and clip.PRESETS["vit_b32"].grid_size == 7


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="vision_width=100 is not divisible by vision_heads=3"):
        clip.CLIPConfig(vision_width=100, vision_heads=3)
    with pytest.raises(ValueError, match="activation='relu'"):
        clip.CLIPConfig(activation="relu")
    with pytest.raises(ValueError, match=r"remat_policy='save_everything' \(allowed: \['nothing_saveable', "):
        clip.CLIPConfig(remat=True, remat_policy="save_everything")


def test_stacked_layers_follows_scan_and_remat():
    cfg = clip.CLIPConfig()
    assert not cfg.stacked_layers
    assert cfg.replace(scan_layers=True).stacked_layers and cfg.replace(remat=True).stacked_layers


def test_cli_convert_weights(saved, tmp_path, capsys):
    from tvr_jax import cli

    out = tmp_path / "converted"
    assert cli.main(["convert-weights", str(saved["root"] / "openai.pt"), str(out)]) == 0
    assert "parameters" in capsys.readouterr().out
    model, params = clip.load(out)
    assert_close(_flax_outputs(model, params, saved["images"], saved["ids"]), saved["ref"])
    assert cli.main(["convert-weights", str(tmp_path / "absent.pt"), str(tmp_path / "o2")]) == 2
    assert "absent.pt" in capsys.readouterr().err


def _tiny_inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(3, cfg.image_size, cfg.image_size, 3)), jnp.float32)
    return images, jnp.asarray(rng.integers(1, 1000, size=(3, 12)), jnp.int32)


def _clip_loss_and_grads(model, params, images, ids):
    """A scalar of both towers' outputs, its value and gradients (parameters and images), jitted.

    Fixed random weights of sin(outputs): tanh(img @ txt.T) saturates for these unnormalised
    embeddings, and its gradient then changes by ~5e-4 under a 1e-7 change of the parameters,
    too ill-conditioned to compare two float32 computations.
    """
    rng = np.random.default_rng(1)
    embed_dim = model.config.embed_dim
    w_img, w_txt = (jnp.asarray(rng.normal(size=(len(x), embed_dim)), jnp.float32) for x in (images, ids))

    def f(p, images):
        img, txt = model.apply({"params": p}, images, ids)
        return jnp.sum(jnp.sin(img) * w_img) + jnp.sum(jnp.sin(txt) * w_txt)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, images)


def assert_grads_close(ours, ref, rtol: float = 1e-4):
    """Leaf by leaf to `rtol` of the leaf's largest entry; key biases (no gradient in exact
    arithmetic) both rounding noise, small next to the largest gradient."""
    assert_trees_close(ours, ref, rtol, key_bias_atol=1e-6 * largest_entry(ref))


def test_stacked_and_per_layer_layouts_same_outputs():
    """`stack_layers` / `unstack_layers` convert between the layouts without changing the model."""
    from tvr_jax.models.clip import CLIP, PRESETS

    cfg = PRESETS["tiny"].replace(vision_layers=3, text_layers=2)
    per_layer, scanned = CLIP(cfg), CLIP(cfg.replace(scan_layers=True))
    images, ids = _tiny_inputs(cfg)
    params = per_layer.init(jax.random.PRNGKey(0), images, ids)["params"]
    stacked = clip_weights.stack_layers(params)
    assert jax.tree.structure(scanned.init(jax.random.PRNGKey(0), images, ids)["params"]) == jax.tree.structure(stacked)
    jax.tree.map(np.testing.assert_array_equal, clip_weights.unstack_layers(stacked), params)
    for a, b in zip(per_layer.apply({"params": params}, images, ids), scanned.apply({"params": stacked}, images, ids)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_remat_same_loss_and_gradients(policy):
    """`remat` (any policy) changes what the backward pass keeps, not the numbers: the per-layer
    parameters, stacked for the rematerialised scan, give the plain model's loss and gradients."""
    from tvr_jax.models.clip import CLIP, PRESETS

    cfg = PRESETS["tiny"].replace(vision_layers=3, text_layers=2)
    plain, remat = CLIP(cfg), CLIP(cfg.replace(remat=True, remat_policy=policy))
    images, ids = _tiny_inputs(cfg)
    params = plain.init(jax.random.PRNGKey(0), images, ids)["params"]
    stacked = clip_weights.stack_layers(params)
    assert jax.tree.structure(remat.init(jax.random.PRNGKey(0), images, ids)["params"]) == jax.tree.structure(stacked)
    (v0, (g0, gx0)), (v1, (g1, gx1)) = (_clip_loss_and_grads(plain, params, images, ids),
                                        _clip_loss_and_grads(remat, stacked, images, ids))
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    assert_grads_close(gx1, gx0)
    assert_grads_close(clip_weights.unstack_layers(g1), g0)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_reduces_compiled_memory(scan_layers):
    """The compiled gradient keeps the saving: XLA's CPU pipeline undid per-block `nn.remat`."""
    from tvr_jax.models.clip import Transformer

    x = jax.ShapeDtypeStruct((64, 50, 64), jnp.float32)
    temp = {}
    for remat in (False, True):
        model = Transformer(width=64, layers=6, heads=2, mlp_dim=256, remat=remat, scan_layers=scan_layers)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros(x.shape))["params"])
        grad = jax.jit(jax.grad(lambda p, x, m=model: jnp.sum(m.apply({"params": p}, x) ** 2)))
        temp[remat] = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.5 * temp[False], temp


def test_patch_embedding_equals_the_strided_convolution():
    """The patches @ kernel form computes CLIP's stride-p convolution, with nn.Conv's parameter (name, shape, init)."""
    import flax.linen as nn

    from tvr_jax.models.clip import PatchEmbedding

    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 24, 24, 3)), jnp.float32)
    ours, conv = PatchEmbedding(16, 8), nn.Conv(16, (8, 8), strides=(8, 8), padding="VALID", use_bias=False)
    params = ours.init(jax.random.PRNGKey(1), images)["params"]
    conv_params = conv.init(jax.random.PRNGKey(1), images)["params"]
    np.testing.assert_array_equal(params["kernel"], conv_params["kernel"])
    expected = conv.apply({"params": params}, images).reshape(2, 9, 16)
    np.testing.assert_allclose(ours.apply({"params": params}, images), expected, rtol=1e-5, atol=1e-5)
    grad = lambda f: jax.grad(lambda p: jnp.sum(jnp.sin(f(p))))(params)["kernel"]
    np.testing.assert_allclose(grad(lambda p: ours.apply({"params": p}, images)),
                               grad(lambda p: conv.apply({"params": p}, images)), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Attention core against the equations.
# ----------------------------------------------------------------------------------------------
def _attention_reference(params, x, heads, allowed):
    """softmax over the allowed keys of (x Wq + bq)(x Wk + bk)^T / sqrt(d), times (x Wv + bv), per
    head, then the output projection: the equations written out, in float32."""
    n, length, width = x.shape
    d = width // heads
    proj = lambda name, y: y @ params[name]["kernel"] + params[name]["bias"]
    q, k, v = (proj(name, x).reshape(n, length, heads, d) for name in ("q_proj", "k_proj", "v_proj"))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / d**0.5
    # Softmax does not depend on the shift; the largest logit keeps exp in range.
    e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))) * jnp.broadcast_to(allowed, logits.shape)
    probs = e / e.sum(-1, keepdims=True)
    out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, length, width)
    return proj("out_proj", out)


def _attention_case(masking: str, length: int = 7, n: int = 3):
    """(causal, mask for the module, allowed keys for the reference): padding hides trailing keys."""
    causal = masking in ("causal", "causal+padding")
    padding = (np.arange(length)[None] < np.array([length, 4, 2])[:n, None])[:, None, None, :]  # (n, 1, 1, keys)
    mask = padding if "padding" in masking else None
    allowed = np.ones((1, 1, length, length), bool)
    if causal:
        allowed = allowed & np.tril(np.ones((length, length), bool))
    if mask is not None:
        allowed = allowed & padding
    return causal, mask, allowed


@pytest.mark.parametrize("masking", ["none", "causal", "padding", "causal+padding"])
def test_attention_equals_the_equations(masking):
    """jax.nn.dot_product_attention computes OpenAI's attention: forward and gradient (parameters
    and inputs) equal the written-out equations, with and without masks."""
    causal, mask, allowed = _attention_case(masking)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7, 32)), jnp.float32)
    module = MultiHeadAttention(width=32, heads=4, causal=causal)
    params = module.init(jax.random.PRNGKey(0), x, mask)["params"]
    assert set(params) == {"q_proj", "k_proj", "v_proj", "out_proj"}  # the names checkpoints map to
    ours = lambda p, x: module.apply({"params": p}, x, mask)
    ref = lambda p, x: _attention_reference(p, x, 4, allowed)
    np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
    scalar = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
    (gp, gx), (rp, rx) = (jax.grad(scalar(f), argnums=(0, 1))(params, x) for f in (ours, ref))
    assert_grads_close(gx, rx)
    assert_grads_close(gp, rp)


def _primitive_inputs_and_outputs(jaxpr, name: str) -> list:
    """(input avals, output aval) of every `name` primitive in a jaxpr, nested jaxprs (jit,
    custom_jvp) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(([v.aval for v in eqn.invars], eqn.outvars[0].aval))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _primitive_inputs_and_outputs(inner, name)
    return found


def _primitive_outputs(jaxpr, name: str) -> list:
    return [out for _, out in _primitive_inputs_and_outputs(jaxpr, name)]


def test_bfloat16_matmul_forward_and_gradient_against_numpy():
    """The mixed-precision product: inputs rounded to bfloat16, float32 accumulation and output;
    its backward rounds the cotangent too (autocast's backward), returning float32 gradients."""
    from tvr_jax.models.clip import matmul

    rng = np.random.default_rng(0)
    x, w, g = (rng.standard_normal(shape).astype(np.float32) for shape in ((3, 5, 16), (16, 8), (3, 5, 8)))
    bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)
    out, vjp = jax.vjp(lambda x, w: matmul(x, w, jnp.bfloat16), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(g))
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(out, bf16(x) @ bf16(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, bf16(g) @ bf16(w).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("btd,bte->de", bf16(x), bf16(g)), rtol=1e-5, atol=1e-5)
    # float32 is the plain product and its plain gradient.
    out32, vjp32 = jax.vjp(lambda x, w: matmul(x, w, jnp.float32), jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(out32, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp32(jnp.asarray(g))[1], np.einsum("btd,bte->de", x, g.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_attention_bfloat16_keeps_float32_logits_and_softmax():
    """With bfloat16 compute the products take bfloat16 inputs, the logits and the softmax are
    float32 (as OpenAI's fp32 softmax), the projections accumulate and return float32 (the
    autocast policy, tvr_jax/models/clip.py), and the output stays close to the float32 equations."""
    causal, mask, allowed = _attention_case("causal+padding")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7, 32)), jnp.float32)
    module = MultiHeadAttention(width=32, heads=4, causal=causal, dtype=jnp.bfloat16)
    params = module.init(jax.random.PRNGKey(0), x, mask)["params"]
    jaxpr = jax.make_jaxpr(lambda x: module.apply({"params": params}, x, mask))(x).jaxpr
    exps = _primitive_outputs(jaxpr, "exp")
    assert exps and all(a.dtype == jnp.float32 for a in exps), exps
    products = _primitive_inputs_and_outputs(jaxpr, "dot_general")
    assert len(products) == 4  # q, k and v as one product, logits, probabilities x v, out
    assert all(a.dtype == jnp.bfloat16 for inputs, _ in products for a in inputs), products
    out_dtypes = [out.dtype for _, out in products]
    # Projections and logits in float32; the probabilities' product with v in bfloat16, as jax.nn computes it.
    assert out_dtypes.count(jnp.float32) == 3 and out_dtypes.count(jnp.bfloat16) == 1, out_dtypes
    out = module.apply({"params": params}, x, mask)
    assert out.dtype == jnp.float32
    ref = _attention_reference(params, x, 4, allowed)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=0.05, atol=0.05)
