"""One source per default: the config's model, loss and data sections are the dataclasses' defaults,
and every field travels from the config to its dataclass by name (tvr_jax/experiment.py)."""

import dataclasses
import glob
import os

import pytest

from configs.base import base_config
from data_pipeline.input_pipeline import InputConfig
from tvr_jax import experiment
from tvr_jax.config_io import load_config
from tvr_jax.models.clip import COMPUTE_SWITCHES, CLIPConfig
from tvr_jax.models.retrieval import RetrievalConfig
from tvr_jax.objective import LossConfig

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not os.path.basename(p).startswith(("_", "base")))


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_sections_are_the_dataclass_defaults():
    cfg = base_config()
    assert cfg.loss.to_dict() == _field_defaults(LossConfig)
    retrieval = _field_defaults(RetrievalConfig)
    assert {name: cfg.model[name] for name in experiment.model_fields()} == {name: retrieval[name] for name in experiment.model_fields()}
    assert {name: cfg.model[name] for name in COMPUTE_SWITCHES} == {name: _field_defaults(CLIPConfig)[name] for name in COMPUTE_SWITCHES}
    assert {name: cfg.data[name] for name in experiment.INPUT_FIELDS} == {name: _field_defaults(InputConfig)[name] for name in experiment.INPUT_FIELDS}
    # The config's model section holds RetrievalConfig's fields, the compute switches and the
    # preset/geometry fields, nothing the translation would drop.
    assert set(cfg.model) == set(experiment.model_fields()) | set(COMPUTE_SWITCHES) | {"clip_preset", "image_size", "patch_size"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_files_add_no_field(path):
    """A derived config changes values only: a field the dataclasses lack would never reach the model."""
    cfg, base = load_config(path), base_config()
    for section in ("model", "loss", "data", "optim", "eval"):
        assert set(cfg[section]) == set(base[section]), (path, section)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value * 0.5
    return value


def test_every_field_reaches_its_dataclass():
    cfg = base_config()
    cfg.model.clip_preset = "tiny"
    # A valid non-default value for each field, set through the config, must come out of the translation.
    cfg.loss.update({name: _changed(value) for name, value in cfg.loss.items()
                     if name not in ("partial_type",)})
    cfg.loss.partial_type = 2
    cfg.model.update(max_frames=5, max_words=20, temporal="meanP", temporal_layers=2, patch_tokens=3,
                     interaction="att_wti", wti_mlp=True, tpm=False)
    for name in COMPUTE_SWITCHES:  # each compute switch to another valid value
        default = cfg.model[name]
        cfg.model[name] = {"dtype": "bfloat16", "param_dtype": "float32"}.get(name, _changed(default))
    model, _ = experiment.build_model(cfg)
    assert dataclasses.asdict(experiment.loss_config(cfg)) == cfg.loss.to_dict()
    assert {name: getattr(model.config, name) for name in experiment.model_fields()} == {
        name: cfg.model[name] for name in experiment.model_fields()}
    assert {name: getattr(model.config.clip, name) for name in COMPUTE_SWITCHES} == {
        name: cfg.model[name] for name in COMPUTE_SWITCHES}
    cfg.data.update(random_crop=True, random_flip=True, caption_sampling="all", frame_sampling="random_segment")
    training = experiment.input_config(cfg, "train", True, model.config, 8)
    assert {name: getattr(training, name) for name in experiment.INPUT_FIELDS} == {
        name: cfg.data[name] for name in experiment.INPUT_FIELDS}
    testing = experiment.input_config(cfg, "test", False, model.config, 8)
    assert not testing.random_crop and not testing.random_flip  # augmentation is for training only
