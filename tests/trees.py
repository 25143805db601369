"""Leaf-by-leaf comparison of parameter or gradient trees, shared by the tests."""

import jax
import numpy as np


def is_key_bias(path) -> bool:
    """The attention key projection's bias: softmax ignores a shift that is the same for every key,
    so its gradient is zero in exact arithmetic and holds only float32 rounding noise, different
    for every device layout, process count and CPU; Adam turns that noise into steps of its own."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return names[-2:] == ["k_proj", "bias"]


def assert_trees_close(ours, ref, rtol: float, key_bias_atol: float) -> None:
    """Same structure; every leaf equal to `rtol` of its largest entry (an element-wise rtol fails
    on entries near zero in a leaf of large ones); key biases (`is_key_bias`), which carry noise
    only, both within `key_bias_atol` of zero."""
    assert jax.tree.structure(ours) == jax.tree.structure(ref)

    def check(path, a, b):
        a, b = np.asarray(a), np.asarray(b)
        where = jax.tree_util.keystr(path)
        if is_key_bias(path):
            assert max(np.abs(a).max(), np.abs(b).max()) < key_bias_atol, f"{where}: noise above {key_bias_atol}"
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()), err_msg=where)
    jax.tree_util.tree_map_with_path(check, ours, ref)


def largest_entry(tree) -> float:
    return max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(tree))
