"""benchmarks/memory.py: the HLO copy finder on a real compiled loop, and its command line."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.memory import CASES, loop_copies

ROOT = Path(__file__).resolve().parents[1]


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_a_loop_that_keeps_an_old_copy_of_its_carry_is_found_and_an_in_place_update_is_not():
    big = jnp.zeros((64, 1024), jnp.float32)  # 256 KiB, above the finder's 16 KiB floor

    def in_place(x):
        return jax.lax.fori_loop(0, 8, lambda i, c: c.at[i].set(c[i] + 1.0), x)

    def keeps_old(x):  # the old carry is read after the new one is written: XLA must copy it
        def body(i, c):
            a, b = c
            return a.at[i].set(1.0), a
        return jax.lax.fori_loop(0, 8, body, (x, x))

    assert not [c for c in loop_copies(_hlo(in_place, big)) if c["loop_carried"]]
    found = [c for c in loop_copies(_hlo(keeps_old, big)) if c["loop_carried"]]
    assert found and all(c["bytes"] == 64 * 1024 * 4 for c in found)
    assert found[0]["shape"].startswith("f32[64,1024]")


def test_case_names_with_commas_parse_and_a_bad_one_is_a_one_line_error():
    # the default is every name joined the same way; a name split at its comma was refused before
    p = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--cases", f"{next(iter(CASES))}; nope"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "--cases: unknown ['nope']" in p.stderr and "Traceback" not in p.stderr
