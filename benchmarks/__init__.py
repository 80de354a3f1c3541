"""Benchmarks of srsmc-jax: speed (`overhead`, `model_sizes`), sample quality (`reasoning`)."""
