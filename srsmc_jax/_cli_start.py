"""Ctrl-C from a command-line tool's first moment (imported first by ``srsmc_jax/__init__.py``).

When this process IS one of the tools (``python -m srsmc_jax``, ``-m srsmc_jax.app.eval``, ``-m
srsmc_jax.convert``, ``-m srsmc_jax.app.multihost``, or the ``srsmc`` console script),
``srsmc_jax.app.interrupts`` is installed here, before JAX is imported: a SIGINT during the seconds of
imports would otherwise be a KeyboardInterrupt that a JAX gc callback swallows ("Exception ignored",
and the command runs on and exits 0), or a traceback. In any other program (a library import) this
does nothing and imports nothing: the application layer stays out of ``import srsmc_jax``.
"""

from __future__ import annotations

ENTRY_POINTS = {"srsmc_jax": "srsmc", "srsmc_jax.app.eval": "eval", "srsmc_jax.convert": "convert",
                "srsmc_jax.app.multihost": "multihost"}


def command_line_prog() -> str | None:
    """The prog of the tool this process is being started as, or None (see the module docstring)."""
    import os
    import sys

    argv = list(getattr(sys, "orig_argv", None) or ())
    target = None
    if sys.argv[:1] == ["-m"]:  # `python -m X`: this package is being imported to locate X
        for i, a in enumerate(argv[1:], start=1):
            if a == "-m":
                target = argv[i + 1] if i + 1 < len(argv) else None
                break
            if a.startswith("-m"):
                target = a[2:]
                break
    elif sys.argv[:1] and os.path.basename(sys.argv[0]) == "srsmc":  # the console script
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if main and os.path.realpath(main) == os.path.realpath(sys.argv[0]):
            target = "srsmc_jax"
    return ENTRY_POINTS.get(target or "")


_prog = command_line_prog()
if _prog is not None:
    from .app import interrupts

    interrupts.install(_prog)
