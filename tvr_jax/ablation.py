"""The paper's ablation: one switch per component, each variant trained and evaluated alike.

Variants add the method's components one at a time to the CLIP4Clip baseline (docs/method.md
sections 2-4), then change one thing each of the full method: the release's weighted interaction,
ours, and our straight-through visual masking. Every one is a list of config overrides, so a row
of the table is reproducible with `tvr-jax train --config ... --config.FIELD=VALUE ...`. Runs are
resumable: a finished run (its eval/metrics.json exists) is read back, an unfinished one resumes
from its checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Sequence

import jax

from tvr_jax import evaluate, train
from tvr_jax.config_io import apply_override, save_config

# name -> overrides, cumulative as in the paper's ablation table. Every row pins the switches it
# relies on, so the table does not depend on the config's defaults. Names are short (CLI
# `--variants`, run directories); LABELS says what each row computes (docs/method.md 2-4).
_BASELINE = ["model.interaction='cosine'", "model.tpm=False", "loss.lambda_neg=0.0", "loss.lambda_tpm=0.0",
             "loss.visual_attention=False", "loss.textual_attention=False",
             "loss.visual_mask_straight_through=False"]
_TOKENWISE = ["model.interaction='att_ti'"] + _BASELINE[1:]
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
_FULL = VARIANTS["+ TPM-CL type 4"]
PAPER_ROWS = list(VARIANTS)  # the paper's table: each component added to the row above
# Beside the cumulative rows: the full method with one change each.
VARIANTS["+ TPM-CL type 4, att_wti (release)"] = _FULL + ["model.interaction='att_wti'"]
VARIANTS["+ TPM-CL type 4, att_wti_norm (ours)"] = _FULL + ["model.interaction='att_wti_norm'"]
VARIANTS["+ TPM-CL type 4, straight-through (ours)"] = (
    [o for o in _FULL if not o.startswith("loss.visual_mask_straight_through=")]
    + ["loss.visual_mask_straight_through=True"])

# S(X, F): set similarity of docs/method.md 2.3; alpha: text token weights; beta: frame weights;
# omega: textual-attention word weights (2.2); g_t, g_v: the wti heads' logits.
LABELS: dict[str, str] = {
    "baseline (cosine, InfoNCE)": "baseline: cos(t_cls, mean of F), symmetric InfoNCE",
    "+ token-wise interaction": "+ token-wise (att_ti: 1/2[S(t_cls, F) + S(W, F)], uniform alpha and beta)",
    "+ textual attention": "+ textual attention (alpha_W = omega / sum omega)",
    "+ visual attention (DMAE)": "+ visual attention (t2v += gamma C(v*, v**) s(t, v**)) = DMAE",
    "+ NegNCE": "+ NegNCE (hard negatives, lambda_neg = 0.5)",
    "+ TPM-CL type 2": "+ TPM-CL type 2 (L1 + L2: t_cls and t_g against masked video V')",
    "+ TPM-CL type 3": "+ TPM-CL type 3 (L3: masked text t^p_g against t_g)",
    "+ TPM-CL type 4": "+ TPM-CL type 4 (L1 + L2 + L3) = full method",
    "+ TPM-CL type 4, att_wti (release)":
        "full, att_wti as released: alpha_W = omega softmax(g_t) (not renormalised), beta = softmax(g_v)",
    "+ TPM-CL type 4, att_wti_norm (ours)":
        "full, att_wti_norm (ours, not the paper's): att_wti with alpha_W renormalised to sum 1",
    "+ TPM-CL type 4, straight-through (ours)":
        "full + straight-through gradient to the visual weight predictor (ours, not the paper's)",
}
BESIDE_ROWS = [name for name in VARIANTS if name not in PAPER_ROWS]
# What `--variants` may name besides single variants; `tvr-jax ablate` runs "paper" by default.
GROUPS = {"paper": PAPER_ROWS, "beside": BESIDE_ROWS, "all": list(VARIANTS)}
COLUMNS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def resolve_variants(names: Sequence[str] | None) -> list[str]:
    """Variant names from names and group names (GROUPS), in order, each once; None: the paper's rows."""
    out: list[str] = []
    for name in names or ["paper"]:
        for variant in GROUPS.get(name, [name]):
            if variant not in VARIANTS:
                raise ValueError(f"unknown variant {variant!r}; known: groups {list(GROUPS)} and variants {list(VARIANTS)}")
            if variant not in out:
                out.append(variant)
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower().replace("__", "_")


def run_ablation(cfg, workdir: str, variants: Sequence[str], seeds: Sequence[int]) -> dict:
    """Train and evaluate every (variant, seed); returns {variant: {seed: report}} and writes the table."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    share_compilations(workdir)
    results: dict[str, dict[int, dict]] = {}
    for name in variants:
        for seed in seeds:
            run_dir = os.path.join(workdir, slug(name), f"seed{seed}")
            metrics_path = os.path.join(run_dir, "eval", "metrics.json")
            if not os.path.exists(metrics_path):
                run_cfg = cfg.copy_and_resolve_references()
                for item in VARIANTS[name] + [f"seed={seed}"]:
                    apply_override(run_cfg, item)
                save_config(run_cfg, run_dir)
                train.train(run_cfg, run_dir, train.dataset_batch_factory(run_cfg))
                evaluate.evaluate_checkpoint(run_cfg, run_dir)
            with open(metrics_path) as f:
                results.setdefault(name, {})[seed] = json.load(f)
    table = ablation_table(results)
    for filename, text in (("ablation.md", table), ("ablation.json", json.dumps(
            {"variants": {n: VARIANTS[n] for n in results}, "labels": {n: LABELS.get(n, n) for n in results},
             "seeds": list(seeds), "results": results}, indent=2))):
        tmp = os.path.join(workdir, filename + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(workdir, filename))
    return results


def share_compilations(workdir: str) -> None:
    """The seeds of one variant compile the same programs (the seed changes only values): a
    persistent compilation cache in WORKDIR/compilation_cache compiles each program once, for this
    run and for reruns. A cache already chosen (JAX_COMPILATION_CACHE_DIR) is kept."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "compilation_cache"))


def ablation_rows(results: dict[str, dict[int, dict]]) -> tuple[list[str], list[list]]:
    """(columns, rows): one row per variant (its LABELS entry), the paper's layout; mean +- standard
    deviation over seeds."""
    def cell(reports: list[dict], direction: str, column: str) -> str:
        values = [r[direction][column] for r in reports]
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    columns = ["variant", "seeds"] + [f"{d} {c}" for d in ("t2v", "v2t") for c in COLUMNS]
    rows = []
    for name, by_seed in results.items():
        reports = list(by_seed.values())
        rows.append([LABELS.get(name, name), len(reports)] + [cell(reports, d, c) for d in ("t2v", "v2t") for c in COLUMNS])
    return columns, rows


def ablation_table(results: dict[str, dict[int, dict]]) -> str:
    """`ablation_rows` as a markdown table."""
    columns, rows = ablation_rows(results)
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for label, *cells in rows:
        label = label.replace("*", r"\*")  # v*, v** are not emphasis
        lines.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
