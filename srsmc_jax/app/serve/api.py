"""Requests of the OpenAI-compatible API: parsing and checking a body into jobs, and building the
responses (OpenAI's shapes; SR-SMC's knobs and diagnostics as extra fields, as vLLM does).

Every problem with a request is an :class:`ApiError`: an HTTP status and OpenAI's error object
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from typing import Any, Optional

from srsmc_jax.app import flags
from srsmc_jax.app.generate import GenerateError, Generator, PromptRecord
from srsmc_jax.prompts import cut_at_stop_strings

SEED_MAX = 2**32 - 1
MAX_N = 64
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---- fields ---------------------------------------------------------------------------------------------------
# OpenAI fields accepted only at their neutral value (a request that asks for more is refused, not ignored)
NEUTRAL = {"echo": (False,), "logprobs": (None, False), "top_logprobs": (None, 0), "presence_penalty": (0, 0.0, None),
           "frequency_penalty": (0, 0.0, None), "logit_bias": (None, {}), "suffix": (None,), "best_of": (None, 1),
           "user": None, "parallel_tool_calls": None, "metadata": None, "store": (None, False),
           "response_format": (None, {"type": "text"})}
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
          "return_particles"}
COMPLETION_FIELDS = COMMON | {"prompt"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
SERVER_ONLY = {"gen_length", "mask_id"}  # max_tokens is gen_length; the mask id is the model's


def knob_fields() -> dict[str, dataclasses.Field]:
    """The SMCConfig knobs a request may set (top-level fields named as the config's)."""
    out = {}
    for f in flags.cli_fields():
        if f.name in SERVER_ONLY:
            continue
        ann = str(f.type)
        if f.name in flags.REGISTRIES or f.name == "resample_every" or "choices" in f.metadata or ann in (
                "int", "float", "bool", "Optional[int]", "Optional[float]"):
            out[f.name] = f
    return out


KNOBS = knob_fields()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def knob_value(name: str, value: Any) -> Any:
    """A knob's JSON value checked for its type (the ranges are SMCConfig's own checks)."""
    f = KNOBS[name]
    ann = str(f.type)
    if f.name in flags.REGISTRIES or "choices" in f.metadata:
        choices = flags.REGISTRIES[f.name].names() if f.name in flags.REGISTRIES else tuple(f.metadata["choices"])
        if value is None and "none" in choices:
            value = "none"
        if not isinstance(value, str) or value not in choices:
            raise bad(f"{name}: expected one of {', '.join(map(str, choices))}, got {json.dumps(value)}", name)
        return value
    if name == "resample_every":
        if value in ("block", "step") or (_is_int(value) and value >= 1):
            return value
        raise bad(f"{name}: expected \"block\", \"step\" or an integer >= 1, got {json.dumps(value)}", name)
    if value is None and ann.startswith("Optional"):
        return None
    if ann == "bool":
        if not isinstance(value, bool):
            raise bad(f"{name}: expected true or false, got {json.dumps(value)}", name)
        return value
    if "int" in ann:
        if not _is_int(value):
            raise bad(f"{name}: expected an integer, got {json.dumps(value)}", name)
        return value
    if not _is_number(value):
        raise bad(f"{name}: expected a number, got {json.dumps(value)}", name)
    return float(value)


def parse_body(raw: bytes) -> dict:
    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise bad(f"the field {k!r} appears twice", k, "invalid_json")
            out[k] = v
        return out

    try:
        body = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates,
                          parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8", None, "invalid_json") from None
    except ValueError as e:
        if isinstance(e, ApiError):
            raise
        raise bad(f"the request body is not valid JSON ({str(e).splitlines()[0]})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    return body


# ---- a parsed request -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Parsed:
    """What a request asks for: one Prepared per choice (prompt-major), its Generator and options."""

    gen: Generator
    prepared: list  # Prepared, prompt i's choice j at i * n + j
    n: int
    seed: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    return_particles: bool
    chat: bool


class Requests:
    """Turns request bodies into :class:`Parsed` for one server (model, task, defaults, engine)."""

    def __init__(self, server):
        self.server = server
        self.model, self.task = server.model, server.task

    # -- pieces ------------------------------------------------------------------------------------------------
    def _common(self, body: dict, allowed: set[str]) -> dict:
        unknown = sorted(k for k in body if k not in allowed and k not in KNOBS and k not in NEUTRAL)
        if unknown:
            raise bad(f"unknown field {unknown[0]!r} (SR-SMC knobs: {', '.join(sorted(KNOBS))})", unknown[0],
                      "unknown_field")
        for name, neutral in NEUTRAL.items():
            if name in body and neutral is not None and body[name] not in neutral:
                raise bad(f"{name}: not supported by this server (only {json.dumps(neutral[0])})", name,
                          "unsupported_value")
        if "model" not in body:
            raise bad("model: missing (GET /v1/models lists the model served)", "model", "missing_field")
        if body["model"] != self.server.model_name:
            raise ApiError(404, f"The model {body['model']!r} does not exist; this server serves "
                                f"{self.server.model_name!r}", param="model", code="model_not_found")
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not _is_int(n) or not 1 <= n <= MAX_N:
            raise bad(f"n: expected an integer in [1, {MAX_N}], got {json.dumps(n)}", "n")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(SEED_MAX + 1)
        elif not _is_int(seed) or not 0 <= seed <= SEED_MAX:
            raise bad(f"seed: expected an integer in [0, {SEED_MAX}], got {json.dumps(seed)}", "seed")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise bad(f"stream: expected true or false, got {json.dumps(stream)}", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise bad("stream_options: expected {\"include_usage\": true|false}", "stream_options")
        stop = body.get("stop")
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or len(stop) > MAX_STOP or not all(
                isinstance(s, str) and s for s in stop):
            raise bad(f"stop: expected a non-empty string or a list of at most {MAX_STOP}", "stop")
        particles = body.get("return_particles", False)
        if not isinstance(particles, bool):
            raise bad("return_particles: expected true or false", "return_particles")
        return {"n": n, "seed": seed, "stream": stream, "include_usage": options.get("include_usage", False),
                "stop": tuple(stop), "return_particles": particles}

    def _config(self, body: dict, max_tokens_field: str, longest: int):
        """The request's SMCConfig: the server's defaults, then the request's knobs and max_tokens."""
        from srsmc_jax.config import SMCConfig

        given = dict(self.server.defaults)
        knobs = {k: knob_value(k, body[k]) for k in KNOBS if k in body}
        given.update(knobs)
        max_tokens = body.get(max_tokens_field)
        if max_tokens is None and max_tokens_field == "max_completion_tokens":
            max_tokens, max_tokens_field = body.get("max_tokens"), "max_tokens"
        if max_tokens is not None:
            if not _is_int(max_tokens) or max_tokens < 1:
                raise bad(f"{max_tokens_field}: expected an integer >= 1, got {json.dumps(max_tokens)}",
                          max_tokens_field)
            given["gen_length"] = max_tokens
        task = self.task
        if task is not None and given.get("gen_length", task.gen_length) != task.gen_length:
            raise bad(f"{max_tokens_field}: the embedded {task.name} model answers with exactly {task.gen_length} "
                      f"tokens, got {given['gen_length']}", max_tokens_field)
        names = {"--gen-length": max_tokens_field, "--block-length": "block_length"}

        def rename(text: str) -> str:
            for flag, field in names.items():
                text = text.replace(flag, field)
            return text

        room = self.model.max_length - longest
        if room < 1 and task is None:
            raise bad(f"prompt: {longest} tokens leave no room to generate in the model's context length "
                      f"{self.model.max_length}", "prompt", "context_length_exceeded")
        try:
            gen, block = flags.default_lengths(given, room=room, block=self.model.spec.default_block_length,
                                               task_gen_length=None if task is None else task.gen_length)
        except ValueError as e:
            raise bad(rename(str(e)), max_tokens_field) from None
        values = {**given, "gen_length": gen, "block_length": block, "mask_id": self.model.mask_id}
        try:
            config = SMCConfig(**values)
        except (ValueError, TypeError) as e:
            text = str(e).splitlines()[0]
            field = next((k for k in values if f"SMCConfig.{k}" in text), None)
            text = text.replace("SMCConfig.gen_length", max_tokens_field).replace("SMCConfig.", "")
            raise bad(text, max_tokens_field if field == "gen_length" else field) from None
        for knob, applies_to in config.unused_knobs():
            if knob in knobs:
                raise bad(f"{knob} has no effect with the chosen strategies (it applies to "
                          f"{applies_to.replace('=', ' ')})", knob)
        return config

    def _prepare(self, config, prompts: list[tuple[str, Any]], n: int, stop) -> tuple[Generator, list]:
        """prompts: (where, text or ids) -> the Generator and one Prepared per choice."""
        try:
            gen = self.server.engine.generator(config)
        except GenerateError as e:
            raise bad(str(e)) from None
        records = []
        for i, (where, prompt) in enumerate(prompts):
            for j in range(n):
                kind = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_ids": tuple(prompt)}
                records.append(PromptRecord(id=i * n + j, where=where, sample=j, **kind))
        try:
            prepared = gen.prepare(records)
        except GenerateError as e:
            text = str(e)
            code = "context_length_exceeded" if "context length" in text else "invalid_value"
            raise bad(text, where_param(prompts[0][0]), code) from None
        for bucket in sorted({p.bucket for p in prepared}):
            try:
                self.server.engine.check_memory(gen, bucket)
            except GenerateError as e:
                text = str(e).replace("-n ", "num_particles ").replace("--particle-chunk", "particle_chunk")
                raise bad(text, "num_particles", "insufficient_memory") from None
        return gen, prepared

    def _encode_ids(self, where: str, value) -> tuple[str, Any]:
        return where, value

    # -- the two endpoints ---------------------------------------------------------------------------------
    def completion(self, body: dict) -> Parsed:
        common = self._common(body, COMPLETION_FIELDS)
        if "prompt" not in body:
            raise bad("prompt: missing", "prompt", "missing_field")
        prompt = body["prompt"]
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
            prompts = [("prompt", prompt)]
        elif isinstance(prompt, list) and prompt and all(
                isinstance(p, str) or (isinstance(p, list) and p and all(_is_int(t) for t in p)) for p in prompt):
            prompts = [(f"prompt[{i}]", p) for i, p in enumerate(prompt)]
        else:
            raise bad("prompt: expected a string, a list of token ids, or a list of either", "prompt")
        if any(isinstance(p, str) and not p.strip() for _, p in prompts):
            raise bad("prompt: empty", "prompt")
        return self._finish(body, common, prompts, "max_tokens", chat=False)

    def chat(self, body: dict) -> Parsed:
        common = self._common(body, CHAT_FIELDS)
        if self.task is not None:
            raise bad(f"messages: the embedded {self.task.name} model has no chat template; use /v1/completions "
                      "with the puzzle as the prompt", "messages", "chat_not_supported")
        if self.model.spec.chat_template is None:
            raise bad(f"messages: no chat template is known for the {self.model.family} family; use "
                      "/v1/completions", "messages", "chat_not_supported")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages: expected a non-empty list of messages", "messages")
        if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
            raise bad(f"messages: the {self.model.family} family's chat template takes one user message "
                      "([{\"role\": \"user\", \"content\": ...}])", "messages", "unsupported_value")
        content = messages[0].get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad("messages[0].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str) or not content.strip() or set(messages[0]) - {"role", "content", "name"}:
            raise bad("messages[0]: expected {\"role\": \"user\", \"content\": \"text\"}", "messages")
        text = self.model.spec.apply_chat_template(content)  # what `srsmc generate --chat` encodes
        return self._finish(body, common, [("messages", text)], "max_completion_tokens", chat=True)

    def _finish(self, body, common, prompts, max_tokens_field, *, chat: bool) -> Parsed:
        encoder = self.server.encoder
        lengths = []
        for where, p in prompts:
            if isinstance(p, str):
                if not encoder.can_encode_text:
                    raise bad(f"{where}: the model has no tokenizer to encode text; give token ids", where_param(where))
                try:
                    lengths.append(len(encoder.encode(p, where=where)))
                except ValueError as e:
                    raise bad(str(e).splitlines()[0], where_param(where)) from None
            else:
                lengths.append(len(p))
        if len(prompts) * common["n"] > self.server.engine.max_queue:
            raise bad(f"n × prompts = {len(prompts) * common['n']} choices exceeds the server's queue "
                      f"(--max-queue {self.server.engine.max_queue})", "n")
        longest = max(lengths)
        if longest >= self.model.max_length:
            raise bad(f"{prompts[0][0]}: prompt of {longest} tokens exceeds the model's context length "
                      f"{self.model.max_length}", where_param(prompts[0][0]), "context_length_exceeded")
        config = self._config(body, max_tokens_field, longest)
        gen, prepared = self._prepare(config, prompts, common["n"], common["stop"])
        return Parsed(gen=gen, prepared=prepared, chat=chat, **common)


def where_param(where: str) -> str:
    return where.split("[")[0]


# ---- responses ----------------------------------------------------------------------------------------------------
def answer_text(gen: Generator, tokens, stop) -> str:
    """The text of generated tokens, cut before the first stop string (what ``srsmc generate``'s
    ``until`` does; for an embedded task its answer text, then the cut)."""
    text = gen.encoder.decode(list(tokens), until=stop)
    if text is None:
        return ""
    return cut_at_stop_strings(text, stop)


def finish_reason(gen: Generator, tokens, stop) -> str:
    eos = getattr(gen.model.config, "eos_token_id", None)
    if gen.task is None and eos is not None and int(eos) in [int(t) for t in tokens]:
        return "stop"
    if stop:
        full = gen.encoder.decode(list(tokens), until=()) or ""
        if any(s in full for s in stop):
            return "stop"
    return "length"


def completion_tokens(gen: Generator, tokens) -> int:
    eos = getattr(gen.model.config, "eos_token_id", None)
    toks = [int(t) for t in tokens]
    if gen.task is None and eos is not None and int(eos) in toks:
        return toks.index(int(eos))
    return len(toks)


def srsmc_fields(out: dict, full: bool) -> dict:
    """The SR-SMC extras of one choice (``return_particles``: every particle and diagnostic)."""
    fields = {"tokens": out["tokens"], "selected": out["selected"], "nfe": out["nfe"], "num_steps": out["num_steps"],
              "log_z": out["log_z"], "resampling_events": len(out["resampled_at"]), "bucket": out["bucket"],
              "error": out["error"]}
    if full:
        fields.update({"particles": out["particles"], "ess": out["ess"], "resampled_at": out["resampled_at"]})
    return fields


def now() -> int:
    return int(time.time())
