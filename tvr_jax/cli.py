"""`tvr-jax` command line: one sub-command per job, each a thin layer over library functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
import traceback

from data_pipeline.decoder import DISK_FULL_ERRNOS
from tvr_jax import huge_pages
from tvr_jax.config_io import save_config


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


def _prepare(args: argparse.Namespace) -> int:
    """Decode a set's videos once into a TFDS dataset (data_pipeline.prepare) and print the summary."""
    from data_pipeline import prepare

    report = prepare.prepare(
        args.dataset, args.out, videos_dir=args.videos, annotations_dir=args.annotations, fps=args.fps,
        max_frames=args.max_frames, short_side=args.short_side, workers=args.workers, jpeg_quality=args.jpeg_quality,
        tagger=args.tagger, spacy_model=args.spacy_model, synthetic_scale=args.synthetic_scale,
        synthetic_seed=args.synthetic_seed, rebuild=args.rebuild, keep_work=args.keep_work,
        decode_timeout=args.decode_timeout, beam_runner=args.beam_runner, beam_options=args.beam_option,
    )
    print(prepare.summary(report))
    return 0


def _config(args: argparse.Namespace):
    from tvr_jax.config_io import load_config

    if getattr(args, "distributed", False):  # several processes (SLURM, TPU pod slice, by hand): one global mesh over all
        from tvr_jax import sharding

        timeout = {} if args.heartbeat_timeout is None else {"heartbeat_timeout_s": args.heartbeat_timeout}
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id, **timeout)
    return load_config(args.config, args.overrides)


def _train(args: argparse.Namespace) -> int:
    """Train (resuming from WORKDIR's newest checkpoint)."""
    from tvr_jax import sharding, train

    cfg = _config(args)
    if sharding.is_writer():
        save_config(cfg, args.workdir)
    train.train(cfg, args.workdir, train.dataset_batch_factory(cfg))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint of WORKDIR on cfg.eval.split and print the table."""
    from tvr_jax import evaluate

    cfg = _config(args)
    if args.zero_shot:
        evaluate.evaluate_zero_shot(cfg, args.workdir)
    else:
        evaluate.evaluate_checkpoint(cfg, args.workdir, args.checkpoint)
    with open(os.path.join(args.workdir, "eval", "metrics.md")) as f:
        print(f.read())
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Generate and prepare the synthetic set, train the tiny model, evaluate, print the table."""
    from configs import synthetic
    from data_pipeline import prepare
    from tvr_jax import evaluate, train
    from tvr_jax.config_io import apply_override

    t0 = time.perf_counter()
    data_dir = os.path.join(args.workdir, "data")
    prepare.prepare("synthetic", data_dir, synthetic_scale=args.scale)  # resumable: skips finished work
    cfg = synthetic.get_config()
    cfg.data_dir = data_dir
    for item in args.overrides:
        apply_override(cfg, item)
    save_config(cfg, args.workdir)
    train.train(cfg, args.workdir, train.dataset_batch_factory(cfg))
    evaluate.evaluate_checkpoint(cfg, args.workdir)
    with open(os.path.join(args.workdir, "eval", "metrics.md")) as f:
        print(f.read())
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; metrics in {os.path.join(args.workdir, 'eval', 'metrics.json')}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    """Train and evaluate each ablation variant (x seeds) and print one table."""
    from tvr_jax import ablation

    cfg = _config(args)
    if cfg.dataset == "synthetic" and not cfg.data_dir:
        from data_pipeline import prepare

        cfg.data_dir = os.path.join(args.workdir, "data")
        prepare.prepare("synthetic", cfg.data_dir)
    ablation.run_ablation(cfg, args.workdir, ablation.resolve_variants(args.variants), args.seeds)
    with open(os.path.join(args.workdir, "ablation.md")) as f:
        print(f.read())
    return 0


