"""``srsmc`` as an lm-evaluation-harness (0.4.8) model: ``generate_until`` through the batched SR-SMC
generator, so lm-eval's own tasks, prompts and metrics run on a converted checkpoint.

    python -m srsmc_jax.app.eval.lm_eval_main --model srsmc \\
        --model_args path=ckpt/llada-1.5,method=srsmc,num_particles=4,gen_length=256 --tasks gsm8k --num_fewshot 5

lm-eval 0.4.8 finds models only in its registry, filled by ``@register_model`` when the module that
defines them is imported (it has no plugin entry points, and ``--include_path`` loads tasks, not
models). So either run ``python -m srsmc_jax.app.eval.lm_eval_main`` (this module, then lm-eval's own
command line), or in Python ``import srsmc_jax.app.eval.lm_eval_adapter`` before
``lm_eval.simple_evaluate(model="srsmc", ...)``.

``model_args``: ``path`` (the converted checkpoint), ``dtype``, ``seed``, ``method`` and ``preset`` and
``cache`` (as ``srsmc eval``: default SR-SMC with the paper preset), ``chat`` (apply the
family's chat template to each context), ``add_bos``, ``add_special_tokens``, ``buckets``,
``devices``, and every ``SMCConfig`` knob by its field name (``num_particles=4,threshold=0.9``).
lm-eval's ``--batch_size`` is the number of prompts per sampler call (``auto``: 8).

Requests: the context is encoded as ``srsmc eval`` encodes a prompt, the generation is
cut before the first of the request's ``until`` strings (lm-eval's HF model would also add the EOS
token's text; the reference SR-SMC / Fast-dLLM adapters do not, they drop special tokens instead),
and the request's other generation kwargs (``max_gen_toks``, ``do_sample``, ``temperature``) are
ignored: the sampler's settings come from ``model_args``, as in the reference adapters. The key of a
request is that of id ``"task/doc_id"``, so the samples equal ``srsmc eval``'s for the
same seed and settings. ``loglikelihood`` tasks (multiple choice, perplexity) raise
``NotImplementedError``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from srsmc_jax.app import flags
from srsmc_jax.app.methods import add_method_flags, method_config

OWN_ARGS = ("path", "dtype", "seed", "method", "preset", "cache", "chat", "add_bos", "add_special_tokens",
            "buckets", "devices", "batch_size", "max_batch_size", "device", "quiet")


def _method_args(knobs: dict[str, Any], method: str, preset: str, cache) -> argparse.Namespace:
    """model_args knobs -> the Namespace ``srsmc_jax.app.methods`` reads (via its flag parsers)."""
    fields = {f.name: f for f in flags.cli_fields()}
    argv = ["--method", str(method), "--preset", str(preset)]
    if cache is not None:
        argv += ["--cache", str(cache)]
    for name, value in knobs.items():
        if name not in fields:
            raise ValueError(f"srsmc model_args: unknown argument {name!r} (expected one of {', '.join(OWN_ARGS)} "
                             f"or an SMCConfig knob: {', '.join(fields)})")
        if str(fields[name].type) == "bool":
            if value not in (True, False):
                raise ValueError(f"srsmc model_args: {name} must be true or false, got {value!r}")
            if value:
                argv.append(flags.flag_name(name))
        else:
            argv += [flags.flag_name(name), str(value)]

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(f"srsmc model_args: {message}")

    parser = Parser(prog="srsmc model_args", add_help=False)
    add_method_flags(parser)
    return parser.parse_args(argv)


@register_model("srsmc")
class SRSMCLM(LM):
    """lm-eval model ``srsmc`` (see the module docstring)."""

    def __init__(self, path: str = None, dtype: str = "float32", seed: int = 0, method: str = "srsmc",
                 preset: str = "paper", cache: str = None, chat: bool = False, add_bos: Any = None,
                 add_special_tokens: Any = None, buckets: str = "pow2", devices: int = None,
                 batch_size: Any = 8, max_batch_size: Any = None, device: Any = None, quiet: bool = False,
                 **knobs):
        super().__init__()
        del max_batch_size, device  # lm-eval's torch-device arguments; JAX places the computation
        from srsmc_jax import models
        from srsmc_jax.app.generate import Generator

        if path is None:
            raise ValueError("srsmc model_args: path=CHECKPOINT (a folder written by srsmc convert) is required")
        args = _method_args(knobs, method, preset, cache)
        method_config(args, mask_id=0)  # bad knobs fail before the model is loaded
        self.model = models.load(str(path), dtype=dtype)
        self.config, self.cache = method_config(args, model=self.model)
        self.seed, self.method = int(seed), method
        self._family_chat = bool(chat)
        size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        say = None if quiet else (lambda text: print(f"srsmc: {text}", file=sys.stderr, flush=True))
        self.generator = Generator(self.model, self.config, cache=self.cache, batch_size=size, buckets=buckets,
                                   num_devices=None if devices is None else int(devices), chat=self._family_chat,
                                   add_special_tokens=None if add_special_tokens is None else bool(add_special_tokens),
                                   add_bos=None if add_bos is None else bool(add_bos),
                                   progress=say)

    # ---- lm-eval's interface ----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        del disable_tqdm
        records, seen = [], {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until", []) if isinstance(gen_kwargs, dict) else []
            until = [until] if isinstance(until, str) else list(until)
            base = f"{req.task_name}/{req.doc_id}" if req.task_name is not None else f"request/{i}"
            if getattr(req, "idx", 0):
                base += f"@{req.idx}"
            k = seen.get(base, 0)  # repeats of one request get keys of their own (sample index k)
            seen[base] = k + 1
            records.append({"id": base if k == 0 else f"{base}#{k}", "prompt": context, "until": until,
                            "sample": k})
        prepared = self.generator.prepare(records)
        answers: dict[str, str] = {}
        for batch in self.generator.run(prepared, seed=self.seed):
            for r in batch:
                answers[r["id"]] = r["answer"] if r["answer"] is not None else ""
        return [answers[r["id"]] for r in records]

    def loglikelihood(self, requests):
        raise NotImplementedError("srsmc: loglikelihood is not implemented; SR-SMC is a sampler for "
                                  "generate_until tasks (gsm8k, minerva_math, humaneval, mbpp), not a likelihood "
                                  "estimator for multiple-choice or perplexity tasks")

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("srsmc: loglikelihood_rolling is not implemented (generate_until tasks only)")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template``: one user turn through the model family's template."""
        from srsmc_jax.app.generate import chat_template_for

        users = [m for m in chat_history if m.get("role") == "user"]
        if len(chat_history) != 1 or len(users) != 1 or not add_generation_prompt:
            raise NotImplementedError("srsmc: only a single user turn can be rendered (no system prompt, no "
                                      "--fewshot_as_multiturn)")
        return chat_template_for(self.model)(users[0]["content"])

    @property
    def tokenizer_name(self) -> str:
        return f"srsmc-{self.model.family}"

    def chat_template(self, chat_template=False):
        return f"{self.model.family} family template" if chat_template else None
