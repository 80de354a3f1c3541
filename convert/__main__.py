"""``srsmc convert SRC DST [--family NAME] [--dtype float32|bfloat16] [--force]
[--config CONFIG.json] [--no-ema]``.

Exit status 0 on success, 2 on any error, printed as one line ``convert: error: ...`` naming the
file, key or argument (no traceback); warnings are one line ``convert: warning: ...`` each.
"""

from __future__ import annotations

import argparse
import sys
import warnings


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (not the whole usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    return " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__


def parser() -> argparse.ArgumentParser:
    from srsmc_jax.models import FAMILIES

    p = _Parser(
        prog="srsmc convert",
        description=f"Convert a Hugging Face {' / '.join(FAMILIES)} folder (safetensors or pytorch_model*.bin), "
                    "or an MDLM / BD3-LM Lightning .ckpt, into a checkpoint folder loadable with models.load(DST). "
                    "DST is written atomically and verified; SRC is never modified.")
    p.add_argument("src", help="Hugging Face model folder (config.json + weights) or a Lightning .ckpt")
    p.add_argument("dst", help="output folder: new, empty, or (with --force) an existing converted checkpoint")
    p.add_argument("--family", choices=list(FAMILIES), default=None,
                   help="model family (default: read from config.json's model_type / architectures)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="cast the floating-point weights (default: keep the checkpoint's dtype)")
    p.add_argument("--force", action="store_true",
                   help="replace DST if it is a converted checkpoint (atomically: the old one stays until the new "
                        "one is complete)")
    p.add_argument("--config", default=None,
                   help="Hugging Face-style config.json (default: SRC/config.json, or next to a .ckpt)")
    p.add_argument("--no-ema", action="store_true",
                   help="Lightning .ckpt: convert the raw state_dict weights instead of the EMA weights")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from srsmc_jax.convert import ConversionWarning, convert_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = convert_checkpoint(args.src, args.dst, family=args.family, dtype=args.dtype, force=args.force,
                                     config=args.config, ema=not args.no_ema)
        except (ValueError, RuntimeError, NotImplementedError, OSError) as e:
            code, message = 2, f"convert: error: {_one_line(e)}"
        except KeyboardInterrupt:
            code, message = 130, f"convert: interrupted; {args.dst} is unchanged"
        else:
            code, message = 0, None
    for w in caught:
        if issubclass(w.category, ConversionWarning):  # library noise stays out
            print(f"convert: warning: {_one_line(w.message)}", file=sys.stderr)
    if code:
        print(message, file=sys.stderr)
        return code
    print(f"converted {args.src} -> {out}")
    return 0


if __name__ == "__main__":  # python -m srsmc_jax.convert: Ctrl-C is one line "convert: interrupted", exit 130
    # (the command-line entry point only: the converter itself never imports the application layer)
    from srsmc_jax.app import interrupts

    interrupts.run("convert", main)