def _export(args: argparse.Namespace) -> int:
    """Token features of a split (videos and captions) into an index folder with a manifest."""
    from tvr_jax import search

    manifest = search.export_index(_config(args), args.workdir, args.out, args.split, args.checkpoint,
                                   append=args.append, thumbnails=not args.no_thumbnails)
    shard = manifest["shards"][-1]
    print(f"{'appended' if args.append else 'exported'} {shard['num_videos']} videos and {shard['num_captions']} captions "
          f"of {shard['dataset']}/{shard['split']} (step {shard['run_step']}) to {args.out}: {manifest['num_videos']} "
          f"videos in {len(manifest['shards'])} shard(s), first stage {manifest['ann']['factory']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    """Rank the indexed videos for a free-text query: two-stage by default, every video with --exact."""
    from tvr_jax import search

    engine = search.Searcher(args.index)
    result = engine.search(args.query, args.top_k, candidates=args.candidates, exact=args.exact, nprobe=args.nprobe)
    print(result.describe(engine.num_videos))
    for rank, hit in enumerate(result.hits, 1):
        print(f"{rank:3d}  {hit.score:.4f}  {hit.video_id}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """The index behind a JSON API and a search page (model loaded once)."""
    from tvr_jax import serve

    serve.run(args.index, host=args.host, port=args.port, candidates=args.candidates)
    return 0


def _add_config_arguments(p: argparse.ArgumentParser, distributed: bool = False) -> None:
    """--config, --workdir; with `distributed` the multi-process flags (train, eval, export; the
    ablation runs in one process)."""
    p.add_argument("--config", required=True, help="config file, optionally with an argument: configs/NAME.py[:ARG]")
    p.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl, tensorboard/, eval/")
    if not distributed:
        return
    p.add_argument("--distributed", action="store_true", help="one run over several processes (jax.distributed): every "
                   "process runs the same command; the cluster manager (SLURM, TPU pod) says who is who, or the three below")
    p.add_argument("--coordinator", default=None, help="with --distributed, a launch by hand: process 0's HOST:PORT")
    p.add_argument("--num-processes", type=int, default=None, help="with --distributed, a launch by hand: how many processes")
    p.add_argument("--process-id", type=int, default=None, help="with --distributed, a launch by hand: this one's index, 0..N-1")
    p.add_argument("--heartbeat-timeout", type=int, default=None, help="with --distributed: seconds after which the other "
                   "processes abort when one has died (default: sharding.HEARTBEAT_TIMEOUT_S, 100, JAX's)")


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

    p = sub.add_parser("prepare", help="decode a dataset's videos once into a TFDS dataset (JPEG frames, captions, word weights)")
    p.add_argument("--dataset", required=True, choices=["msrvtt", "msvd", "didemo", "activitynet", "webvid", "custom", "synthetic"],
                   help="a paper set, webvid, custom (your own videos) or synthetic")
    p.add_argument("--videos", help="folder of the set's video files (searched recursively); synthetic: omit to generate the set")
    p.add_argument("--annotations", help="folder of the set's annotation files (webvid: the folder of its CSVs); custom: "
                   "one .csv or .jsonl FILE, a row per caption with video (path under --videos), caption, optional split "
                   "(train/val/test; empty: train) and video_id (see data_pipeline/annotations.py)")
    p.add_argument("--out", required=True, help="DATA_DIR: receives <dataset>/<version>/ and prepare_report.json")
    p.add_argument("--fps", type=float, default=1.0, help="frames stored per second of video")
    p.add_argument("--max-frames", type=int, default=None, help="cap on stored frames per video (spread uniformly)")
    p.add_argument("--short-side", type=int, default=224, help="frames are shrunk to this short side (never enlarged)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--tagger", default=None, choices=["spacy", "fallback"],
                   help="part-of-speech tagger for word weights (docs/method.md section 2.2); default: spacy for real "
                        "captions (the paper's sets, like the release; webvid, custom), stopping if spaCy or the model is "
                        "missing; fallback for synthetic")
    p.add_argument("--spacy-model", default="en_core_web_md", choices=["en_core_web_md", "en_core_web_sm", "en_core_web_lg"],
                   help="spaCy model of --tagger spacy (the release's: en_core_web_md)")
    p.add_argument("--synthetic-scale", type=int, default=1, help="synthetic set: multiply its 1,920 train / 120 test videos")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="prepare again even if DATA_DIR already holds the set")
    p.add_argument("--keep-work", action="store_true", help="keep the per-video decode cache (DATA_DIR/_work) after success")
    p.add_argument("--decode-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="time limit per video: one over it is reported as failed ('timeout') and its decoding "
                        "process replaced; 0: no limit")
    p.add_argument("--beam-runner", default=None, metavar="RUNNER",
                   help="run the preparation as Apache Beam pipelines on RUNNER (DirectRunner, FlinkRunner, "
                        "DataflowRunner, ...; needs `pip install -e '.[beam]'`); default: local processes")
    p.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a Beam pipeline option, repeatable: e.g. direct_num_workers=2, "
                        "direct_running_mode=multi_processing, flink_master=HOST:PORT, project=..., region=...")
    p.set_defaults(fn=_prepare)

    p = sub.add_parser("train", help="train from a config; --config.FIELD=VALUE overrides any field")
    _add_config_arguments(p, distributed=True)
    p.set_defaults(fn=_train)

    p = sub.add_parser("eval", help="evaluate a trained checkpoint in the paper's protocol")
    _add_config_arguments(p, distributed=True)
    p.add_argument("--checkpoint", type=int, default=None,
                   help="step to evaluate (default: the best on validation during training, else the newest)")
    p.add_argument("--zero-shot", action="store_true", help="evaluate --config.init_checkpoint's CLIP untrained (meanP, cosine)")
    p.set_defaults(fn=_eval)

    p = sub.add_parser("ablate", help="train + evaluate the paper's ablation variants and print one table")
    _add_config_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per variant")
    p.add_argument("--variants", nargs="+", default=None, help="variant names or groups: 'paper' (the default: the paper's cumulative rows), 'beside' (the full "
                        "method with one change each), 'all'; names in tvr_jax/ablation.py")
    p.set_defaults(fn=_ablate)

    p = sub.add_parser("export", help="write a split's token features to an index folder (for `search`)")
    _add_config_arguments(p, distributed=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True, help="index folder (must not hold an index yet, unless --append)")
    p.add_argument("--checkpoint", type=int, default=None, help="step (default: the one eval reports: the best on validation, else the newest)")
    p.add_argument("--append", action="store_true", help="add the split's videos to the index in --out (same model; "
                   "the first stage is extended, not rebuilt)")
    p.add_argument("--no-thumbnails", action="store_true", help="skip writing each video's middle frame as a JPEG")
    p.set_defaults(fn=_export)

    p = sub.add_parser("search", help="rank indexed videos for a free-text query")
    p.add_argument("index", help="folder written by `tvr-jax export`")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=None,
                   help="videos the first stage hands to DMAE (default: search.DEFAULT_CANDIDATES)")
    p.add_argument("--nprobe", type=int, default=None, help="inverted-file lists scanned (default: the index's)")
    p.add_argument("--exact", action="store_true", help="score every indexed video with DMAE (no first stage)")
    p.set_defaults(fn=_search)

    p = sub.add_parser("serve", help="serve an index: JSON API (/search, /health) and a search page")
    p.add_argument("index", help="folder written by `tvr-jax export`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--candidates", type=int, default=None, help="first-stage candidates per query (default: search's)")
    p.set_defaults(fn=_serve)

    p = sub.add_parser("demo", help="synthetic set -> train the tiny model -> evaluate (the main job)")
    p.add_argument("--workdir", default="demo_run", help="receives data/, checkpoints/, metrics.jsonl and eval/")
    p.add_argument("--scale", type=int, default=1, help="synthetic set size multiplier")
    p.set_defaults(fn=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax and backend discovery log every step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [r[len("--config."):] for r in rest if r.startswith("--config.")]
    unknown = [r for r in rest if not r.startswith("--config.")]
    if unknown or (overrides and args.command not in ("train", "eval", "demo", "ablate", "export")):
        parser.error(f"unrecognised arguments: {' '.join(unknown or rest)}")
    args.overrides = overrides
    try:
        return args.fn(args)
    except Exception as e:  # noqa: BLE001 - a full disk is told as such, whatever raised it
        full, path = disk_full(e)
        if full:
            print(f"tvr-jax {args.command}: error: {disk_full_message(args, path, e)}", file=sys.stderr)
            return 3
        if isinstance(e, _told_errors()):  # bad input, a refusal: the message, no traceback
            print(f"tvr-jax {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


def _told_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all (what, where and what to do): bad input, a busy work directory,
    no checkpoint that restores, a non-finite loss, a dataset writer that lost examples. The last
    three come from modules that import jax or TFDS, so they are looked up only once loaded."""
    from tvr_jax.workdir_lock import WorkdirBusy

    told: list[type[BaseException]] = [FileNotFoundError, FileExistsError, ValueError, WorkdirBusy]
    for module, name in (("tvr_jax.experiment", "CheckpointUnreadable"), ("tvr_jax.train", "NonFiniteLoss"),
                         ("data_pipeline.prepare", "LostExamples")):
        if module in sys.modules:
            told.append(getattr(sys.modules[module], name))
    return tuple(told)


# A full disk, a full quota and a file-size limit (DISK_FULL_ERRNOS) all stop a write; each surfaces as
# OSError in Python and as an error naming the errno in TensorStore (orbax's checkpoint writer).
# numpy's short write ("32768 requested and 10176 written") carries no errno: a regular file takes fewer
# bytes than written only when the disk is full or a size limit is reached.
_DISK_FULL_TEXT = re.compile(r"os_error_code='(%s)'|No space left on device|Disk quota exceeded|File too large"
                             r"|\d+ requested and \d+ written" % "|".join(str(n) for n in DISK_FULL_ERRNOS))
_WRITTEN_PATH = re.compile(r'(?:Failed writing|local file|writing): "([^"]+)"|writing (/[^;"\s]+)')  # TensorStore, ArrayRecord


def disk_full(error: BaseException) -> tuple[bool, str | None]:
    """(whether `error`, or one it was raised from, is a write refused for want of space; the file, when known)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True, error.filename
        if _DISK_FULL_TEXT.search(str(error)):
            paths = [a or b for a, b in _WRITTEN_PATH.findall(str(error))]
            return True, (paths[-1] if paths else getattr(error, "filename", None))
        error = error.__cause__ or error.__context__
    return False, None


def disk_full_message(args: argparse.Namespace, path: str | None, error: BaseException) -> str:
    """What was being written, what is intact, and how to go on."""
    folder = getattr(args, "out", None) if args.command in ("prepare", "export") else getattr(args, "workdir", None)
    where = path or folder or "the output folder"
    reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else "no space left on device"
    if args.command == "train" and folder:
        ckpt = os.path.join(folder, "checkpoints")
        steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
        kept = (f"the last good checkpoint, step {steps[-1]}, is intact and the unfinished one is never used"
                if steps else "no checkpoint was committed yet")
        again = "rerun the same command to resume"
    elif args.command == "prepare":
        kept = "videos already decoded are kept and no half-written dataset is visible"
        again = "rerun the same command to go on"
    elif args.command == "export":
        kept = "the index in --out is as it was before this export (nothing of it is visible)"
        again = "rerun the same command"
    else:
        kept, again = "", "rerun the same command"
    return (f"the disk is full: {reason} while writing {where}" + (f" (under {folder})" if path and folder else "")
            + (f"; {kept}" if kept else "") + f". Free space there (or choose another folder) and {again}.")


def _is_closed_loop(error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


_ORBAX_CODE = f"{os.sep}orbax{os.sep}"


def _raised_in_orbax(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, came out of orbax's code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            if _ORBAX_CODE in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return False


def _is_checkpoint_echo(error: BaseException | None, where: object = None) -> bool:
    """An error reported after the fact for an orbax read or write: a completion on orbax's closed
    loop, or a read coroutine or task of orbax's, dropped unfinished or never awaited, raising."""
    code = getattr(where, "cr_code", None)
    return (_is_closed_loop(error) or _raised_in_orbax(error)
            or (code is not None and _ORBAX_CODE in code.co_filename))


def _quiet_abandoned_checkpoint_io() -> None:
    """Drop the echoes of one failed orbax checkpoint read or write (a full disk, a damaged file).
    orbax then closes its asyncio loop with the array reads and writes of that checkpoint unfinished:
    TensorStore still completes them onto the closed loop ("RuntimeError: Event loop is closed", from
    worker threads or as unraisable), and each abandoned read coroutine raises its own copy of the
    error when it is collected ("Exception ignored in: <coroutine ...>") or asyncio logs it for the
    task that ran it ("Task exception was never retrieved"). Hundreds of tracebacks, all for the
    failure that `main` (or the checkpoint fallback's warning) reports once. Only these reports are
    dropped: an orbax error that reaches the command is reported by it. orbax's own log lines about
    the failure (its writer threads', before it is raised where the command waits on the write)
    stay, without their tracebacks."""
    unraisable, in_thread = sys.unraisablehook, threading.excepthook
    logging.getLogger("asyncio").addFilter(
        lambda r: not (r.exc_info and "exception was never retrieved" in r.getMessage() and _is_checkpoint_echo(r.exc_info[1])))

    def without_orbax_traceback(record):
        if record.exc_info and _raised_in_orbax(record.exc_info[1]):
            record.exc_info = record.exc_text = None
        return True

    logging.getLogger("absl").addFilter(without_orbax_traceback)
    sys.unraisablehook = lambda u: None if _is_checkpoint_echo(u.exc_value, u.object) else unraisable(u)
    threading.excepthook = lambda a: None if _is_checkpoint_echo(a.exc_value) else in_thread(a)


def run() -> None:
    """The `tvr-jax` command: `main` (in a process with huge pages for its heap, `huge_pages`), then
    exit without the interpreter's teardown.

    Every command has finished its work when `main` returns: outputs renamed into place,
    checkpoints committed, logs flushed. What teardown would add is destroying live tf.data
    iterators, whose worker threads may need the interpreter lock that the destroying thread
    holds: the process then never exits (seen after `ablate`, which leaves one per run).
    """
    huge_pages.restart_with_huge_pages()
    _quiet_abandoned_checkpoint_io()
    try:
        code = main()
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    if "jax" in sys.modules:  # a --distributed run: leave the coordinator as its atexit hook would
        import jax

        jax.distributed.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
