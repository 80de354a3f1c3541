"""lm-evaluation-harness's command line with the ``srsmc`` model registered.

    python -m srsmc_jax.app.eval.lm_eval_main --model srsmc \\
        --model_args path=ckpt/llada-1.5,num_particles=4 --tasks gsm8k --num_fewshot 5 --batch_size 8

Every argument is lm-eval's (``lm_eval --help``); this module only imports
``srsmc_jax.app.eval.lm_eval_adapter`` first, because lm-eval 0.4.8 registers models when the module that
defines them is imported and offers no other hook. Needs the ``[lm-eval]`` extra.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        import lm_eval.__main__ as lm_eval_main
    except ImportError as e:
        print(f"error: lm-eval is not importable ({e}); pip install 'srsmc-jax[lm-eval]'", file=sys.stderr)
        return 2
    import srsmc_jax.app.eval.lm_eval_adapter  # noqa: F401  (registers the model "srsmc")

    lm_eval_main.cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
