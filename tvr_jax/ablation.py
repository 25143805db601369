"""The paper's ablation: one switch per component, each variant trained and evaluated alike.

Variants add the method's components one at a time to the CLIP4Clip baseline (method.md
sections 2-4); every one is a list of config overrides, so a row of the table is reproducible
with `tvr-jax train --config ... --config.FIELD=VALUE ...`. Runs are resumable: a finished run
(its eval/metrics.json exists) is read back, an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Sequence

from tvr_jax.config_io import apply_override

# name -> overrides, cumulative as in the paper's ablation table.
_BASELINE = ["model.interaction='cosine'", "model.tpm=False", "loss.lambda_neg=0.0", "loss.lambda_tpm=0.0",
             "loss.visual_attention=False", "loss.textual_attention=False"]
_TOKENWISE = ["model.interaction='att_ti'", "model.tpm=False", "loss.lambda_neg=0.0", "loss.lambda_tpm=0.0",
              "loss.visual_attention=False", "loss.textual_attention=False"]
VARIANTS: dict[str, list[str]] = {
    "baseline (cosine, InfoNCE)": _BASELINE,
    "+ token-wise interaction": _TOKENWISE,
    "+ textual attention": _TOKENWISE + ["loss.textual_attention=True"],
    "+ visual attention (DMAE)": _TOKENWISE + ["loss.textual_attention=True", "loss.visual_attention=True"],
    "+ NegNCE": _TOKENWISE + ["loss.textual_attention=True", "loss.visual_attention=True", "loss.lambda_neg=0.5"],
}
for _type in (2, 3, 4):
    VARIANTS[f"+ TPM-CL type {_type}"] = VARIANTS["+ NegNCE"] + ["model.tpm=True", "loss.lambda_tpm=1.0",
                                                                f"loss.partial_type={_type}"]
COLUMNS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower().replace("__", "_")


def run_ablation(cfg, workdir: str, variants: Sequence[str], seeds: Sequence[int]) -> dict:
    """Train and evaluate every (variant, seed); returns {variant: {seed: report}} and writes the table."""
    from tvr_jax import evaluate, train

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    results: dict[str, dict[int, dict]] = {}
    for name in variants:
        for seed in seeds:
            run_dir = os.path.join(workdir, slug(name), f"seed{seed}")
            metrics_path = os.path.join(run_dir, "eval", "metrics.json")
            if not os.path.exists(metrics_path):
                run_cfg = cfg.copy_and_resolve_references()
                for item in VARIANTS[name] + [f"seed={seed}"]:
                    apply_override(run_cfg, item)
                train.train(run_cfg, run_dir, train.dataset_batches(run_cfg))
                evaluate.evaluate_checkpoint(run_cfg, run_dir)
            with open(metrics_path) as f:
                results.setdefault(name, {})[seed] = json.load(f)
    table = ablation_table(results)
    for filename, text in (("ablation.md", table), ("ablation.json", json.dumps(
            {"variants": {n: VARIANTS[n] for n in results}, "seeds": list(seeds), "results": results}, indent=2))):
        tmp = os.path.join(workdir, filename + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(workdir, filename))
    return results


def ablation_table(results: dict[str, dict[int, dict]]) -> str:
    """One row per variant, the paper's layout; mean +- standard deviation over seeds."""
    def cell(reports: list[dict], direction: str, column: str) -> str:
        values = [r[direction][column] for r in reports]
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    head = "| variant | seeds | " + " | ".join(f"t2v {c}" for c in COLUMNS) + " | " + " | ".join(f"v2t {c}" for c in COLUMNS) + " |"
    rows = [head, "|---" * (2 + 2 * len(COLUMNS)) + "|"]
    for name, by_seed in results.items():
        reports = list(by_seed.values())
        cells = [cell(reports, d, c) for d in ("t2v", "v2t") for c in COLUMNS]
        rows.append(f"| {name} | {len(reports)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
