"""The application layer: the ``srsmc`` command line (and batch tools) on top of the engine and
``models``.

This sub-package is the ONLY part of ``srsmc_jax`` allowed to import ``models`` (and through it the
checkpoint format); the engine modules beside it never do (``tests/test_architecture.py`` checks
it in a fresh interpreter). ``import srsmc_jax`` does not import this package.
"""
