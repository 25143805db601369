"""CLIP dual encoder (OpenAI numerics) in Flax Linen, returning token-level features.

Layout and numerics follow OpenAI CLIP: pre-LN residual attention blocks with QuickGELU, a
bias-free patch convolution, class and position embeddings, `ln_pre` and `ln_post` in the image
tower; token and position embeddings, a causal mask, `ln_final` and end-of-text pooling (the
position of the largest token id) in the text tower; bias-free projections to the joint space.

The method needs every token, not only the pooled ones (docs/method.md section 1), so besides
`encode_image` / `encode_text` the model has `image_tokens` (projected CLS + patch tokens per
image) and `text_tokens` (projected token at every position).

Images come in as uint8 RGB (what the input pipeline delivers: a quarter of float32's bytes to
move) and are normalised on the device with CLIP's mean and std (`normalize_pixels`), or as
floats already normalised (PyTorch CLIP's preprocessing output).

Big-model switches: `dtype` (bfloat16) for the matrix products with float32 parameters, stacking the blocks with
`nn.scan` (`scan_layers`: one compiled block instead of L, parameters stacked on a leading layer
axis), and rematerialising each block in the backward pass (`remat`, which implies the stacked
layout; `remat_policy` says what a block keeps). Checkpoints store the per-layer layout;
`clip_weights.stack_layers` / `unstack_layers` convert between the two.

Mixed precision (`dtype="bfloat16"`) is PyTorch autocast's policy: every matrix product takes
bfloat16 inputs, its two backward products the cotangent in bfloat16 too, and each accumulates
and returns float32 (`matmul`, `Dense`); the residual stream, LayerNorm, softmax, activations
and biases stay float32. Rounding every activation to bfloat16 instead (flax's
`nn.Dense(dtype=...)` policy) made the ViT-B/32 step three times slower in bfloat16 than in
float32 on a CPU (benchmarks/notes/bf16_step.md): XLA rounds after every elementwise op, and the
weight gradients of bfloat16 outputs leave the fast matmul library.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# OpenAI CLIP's preprocessing statistics (RGB, on pixel values scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_pixels(images: jax.Array) -> jax.Array:
    """uint8 RGB (..., 3) -> float32 (x / 255 - mean) / std, as one multiply-add per value (the
    same float32 constants as the input pipeline's host normalisation)."""
    mean, std = jnp.asarray(CLIP_MEAN, jnp.float32) * 255.0, jnp.asarray(CLIP_STD, jnp.float32) * 255.0
    return images.astype(jnp.float32) * (1.0 / std) - mean / std


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# `jax.checkpoint_policies` entries `remat_policy` may name: what each block keeps for the backward
# pass besides its input. nothing_saveable: only the input (least memory, one extra forward);
# dots_with_no_batch_dims_saveable: also the Dense outputs (not the attention products);
# dots_saveable: every matrix product, attention included.
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")
# The CLIPConfig fields that change speed and memory, not the parameters' meaning: a run config
# sets them (`model.*`) whatever the architecture's source (preset or checkpoint); a checkpoint
# fixes the rest. Parameters stay float32 (`param_dtype`): the optimizer keeps master weights.
COMPUTE_SWITCHES = ("dtype", "remat", "remat_policy", "scan_layers")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP dual encoder plus the compute switches (all JSON-serialisable)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # Compute switches (COMPUTE_SWITCHES): they change speed and memory, not the parameters'
    # meaning; `scan_layers` and `remat` store the blocks' parameters stacked (`stacked_layers`).
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    scan_layers: bool = False

    def __post_init__(self):
        problems = []
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"remat_policy={self.remat_policy!r} (allowed: {list(REMAT_POLICIES)})")
        if self.activation not in _ACTIVATIONS:
            problems.append(f"activation={self.activation!r} (allowed: {sorted(_ACTIVATIONS)})")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                problems.append(f"{field}={getattr(self, field)!r} (allowed: {sorted(_DTYPES)})")
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if heads <= 0 or width % heads:
                problems.append(f"{tower}_width={width} is not divisible by {tower}_heads={heads}")
        for field in ("embed_dim", "vision_layers", "text_layers", "context_length", "vocab_size"):
            if getattr(self, field) <= 0:
                problems.append(f"{field}={getattr(self, field)} must be positive")
        if problems:
            raise ValueError("invalid CLIPConfig: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def stacked_layers(self) -> bool:
        """Whether the blocks' parameters are stacked (`resblocks`) rather than per layer (`resblocks_{i}`)."""
        return self.scan_layers or self.remat

    def replace(self, **changes: Any) -> "CLIPConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CLIPConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, CLIPConfig] = {
    # The published OpenAI CLIP shapes.
    "vit_b32": CLIPConfig(),
    "vit_b16": CLIPConfig(patch_size=16),
    # For tests and CPU training: the real vocabulary and context, a few small layers.
    "tiny": CLIPConfig(
        embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
        vision_mlp_dim=256, text_width=64, text_layers=2, text_heads=2, text_mlp_dim=256,
    ),
}


