from srsmc_jax.app.cli import run

run()
