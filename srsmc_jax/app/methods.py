"""The registry of decoding methods and presets (``srsmc eval``, the ``lm_eval --model srsmc`` adapter).

Methods (each a set of ``SMCConfig`` knobs it FIXES; a flag that contradicts one is an error):

* ``greedy``: N = 1, τ = 0 (same SELECT, block and cache as the others).
* ``sampling``: N = 1 at the preset's τ — the reference code's "baseline" (``use_smc=False`` with
  ``temperature=1.0`` in its LLaDA and Dream GSM8K scripts).
* ``best_of_n``: N independent particles (uniform weights, never resampled), the one with the
  highest trajectory confidence Σ log p returned.
* ``srsmc``: SR-SMC, the reference setting unless flags change it: self-reward weights, multinomial
  resampling when ESS < N/2 at block ends, the highest trajectory confidence returned.

Presets (defaults a flag overrides): ``paper`` = the SR-SMC paper's Table 2 setting — N = 4,
L = 256 generated tokens (``--gen-length 512`` for its L = 512 rows), blocks of 32, threshold-0.9
decoding (Fast-dLLM), τ = 1, the prefix cache; ``none`` = the ``SMCConfig`` defaults, no cache.
LLaDA2.x (exact block cache, blocks of 32, τ = 1, L = 256): ``llada2`` = LLaDA2.0's threshold 0.95
(SGLang's LowConfidence); ``llada21_quality`` / ``llada21_speed`` = LLaDA2.1's two modes, threshold
0.7 / 0.5 with token edits above 0.5 / 0.0 and up to 16 edit-only steps per block (``srsmc_jax.edit``).
With ``--method greedy`` (N = 1, τ = 0) these are the official decodings (threshold with one token at
least per step: the official rule up to a confidence exactly equal to the threshold).
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from srsmc_jax.app import flags

METHODS: dict[str, dict[str, Any]] = {
    "greedy": {"num_particles": 1, "temperature": 0.0},
    "sampling": {"num_particles": 1},
    "best_of_n": {"weight": "uniform", "ess_threshold": 0.0, "selection": "trajectory_confidence"},
    "srsmc": {},
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"knobs": {"num_particles": 4, "gen_length": 256, "block_length": 32, "select": "threshold",
                        "threshold": 0.9, "temperature": 1.0}, "cache": "prefix"},
    "none": {"knobs": {}, "cache": "none"},
    "llada2": {"knobs": {"num_particles": 4, "gen_length": 256, "block_length": 32, "select": "threshold",
                         "threshold": 0.95, "temperature": 1.0}, "cache": "block"},
    "llada21_quality": {"knobs": {"num_particles": 4, "gen_length": 256, "block_length": 32, "select": "threshold",
                                  "threshold": 0.7, "edit": "threshold", "edit_threshold": 0.5, "max_post_steps": 16,
                                  "temperature": 1.0}, "cache": "block"},
    "llada21_speed": {"knobs": {"num_particles": 4, "gen_length": 256, "block_length": 32, "select": "threshold",
                                "threshold": 0.5, "edit": "threshold", "edit_threshold": 0.0, "max_post_steps": 16,
                                "temperature": 1.0}, "cache": "block"},
}


class MethodError(ValueError):
    """A flag that contradicts the method, or an unknown method / preset (one line)."""


def apply_method(name: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """``knobs`` (``SMCConfig`` keyword arguments) with method ``name``'s fixed knobs set: the one
    definition of greedy, sampling, best-of-N and SR-SMC for the command line, the evaluation, the
    study and the benchmarks."""
    if name not in METHODS:
        raise MethodError(f"unknown decoding method {name!r}; expected one of {', '.join(METHODS)}")
    return {**knobs, **METHODS[name]}


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--preset``, ``--cache`` and every SMCConfig flag (given flags only are kept)."""
    parser.add_argument("--method", choices=tuple(METHODS), default="srsmc",
                        help="greedy | sampling (the reference's baseline) | best_of_n | srsmc (default: srsmc)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                        help="defaults for the sampler flags: paper (N=4, L=256, block 32, threshold 0.9, τ=1, "
                             "prefix cache), none (SMCConfig defaults, no cache), llada2 (threshold 0.95, block "
                             "cache), llada21_quality / llada21_speed (LLaDA2.1's modes: threshold 0.7 / 0.5, token "
                             "edits above 0.5 / 0.0, block cache) (default: paper)")
    parser.add_argument("--cache", default=None,
                        help="none | prefix | dual (LLaDA, Dream) | block (BD3-LM) (default: the preset's)")
    flags.add_config_flags(parser, default_help={
        "num_particles": "the preset's (paper: 4); 1 for greedy and sampling",
        "gen_length": "the preset's (paper: 256)", "block_length": "the preset's (paper: 32)",
        "select": "the preset's (paper: threshold)", "temperature": "the preset's (paper: 1.0); 0 for greedy"},
        short={"num_particles": "-n", "temperature": "-t"})


def method_config(args: argparse.Namespace, *, model: Any = None, task: Any = None, mask_id: int = 0):
    """(SMCConfig, cache) for ``args.method`` / ``args.preset`` and the sampler flags given; with a
    loaded ``model``, its mask id and a check that the lengths fit its context (without one, the
    flags alone are checked)."""
    if args.method not in METHODS:
        raise MethodError(f"--method: unknown method {args.method!r}; expected one of {', '.join(METHODS)}")
    if args.preset not in PRESETS:
        raise MethodError(f"--preset: unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    fixed = METHODS[args.method]
    given = flags.given_knobs(args)
    for knob, value in fixed.items():
        if knob in given and given[knob] != value:
            raise MethodError(f"{flags.flag_name(knob)} {given[knob]}: --method {args.method} fixes it to {value!r}")
    preset = PRESETS[args.preset]
    defaults: dict[str, Any] = dict(preset["knobs"])
    if task is not None:  # an embedded task answers with exactly its own length, in one block
        try:
            flags.check_task_gen_length(given, task)
        except ValueError as e:
            raise MethodError(str(e)) from None
        defaults.update(gen_length=task.gen_length, block_length=task.gen_length)
    if model is not None:
        gen = given.get("gen_length", defaults.get("gen_length", 128))
        if gen >= model.max_length:
            source = "" if "gen_length" in given else f" (set by --preset {args.preset})"
            raise MethodError(f"--gen-length {gen}{source} leaves no room for a prompt in the model's context length "
                              f"{model.max_length}; give a smaller --gen-length")
    config = flags.config_from_args(args, defaults, mask_id=mask_id if model is None else model.mask_id,
                                    **fixed)
    cache = args.cache if args.cache is not None else preset["cache"]
    return config, (None if cache == "none" else cache)


def describe(config, cache) -> Mapping[str, Any]:
    """The knobs a results table shows."""
    return {"N": config.num_particles, "L": config.gen_length, "block": config.block, "select": str(config.select),
            "temperature": config.temperature, "cache": cache or "none"}
