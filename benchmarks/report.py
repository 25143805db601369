"""Regenerate BENCHMARKS.md from the benchmark outputs: never edit that file by hand.

    python -m benchmarks.report           # rewrite BENCHMARKS.md
    python -m benchmarks.report --check   # exit 1 if BENCHMARKS.md differs from what would be written

For each section in SECTIONS: `## heading`, the hand-written prose of `benchmarks/notes/<notes>`,
one line with the machine, cores, jax version, date and exact command from the results' "meta",
then every table of the results' "tables" (see `results_io.table`). A results file that does
not exist yet renders "not measured yet: run `<command>`".

Results written before "tables" existed get theirs from LEGACY_TABLES: builders that turn the
raw numbers already in the JSON into the tables, numbers unchanged. The scripts that wrote those
files call the same builders, so a re-run gives the same tables as the history.

Only the standard library: the test of this file runs without jax.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# results_io imports only the standard library at the top: jax comes with write_results alone.
from benchmarks.results_io import render_table, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
NOTES_DIR = os.path.join(ROOT, "benchmarks", "notes")
OUT = os.path.join(ROOT, "BENCHMARKS.md")

# (results JSON, heading, notes file[, command used when the JSON is missing; default `python -m benchmarks.<stem>`]).
SECTIONS = [
    ("input_pipeline.json", "Input pipeline: prepared dataset against decoding on the fly", "input_pipeline.md"),
    ("prepare_beam.json", "Data preparation: the local pool against Apache Beam", "prepare_beam.md"),
    ("similarity_memory.json", "DMAE similarity: memory bounded by the block loop", "similarity_memory.md"),
    ("sharded_loss.json", "Sharded similarity + loss: per-device memory on 1 and 8 devices, and the method's step cost",
     "sharded_loss.md"),
    ("train_step.json", "Train step: ours against a PyTorch peer", "train_step.md"),
    ("train_step_jax0.10.json", "Train step on jax 0.10.2", "train_step_jax0.10.md",
     "python -m benchmarks.train_step --settings vit_b32 --rounds 1 --out benchmarks/results/train_step_jax0.10.json  # Python 3.11"),
    ("train_memory.json", "Train-step memory per clip, with and without remat", "train_memory.md"),
    ("train_memory_h200.json", "Train-step memory on an H200, before the remat fix", "train_memory_h200.md",
     "python -m benchmarks.train_memory --out benchmarks/results/train_memory_h200.json  # on an H200"),
    ("xla_cpu_options.json", "XLA options on this CPU", "xla_cpu_options.md"),
    ("synthetic_confusions.json", "Demo: the tiny model on the synthetic set, and where its errors are",
     "synthetic_confusions.md", "tvr-jax demo --workdir /tmp/demo1 && python -m benchmarks.synthetic_confusions /tmp/demo1"),
    ("ablation_synthetic.json", "The miniature ablation on the synthetic set", "ablation_synthetic.md",
     "tvr-jax ablate --config configs/synthetic_ablation.py ... && python -m benchmarks.ablation_synthetic ABLATION_DIR  # see REPRODUCING.md"),
    ("ablation_synthetic_250steps.json", "The miniature ablation at 250 steps, the paper's rows", "ablation_synthetic_250steps.md",
     "tvr-jax ablate ... --config.total_steps=250 && python -m benchmarks.ablation_synthetic ABLATION_DIR"),
    ("ablation_synthetic_500steps.json", "The miniature ablation at 500 steps, five rows", "ablation_synthetic_500steps.md",
     "tvr-jax ablate ... --config.total_steps=500  # see REPRODUCING.md"),
    ("ablation_synthetic_200steps.json", "The miniature ablation at 200 steps, every row", "ablation_synthetic_200steps.md",
     "tvr-jax ablate ... --variants all && python -m benchmarks.ablation_synthetic ABLATION_DIR"),
    ("eval_step.json", "Evaluation: ours against a PyTorch peer", "eval_step.md"),
    ("tagger_agreement.json", "Word weights: the fallback tagger against spaCy", "tagger_agreement.md"),
    ("eval.json", "Evaluation: whole-test-set scoring and search", "eval.md"),
    ("search_choose.json", "Two-stage search: what stands for a video in the first stage", "search_ann.md",
     "python -m benchmarks.search_ann choose --base INDEX --videos 20000 --queries 200 --nprobe 8 16 32 64 128"),
    ("search_choose_demo.json", "Two-stage search: the same choice under the demo's model", "search_choose_demo.md",
     "python -m benchmarks.search_ann choose --base INDEX --videos 20000 --queries 200 --nprobe 64 128"),
    ("search_scale.json", "Two-stage search at 100k and 1M videos, beside the exhaustive path", "search_scale.md",
     "python -m benchmarks.search_ann scale --base INDEX --videos 100000 1000000 --queries 200"),
    ("gpu_check.json", "GPU check", "gpu_check.md", "bash benchmarks/gpu_check.sh"),
]

HEADER = """# Benchmarks

