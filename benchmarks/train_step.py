"""One training step, ours against the PyTorch peer, side by side in one run, in float32 and in
bfloat16; MFU against a measured peak per dtype.

Both sides train the CLIP4Clip meanP baseline (cosine of pooled features, symmetric InfoNCE,
AdamW, clipping) on the same weights and the same batch, on this machine:
  ours:  `tvr_jax.train.make_train_step` of a config with `BASELINE_OVERRIDES` (our real step,
         sharded loss on a one-device mesh, non-finite guard included); bfloat16 is
         `model.dtype='bfloat16'` (products in bfloat16, float32 master weights);
  peer:  `benchmarks/torch_reference.py` (transformers' PyTorch CLIP towers); bfloat16 is
         `torch.autocast(dtype=torch.bfloat16)`, what a PyTorch user would pick on a CPU.
Each side runs in its own process (its own thread pool and allocator settings), driven over
pipes by this one. The first losses must agree (same model; to 1e-4 in float32, 3e-2 in
bfloat16) or the run stops. Then rounds alternate the two, so load on the machine hits both
alike; each timed run follows an untimed run of the same job (`benchmarks/side_by_side.py`); the
tables give medians, warm-up excluded. The towers are also timed alone (gradient of their output
features), for MFU per tower.

MFU = model FLOPs (`flops.py`: counted by hand, checked against the jaxpr and XLA's
cost_analysis) / step time / the best matmul rate of that dtype measured in this same run (both
libraries, several sizes), printed beside the cores x vector lanes x clock bound.

    python -m benchmarks.train_step                        # tiny and ViT-B/32 (12 frames, 32 words), both dtypes
    python -m benchmarks.train_step --options              # XLA / dtype variants -> xla_cpu_options.json

Each `--options` variant (XLA_FLAGS are read once per process) runs ours alone in a fresh
process at ViT-B/32; PyTorch float32 and bfloat16 autocast run the same way beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time

import numpy as np

from benchmarks import flops
from benchmarks.results_io import print_tables, table, write_results
from benchmarks.side_by_side import Worker, alternate, keep_freed_host_memory, serve

# tau = 0.2 on both sides: our NegNCE clamps P to [1e-6, 1 - 1e-6] (docs/method.md 3), which binds at
# random init with tau = 0.01 and makes the first losses differ; with cosines in [-1, 1] and 8
# clips, tau = 0.2 keeps every P inside the clamp (P >= e^(-2/tau) / 8 > 1e-6). Costs are unchanged.
TEMPERATURE = 0.2
BASELINE_OVERRIDES = [
    f"loss.temperature={TEMPERATURE}", "model.temporal='meanP'", "model.interaction='cosine'", "model.tpm=False",
    "loss.lambda_neg=0.0", "loss.lambda_tpm=0.0", "loss.visual_attention=False", "loss.textual_attention=False",
]
SETTINGS = {  # name -> (config, clips per step, timed rounds per --rounds: tiny steps take milliseconds)
    "tiny": ("configs/msrvtt_vit_b32.py:tiny", 8, 10),
    "vit_b32": ("configs/msrvtt_vit_b32.py", 8, 1),  # --rounds 3 by default: each round runs every job twice
}
# Variants of ours: name -> (XLA_FLAGS, config overrides, keep freed host memory); each runs in its
# own process. The comparison runs both sides with `keep_freed_host_memory()`; these variants
# show what it does to each.
OPTIONS = {
    "default (as compared with PyTorch above)": ("", [], True),
    "glibc's default malloc (freed memory unmapped)": ("", [], False),
    "bfloat16 compute": ("", ["model.dtype='bfloat16'"], True),
    "one thread (no Eigen pool)": ("--xla_cpu_multi_thread_eigen=false", [], True),
    "fast math": ("--xla_cpu_enable_fast_math=true", [], True),
    "oneDNN": ("--xla_cpu_use_onednn=true", [], True),
    "XNNPACK": ("--xla_cpu_use_xnnpack=true", [], True),
    "512-bit vectors": ("--xla_cpu_prefer_vector_width=512", [], True),
    "scan over layers": ("", ["model.scan_layers=True"], True),
}
# name -> (bfloat16 autocast, keep freed host memory)
PEER_VARIANTS = {
    "PyTorch float32": (False, True),
    "PyTorch float32, glibc's default malloc": (False, False),
    "PyTorch bfloat16 autocast": (True, True),
    "PyTorch bfloat16 autocast, glibc's default malloc": (True, False),
}


def make_batch(c, t: int, words: int, batch: int, seed: int = 0) -> dict:
    """Random normalised frames; captions of varied length: start, words, end, zero padding."""
    rng = np.random.default_rng(seed)
    size = c.image_size
    ids = np.zeros((batch, words), np.int32)
    for row in range(batch):
        n = int(rng.integers(4, words + 1))
        ids[row, 0], ids[row, n - 1] = c.vocab_size - 2, c.vocab_size - 1
        ids[row, 1 : n - 1] = rng.integers(1, c.vocab_size - 2, size=n - 2)
    return {"video": rng.standard_normal((batch, t, size, size, 3), np.float32), "video_mask": np.ones((batch, t), bool),
                "text_ids": ids, "text_mask": ids > 0, "word_weights": np.ones((batch, words), np.float32),
                "video_index": np.arange(batch, dtype=np.int32)}


# -- ours -------------------------------------------------------------------------------------
class Ours:
    def __init__(self, config: str, batch: int, overrides: list[str], init_checkpoint: str = ""):
        import jax

        from tvr_jax import experiment, sharding, train
        from tvr_jax.config_io import load_config
        from tvr_jax.optim import make_optimizer

        cfg = load_config(config, overrides + [f"global_batch_size={batch}"])
        cfg.init_checkpoint = init_checkpoint
        mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
        self.model, clip_params = experiment.build_model(cfg)
        optimizer = make_optimizer(cfg.optim, cfg.total_steps)
        self.state, shardings = experiment.create_train_state(cfg, self.model, optimizer, mesh, clip_params)
        m = self.model.config
        self.batch = jax.device_put(make_batch(m.clip, m.max_frames, m.max_words, batch), sharding.batch_sharding(mesh))
        step = train.make_train_step(self.model, experiment.loss_config(cfg), optimizer, mesh, shardings)
        t0 = time.perf_counter()
        compiled = step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.xla_flops = _cost_flops(compiled)
        memory = compiled.memory_analysis()
        self.memory = {"temp_bytes": memory.temp_size_in_bytes, "argument_bytes": memory.argument_size_in_bytes}
        self.step = compiled

    def run_step(self) -> float:
        self.state, metrics = self.step(self.state, self.batch)
        return float(metrics["loss"])  # waits for the step

    def tower_steps(self):
        """Gradient of each tower's output features (a fixed cotangent), params only: (image, text) fns."""
        import jax
        import jax.numpy as jnp

        from tvr_jax.models.clip import CLIP

        clip = CLIP(self.model.config.clip)
        b, t = self.batch["video"].shape[:2]
        images = self.batch["video"].reshape(b * t, *self.batch["video"].shape[2:])
        ids = self.batch["text_ids"]
        dim = clip.config.embed_dim
        cot_i = jnp.ones((b * t, dim)) / dim
        cot_t = jnp.ones((b, dim)) / dim

        def grad_of(method, x, cot):
            f = jax.jit(jax.grad(lambda p: jnp.vdot(clip.apply({"params": p}, x, method=method), cot)))
            return lambda: jax.block_until_ready(f(self.state.params["clip"]))

        return grad_of(clip.encode_image, images, cot_i), grad_of(clip.encode_text, ids, cot_t)


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


