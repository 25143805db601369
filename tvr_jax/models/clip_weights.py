"""Reading CLIP checkpoints from local files into `CLIP` parameters.

Three sources, detected from the path:
- a Hugging Face CLIP folder: `config.json` + `model.safetensors` (or a sharded
  `model.safetensors.index.json`, or `pytorch_model.bin`);
- an OpenAI CLIP `.pt` file: TorchScript archive or plain state dict (torch is imported only here);
- a folder written by `tvr-jax convert-weights` (`tvr_clip.json` + an orbax `params/` checkpoint).

Each source is mapped to a flat {flax path: array} dict, checked key by key and shape by shape
against the parameters the config implies, then nested (and stacked on a layer axis when
`CLIPConfig.stacked_layers`: `scan_layers` or `remat`). Every
mismatch is an error that names the checkpoint key and both shapes: a wrong checkpoint is never
half-loaded.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax import traverse_util

from tvr_jax.models.clip import CLIP, COMPUTE_SWITCHES, CLIPConfig

Path = tuple[str, ...]
CONVERTED_MANIFEST = "tvr_clip.json"
CONVERTED_FORMAT = "tvr_jax.clip/1"


class CheckpointError(ValueError):
    """A checkpoint that does not fit: names the file, the parameter and what was expected."""


# ----------------------------------------------------------------------------------------------
# Layout helpers: per-layer `resblocks_{i}` <-> stacked `resblocks` (`CLIPConfig.stacked_layers`).
# ----------------------------------------------------------------------------------------------
_LAYER = re.compile(r"resblocks_(\d+)$")


def stack_layers(params: dict) -> dict:
    """Per-layer `resblocks_{i}` subtrees -> one `resblocks` subtree stacked on axis 0."""
    if not isinstance(params, dict):
        return params
    layers = sorted((int(m.group(1)), k) for k in params if (m := _LAYER.match(k)))
    out = {k: stack_layers(v) for k, v in params.items() if not _LAYER.match(k)}
    if layers:
        out["resblocks"] = jax.tree.map(lambda *xs: np.stack(xs), *[params[k] for _, k in layers])
    return out


def unstack_layers(params: dict) -> dict:
    """Inverse of `stack_layers`."""
    if not isinstance(params, dict):
        return params
    out = {}
    for k, v in params.items():
        if k == "resblocks":
            n = jax.tree.leaves(v)[0].shape[0]
            for i in range(n):
                out[f"resblocks_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), v)
        else:
            out[k] = unstack_layers(v)
    return out


def expected_shapes(config: CLIPConfig) -> dict[Path, tuple[int, ...]]:
    """Flat {path: shape} of the per-layer (unscanned) parameters of `CLIP(config)`."""
    model = CLIP(config.replace(scan_layers=False, remat=False))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.init_inputs(1)))["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


# ----------------------------------------------------------------------------------------------
# Key maps. Each yields (flax path, checkpoint key, transform) for one layout.
# ----------------------------------------------------------------------------------------------
def _transpose(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> flax Dense kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def _as_is(w: np.ndarray) -> np.ndarray:
    return w


def _conv_torch_to_flax(w: np.ndarray) -> np.ndarray:
    """torch conv weight (out, in, kh, kw) -> flax kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


Entry = tuple[Path, str, Callable[[np.ndarray], np.ndarray]]


def _qkv_part(i: int, weight: bool) -> Callable[[np.ndarray], np.ndarray]:
    """One of q, k, v from OpenAI's fused `in_proj_weight` (3W, W) / `in_proj_bias` (3W,)."""

    def take(w):
        part = np.split(w, 3, axis=0)[i]
        return _transpose(part) if weight else part

    return take


