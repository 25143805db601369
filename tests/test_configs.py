"""Every config file loads, validates, builds its model; its tiny variant runs one loss on a batch."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvr_jax import experiment
from tvr_jax.config_io import load_config
from tvr_jax.objective import model_loss

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not os.path.basename(p).startswith(("_", "base")))
DATASET_CONFIGS = [p for p in CONFIGS if not os.path.basename(p).startswith("synthetic")]


def test_every_dataset_and_backbone_has_a_config():
    names = {os.path.basename(p)[:-3] for p in DATASET_CONFIGS}
    paper = {f"{d}_{b}" for d in ("msrvtt", "msvd", "didemo", "activitynet") for b in ("vit_b32", "vit_b16")}
    assert names == paper | {"webvid_vit_b32", "custom_vit_b32"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_validates_and_builds(path):
    cfg = load_config(path)
    experiment.validate_config(cfg)
    model, clip_params = experiment.build_model(cfg)
    assert clip_params is None  # no weights named: random init
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"])
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["clip"])) > 1e6
    with open(path) as f:
        assert "tvr-jax train --config configs/" in f.read()  # each file starts with its command


def test_paper_values():
    cfg = load_config(os.path.join(ROOT, "configs", "msrvtt_vit_b16.py"))
    assert (cfg.model.max_frames, cfg.model.max_words, cfg.global_batch_size) == (12, 32, 128)
    assert cfg.total_steps == 5 * 1407 and cfg.model.clip_preset == "vit_b16"
    assert (cfg.loss.temperature, cfg.loss.gamma, cfg.loss.lambda_neg, cfg.loss.rho, cfg.loss.margin, cfg.loss.partial_type) == (0.01, 0.5, 0.5, 0.6, 0.6, 4)
    assert (cfg.optim.learning_rate, cfg.optim.clip_lr_coef, cfg.optim.weight_decay) == (1e-4, 1e-3, 0.2)
    anet = load_config(os.path.join(ROOT, "configs", "activitynet_vit_b32.py"))
    assert (anet.model.max_frames, anet.model.max_words, anet.eval.split) == (64, 64, "val")


@pytest.mark.parametrize("path", DATASET_CONFIGS[::2], ids=os.path.basename)
def test_tiny_variant_runs_a_loss(path):
    cfg = load_config(path + ":tiny")
    model, _ = experiment.build_model(cfg)
    b, t, l, size = cfg.global_batch_size, cfg.model.max_frames, cfg.model.max_words, model.config.clip.image_size
    rng = np.random.default_rng(0)
    ids = np.zeros((b, l), np.int32)
    ids[:, 0], ids[:, 1:6], ids[:, 6] = 49406, rng.integers(300, 40000, (b, 5)), 49407
    batch = (jnp.asarray(rng.normal(size=(b, t, size, size, 3)), jnp.float32), jnp.ones((b, t), bool),
             jnp.asarray(ids), jnp.asarray(ids > 0), jnp.asarray((ids > 0).astype(np.float32)))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), *batch)["params"]
    loss, parts = jax.jit(lambda p: model_loss(model, p, batch, experiment.loss_config(cfg)))(params)
    assert np.isfinite(float(loss)) and float(parts["tpm"]) >= 0


@pytest.mark.parametrize("override,message", [
    ("model.temporal='lstm'", r"temporal='lstm' \(allowed: \('meanP', 'seqTransf'\)\)"),
    ("loss.partial_type=5", r"partial_type=5 \(allowed: \(2, 3, 4\)\)"),
    ("global_batch_size=0", r"global_batch_size=0 must be an integer >= 1"),
    ("loss.rho=1.5", r"rho=1.5 must be in \(0, 1\]"),
    ("data.caption_sampling='some'", r"data.caption_sampling='some' \(allowed"),
])
def test_bad_values_name_the_field(override, message):
    cfg = load_config(os.path.join(ROOT, "configs", "msvd_vit_b32.py"), [override])
    with pytest.raises(ValueError, match=message):
        experiment.validate_config(cfg)


def test_override_errors():
    path = os.path.join(ROOT, "configs", "synthetic.py")
    with pytest.raises(ValueError, match="unknown field 'model.nope'"):
        load_config(path, ["model.nope=1"])
    with pytest.raises(ValueError, match="global_batch_size is int"):
        load_config(path, ["global_batch_size='x'"])
    cfg = load_config(path, ["optim.learning_rate=1", "model.temporal=meanP", "mesh_shape=(2, 4)"])
    assert cfg.optim.learning_rate == 1.0 and cfg.model.temporal == "meanP" and tuple(cfg.mesh_shape) == (2, 4)


def test_ablation_variants_apply_and_validate():
    from tvr_jax import ablation
    from tvr_jax.config_io import apply_override
    from tvr_jax.similarity import OUR_INTERACTIONS

    assert list(ablation.VARIANTS)[0].startswith("baseline") and len(ablation.VARIANTS) == 11
    assert set(ablation.LABELS) == set(ablation.VARIANTS)
    assert len({ablation.slug(name) for name in ablation.VARIANTS}) == len(ablation.VARIANTS)  # run dirs
    applied = {}
    for name, overrides in ablation.VARIANTS.items():
        cfg = load_config(os.path.join(ROOT, "configs", "synthetic.py"))
        cfg.loss.visual_mask_straight_through = True  # rows must not inherit it from the config
        for item in overrides:
            apply_override(cfg, item)
        experiment.validate_config(cfg)
        assert (cfg.loss.lambda_tpm > 0) == cfg.model.tpm == ("TPM" in name), name
        applied[name] = cfg
    # The paper's rows are the release's; only the rows labelled ours depart from it.
    for name, cfg in applied.items():
        ours = "(ours" in ablation.LABELS[name]
        assert ours == (cfg.loss.visual_mask_straight_through or cfg.model.interaction in OUR_INTERACTIONS), name
    full = applied["+ TPM-CL type 4"]
    for name in ("+ TPM-CL type 4, att_wti (release)", "+ TPM-CL type 4, att_wti_norm (ours)",
                 "+ TPM-CL type 4, straight-through (ours)"):  # the full method with one change
        changed = {f"{group}.{k}" for group in ("model", "loss")
                   for k in full[group] if full[group][k] != applied[name][group][k]}
        assert len(changed) == 1, (name, changed)


def test_ablation_table_mean_and_std():
    from tvr_jax.ablation import ablation_table

    metrics = lambda r1: {d: {"R@1": r1, "R@5": 50.0, "R@10": 60.0, "MdR": 3.0, "MnR": 4.0} for d in ("t2v", "v2t")}
    table = ablation_table({"baseline": {0: metrics(10.0), 1: metrics(20.0)}, "+ x": {0: metrics(30.0)},
                            "+ NegNCE": {0: metrics(40.0)}})
    assert "| baseline | 2 | 15.0 ± 7.1 | 50.0 ± 0.0 |" in table
    assert "| + x | 1 | 30.0 | 50.0 |" in table
    assert "| + NegNCE (hard negatives, lambda_neg = 0.5) | 1 | 40.0 |" in table  # rows show their label


def test_ablation_config_is_the_demo_config_at_the_recorded_budget():
    """configs/synthetic_ablation.py is what the recorded ablation ran: the demo's config with
    total_steps and checkpoint_every at 300 (REPRODUCING.md, BENCHMARKS.md), nothing else."""
    ablation_cfg = load_config(os.path.join(ROOT, "configs", "synthetic_ablation.py"))
    recorded = load_config(os.path.join(ROOT, "configs", "synthetic.py"), ["total_steps=300", "checkpoint_every=300"])
    assert ablation_cfg.to_dict() == recorded.to_dict()