# -- the peer ---------------------------------------------------------------------------------
class Peer:
    def __init__(self, clip_config, batch_np: dict, bf16: bool = False, device: str = "cpu"):
        import torch

        from benchmarks import torch_reference as ref

        self.torch, self.device, self.bf16 = torch, device, bf16
        self.hf = ref.random_clip(clip_config).to(device)
        self.model = ref.MeanPRetrieval(self.hf, TEMPERATURE)
        self.step_fn = ref.make_train_step(self.model, ref.make_optimizer(self.model, lr=1e-7, weight_decay=0.2))
        self.inputs = tuple(torch.from_numpy(batch_np[k]).to(device) for k in ("video", "video_mask"))
        self.inputs += (torch.from_numpy(batch_np["text_ids"]).long().to(device),)

    def run_step(self) -> float:  # float(loss) waits for the device
        with self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=self.bf16):
            return self.step_fn(*self.inputs)

    def tower_steps(self):
        m = self.hf
        video, _, ids = self.inputs
        images = video.reshape(-1, *video.shape[2:]).permute(0, 3, 1, 2)

        autocast = lambda: self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=self.bf16)

        def image():
            m.zero_grad(set_to_none=True)
            with autocast():
                out = m.visual_projection(m.vision_model(pixel_values=images).pooler_output).float().mean()
            out.backward()

        def text():
            m.zero_grad(set_to_none=True)
            with autocast():
                out = m.text_projection(m.text_model(input_ids=ids).pooler_output).float().mean()
            out.backward()

        return image, text