def _block_entries(ours: Path, theirs: str, openai: bool) -> Iterable[Entry]:
    ln = ("ln_1", "ln_2") if openai else ("layer_norm1", "layer_norm2")
    for our_ln, their_ln in zip(("ln_1", "ln_2"), ln):
        yield ours + (our_ln, "scale"), f"{theirs}.{their_ln}.weight", _as_is
        yield ours + (our_ln, "bias"), f"{theirs}.{their_ln}.bias", _as_is
    attn = "attn" if openai else "self_attn"
    if openai:
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            yield ours + ("attn", name, "kernel"), f"{theirs}.attn.in_proj_weight", _qkv_part(i, True)
            yield ours + ("attn", name, "bias"), f"{theirs}.attn.in_proj_bias", _qkv_part(i, False)
    names = ("out_proj",) if openai else ("q_proj", "k_proj", "v_proj", "out_proj")
    for name in names:
        yield ours + ("attn", name, "kernel"), f"{theirs}.{attn}.{name}.weight", _transpose
        yield ours + ("attn", name, "bias"), f"{theirs}.{attn}.{name}.bias", _as_is
    mlp = ("c_fc", "c_proj") if openai else ("fc1", "fc2")
    for our_fc, their_fc in zip(("c_fc", "c_proj"), mlp):
        yield ours + (our_fc, "kernel"), f"{theirs}.mlp.{their_fc}.weight", _transpose
        yield ours + (our_fc, "bias"), f"{theirs}.mlp.{their_fc}.bias", _as_is


def _ln(ours: Path, theirs: str) -> list[Entry]:
    return [(ours + ("scale",), f"{theirs}.weight", _as_is), (ours + ("bias",), f"{theirs}.bias", _as_is)]


def hf_entries(config: CLIPConfig) -> list[Entry]:
    """Hugging Face `CLIPModel` state-dict keys."""
    e: list[Entry] = [
        (("logit_scale",), "logit_scale", _as_is),
        (("text", "token_embedding", "embedding"), "text_model.embeddings.token_embedding.weight", _as_is),
        (("text", "positional_embedding"), "text_model.embeddings.position_embedding.weight", _as_is),
        (("text", "text_projection"), "text_projection.weight", _transpose),
        (("visual", "class_embedding"), "vision_model.embeddings.class_embedding", _as_is),
        (("visual", "conv1", "kernel"), "vision_model.embeddings.patch_embedding.weight", _conv_torch_to_flax),
        (("visual", "positional_embedding"), "vision_model.embeddings.position_embedding.weight", _as_is),
        (("visual", "proj"), "visual_projection.weight", _transpose),
        *_ln(("text", "ln_final"), "text_model.final_layer_norm"),
        *_ln(("visual", "ln_pre"), "vision_model.pre_layrnorm"),
        *_ln(("visual", "ln_post"), "vision_model.post_layernorm"),
    ]
    for tower, prefix, layers in (("text", "text_model", config.text_layers), ("visual", "vision_model", config.vision_layers)):
        for i in range(layers):
            e += _block_entries((tower, "transformer", f"resblocks_{i}"), f"{prefix}.encoder.layers.{i}", openai=False)
    return e


def openai_entries(config: CLIPConfig) -> list[Entry]:
    """OpenAI CLIP (`clip.model.CLIP`) state-dict keys."""
    e: list[Entry] = [
        (("logit_scale",), "logit_scale", _as_is),
        (("text", "token_embedding", "embedding"), "token_embedding.weight", _as_is),
        (("text", "positional_embedding"), "positional_embedding", _as_is),
        (("text", "text_projection"), "text_projection", _as_is),
        (("visual", "class_embedding"), "visual.class_embedding", _as_is),
        (("visual", "conv1", "kernel"), "visual.conv1.weight", _conv_torch_to_flax),
        (("visual", "positional_embedding"), "visual.positional_embedding", _as_is),
        (("visual", "proj"), "visual.proj", _as_is),
        *_ln(("text", "ln_final"), "ln_final"),
        *_ln(("visual", "ln_pre"), "visual.ln_pre"),
        *_ln(("visual", "ln_post"), "visual.ln_post"),
    ]
    for tower, prefix, layers in (("text", "", config.text_layers), ("visual", "visual.", config.vision_layers)):
        for i in range(layers):
            e += _block_entries((tower, "transformer", f"resblocks_{i}"), f"{prefix}transformer.resblocks.{i}", openai=True)
    return e


# Buffers that some checkpoints carry and that are not parameters.
_IGNORED = re.compile(r"(^|\.)position_ids$|^(input_resolution|context_length|vocab_size)$")