<!-- Generated file: edit benchmarks/notes/*.md or re-run a benchmark, then `python -m benchmarks.report`. -->

Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` (numbers, machine,
command, date) and `benchmarks/notes/*.md` (prose): do not edit by hand. Every number below is in
a table built from a results file, unless the prose marks it as from an earlier run.
`python -m benchmarks.report --check` fails when this file is out of date.
"""


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


# ---- table builders: raw payload (the JSON minus "meta") -> tables. Scripts call these too. ----


def similarity_memory_tables(raw: dict) -> list[dict]:
    rows = raw["rows"]
    # Same shape and pass at the fewest videos: "temp vs fewest videos" shows the block loop keeps temporaries flat.
    first = {}
    for r in rows:
        key = (r["shape"], r["grad"])
        if key not in first or r["B_v"] < first[key]["B_v"]:
            first[key] = r
    out = []
    for r in rows:
        base = first[(r["shape"], r["grad"])]
        out.append([r["shape"], f"{r['B_t']} x {r['B_v']}", r["L"], r["T"], "fwd+bwd" if r["grad"] else "fwd",
                    r["temp_MiB"], r["out_MiB"], r["full_grid_MiB"], ratio(r["full_grid_MiB"], r["temp_MiB"]),
                    ratio(r["temp_MiB"], base["temp_MiB"])])
    block, dim = rows[0]["block"], rows[0]["D"]
    return [table(f"Compiled temporaries of `dmae_similarity` (D = {dim}, block of {block} videos)",
                  ["shape", "B_t x B_v", "L", "T", "pass", "temp MiB", "output MiB", "full grid MiB",
                   "full grid / temp", f"temp vs B_v = {min(r['B_v'] for r in rows)}"], out)]


def sharded_loss_tables(raw: dict) -> list[dict]:
    memory = raw["memory"]
    peak = {(m["global_batch"], m["devices"]): m["peak_MiB"] for m in memory}
    batches = sorted({b for b, _ in peak})
    tables = [table("Per-device peak of value_and_grad of `sharded_total_loss` (MiB)",
                    ["global batch", "1 device", "8 devices", "ratio 1 / 8 devices"],
                    [[b, peak[(b, 1)], peak[(b, 8)], ratio(peak[(b, 1)], peak[(b, 8)])] for b in batches])]
    timing = raw.get("timing") or []
    if timing:
        base = timing[0]["median_step_s"]
        tables.append(table(f"Train step of the tiny config, median of {timing[0]['steps']} steps, one CPU device",
                            ["variant", "median step (s)", "clips/s", "step time vs baseline"],
                            [[t["variant"], t["median_step_s"], t["clips_per_s"], ratio(t["median_step_s"], base)]
                             for t in timing]))
    return tables


def eval_tables(raw: dict) -> list[dict]:
    rows = [[f"{r['N']} x {r['N']}", r["L"], r["T"], r["seconds"], r["grid_GFLOP"], r["GFLOP_per_s"], r["peak_MiB"],
             r["compile_s"]] for r in raw["scoring"]]
    # ActivityNet's test size is too slow for this CPU: estimated from the N = 1000 row at the same L, T (work ~ N^2).
    measured = {(r["N"], r["L"], r["T"]): r for r in raw["scoring"]}
    if (5000, 64, 64) not in measured and (1000, 64, 64) in measured:
        grid = 2.0 * 5000 * 5000 * 64 * 64 * 512 / 1e9  # the scripts' FLOP count, D = 512
        rate = measured[(1000, 64, 64)]["GFLOP_per_s"]
        rows.append(["5000 x 5000 (not run: estimate at the 1000 x 1000 row's GFLOP/s)", 64, 64,
                     round(grid / rate, 1), round(grid, 1), "", "", ""])
    s = raw["search"]
    return [table("Scoring N texts x N videos (`att_ti`, visual + textual attention, block of 64 videos, D = 512)",
                  ["N x N", "L", "T", "score (s)", "token grid GFLOP", "GFLOP/s", "peak MiB", "compile (s)"], rows),
            table("Search: one query, top-10, float16 index memory-mapped, chunks of 8,192 videos",
                  ["index videos", "T", "L", "index GB", f"latency (s), median of {s['repeats']}"],
                  [[s["index_videos"], s["T"], s["L"], s["index_GB"], s["latency_s"]]])]


def synthetic_confusions_tables(raw: dict) -> list[dict]:
    conf, wrong = raw["confusions"], raw["wrong_top1"]
    only_direction_sibling = sum(c["count"] for c in conf if c["attributes"] == ["direction"] and c["values"] == 1)
    without_direction = sum(c["count"] for c in conf if "direction" not in c["attributes"])
    t2v = raw["t2v"]
    return [
        table(f"Test split at step {raw['step']} (`{raw['workdir']}`)",
              ["test captions", "t2v R@1", "R@5", "R@10", "MdR", "wrong top-1", "involve direction",
               "exactly the one-word direction sibling", "colour or shape only"],
              [[raw["captions"], t2v["R@1"], t2v["R@5"], t2v["R@10"], t2v["MdR"], wrong, raw["involving_direction"],
                only_direction_sibling, without_direction]]),
        table("Wrong top-1 videos by the attributes that differ from the true scene",
              ["attribute values that differ", "attributes", "count", "share of wrong top-1"],
              [[c["values"], ", ".join(c["attributes"]), c["count"], f"{100 * c['count'] / wrong:.0f} %"]
               for c in conf]),
    ]


def train_memory_tables(raw: dict) -> list[dict]:
    """Legacy only: train_memory.py is not this file's; new runs write their own tables."""
    rows = raw["rows"]
    budget = rows[0]["budget_GiB"]
    return [table(f"Compiled train-step memory, `{raw['config']}`, float32, one device",
                  ["remat", "activation MiB per clip", "fixed GiB (params, Adam, inputs)",
                   f"largest batch in {budget:g} GiB"],
                  [[r["remat"], r["per_clip_MiB"], r["fixed_GiB"], r["max_batch_per_device"]] for r in rows])]


LEGACY_TABLES = {
    "similarity_memory.json": similarity_memory_tables,
    "sharded_loss.json": sharded_loss_tables,
    "eval.json": eval_tables,
    "synthetic_confusions.json": synthetic_confusions_tables,
    "train_memory.json": train_memory_tables,
}


# ---- rendering ----


def machine_line(meta: dict) -> str:
    """Machine (accelerator if any, else CPU), cores, jax, date, command: only what the meta recorded."""
    backend = meta.get("backend")
    cpu = meta.get("cpu") or meta.get("machine", "unknown machine")
    if meta.get("cpu_detail"):
        cpu += f" ({meta['cpu_detail']})"
    machine = f"{meta.get('device_kind')} ({backend}; host {cpu})" if backend not in (None, "cpu") else cpu
    parts = [f"Machine: {machine}"]
    if meta.get("cpus"):
        parts.append(f"{meta['cpus']} cores")
    if meta.get("jax"):
        parts.append(f"jax {meta['jax']}" + (f" ({backend})" if backend == "cpu" else ""))
    if meta.get("date"):
        parts.append(meta["date"])
    return "; ".join(parts) + f". Command: `{meta.get('command', '?').strip()}`."


def section_tables(name: str, results: dict) -> list[dict]:
    # Empty tables too: a script not yet emitting tables still writes "tables": [] through write_results.
    if results.get("tables"):
        return results["tables"]
    if name in LEGACY_TABLES:
        return LEGACY_TABLES[name]({k: v for k, v in results.items() if k != "meta"})
    return []


def render_section(heading: str, notes: str, name: str, results: dict | None, command: str) -> str:
    parts = [f"## {heading}", notes.strip()] if notes.strip() else [f"## {heading}"]
    if results is None:
        parts.append(f"not measured yet: run `{command}`")
    else:
        parts.append(machine_line(results.get("meta", {})))
        parts += [render_table(t) for t in section_tables(name, results)]
    return "\n\n".join(parts) + "\n"


def render(results_dir: str = RESULTS_DIR, notes_dir: str = NOTES_DIR) -> str:
    sections = []
    for name, heading, notes_file, *command in SECTIONS:
        command = command[0] if command else f"python -m benchmarks.{name.removesuffix('.json')}"
        path = os.path.join(results_dir, name)
        results = None
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)
        with open(os.path.join(notes_dir, notes_file)) as f:
            notes = f.read()
        sections.append(render_section(heading, notes, name, results, command))
    return HEADER + "\n" + "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = ""
        if os.path.exists(args.out):
            with open(args.out) as f:
                current = f.read()
        if current != text:
            print(f"{args.out} is out of date: run `python -m benchmarks.report`", file=sys.stderr)
            return 1
        return 0
    with open(args.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(args.out + ".tmp", args.out)  # never half a file
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
