"""`tvr-jax` command line: one sub-command per job, each a thin layer over library functions."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _convert_weights(args: argparse.Namespace) -> int:
    """Read a local CLIP checkpoint and write it as an orbax checkpoint + manifest."""
    import jax

    from tvr_jax import clip

    model, params = clip.load(args.src)
    clip.save_converted(model.config, params, args.out)
    n = sum(x.size for x in jax.tree.leaves(params))
    print(f"converted {args.src} -> {args.out}: {n:,} parameters")
    print(model.config.to_json())
    return 0


def _check(args: argparse.Namespace) -> int:
    """One forward and backward pass of a preset CLIP on random frames and real captions."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tvr_jax import clip

    config = clip.PRESETS[args.preset].replace(dtype=args.dtype, remat=args.remat, scan_layers=args.scan_layers)
    model = clip.CLIP(config)
    captions = ["a red square moves left", "a blue circle moves right", "a green triangle spins", "two squares collide"]
    ids, _ = clip.tokenize(captions, max_len=32)
    images = jax.random.normal(jax.random.PRNGKey(1), (len(captions), config.image_size, config.image_size, 3))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images, jnp.asarray(ids))["params"]

    def loss_fn(p):  # symmetric InfoNCE on pooled embeddings: a plain CLIP step
        img, txt = model.apply({"params": p}, images, jnp.asarray(ids))
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        logits = jnp.exp(p["logit_scale"]) * txt @ img.T
        labels = jnp.arange(len(captions))
        ce = lambda l: -jnp.mean(jax.nn.log_softmax(l.astype(jnp.float32))[labels, labels])
        return 0.5 * (ce(logits) + ce(logits.T))

    step = jax.jit(jax.value_and_grad(loss_fn))
    t0 = time.perf_counter()
    loss, grads = jax.block_until_ready(step(params))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(step(params))
    step_s = time.perf_counter() - t0
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    gnorm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
    report = {
        "preset": args.preset, "devices": [str(d) for d in jax.devices()],
        "params": {"visual": count(params["visual"]), "text": count(params["text"]), "total": count(params)},
        "batch": len(captions), "loss": float(loss), "grad_norm": gnorm,
        "compile_and_first_step_s": round(compile_s, 3), "step_s": round(step_s, 4),
    }
    print(json.dumps(report, indent=2))
    if not (np.isfinite(report["loss"]) and np.isfinite(gnorm)):
        print("non-finite loss or gradient", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvr-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert-weights", help="convert a local CLIP checkpoint (HF folder or OpenAI .pt) to orbax")
    p.add_argument("src", help="Hugging Face CLIP folder, OpenAI CLIP .pt file, or converted folder")
    p.add_argument("out", help="output folder (must not already hold converted weights)")
    p.set_defaults(fn=_convert_weights)

    p = sub.add_parser("check", help="one forward/backward pass of a preset CLIP on random frames")
    p.add_argument("--preset", default="tiny", choices=["tiny", "vit_b32", "vit_b16"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--scan-layers", action="store_true")
    p.set_defaults(fn=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # bad input: message, no traceback
        print(f"tvr-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
