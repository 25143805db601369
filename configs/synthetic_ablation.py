"""The miniature ablation's budget: the demo's config (configs/synthetic.py) at 300 steps per run.

    tvr-jax ablate --config configs/synthetic_ablation.py --workdir runs/ablation --seeds 0 1 2
    tvr-jax train --config configs/synthetic_ablation.py --workdir runs/one_row --config.data_dir=data/ \
        --config.model.interaction=cosine ...     # one row: its overrides from tvr_jax/ablation.py

Eight rows x three seeds of 300 steps (batch 64) fit in about 40 minutes on 2 CPU cores;
REPRODUCING.md has the measured table, the baseline's temperature sweep and the other budgets.
Every variant gets the same steps, learning rate and schedule; `tvr_jax/ablation.py` adds each
row's switches on top.
"""

from configs import synthetic


def get_config(arg=None):
    c = synthetic.get_config(arg)
    c.total_steps = 300
    c.checkpoint_every = 300
    c.log_every = 50
    return c