# -- one framework per process (benchmarks/side_by_side.py) -----------------------------------
def serve_side(side: str, setting: str, hf_dir: str, overrides: list[str], keep_host_memory: bool) -> None:
    """Worker: build one side of `setting`, then serve its jobs: step, image_tower, text_tower."""
    if keep_host_memory:
        keep_freed_host_memory()
    config, batch, _ = SETTINGS[setting]
    if side in PEER_VARIANTS:
        from benchmarks import torch_reference as ref
        from tvr_jax import experiment
        from tvr_jax.config_io import load_config

        m = experiment.build_model(load_config(config, BASELINE_OVERRIDES))[0].config
        runner = Peer(m.clip, make_batch(m.clip, m.max_frames, m.max_words, batch), bf16=PEER_VARIANTS[side][0])
        if hf_dir:
            ref.save_hf(runner.hf, hf_dir)  # ours loads these weights: the same model on both sides
        ready = {}
    else:
        runner = Ours(config, batch, BASELINE_OVERRIDES + overrides, init_checkpoint=hf_dir)
        ready = {"compile_s": runner.compile_s, "xla_flops": runner.xla_flops, "memory": runner.memory}
    jobs = {"step": runner.run_step}
    jobs["image_tower"], jobs["text_tower"] = runner.tower_steps()
    serve(jobs, ready)


def worker(side: str, setting: str, hf_dir: str = "", overrides=(), xla_flags: str = "",
           keep_host_memory: bool = True) -> Worker:
    args = ["--settings", setting, "--hf-dir", hf_dir, "--keep-host-memory", str(int(keep_host_memory)),
            "--overrides", *overrides]
    return Worker("benchmarks.train_step", side, args, xla_flags)


DTYPES = {  # dtype -> (our config overrides, the peer's variant, first-loss tolerance)
    "float32": ([], "PyTorch float32", 1e-4),
    "bfloat16": (["model.dtype='bfloat16'"], "PyTorch bfloat16 autocast", 3e-2),
}


def compare(name: str, dtype: str, rounds: int, warmup: int) -> dict:
    """Ours and the peer on one setting and dtype, on the same weights: loss parity, then alternating timed rounds."""
    config, batch, more = SETTINGS[name]
    rounds *= more
    overrides, peer_side, tolerance = DTYPES[dtype]
    from tvr_jax import experiment
    from tvr_jax.config_io import load_config

    m = experiment.build_model(load_config(config, BASELINE_OVERRIDES))[0].config
    model_flops = flops.meanp_step_flops(m.clip, batch, m.max_frames, m.max_words)
    with tempfile.TemporaryDirectory() as hf_dir, contextlib.ExitStack() as workers:
        peer = workers.enter_context(worker(peer_side, name, hf_dir))  # writes the weights ours reads
        ours = workers.enter_context(worker("ours", name, hf_dir, overrides))
        losses = {"ours": ours.ask("run step"), "peer": peer.ask("run step")}
        rel = abs(losses["ours"] - losses["peer"]) / abs(losses["peer"])
        print(f"[{name} {dtype}] first loss: ours {losses['ours']:.6f}, PyTorch {losses['peer']:.6f} (relative difference {rel:.1e})")
        if rel > tolerance:
            raise SystemExit(f"{name} {dtype}: the two steps compute different losses on the same weights and batch: {losses}")
        timed = alternate([ours, peer], ["step", "image_tower", "text_tower"], rounds, warmup)
    times = {k: (v[ours.side], v[peer.side]) for k, v in timed.items()}
    flops_of = {"step": model_flops["total"], "image_tower": model_flops["image_tower"],
                "text_tower": model_flops["text_tower"]}
    parts = {k: {"model_flops": flops_of[k], "ours_s": float(np.median(to)), "peer_s": float(np.median(tp)),
                 "ours_all": to, "peer_all": tp} for k, (to, tp) in times.items()}
    return {"setting": name, "dtype": dtype, "peer": peer_side, "config": config, "batch": batch, "frames": m.max_frames, "words": m.max_words,
            "first_loss": losses, "loss_rel_diff": rel, "compile_s": ours.ready["compile_s"],
            "xla_step_flops": ours.ready["xla_flops"], "hand_flops": model_flops, "parts": parts}


def run_options(rounds: int, warmup: int) -> list[dict]:
    """Every variant of ours and of the peer at ViT-B/32, each in a fresh process (XLA_FLAGS are read at start)."""
    out = []
    for option in [*OPTIONS, *PEER_VARIANTS]:
        if option in OPTIONS:
            flags, overrides, keep = OPTIONS[option]
            side = "ours"
        else:
            (flags, overrides, keep), side = ("", [], PEER_VARIANTS[option][1]), option
        try:
            w = worker(side, "vit_b32", overrides=overrides, xla_flags=flags, keep_host_memory=keep)
        except RuntimeError as e:
            out.append({"option": option, "seconds": None, "error": str(e)})
            continue
        with w:
            times = [w.ask("time step") for _ in range(warmup + rounds)][warmup:]
        out.append({"option": option, "seconds": float(np.median(times)), "all": times, **w.ready})
        print(json.dumps({k: v for k, v in out[-1].items() if k != "all"}), flush=True)
    return out