def convert_state_dict(state: dict[str, np.ndarray], entries: list[Entry], config: CLIPConfig, source: str) -> dict:
    """Map a flat checkpoint to nested per-layer params, checking every key and shape."""
    want = expected_shapes(config)
    missing = sorted({key for _, key, _ in entries if key not in state})
    if missing:
        raise CheckpointError(
            f"{source}: missing {len(missing)} parameter(s) the architecture needs, e.g. {missing[:5]}; "
            "is this checkpoint complete and of the layout its file name suggests?"
        )
    used = {key for _, key, _ in entries}
    unexpected = sorted(k for k in state if k not in used and not _IGNORED.search(k))
    if unexpected:
        raise CheckpointError(
            f"{source}: {len(unexpected)} parameter(s) not part of a CLIP ViT of the inferred config, "
            f"e.g. {unexpected[:5]}; inferred config: {config.to_json()}"
        )
    flat = {}
    for path, key, fn in entries:
        value = fn(np.asarray(state[key], dtype=np.float32))
        if value.shape != want[path]:
            raise CheckpointError(
                f"{source}: parameter {key!r} has shape {tuple(np.shape(state[key]))} (converted "
                f"{value.shape}) but the model needs {want[path]} at {'/'.join(path)}"
            )
        flat[path] = value
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------------------------
def _hf_config(config_json: dict, source: str) -> CLIPConfig:
    model_type = config_json.get("model_type")
    if model_type != "clip":
        raise CheckpointError(
            f"{source}: unknown architecture model_type={model_type!r} (fields found: {sorted(config_json)}); "
            "only Hugging Face CLIP (model_type 'clip', CLIPModel) checkpoints are supported"
        )
    text, vision = config_json.get("text_config") or {}, config_json.get("vision_config") or {}
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) != 1:
        raise CheckpointError(f"{source}: text and vision towers use different activations {sorted(acts)}")
    eps = {text.get("layer_norm_eps", 1e-5), vision.get("layer_norm_eps", 1e-5)}
    if len(eps) != 1:
        raise CheckpointError(f"{source}: text and vision towers use different layer_norm_eps {sorted(eps)}")
    try:
        return CLIPConfig(
            embed_dim=config_json.get("projection_dim", 512),
            image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 32),
            vision_width=vision.get("hidden_size", 768), vision_layers=vision.get("num_hidden_layers", 12),
            vision_heads=vision.get("num_attention_heads", 12), vision_mlp_dim=vision.get("intermediate_size", 3072),
            context_length=text.get("max_position_embeddings", 77), vocab_size=text.get("vocab_size", 49408),
            text_width=text.get("hidden_size", 512), text_layers=text.get("num_hidden_layers", 12),
            text_heads=text.get("num_attention_heads", 8), text_mlp_dim=text.get("intermediate_size", 2048),
            activation=acts.pop(), layer_norm_eps=float(eps.pop()),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _torch_load(path: str) -> dict[str, np.ndarray]:
    import torch  # Only PyTorch-format checkpoints need torch.

    try:
        state = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:  # Not a TorchScript archive: a pickled state dict.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        out[k] = v.float().numpy() if hasattr(v, "numpy") else np.asarray(v)
    return out


def _read_hf(folder: str) -> tuple[CLIPConfig, dict]:
    from safetensors.numpy import load_file

    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        config = _hf_config(json.load(f), cfg_path)
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(single):
        source, state = single, load_file(single)
    elif os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        source, state = index, {}
        for shard in shards:
            state.update(load_file(os.path.join(folder, shard)))
    elif os.path.isfile(binary):
        source, state = binary, _torch_load(binary)
    else:
        raise FileNotFoundError(
            f"{folder}: has config.json but no weights; expected model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin"
        )
    return config, convert_state_dict(state, hf_entries(config), config, source)


