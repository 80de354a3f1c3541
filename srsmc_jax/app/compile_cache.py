"""JAX's persistent compilation cache for the command-line tools: a second run of the same command
loads its programs from disk instead of compiling them.

On by default for every ``srsmc`` command, in ``$XDG_CACHE_HOME/srsmc-jax/xla`` (``~/.cache/srsmc-jax/xla``).
``SRSMC_COMPILE_CACHE=DIR`` moves it, ``SRSMC_COMPILE_CACHE=off`` turns it off; the flags
``--compile-cache DIR`` and ``--no-compile-cache`` (anywhere on an ``srsmc`` command line) do the same
for one run. Library users opt in with :func:`enable` (JAX's own ``jax_compilation_cache_dir``
works too). Every program the tools build is cacheable: none has a host callback in it
(``make_sampler(progress=...)`` adds one and is therefore not used by the tools).

:class:`CompileStats` counts the cache's hits and misses (JAX's monitoring events) so a command can
say whether it compiled, and a test can check that a rerun compiled nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

ENV = "SRSMC_COMPILE_CACHE"
OFF = ("off", "0", "none", "false", "no")
HIT_EVENT = "/jax/compilation_cache/cache_hits"
MISS_EVENT = "/jax/compilation_cache/cache_misses"
# every XLA program built, compiled or loaded from the cache (jax._src.dispatch.BACKEND_COMPILE_EVENT)
PROGRAM_EVENT = "/jax/core/compile/backend_compile_duration"


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "srsmc-jax" / "xla"


def take_flags(argv: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """Remove ``--compile-cache DIR`` / ``--compile-cache=DIR`` / ``--no-compile-cache`` from argv:
    (the other arguments, the setting: a folder, "off", or None for the environment's / default)."""
    rest: list[str] = []
    setting: Optional[str] = None
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--no-compile-cache":
            setting = "off"
        elif a == "--compile-cache":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise ValueError("--compile-cache: expected a folder (or --no-compile-cache to turn it off)")
            setting = args[i + 1]
            i += 1
        elif a.startswith("--compile-cache="):
            setting = a.split("=", 1)[1]
            if not setting:
                raise ValueError("--compile-cache: expected a folder (or --no-compile-cache to turn it off)")
        elif a == "--":
            rest.extend(args[i:])
            break
        else:
            rest.append(a)
        i += 1
    return rest, setting


def resolve(setting: Optional[str] = None) -> Optional[Path]:
    """The cache folder for ``setting`` (a flag's value) else ``$SRSMC_COMPILE_CACHE`` else the
    default; None when turned off."""
    value = setting if setting is not None else os.environ.get(ENV)
    if value is not None and value.strip().lower() in OFF:
        return None
    return Path(value).expanduser() if value else default_dir()


def enable(path: Optional[Path | str] = None) -> Optional[Path]:
    """Turn JAX's persistent compilation cache on in ``path`` (default: :func:`resolve`); every
    program is cached however fast it compiled. Returns the folder, or None when turned off or the
    folder cannot be created (then nothing is cached and a run is only slower)."""
    folder = resolve(None if path is None else str(path))
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


class CompileStats:
    """Counts compilation-cache hits and misses from now on (process-wide JAX monitoring events).

    hits: programs loaded from the cache; misses: programs compiled and written to the cache;
    programs: every program built (loaded or compiled, whether the cache is on or off);
    compiled: the programs XLA compiled (``programs - hits``: counted with the cache off too).
    """

    def __init__(self):
        from jax import monitoring

        self.hits = 0
        self.misses = 0
        self.programs = 0
        monitoring.register_event_listener(self._on_event)
        monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_event(self, event: str, **_) -> None:
        if event == HIT_EVENT:
            self.hits += 1
        elif event == MISS_EVENT:
            self.misses += 1

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if event == PROGRAM_EVENT:
            self.programs += 1

    @property
    def compiled(self) -> int:
        return max(self.programs - self.hits, self.misses)

    def summary(self) -> str:
        """``"3 compiled program(s), 2 loaded from the compilation cache"``."""
        return f"{self.compiled} compiled program(s), {self.hits} loaded from the compilation cache"
