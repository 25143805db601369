"""tvr-jax: DMAE + NegNCE + TPM-CL text-video retrieval in JAX/Flax."""

__version__ = "0.1.0"
