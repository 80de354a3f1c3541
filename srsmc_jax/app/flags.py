"""Command-line flags generated from ``SMCConfig``: one flag per field, with its help text, its
default, and the registered names of strategy knobs as choices.

    parser = argparse.ArgumentParser()
    flags.add_config_flags(parser, defaults={"num_particles": 8})  # e.g.
    args = parser.parse_args()
    config = flags.config_from_args(args, mask_id=model.mask_id, gen_length=36)

Flags a user does not give are left out of ``args`` (``argparse.SUPPRESS``), so the command line
knows which knobs were given explicitly: an explicit knob that the chosen strategies ignore (e.g.
``--threshold`` with ``--select topk``) is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Mapping, Optional

from srsmc_jax import config as config_lib
from srsmc_jax.config import SMCConfig
from srsmc_jax.registry import Registry

REGISTRIES: dict[str, Registry] = {**config_lib._STRATEGY_KNOBS, **config_lib._SCHEDULE_KNOBS}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _optional(kind):
    def parse(text: str):
        if text.lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _resample_every(text: str):
    if text in ("block", "step"):
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'block', 'step' or an int >= 1, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {k}")
    return k


def _parser_for(field: dataclasses.Field):
    """(type, choices) of a field's flag, from its annotation."""
    ann = str(field.type)
    if field.name in REGISTRIES:
        return str, REGISTRIES[field.name].names()
    if field.name == "resample_every":
        return _resample_every, None
    if "choices" in field.metadata:
        return str, tuple(field.metadata["choices"])
    table = {"int": int, "float": float, "Optional[int]": _optional(int), "Optional[float]": _optional(float)}
    if ann in table:
        return table[ann], None
    raise TypeError(f"SMCConfig.{field.name}: no command-line parser for type {ann}")  # pragma: no cover


def cli_fields() -> list[dataclasses.Field]:
    """The SMCConfig fields that get a flag (``mask_id`` comes from the model)."""
    return [f for f in dataclasses.fields(SMCConfig) if f.metadata.get("cli", True)]


def _help(field: dataclasses.Field, default: Any) -> str:
    text = field.metadata.get("help", "")
    if field.name in REGISTRIES:
        text += ". Choices: " + "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in REGISTRIES[field.name])
    shown = "none" if default is None else default
    return f"{text} (default: {shown})".replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, defaults: Optional[Mapping[str, Any]] = None,
                     default_help: Optional[Mapping[str, str]] = None, short: Optional[Mapping[str, str]] = None
                     ) -> None:
    """One flag per ``SMCConfig`` field. ``defaults`` overrides a field's default for this command;
    ``default_help`` replaces the shown default by a text (e.g. "the task's answer length");
    ``short`` adds short aliases (``{"num_particles": "-n"}``)."""
    defaults, default_help, short = dict(defaults or {}), dict(default_help or {}), dict(short or {})
    group = parser.add_argument_group("sampler (SMCConfig)")
    for f in cli_fields():
        default = defaults.get(f.name, f.default)
        names = [flag_name(f.name)] + ([short[f.name]] if f.name in short else []) + ALIASES.get(f.name, [])
        help_text = _help(f, default_help.get(f.name, default))
        if str(f.type) == "bool":
            group.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            kind, choices = _parser_for(f)
            group.add_argument(*names, type=kind, choices=choices, default=argparse.SUPPRESS,
                               metavar=None if choices else f.name.upper(), help=help_text)


# what a Hugging Face ``generate`` user types first
ALIASES = {"gen_length": ["--max-new-tokens"]}
DEFAULT_GEN_LENGTH = 128


def check_task_gen_length(given: Mapping[str, Any], task: Any) -> None:
    """An embedded task answers with exactly its own length: ValueError naming --gen-length otherwise."""
    if task is not None and "gen_length" in given and given["gen_length"] != task.gen_length:
        raise ValueError(f"{flag_name('gen_length')}: the embedded {task.name} model answers with exactly "
                         f"{task.gen_length} tokens, got {given['gen_length']}")


def default_lengths(given: Mapping[str, Any], *, room: int, block: int = 32,
                    task_gen_length: Optional[int] = None) -> tuple[int, int]:
    """(gen_length, block_length) from the flags given, else defaults that fit: an embedded task's
    answer length (one block); else at most 128 tokens, a whole number of the family's default
    ``block`` (lowered to what fits), within ``room`` (the context left after the prompt).
    ValueError naming the flag when the given values cannot work."""
    gen, blk = given.get("gen_length"), given.get("block_length")
    if task_gen_length is not None:
        gen = task_gen_length if gen is None else gen
        return gen, gen if blk is None else blk
    if room < 1:
        raise ValueError(f"prompt: it leaves no room to generate in the model's context ({room} positions left)")
    if gen is None:
        unit = min(blk or block, room)
        gen = max(min(DEFAULT_GEN_LENGTH, room) // unit * unit, unit)
    if blk is None:
        blk = min(block, gen)
        if gen % blk:
            if "gen_length" in given:
                raise ValueError(f"{flag_name('gen_length')} {gen}: not a multiple of the default block length {blk}; "
                                 f"give {flag_name('block_length')} (a divisor of it)")
            blk = gen
    return gen, blk


def given_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The SMCConfig knobs the user gave explicitly."""
    return {f.name: getattr(args, f.name) for f in cli_fields() if hasattr(args, f.name)}


def config_from_args(args: argparse.Namespace, defaults: Optional[Mapping[str, Any]] = None,
                     **fixed: Any) -> SMCConfig:
    """``SMCConfig`` from SMCConfig defaults, then ``defaults``, then the flags given, then ``fixed``
    (values the model dictates, e.g. ``mask_id``). ValueError naming the flag for a knob the chosen
    strategies ignore."""
    given = given_knobs(args)
    values = {**dict(defaults or {}), **given, **fixed}
    try:
        config = SMCConfig(**values)
    except ValueError as e:  # name the flag, not the dataclass field
        names = {f.name for f in cli_fields()}
        raise ValueError(re.sub(r"SMCConfig\.(\w+)", lambda m: flag_name(m.group(1)) if m.group(1) in names
                                else m.group(0), str(e))) from None
    for knob, applies_to in config.unused_knobs():
        if knob in given:
            raise ValueError(f"{flag_name(knob)} has no effect with the chosen strategies (it applies to "
                             f"{applies_to.replace('=', ' ')})")
    return config