def _openai_config(state: dict[str, np.ndarray], source: str) -> CLIPConfig:
    """Architecture from tensor shapes, as OpenAI's `build_model` infers it."""
    if "visual.layer1.0.conv1.weight" in state:
        raise CheckpointError(f"{source}: a ResNet CLIP (found 'visual.layer1...'); only ViT CLIP is supported")
    needed = ("visual.conv1.weight", "visual.positional_embedding", "text_projection", "positional_embedding",
              "token_embedding.weight", "ln_final.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "transformer.resblocks.0.mlp.c_fc.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(
            f"{source}: unknown architecture: missing {absent}; fields found (first 10): {sorted(state)[:10]}. "
            "Expected an OpenAI CLIP ViT state dict"
        )

    def count_layers(prefix):
        return len({k.split(".")[prefix.count(".")] for k in state if k.startswith(prefix)})

    # Head counts are not visible in the weights: OpenAI's models all use 64-wide heads.
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    try:
        return CLIPConfig(
            embed_dim=state["text_projection"].shape[1], image_size=patch * grid, patch_size=patch,
            vision_width=vision_width, vision_layers=count_layers("visual.transformer.resblocks."),
            vision_heads=vision_width // 64,
            vision_mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            context_length=state["positional_embedding"].shape[0], vocab_size=state["token_embedding.weight"].shape[0],
            text_width=text_width, text_layers=count_layers("transformer.resblocks."), text_heads=text_width // 64,
            text_mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _read_openai(path: str) -> tuple[CLIPConfig, dict]:
    state = _torch_load(path)
    config = _openai_config(state, path)
    return config, convert_state_dict(state, openai_entries(config), config, path)


def _read_converted(folder: str) -> tuple[CLIPConfig, dict]:
    import orbax.checkpoint as ocp

    manifest_path = os.path.join(folder, CONVERTED_MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("format") != CONVERTED_FORMAT:
        raise CheckpointError(f"{manifest_path}: format {manifest.get('format')!r}, expected {CONVERTED_FORMAT!r}")
    config = CLIPConfig.from_dict(manifest["config"])
    params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(folder, "params")))
    params = jax.tree.map(np.asarray, params)
    want = expected_shapes(config)
    got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
    for path in sorted(set(want) | set(got)):
        if want.get(path) != got.get(path):
            raise CheckpointError(f"{folder}: parameter {'/'.join(path)} has shape {got.get(path)}, config needs {want.get(path)}")
    return config, params


def read_checkpoint(path: str) -> tuple[CLIPConfig, dict]:
    """(config, per-layer float32 numpy params) from any supported local checkpoint."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"CLIP checkpoint not found: {path!r}. Pass a Hugging Face CLIP folder (config.json + "
            "model.safetensors), an OpenAI CLIP .pt file, or a folder from `tvr-jax convert-weights`."
        )
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CONVERTED_MANIFEST)):
            return _read_converted(path)
        if os.path.isfile(os.path.join(path, "config.json")):
            return _read_hf(path)
        raise CheckpointError(
            f"{path}: a folder with neither config.json (Hugging Face CLIP) nor {CONVERTED_MANIFEST} "
            f"(tvr-jax convert-weights); found {sorted(os.listdir(path))[:10]}"
        )
    return _read_openai(path)


def load(path: str, **compute: Any) -> tuple[CLIP, dict]:
    """`model, params = load(path, dtype=..., remat=..., scan_layers=...)` from a local checkpoint,
    its parameters in the layout the compute fields imply (`CLIPConfig.stacked_layers`)."""
    bad = sorted(set(compute) - set(COMPUTE_SWITCHES))
    if bad:  # the checkpoint fixes the architecture
        raise ValueError(f"load() can only override the compute fields {COMPUTE_SWITCHES}, not {bad}")
    config, params = read_checkpoint(path)
    config = config.replace(**compute)
    if config.stacked_layers:
        params = stack_layers(params)
    dtype = np.dtype(config.param_dtype) if config.param_dtype != "bfloat16" else jax.numpy.bfloat16
    params = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype=dtype), params)
    return CLIP(config), params


def save_converted(config: CLIPConfig, params: dict, out_dir: str) -> None:
    """Write params (per-layer layout) as an orbax checkpoint plus a manifest; atomic per part.

    The manifest is written last, through a temporary file and a rename, so a folder with a
    manifest always holds complete parameters.
    """
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, CONVERTED_MANIFEST)):
        raise FileExistsError(f"{out_dir} already holds converted weights; choose another OUT or delete it")
    os.makedirs(out_dir, exist_ok=True)
    params = unstack_layers(jax.tree.map(np.asarray, params))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(out_dir, "params"), params, force=True)
    checkpointer.wait_until_finished()
    manifest = {"format": CONVERTED_FORMAT, "config": json.loads(config.replace(scan_layers=False, remat=False).to_json())}
    tmp = os.path.join(out_dir, CONVERTED_MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, CONVERTED_MANIFEST))
