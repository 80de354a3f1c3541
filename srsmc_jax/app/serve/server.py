"""``srsmc serve``: the OpenAI-compatible HTTP server (Starlette on uvicorn).

    srsmc serve [--model CKPT] [--host 127.0.0.1] [--port 8000] [--warmup] [--slots 8] [--max-queue 256]
                [every sampler flag: the requests' defaults]

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics``. The engine (:mod:`srsmc_jax.app.serve.engine`) batches the
choices of every request at block boundaries; this module parses requests
(:mod:`srsmc_jax.app.serve.api`), streams settled text as server-sent events, frees the slots of
clients that go away, answers 429 when the queue is full and drains on SIGTERM (stop listening,
finish every request already received, exit 0). One log line per request on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from srsmc_jax.app import flags
from srsmc_jax.app.common import PROG, CLIError, Parser, add_model_flags, load_model
from srsmc_jax.app.serve.api import (
    ApiError,
    Requests,
    answer_text,
    completion_tokens,
    finish_reason,
    now,
    parse_body,
    srsmc_fields,
)
from srsmc_jax.app.serve.engine import Draining, Engine, Job, QueueFull

NAME = f"{PROG} serve"
DEFAULT_HELP = {"gen_length": "per request: max_tokens, else the embedded task's answer length, else up to 128 "
                              "(what fits the context after the prompt)",
                "block_length": "the whole answer for an embedded task, else the family's (32)"}


def build_parser() -> Parser:
    p = Parser(prog=NAME, description="An OpenAI-compatible HTTP server for SR-SMC (POST /v1/completions, "
                                      "/v1/chat/completions; GET /v1/models, /health, /metrics). The sampler "
                                      "flags set the defaults of requests, which may override every knob.")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name requests give (default: the checkpoint folder's name, or srsmc-sudoku6 "
                        "for the embedded model)")
    p.add_argument("--cache", default="none", help="the model family's cache: none, prefix / dual, block "
                                                   "(default: none)")
    p.add_argument("--buckets", default="pow2", help="prompt padding buckets, as srsmc generate (default: pow2)")
    p.add_argument("--slots", type=flags.positive_int, default=8,
                   help="rows of a running batch (choices run together per settings and bucket; default: 8)")
    p.add_argument("--max-queue", type=flags.positive_int, default=256,
                   help="choices waiting for a slot before requests are answered 429 (default: 256)")
    p.add_argument("--max-groups", type=flags.positive_int, default=8,
                   help="running batches (sampler settings × buckets, each with its compiled programs) kept at once "
                        "(default: 8)")
    p.add_argument("--warmup", action="store_true",
                   help="build the default settings' programs before listening (the embedded task's prompt "
                        "bucket, or the pow2 buckets up to 64 tokens)")
    p.add_argument("--quiet", "-q", action="store_true", help="no log lines on stderr")
    flags.add_config_flags(p, default_help=DEFAULT_HELP, short={"num_particles": "-n", "temperature": "-t"})
    return p


class Server:
    """The model, the request defaults, the engine and the HTTP application."""

    def __init__(self, args):
        from srsmc_jax.app.encode import EncodeError, PromptEncoder
        from srsmc_jax.app.generate import Generator, config_for_model, parse_buckets

        self.quiet = args.quiet
        parse_buckets(args.buckets)
        # every setting is checked against the model's config and tokenizer before its weights are read
        info, self.task = load_model(args, weights=False)
        kinds = info.spec.cache_kinds
        if args.cache not in kinds:
            raise CLIError(f"--cache {args.cache}: the {info.family} family supports {', '.join(kinds)}")
        self.cache = None if args.cache == "none" else args.cache
        try:
            self.encoder = PromptEncoder.for_model(info, self.task)
        except EncodeError as e:
            raise CLIError(str(e)) from None
        self.defaults = flags.given_knobs(args)  # the requests' defaults (checked now, below)
        self.default_config = config_for_model(args, info, self.task, longest_prompt=1)
        self.model, self.task = load_model(args)
        if self.model.path is None or self.task is not None:
            self.model_name = args.served_model_name or f"srsmc-{self.task.name if self.task else 'model'}"
        else:
            self.model_name = args.served_model_name or Path(self.model.path).name
        self.buckets, self.slots = args.buckets, args.slots

        def make_generator(config):
            return Generator(self.model, config, task=self.task, cache=self.cache, batch_size=self.slots,
                             buckets=self.buckets, num_devices=1, encoder=self.encoder, check_memory=True)

        self.engine = Engine(make_generator, slots=args.slots, max_queue=args.max_queue, max_groups=args.max_groups,
                             log=self.log)
        self.engine.generator(self.default_config)  # the default settings build (or refuse) now
        self.requests = Requests(self)
        self.draining = False
        self.in_flight = 0  # requests admitted and not yet answered
        self.started = time.time()

    def log(self, text: str) -> None:
        if not self.quiet:
            print(f"{NAME}: {text}", file=sys.stderr, flush=True)

    def warmup(self) -> None:
        from srsmc_jax.app.generate import bucket_size, parse_buckets

        limit = self.model.max_length - self.default_config.gen_length
        if self.task is not None:
            lengths = [self.task.prompt_length]
        else:
            lengths = [n for n in (8, 16, 32, 64) if n <= limit]
        gen = self.engine.generator(self.default_config)
        buckets = sorted({bucket_size(n, parse_buckets(self.buckets), limit=limit,
                                      multiple=gen.denoiser.block_multiple) for n in lengths})
        t0 = time.perf_counter()
        self.engine.warmup([(self.default_config, b) for b in buckets])
        self.log(f"warmed up buckets {', '.join(map(str, buckets))} in {time.perf_counter() - t0:.1f}s")

    # -- the application ---------------------------------------------------------------------------------------
    def app(self):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route

        async def completions(request):
            return await self.handle(request, chat=False)

        async def chat(request):
            return await self.handle(request, chat=True)

        async def models(request):
            return JSONResponse({"object": "list", "data": [{
                "id": self.model_name, "object": "model", "created": int(self.started), "owned_by": "srsmc-jax",
                "max_model_len": self.model.max_length, "family": self.model.family}]})

        async def health(request):
            if self.draining or self.engine.failed:
                return JSONResponse({"status": "draining" if self.draining else "failed"}, status_code=503)
            return JSONResponse({"status": "ok"})

        async def metrics(request):
            return PlainTextResponse(self.engine.metrics.text(), media_type="text/plain; version=0.0.4")

        async def http_error(request, exc):
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
            return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                         code=code).body(), status_code=exc.status_code)

        routes = [Route("/v1/completions", completions, methods=["POST"]),
                  Route("/v1/chat/completions", chat, methods=["POST"]),
                  Route("/v1/models", models, methods=["GET"]),
                  Route("/health", health, methods=["GET"]),
                  Route("/metrics", metrics, methods=["GET"])]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    def _request_log(self, rid: str, status: int, outcome: str, t0: float, parsed=None, outs=(), note: str = ""):
        tokens = sum(completion_tokens(parsed.gen, o["tokens"]) for o in outs) if parsed else 0
        prompt = sum(o["prompt_tokens"] for o in outs)
        nfe = sum(o["nfe"] for o in outs)
        self.engine.metrics.count(outcome, prompt, tokens, nfe)
        choices = len(parsed.prepared) if parsed else 0
        self.log(f"{rid} {status} {outcome} choices={choices} prompt_tokens={prompt} completion_tokens={tokens} "
                 f"nfe={nfe} latency={time.perf_counter() - t0:.3f}s" + (f" ({note})" if note else ""))

    async def handle(self, request, *, chat: bool):
        if self.draining:
            return self._refuse(request, chat)
        self.in_flight += 1
        try:
            return await self._handle(request, chat=chat)
        finally:
            self.in_flight -= 1

    def _refuse(self, request, chat: bool):
        from starlette.responses import JSONResponse

        t0 = time.perf_counter()
        e = ApiError(503, "the server is shutting down", type="service_unavailable", code="shutting_down")
        self._request_log(("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], 503, "rejected", t0, None,
                          note=e.message)
        return JSONResponse(e.body(), status_code=503)

    async def _handle(self, request, *, chat: bool):
        from starlette.responses import JSONResponse, StreamingResponse

        t0 = time.perf_counter()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        parsed = None
        try:
            if self.draining:
                raise ApiError(503, "the server is shutting down", type="service_unavailable",
                               code="shutting_down")
            body = parse_body(await request.body())
            parsed = await asyncio.to_thread(self.requests.chat if chat else self.requests.completion, body)
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            jobs = []
            for index, p in enumerate(parsed.prepared):
                def emit(kind, payload, index=index):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, kind, payload))

                jobs.append(Job(rid, index, p, parsed.gen, parsed.seed, emit, stream=parsed.stream))
            try:
                self.engine.submit(jobs)
            except QueueFull as e:
                raise ApiError(429, str(e), type="rate_limit_error", code="queue_full") from None
            except Draining as e:
                raise ApiError(503, str(e), type="service_unavailable", code="shutting_down") from None
        except ApiError as e:
            outcome = "rejected" if e.status in (429, 503) else "bad_request"
            self._request_log(rid, e.status, outcome, t0, None, note=e.message)
            return JSONResponse(e.body(), status_code=e.status)
        created = now()
        if parsed.stream:
            return StreamingResponse(self._events(rid, created, parsed, jobs, queue, t0, chat),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        outs: list[Optional[dict]] = [None] * len(jobs)
        left = len(jobs)
        while left:
            try:
                index, kind, payload = await asyncio.wait_for(queue.get(), 0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.engine.cancel(jobs)
                    self._request_log(rid, 499, "cancelled", t0, parsed, [o for o in outs if o], "client went away")
                    return JSONResponse({}, status_code=499)
                continue
            if kind == "error":
                self.engine.cancel(jobs)
                self._request_log(rid, 500, "error", t0, parsed, [o for o in outs if o], payload)
                return JSONResponse(ApiError(500, payload, type="server_error", code="engine_error").body(),
                                    status_code=500)
            if kind == "done":
                outs[index] = payload
                left -= 1
        body = self._response(rid, created, parsed, outs, chat)
        self._request_log(rid, 200, "ok", t0, parsed, outs)
        return JSONResponse(body)

    def _choice(self, parsed, out: dict, index: int, chat: bool) -> dict:
        text = answer_text(parsed.gen, out["tokens"], parsed.stop)
        reason = finish_reason(parsed.gen, out["tokens"], parsed.stop)
        extra = {"srsmc": srsmc_fields(out, parsed.return_particles)}
        if chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": reason, **extra}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason, **extra}

    def _usage(self, parsed, outs) -> dict:
        prompt = sum(o["prompt_tokens"] for i, o in enumerate(outs) if i % parsed.n == 0)
        tokens = sum(completion_tokens(parsed.gen, o["tokens"]) for o in outs)
        return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}

    def _response(self, rid, created, parsed, outs, chat: bool) -> dict:
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": self.model_name, "choices": [self._choice(parsed, o, i, chat) for i, o in enumerate(outs)],
                "usage": self._usage(parsed, outs), "seed": parsed.seed, "system_fingerprint": None}

    async def _events(self, rid, created, parsed, jobs, queue, t0, chat: bool):
        """Server-sent events of settled text: a choice's text is sent only once no later block,
        resampling or answer choice can change it (see docs/serving.md)."""
        obj = "chat.completion.chunk" if chat else "text_completion"
        hold = max((len(s) for s in parsed.stop), default=1) - 1  # a stop string may straddle the boundary

        def chunk(index, text=None, reason=None, role=False, out=None):
            if chat:
                delta = {"role": "assistant"} if role else ({} if text is None else {"content": text})
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
            if out is not None:
                choice["srsmc"] = srsmc_fields(out, parsed.return_particles)
            data = {"id": rid, "object": obj, "created": created, "model": self.model_name, "choices": [choice]}
            if parsed.include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data)}\n\n"

        sent = [""] * len(jobs)
        outs: list[Optional[dict]] = [None] * len(jobs)
        left, complete = len(jobs), False
        try:
            if chat:
                for i in range(len(jobs)):
                    yield chunk(i, role=True)
            while left:
                index, kind, payload = await queue.get()
                if kind == "error":
                    err = ApiError(500, payload, type="server_error", code="engine_error").body()
                    yield f"data: {json.dumps(err)}\n\n"
                    self._request_log(rid, 500, "error", t0, parsed, [o for o in outs if o], payload)
                    complete = True
                    return
                if kind == "settled":
                    text = answer_text(parsed.gen, payload, parsed.stop).rstrip("\ufffd")
                    text = text[:max(0, len(text) - hold)]
                    if len(text) > len(sent[index]) and text.startswith(sent[index]):
                        yield chunk(index, text[len(sent[index]):])
                        sent[index] = text
                    continue
                outs[index] = payload
                left -= 1
                final = answer_text(parsed.gen, payload["tokens"], parsed.stop)
                if not final.startswith(sent[index]):  # cannot happen for the tokenizers we know; say so
                    self.log(f"{rid}: choice {index}: the settled text sent is not a prefix of the answer")
                rest = final[len(sent[index]):] if final.startswith(sent[index]) else ""
                if rest:
                    yield chunk(index, rest)
                yield chunk(index, None if chat else "", finish_reason(parsed.gen, payload["tokens"], parsed.stop),
                            out=payload)
            if parsed.include_usage:
                data = {"id": rid, "object": obj, "created": created, "model": self.model_name, "choices": [],
                        "usage": self._usage(parsed, outs), "seed": parsed.seed}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
            complete = True
            self._request_log(rid, 200, "ok", t0, parsed, outs, "stream")
        finally:
            if not complete:  # the client went away (the task was cancelled): free its slots
                self.engine.cancel(jobs)
                self._request_log(rid, 499, "cancelled", t0, parsed, [o for o in outs if o], "client went away")

    # -- running -----------------------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        import uvicorn

        outer = self

        class _Uvicorn(uvicorn.Server):
            def capture_signals(self):  # SIGTERM is ours (drain); SIGINT is srsmc's (one line, exit 130)
                import contextlib

                return contextlib.nullcontext()

            async def startup(self, sockets=None):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
                await super().startup(sockets=sockets)
                if not self.should_exit:
                    bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets][:1] or [port]
                    outer.log(f"serving {outer.model_name} on http://{host}:{bound[0]} (pid {os.getpid()})")

        config = uvicorn.Config(self.app(), host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=None)
        server = _Uvicorn(config)

        async def stop_when_drained():
            while self.engine.busy() or self.in_flight:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # connections already on their way get their 503
            server.should_exit = True

        def on_term():
            if not self.draining:
                self.draining = True
                self.engine.drain()
                self.log("SIGTERM: draining (new requests get 503; finishing those in flight)")
                self._drain_task = asyncio.get_running_loop().create_task(stop_when_drained())

        self.engine.start()
        asyncio.run(server.serve())
        code = 0 if server.started else 1
        while self.engine.busy():  # nothing should be left: every request was answered before shutdown ended
            time.sleep(0.05)
        self.engine.stop(timeout=5)
        if code == 0:
            self.log("stopped")
        return code


def main(argv: Optional[list[str]] = None) -> int:
    """``srsmc serve``: exit 0 after a SIGTERM drain, 2 on bad flags, 1 on an internal error."""
    args = build_parser().parse_args(argv)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(f"{NAME}: error: the server needs the [serve] extra: pip install -e \".[serve]\"", file=sys.stderr)
        return 2
    try:
        server = Server(args)
        if args.warmup:
            server.warmup()
        return server.serve(args.host, args.port)
    except (CLIError, ValueError, OSError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return 2
