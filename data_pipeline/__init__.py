"""Data preparation and input pipeline for tvr-jax (imports nothing from `tvr_jax`)."""
