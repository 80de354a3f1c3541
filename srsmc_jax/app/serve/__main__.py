"""``python -m srsmc_jax.app.serve`` = ``srsmc serve``."""

from srsmc_jax.app import interrupts
from srsmc_jax.app.serve.server import NAME, main

if __name__ == "__main__":
    interrupts.run(NAME, main)
