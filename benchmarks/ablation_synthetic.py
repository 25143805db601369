"""The miniature ablation's record: the table of `tvr-jax ablate`, the goal checked, the baseline's
temperature sweep and the wall time of every run, read from the ablation's work directories.

    tvr-jax ablate --config configs/synthetic.py --workdir ABL --config.data_dir=DATA \\
        --config.total_steps=200 --config.checkpoint_every=200 --seeds 0 1 2
    tvr-jax ablate ... --workdir ABL_T0.02 --config.loss.temperature=0.02 --variants "baseline (cosine, InfoNCE)"
    python -m benchmarks.ablation_synthetic ABL --sweep 0.02=ABL_T0.02 ... --ablate-wall 2160

Nothing is re-run here. A run's wall time is the time from its config.json (written before
training starts) to its eval/metrics.json (written when evaluation ends): training, checkpoint
and evaluation, without the process start that one `ablate` call pays once. `--ablate-wall`
is the whole command's wall time as measured outside (e.g. `/usr/bin/time`), when known.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from benchmarks.results_io import print_tables, table, write_results
from tvr_jax import ablation

BASELINE = "baseline (cosine, InfoNCE)"
FULL = "+ TPM-CL type 4"
GOAL_POINTS = 10.0  # the full method ahead by at least this many t2v R@1 points ...
GOAL_SD_FACTOR = 2.0  # ... and by more than twice the larger of the two standard deviations


def run_walls(workdir: str, results: dict) -> dict[str, dict[str, float]]:
    """Seconds from config.json to eval/metrics.json of every run of `results`."""
    walls = {}
    for name, by_seed in results.items():
        for seed in by_seed:
            run = os.path.join(workdir, ablation.slug(name), f"seed{seed}")
            start = os.path.getmtime(os.path.join(run, "config.json"))
            end = os.path.getmtime(os.path.join(run, "eval", "metrics.json"))
            walls.setdefault(name, {})[str(seed)] = round(end - start, 1)
    return walls


def t2v_r1(by_seed: dict) -> list[float]:
    return [r["t2v"]["R@1"] for r in by_seed.values()]


def goal(full: list[float], base: list[float]) -> dict:
    gap = statistics.mean(full) - statistics.mean(base)
    larger_sd = max(statistics.stdev(full), statistics.stdev(base))
    return {"full_mean": statistics.mean(full), "baseline_mean": statistics.mean(base), "gap": gap,
            "larger_sd": larger_sd, "met": gap >= GOAL_POINTS and gap > GOAL_SD_FACTOR * larger_sd,
            "full_per_seed": full, "baseline_per_seed": base}


def _escaped(rows: list[list]) -> list[list]:
    return [[c.replace("*", r"\*") if isinstance(c, str) else c for c in row] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", help="the `tvr-jax ablate --workdir` of the main table")
    parser.add_argument("--sweep", nargs="*", default=[], metavar="T=WORKDIR",
                        help="baseline runs at temperature T (their own ablate work directories)")
    parser.add_argument("--ablate-wall", type=float, default=None, help="measured wall seconds of the ablate command")
    parser.add_argument("--out", default="benchmarks/results/ablation_synthetic.json")
    args = parser.parse_args()

    with open(os.path.join(args.workdir, "ablation.json")) as f:
        record = json.load(f)
    results = record["results"]
    with open(os.path.join(args.workdir, ablation.slug(BASELINE), "seed0", "config.json")) as f:
        run_cfg = json.load(f)
    steps, batch = run_cfg["total_steps"], run_cfg["global_batch_size"]
    walls = run_walls(args.workdir, results)
    columns, rows = ablation.ablation_rows(results)
    columns.append("wall per run (s)")
    for row, name in zip(rows, results):
        row.append(f"{statistics.mean(walls[name].values()):.0f}")
    tables = [table(f"Ablation on the synthetic set ({steps} steps of batch {batch} per run, mean ± sd over seeds)",
                    columns, _escaped(rows))]

    config_temperature = str(run_cfg["loss"]["temperature"])
    sweep = {config_temperature: results[BASELINE]}
    for item in args.sweep:
        temperature, _, workdir = item.partition("=")
        with open(os.path.join(workdir, "ablation.json")) as f:
            sweep[temperature] = json.load(f)["results"][BASELINE]
    # The baseline's best temperature among those run with every seed.
    complete = {t: by_seed for t, by_seed in sweep.items() if len(by_seed) == len(results[FULL])}
    best = max(complete, key=lambda t: statistics.mean(t2v_r1(complete[t])))
    checked = goal(t2v_r1(results[FULL]), t2v_r1(complete[best]))
    checked["baseline_temperature"] = best
    runs = sum(len(w) for w in walls.values())
    total_runs = sum(sum(w.values()) for w in walls.values())
    tables.append(table("The goal: full method against the baseline at its best temperature (t2v R@1)", [
        "full method", f"baseline (T = {best})", "gap (points)", "2 x larger sd", "goal (gap >= 10 and > 2 sd)", "runs",
        "sum of run walls", "ablate command wall"], [[
        f"{checked['full_mean']:.1f}", f"{checked['baseline_mean']:.1f}", f"{checked['gap']:.1f}",
        f"{GOAL_SD_FACTOR * checked['larger_sd']:.1f}", "met" if checked["met"] else "NOT met", runs,
        f"{total_runs / 60:.1f} min", f"{args.ablate_wall / 60:.1f} min" if args.ablate_wall else "not given"]]))

    sweep_rows = []
    for temperature, by_seed in sorted(sweep.items(), key=lambda kv: float(kv[0])):
        values = t2v_r1(by_seed)
        v2t = [r["v2t"]["R@1"] for r in by_seed.values()]
        mean_sd = lambda xs: f"{statistics.mean(xs):.1f}" + (f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")
        sweep_rows.append([temperature + (" (the config's)" if temperature == config_temperature else ""), len(values), mean_sd(values), mean_sd(v2t),
                           ", ".join(f"{v:.1f}" for v in values)])
    tables.append(table(f"The baseline's temperature ({steps} steps; read on the test split, which can only favour it)",
                        ["temperature", "seeds", "t2v R@1", "v2t R@1", "t2v R@1 per seed"], sweep_rows))

    print_tables(tables)
    write_results(args.out, tables=tables, steps_per_run=steps, global_batch_size=batch, seeds=record["seeds"],
                  variants=record["variants"], labels=record["labels"], results=results, run_wall_seconds=walls,
                  ablate_wall_seconds=args.ablate_wall, goal=checked,
                  temperature_sweep={t: by_seed for t, by_seed in sweep.items()})


if __name__ == "__main__":
    main()
