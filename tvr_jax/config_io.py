"""Loading ml_collections config files with command-line overrides.

    load_config("configs/synthetic.py")            # get_config()
    load_config("configs/synthetic.py:meanP")      # get_config("meanP")
    load_config(path, ["model.temporal=meanP", "total_steps=10"])
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

REQUIRED_FIELDS = ("data_dir", "global_batch_size", "total_steps", "log_every", "checkpoint_every", "seed")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`path[:arg]` -> get_config(arg), then `field.sub=value` overrides (values parsed as Python literals)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"tvr_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg=None)")
    cfg = module.get_config(arg or None)
    for item in overrides:
        apply_override(cfg, item)
    missing = [f for f in REQUIRED_FIELDS if f not in cfg]
    if missing:
        raise ValueError(f"{path}: config lacks required fields {missing}")
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """`a.b=value`: the field must exist; the value keeps the field's type (ConfigDict checks it)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} must look like field.sub=value")
    *parents, leaf = key.split(".")
    node = cfg
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ValueError(f"override {item!r}: no config section {'.'.join(parents[: i + 1])!r}")
        node = node[name]
    if leaf not in node:
        raise ValueError(f"override {item!r}: unknown field {key!r}; fields here: {sorted(node.keys())}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as a path
    current = node[leaf]
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ValueError(f"override {item!r}: {key} is a bool, write True or False")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, str) and not isinstance(value, str):
        value = raw
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"override {item!r}: {key} is {type(current).__name__}, got {type(value).__name__} ({e})") from None


def save_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """WORKDIR/config.json: the resolved config a run used, written atomically."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, "config.json"))