def _dtype(name: str):
    return _DTYPES[name]


def _product(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    return jax.lax.dot_general(x.astype(dtype), w.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)


def matmul(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    """x @ w over x's last axis and w's first, the inputs cast to `dtype`, accumulated and
    returned in float32 whatever `dtype` (the mixed-precision policy, module docstring). Below
    float32 the backward products take the cotangent in `dtype` too (`_low_precision_matmul`)."""
    if jnp.dtype(dtype) == jnp.float32:
        return _product(x, w, dtype)
    return _low_precision_matmul(x, w, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_matmul(x, w, dtype):
    return _product(x, w, dtype)


def _low_precision_matmul_fwd(x, w, dtype):
    # Keep the low-precision casts for the backward pass (half the bytes of x and w), and a
    # scalar of each input's dtype to give its gradient back in.
    xc, wc = x.astype(dtype), w.astype(dtype)
    return _product(xc, wc, dtype), (xc, wc, jnp.zeros((), x.dtype), jnp.zeros((), w.dtype))


def _low_precision_matmul_bwd(dtype, residuals, g):
    """dx = g w^T and dw = x^T g with g rounded to `dtype`, as autocast's backward computes them:
    left to autodiff the float32 cotangent would make both float32 products, at float32 speed."""
    xc, wc, x_like, w_like = residuals
    gc = g.astype(dtype)
    dx = jax.lax.dot_general(gc, wc, (((gc.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    rows = tuple(range(gc.ndim - 1))
    dw = jax.lax.dot_general(xc, gc, ((rows, rows), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def dense_params(module: nn.Module, in_features: int, features: int, param_dtype: Any) -> tuple[jax.Array, jax.Array]:
    """`nn.Dense`'s parameters on `module`: `kernel` (in, out), lecun-normal; `bias`, zeros."""
    kernel = module.param("kernel", nn.initializers.lecun_normal(), (in_features, features), param_dtype)
    return kernel, module.param("bias", nn.initializers.zeros, (features,), param_dtype)


class Dense(nn.Module):
    """`nn.Dense`'s parameters and arithmetic, with the product in `dtype` (`matmul`) and a
    float32 output and bias."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel, bias = dense_params(self, x.shape[-1], self.features, self.param_dtype)
        return matmul(x, kernel, self.dtype) + bias.astype(jnp.float32)


class DenseParams(nn.Module):
    """A `Dense` layer's parameters alone (same names and shapes), for layers whose products are
    fused into one: the attention's q, k and v projections."""

    in_features: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        return dense_params(self, self.in_features, self.features, self.param_dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed in float32 (as CLIP does); returns x's dtype."""

    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Self-attention with q/k/v projections (with bias), as OpenAI CLIP computes it; the three
    keep their own parameters and run as one product.

    The core is `jax.nn.dot_product_attention` on q, k, v in the compute dtype: logits q.k /
    sqrt(head_dim) accumulated in float32, masked, softmax in float32, probabilities cast to the
    compute dtype for the product with v; the output is float32. `causal` hides later positions (the text tower); `mask` (bool,
    broadcastable to (batch, heads, query, key), True = attend) hides any others. The function's
    default implementation is XLA's on every backend (jax 0.10 to 0.12); `is_causal` rather than
    a mask array lets a fused kernel skip the hidden half.
    """

    width: int
    heads: int
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):  # x: (batch, length, width)
        head_dim = self.width // self.heads
        dense = lambda name: Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        split = lambda y: y.reshape(*y.shape[:-1], self.heads, head_dim).astype(self.dtype)
        # One product x @ [Wq | Wk | Wv] (the three layers' parameters unchanged): on a CPU a
        # (tokens, 768) x (768, 2304) product and its two backward products run nearer the peak
        # than three 768-wide ones (benchmarks/notes/bf16_step.md).
        qkv = [DenseParams(x.shape[-1], self.width, self.param_dtype, name=name)() for name in ("q_proj", "k_proj", "v_proj")]
        kernel = jnp.concatenate([w for w, _ in qkv], axis=1)
        bias = jnp.concatenate([b for _, b in qkv]).astype(jnp.float32)
        q, k, v = (split(y) for y in jnp.split(matmul(x, kernel, self.dtype) + bias, 3, axis=-1))
        mask = None if mask is None else jnp.asarray(mask, jnp.bool_)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5, is_causal=self.causal)
        return dense("out_proj")(out.reshape(x.shape))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    width: int
    heads: int
    mlp_dim: int
    activation: str = "quick_gelu"
    eps: float = 1e-5
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = LayerNorm(self.eps, self.param_dtype, name="ln_1")(x)
        x = x + MultiHeadAttention(self.width, self.heads, self.causal, name="attn", **kw)(y, mask)
        y = LayerNorm(self.eps, self.param_dtype, name="ln_2")(x)
        y = Dense(self.mlp_dim, name="c_fc", **kw)(y)
        y = Dense(self.width, name="c_proj", **kw)(_ACTIVATIONS[self.activation](y))
        return x + y


def _scan_body(block: nn.Module, x, mask):
    return block(x, mask), None


class Transformer(nn.Module):
    """A stack of residual attention blocks: per-layer `resblocks_{i}` params, or `resblocks`
    stacked on a leading layer axis when the blocks run as one `nn.scan` (`stacked_layers`).

    `remat` recomputes each block in the backward pass, keeping what `remat_policy` allows. It
    implies the scan: with `nn.remat` on unrolled blocks, only `optimization_barrier`s keep the
    recomputation apart from the forward pass, and compilers undo that. XLA's CPU pipeline strips
    the barriers (`cse_barrier_expander`) before a CSE that merges the recomputation back: no
    saving at all. XLA's GPU scheduler may run the recomputation early while the step fits its
    memory limit: the ViT-B/32 train step kept ~440 MiB per clip instead of ~590
    (benchmarks/notes/train_memory.md). Inside a loop the recomputation lives in the backward
    loop's body, where no pass can merge or hoist it; so `prevent_cse=False` (no barriers).
    """

    width: int
    layers: int
    heads: int
    mlp_dim: int
    activation: str = "quick_gelu"
    eps: float = 1e-5
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    scan_layers: bool = False

    @property
    def stacked_layers(self) -> bool:
        return self.scan_layers or self.remat

    @nn.compact
    def __call__(self, x, mask=None):
        kw = dict(width=self.width, heads=self.heads, mlp_dim=self.mlp_dim, activation=self.activation,
                  eps=self.eps, causal=self.causal, dtype=self.dtype, param_dtype=self.param_dtype)
        if not self.stacked_layers:
            for i in range(self.layers):
                x = ResidualAttentionBlock(name=f"resblocks_{i}", **kw)(x, mask)
            return x
        block_cls = ResidualAttentionBlock
        if self.remat:
            if self.remat_policy not in REMAT_POLICIES:
                raise ValueError(f"remat_policy={self.remat_policy!r} (allowed: {list(REMAT_POLICIES)})")
            policy = getattr(jax.checkpoint_policies, self.remat_policy)
            block_cls = nn.remat(block_cls, policy=policy, prevent_cse=False)
        scan = nn.scan(_scan_body, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=nn.broadcast, length=self.layers)
        x, _ = scan(block_cls(name="resblocks", **kw), x, mask)
        return x


def _tower_kwargs(cfg: CLIPConfig, tower: str) -> dict[str, Any]:
    return dict(
        width=getattr(cfg, f"{tower}_width"), layers=getattr(cfg, f"{tower}_layers"),
        heads=getattr(cfg, f"{tower}_heads"), mlp_dim=getattr(cfg, f"{tower}_mlp_dim"),
        activation=cfg.activation, eps=cfg.layer_norm_eps, dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype), remat=cfg.remat, remat_policy=cfg.remat_policy,
        scan_layers=cfg.scan_layers,
    )


class PatchEmbedding(nn.Module):
    """CLIP's stride-p, bias-free p x p convolution, computed as patches @ kernel: (N, H, W, 3) -> (N, P, width).

    The same parameter (`kernel`, (p, p, 3, width), as `nn.Conv`'s) and the same arithmetic; one
    matrix product runs faster than XLA's CPU convolution (benchmarks/notes/train_step.md).
    """

    width: int
    patch: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        p, (n, h, w, c) = self.patch, images.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width), self.param_dtype)
        patches = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, (h // p) * (w // p), p * p * c)  # (row, column, channel) order, as the kernel
        return matmul(patches, kernel.reshape(p * p * c, self.width), self.dtype)


class VisionTransformer(nn.Module):
    """CLIP image tower: images (N, H, W, 3), uint8 RGB or normalised floats -> projected tokens (N, 1 + P, D)."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        if images.shape[-3:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(
                f"images must be (..., {cfg.image_size}, {cfg.image_size}, 3) NHWC for this model, "
                f"got shape {images.shape}"
            )
        if images.dtype == jnp.uint8:
            images = normalize_pixels(images)
        elif not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"images must be uint8 RGB or normalised floats, got dtype {images.dtype}")
        width = cfg.vision_width
        x = PatchEmbedding(width, cfg.patch_size, dtype, pdtype, name="conv1")(images)
        init = nn.initializers.normal(width**-0.5)
        cls = self.param("class_embedding", init, (width,), pdtype)
        pos = self.param("positional_embedding", init, (cfg.grid_size**2 + 1, width), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(jnp.float32), (x.shape[0], 1, width)), x], axis=1)
        x = x + pos.astype(jnp.float32)
        x = LayerNorm(cfg.layer_norm_eps, pdtype, name="ln_pre")(x)
        x = Transformer(**_tower_kwargs(cfg, "vision"), name="transformer")(x)
        # CLIP applies ln_post to the CLS token only; LayerNorm is per token, so applying it to
        # every token gives the same CLS and comparable patch tokens (TS2-Net does the same).
        x = LayerNorm(cfg.layer_norm_eps, pdtype, name="ln_post")(x)
        proj = self.param("proj", init, (width, cfg.embed_dim), pdtype)
        return matmul(x, proj, dtype)


class TextTransformer(nn.Module):
    """CLIP text tower: token ids (N, L <= context) -> projected token features (N, L, D)."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, token_ids):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        length = token_ids.shape[-1]
        if length > cfg.context_length:
            raise ValueError(f"token_ids have length {length} > context_length {cfg.context_length}")
        x = nn.Embed(cfg.vocab_size, cfg.text_width, embedding_init=nn.initializers.normal(0.02),
                     dtype=jnp.float32, param_dtype=pdtype, name="token_embedding")(token_ids)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                         (cfg.context_length, cfg.text_width), pdtype)
        x = x + pos[:length].astype(jnp.float32)
        x = Transformer(**_tower_kwargs(cfg, "text"), causal=True, name="transformer")(x)
        x = LayerNorm(cfg.layer_norm_eps, pdtype, name="ln_final")(x)
        proj = self.param("text_projection", nn.initializers.normal(cfg.text_width**-0.5),
                          (cfg.text_width, cfg.embed_dim), pdtype)
        return matmul(x, proj, dtype)


def end_of_text_index(token_ids: jax.Array) -> jax.Array:
    """Position of the end-of-text token: CLIP's argmax of the ids (the EOT id is the largest)."""
    return jnp.argmax(token_ids, axis=-1)


class CLIP(nn.Module):
    """CLIP dual encoder. `__call__` (used by `init`) returns (image embeddings, text embeddings)."""

    config: CLIPConfig

    def setup(self):
        self.visual = VisionTransformer(self.config)
        self.text = TextTransformer(self.config)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(1 / 0.07)), ())

    def image_tokens(self, images):
        """Projected image tokens (N, 1 + P, D): index 0 is the CLS (frame) token."""
        return self.visual(images)

    def text_tokens(self, token_ids):
        """Projected text tokens (N, L, D) at every position, after `ln_final`."""
        return self.text(token_ids)

    def encode_image(self, images):
        """Projected image embeddings (N, D), not normalised (as PyTorch CLIP)."""
        return self.image_tokens(images)[:, 0]

    def encode_text(self, token_ids):
        """Projected text embeddings (N, D) at the end-of-text token, not normalised."""
        tokens = self.text_tokens(token_ids)
        return jnp.take_along_axis(tokens, end_of_text_index(token_ids)[:, None, None], axis=1)[:, 0]

    def __call__(self, images, token_ids):
        return self.encode_image(images), self.encode_text(token_ids)

    def init_inputs(self, batch: int = 1):
        """Dummy (images, token_ids) of the right shapes for `init` / `jax.eval_shape`."""
        cfg = self.config
        return (jnp.zeros((batch, cfg.image_size, cfg.image_size, 3), jnp.float32),
                jnp.zeros((batch, cfg.context_length), jnp.int32))
