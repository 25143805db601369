"""tvr-jax: DMAE + NegNCE + TPM-CL text-video retrieval in JAX/Flax."""

from tvr_jax import xla_workarounds

xla_workarounds.apply()  # before jax starts a backend: XLA reads its flags once

__version__ = "0.1.0"
