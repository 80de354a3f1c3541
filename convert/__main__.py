"""``python -m convert SRC DST [--family llada|dream|mdlm|bd3lm] [--dtype float32|bfloat16] [--force]
[--config CONFIG.json] [--no-ema]``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a Hugging Face LLaDA / Dream / MDLM / BD3-LM folder (safetensors or "
                    "pytorch_model*.bin), or an MDLM / BD3-LM Lightning .ckpt, into an orbax checkpoint "
                    "loadable with models.load(DST).")
    p.add_argument("src", help="Hugging Face model folder (config.json + weights) or a Lightning .ckpt")
    p.add_argument("dst", help="output folder (orbax params/, config.json, tokenizer files)")
    p.add_argument("--family", choices=["llada", "dream", "mdlm", "bd3lm"], default=None,
                   help="model family (default: read from config.json)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="cast the weights (default: keep the checkpoint's dtype)")
    p.add_argument("--force", action="store_true", help="overwrite an existing DST/params")
    p.add_argument("--config", default=None,
                   help="Hugging Face-style config.json (default: SRC/config.json, or next to a .ckpt)")
    p.add_argument("--no-ema", action="store_true",
                   help="Lightning .ckpt: convert the raw state_dict weights instead of the EMA weights")
    args = p.parse_args(argv)
    from convert import convert_checkpoint

    try:
        out = convert_checkpoint(args.src, args.dst, family=args.family, dtype=args.dtype, force=args.force,
                                 config=args.config, ema=not args.no_ema)
    except (ValueError, RuntimeError, NotImplementedError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.src} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