# -- report -----------------------------------------------------------------------------------
def tables(results: list[dict], peaks: dict) -> list[dict]:
    out = []
    rows = []
    for res in results:
        peak_flops = peaks[res["dtype"]]["peak_flops"]
        for part, r in res["parts"].items():
            mfu = lambda s, r=r: f"{100 * r['model_flops'] / s / peak_flops:.1f}%"
            rows.append([res["setting"], res["dtype"], part.replace("_", " "), res["batch"], f"{r['model_flops'] / 1e9:.1f}",
                         f"{r['ours_s']:.3f}", f"{r['peer_s']:.3f}", f"{r['ours_s'] / r['peer_s']:.2f}x",
                         mfu(r["ours_s"]), mfu(r["peer_s"])])
    out.append(table("Step time and MFU (median of rounds, warm-up excluded; PyTorch: float32, or bfloat16 autocast; "
                     "MFU against the peak of the row's dtype)",
                     ["setting", "dtype", "what", "clips", "model GFLOP", "ours s", "PyTorch s", "ours / PyTorch",
                      "MFU ours", "MFU PyTorch"], rows))
    out.append(table("Matmul peak per dtype, measured in this run (best of both libraries and several sizes), and "
                     "the arithmetic bound of the cores used",
                     ["dtype", "peak GFLOP/s", "best", "all (GFLOP/s)", "bound GFLOP/s", "bound",
                      "clock at which the peak meets the bound"],
                     [[dt, f"{p['peak_flops'] / 1e9:.0f}", p["best"], ", ".join(f"{k} {v}" for k, v in p["all"].items()),
                       f"{p['bound']['flops'] / 1e9:.0f}", p["bound"]["formula"], f"{p['bound']['implied_ghz']} GHz"]
                      for dt, p in peaks.items()]))
    rows = []
    for res in results:
        h = res["hand_flops"]
        xla = res["xla_step_flops"]
        rows.append([res["setting"], res["dtype"], f"{h['image_tower'] / 1e9:.2f}", f"{h['text_tower'] / 1e9:.2f}",
                     f"{h['total'] / 1e9:.2f}", f"{xla / 1e9:.2f}" if xla else "n/a",
                     f"{xla / h['total']:.3f}" if xla else "n/a", f"{res['loss_rel_diff']:.1e}"])
    out.append(table("FLOPs of one step: by hand (matmuls) and XLA's cost_analysis (all ops)",
                     ["setting", "dtype", "image tower GFLOP", "text tower GFLOP", "step GFLOP (hand)", "XLA cost_analysis GFLOP",
                      "XLA / hand", "first-loss difference ours vs PyTorch"], rows))
    return out


def options_table(options: list[dict]) -> dict:
    seconds = {o["option"]: o.get("seconds") for o in options}
    ours, peer = seconds.get(next(iter(OPTIONS))), seconds.get("PyTorch float32")
    rows = [[o["option"], f"{o['seconds']:.3f}" if o.get("seconds") else "failed: " + o.get("error", ""),
             f"{ours / o['seconds']:.2f}x" if o.get("seconds") and ours else "",
             f"{o['seconds'] / peer:.2f}x" if o.get("seconds") and peer else ""] for o in options]
    return table(f"ViT-B/32 meanP step ({SETTINGS['vit_b32'][1]} clips x 12 frames x 32 words), each variant in a "
                 "fresh process, median of rounds",
                 ["variant", "step s", "speed-up vs our default", "time / PyTorch float32"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--options", action="store_true", help="time XLA / dtype variants of ours and the peer instead")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--keep-host-memory", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="default: benchmarks/results/train_step.json, or xla_cpu_options.json with --options")
    args = parser.parse_args()
    if args.serve:  # a worker process of compare() / run_options()
        serve_side(args.serve, args.settings[0], args.hf_dir, args.overrides, args.keep_host_memory == 1)
        return
    if args.options:
        options = run_options(args.rounds, args.warmup)
        print_tables([options_table(options)])
        write_results(args.out or "benchmarks/results/xla_cpu_options.json", tables=[options_table(options)],
                      options=options)
        return
    peaks = {dtype: flops.measured_matmul_peak(dtype) for dtype in args.dtypes}
    print(f"matmul peaks: {peaks}", flush=True)
    results = [compare(name, dtype, args.rounds, args.warmup) for name in args.settings for dtype in args.dtypes]
    out_tables = tables(results, peaks)
    print_tables(out_tables)
    write_results(args.out or "benchmarks/results/train_step.json", tables=out_tables, peaks=peaks, results=results)

if __name__ == "__main__":
    main()
