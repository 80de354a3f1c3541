"""The server's engine: continuous batching of SR-SMC slots at block boundaries.

A **job** is one choice of one request: one prompt × ``num_particles`` particles, keyed by
:func:`srsmc_jax.prompts.prompt_key` of the request's seed, the prompt's token ids and the choice
index (``sample``), exactly as ``srsmc generate`` keys the record ``{"prompt": ..., "sample": i}``.

A **group** holds the jobs that can share compiled programs: the same sampler settings (one
``SMCConfig``, hence one :class:`~srsmc_jax.app.generate.Generator`) and the same bucketed prompt
length. It has ``slots`` rows and one ``LoopState`` of that many rows on the device. The engine
thread loops: drop what was cancelled, admit queued jobs into free slots (one ``Sampler.init`` of
the whole slot batch, merged into the running loop row by row), run one ``Sampler.step_block`` of
every group with work, report the settled text of streaming jobs, and ``finish`` the rows whose
blocks are all done. A row's result depends only on its key, prompt and padding (the sampler is
``vmap``-ed over rows), so a job gives the same tokens whatever else shares its batch, and the
same tokens as ``srsmc generate``.

Compiled programs: four per group shape (init, step, finish, merge), built on first use and kept in
JAX's persistent compilation cache; at most ``max_groups`` groups exist (an idle group is evicted
to make room; a job whose group cannot be made waits in the queue).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import threading
import time
from typing import Any, Callable, Optional

from srsmc_jax.app.generate import Generator, Prepared, config_dict


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Draining(Exception):
    """The server is shutting down and admits nothing new."""


@dataclasses.dataclass(eq=False)
class Job:
    """One choice of a request. ``emit(kind, payload)`` is called from the engine thread:
    ``("settled", text_so_far_tokens)``, ``("done", output_record)`` or ``("error", message)``."""

    request_id: str
    index: int
    prepared: Prepared
    gen: Any  # the Generator of its sampler settings
    seed: int
    emit: Callable[[str, Any], None]
    stream: bool = False
    cancelled: bool = False
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    group: Any = None
    slot: int = -1
    settled: int = 0  # generated tokens every surviving particle shares, as last reported


class Metrics:
    """Counters for ``GET /metrics`` (Prometheus text format)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # outcome -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.nfe = 0
        self.compiles = 0
        self.block_steps = 0
        self.occupied_rows = 0  # summed over block steps
        self.slot_rows = 0
        self.queue_depth = 0
        self.active = 0

    def count(self, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0, nfe: int = 0) -> None:
        with self.lock:
            self.requests[outcome] += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.nfe += nfe

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP srsmc_requests_total Requests by outcome.", "# TYPE srsmc_requests_total counter"]
            for outcome in sorted(set(self.requests) | {"ok", "bad_request", "rejected", "cancelled", "error"}):
                lines.append(f'srsmc_requests_total{{outcome="{outcome}"}} {self.requests[outcome]}')
            occupancy = self.occupied_rows / self.slot_rows if self.slot_rows else 0.0
            for name, kind, value, text in (
                    ("srsmc_prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens of finished choices."),
                    ("srsmc_completion_tokens_total", "counter", self.completion_tokens,
                     "Generated tokens of finished choices (up to EOS)."),
                    ("srsmc_nfe_total", "counter", self.nfe,
                     "Denoiser forward passes of finished choices, counted per particle."),
                    ("srsmc_compiles_total", "counter", self.compiles,
                     "Programs built (compiled or loaded from the persistent cache)."),
                    ("srsmc_block_steps_total", "counter", self.block_steps, "Block steps run (all groups)."),
                    ("srsmc_queue_depth", "gauge", self.queue_depth, "Choices waiting for a slot."),
                    ("srsmc_active_slots", "gauge", self.active, "Choices running in a slot."),
                    ("srsmc_batch_occupancy", "gauge", round(occupancy, 6),
                     "Occupied slot rows / slot rows over every block step so far.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
            return "\n".join(lines) + "\n"


def _merge(old, new, take):
    """Rows of ``new`` where ``take`` (bool[S]), else ``old`` (typed keys through their data)."""
    import jax
    import jax.numpy as jnp

    def pick(o, n):
        if jnp.issubdtype(o.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(pick(jax.random.key_data(o), jax.random.key_data(n)))
        mask = take.reshape(take.shape + (1,) * (o.ndim - 1))
        return jnp.where(mask, n, o)

    return jax.tree.map(pick, old, new)


class Group:
    """The slots of one (sampler settings, bucket) pair and their running loop. The loop has ``cap``
    rows, the power of two (at most ``size``) that holds the jobs running: the batch grows when jobs
    join and shrinks when they leave, so a lone request runs a batch of one."""

    def __init__(self, gen: Generator, bucket: int, slots: int):
        self.gen, self.bucket, self.size = gen, bucket, slots
        self.cap = 1
        self.jobs: list[Optional[Job]] = [None]
        self.loop = None
        self.last_used = time.monotonic()
        self.built: set[int] = set()

    def cap_for(self, rows: int) -> int:
        return min(self.size, 1 << max(0, math.ceil(math.log2(max(rows, 1)))))

    @property
    def free(self) -> list[int]:
        return [i for i, j in enumerate(self.jobs) if j is None]

    @property
    def active(self) -> int:
        return sum(j is not None for j in self.jobs)


def _take(loop, index):
    import jax

    return jax.tree.map(lambda x: x[index], loop)


class Engine:
    """Owns the model, the groups and the engine thread (see the module docstring).

    make_generator: ``config -> Generator`` (the server's model, task, cache and encoder).
    slots: rows per group; max_queue: jobs waiting for a slot before new requests are refused;
    max_groups: groups (compiled shapes) kept at once.
    """

    def __init__(self, make_generator: Callable[[Any], Generator], *, slots: int = 8, max_queue: int = 256,
                 max_groups: int = 8, log: Callable[[str], None] = lambda s: None):
        import jax

        self._jax = jax
        self.make_generator, self.slots, self.max_queue, self.max_groups = make_generator, slots, max_queue, max_groups
        self.log = log
        self.metrics = Metrics()
        self.generators: dict[str, Generator] = {}
        self.groups: dict[tuple[str, int], Group] = {}
        self.pending: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.draining = False
        self.stopped = False
        self.failed: Optional[str] = None
        self._merge = jax.jit(_merge)
        self._take = jax.jit(_take)
        self._memory: dict[tuple[int, int], str] = {}  # (generator, bucket) -> "" (fits) or the refusal
        # tests only: seconds to sleep after each block step, to hold slots while a test fills the queue
        self._delay = float(os.environ.get("SRSMC_SERVE_BLOCK_DELAY", "0") or 0)
        self.thread = threading.Thread(target=self._run, name="srsmc-engine", daemon=True)

    # -- public, any thread ----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def generator(self, config) -> Generator:
        """The Generator of one sampler setting (made once; GenerateError for settings it refuses)."""
        key = json.dumps(config_dict(config), sort_keys=True)
        with self.cond:
            gen = self.generators.get(key)
        if gen is None:
            gen = self.make_generator(config)
            with self.cond:
                gen = self.generators.setdefault(key, gen)
                if len(self.generators) > 4 * self.max_groups:  # forget settings no batch uses (and their programs)
                    used = {id(g.gen) for g in self.groups.values()} | {id(j.gen) for j in self.pending} | {id(gen)}
                    for k in [k for k, g in self.generators.items() if id(g) not in used]:
                        del self.generators[k]
                        self._memory = {m: v for m, v in self._memory.items() if m[0] in used}
        return gen

    def check_memory(self, gen: Generator, bucket: int) -> None:
        """GenerateError (one line naming the knob) when a group of ``slots`` rows would not fit. The
        estimate lowers and compiles the program (about a second on a CPU), so its verdict is kept per
        settings × bucket."""
        from srsmc_jax.app.generate import GenerateError

        key = (id(gen), bucket)
        verdict = self._memory.get(key)
        if verdict is None:
            try:
                gen._check_memory(bucket, self.slots)
                verdict = ""
            except GenerateError as e:
                verdict = str(e)
            self._memory[key] = verdict
        if verdict:
            raise GenerateError(verdict)

    def submit(self, jobs: list[Job]) -> None:
        """Queue every job of a request, or none (QueueFull, Draining)."""
        with self.cond:
            if self.draining or self.stopped:
                raise Draining("the server is shutting down")
            if self.failed:
                raise Draining(f"the engine stopped: {self.failed}")
            if len(self.pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue holds {len(self.pending)} choices waiting for a slot "
                                f"(--max-queue {self.max_queue}); retry later")
            self.pending.extend(jobs)
            self.metrics.queue_depth = len(self.pending)
            self.cond.notify()

    def cancel(self, jobs: list[Job]) -> None:
        """The client went away: its jobs leave the queue or their slots at the next block boundary."""
        with self.cond:
            for j in jobs:
                j.cancelled = True
            self.cond.notify()

    def drain(self) -> None:
        """Admit nothing new; what is queued or running still finishes."""
        with self.cond:
            self.draining = True
            self.cond.notify()

    def stop(self, timeout: Optional[float] = None) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout)

    def busy(self) -> bool:
        with self.cond:
            return bool(self.pending) or any(g.active for g in self.groups.values())

    def warmup(self, configs_and_buckets: list[tuple[Any, int]]) -> None:
        """Build every program of these (config, bucket) groups now (the engine thread not running yet)."""
        for config, bucket in configs_and_buckets:
            gen = self.generator(config)
            group = self._group(gen, bucket)
            if group is not None:
                cap = 1
                while True:
                    group.cap = cap
                    self._build(group)
                    if cap >= group.size:
                        break
                    cap = group.cap_for(2 * cap)
                group.cap, group.jobs = 1, [None]

    # -- the engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.stopped and not self.pending and not any(g.active for g in self.groups.values()):
                        self.cond.wait()
                    if self.stopped and not self.pending and not any(g.active for g in self.groups.values()):
                        return
                self._drop_cancelled()
                self._admit()
                for group in list(self.groups.values()):
                    if group.active:
                        self._step(group)
        except BaseException as e:  # a bug or a device failure: fail every job, refuse new ones
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            with self.cond:
                self.failed = message
                jobs = list(self.pending) + [j for g in self.groups.values() for j in g.jobs if j is not None]
                self.pending.clear()
            for j in jobs:
                j.emit("error", message)
            self.log(f"engine stopped: {message}")

    def _drop_cancelled(self) -> None:
        with self.cond:
            self.pending = collections.deque(j for j in self.pending if not j.cancelled)
            self.metrics.queue_depth = len(self.pending)
            for g in self.groups.values():
                for i, j in enumerate(g.jobs):
                    if j is not None and j.cancelled:
                        g.jobs[i] = None  # the row is dropped when the loop next shrinks, or reused
                if not g.active:
                    g.loop, g.cap, g.jobs = None, 1, [None]
            self.metrics.active = sum(g.active for g in self.groups.values())

    def _group(self, gen: Generator, bucket: int) -> Optional[Group]:
        key = (json.dumps(config_dict(gen.config), sort_keys=True), bucket)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_groups:
                idle = [k for k, g in self.groups.items() if not g.active]
                if not idle:
                    return None
                del self.groups[min(idle, key=lambda k: self.groups[k].last_used)]
            group = self.groups[key] = Group(gen, bucket, self.slots)
        return group

    def _rows(self, group: Group, jobs: dict[int, Job]):
        """keys[S], tokens[S, P], masks[S, P] with ``jobs`` at their slots (other rows: copies)."""
        from srsmc_jax.prompts import pad_prompts, prompt_key

        first = next(iter(jobs.values()))
        rows = [jobs.get(i, first) for i in range(group.cap)]
        gen = group.gen
        pad = getattr(gen.model.config, "pad_token_id", None)
        tokens, masks = pad_prompts([j.prepared.ids for j in rows], 0 if pad is None else int(pad), length=group.bucket)
        jax = self._jax
        keys = jax.random.wrap_key_data(jax.numpy.stack(
            [jax.random.key_data(prompt_key(j.seed, j.prepared.ids, j.prepared.record.sample)) for j in rows]))
        return keys, tokens, masks

    def _build(self, group: Group, jobs: Optional[dict[int, Job]] = None) -> None:
        """Compile (or load) the programs of the group's current row count before their first use."""
        if group.cap in group.built:
            return
        gen = group.gen
        if jobs is None:
            from srsmc_jax.app.generate import PromptRecord

            ids = tuple([1] * group.bucket)
            dummy = Prepared(PromptRecord(id=0, prompt_ids=ids), ids, group.bucket)
            jobs = {0: Job("warmup", 0, dummy, gen, 0, lambda *a: None)}
        keys, tokens, masks = self._rows(group, jobs)
        t0 = time.perf_counter()
        s, jnp = gen.sample, self._jax.numpy
        loop = s.init(keys, gen._params, tokens, masks)
        loop = self._merge(loop, loop, jnp.zeros(group.cap, bool))
        loop = s.step_block(gen._params, loop)
        done = s.finish(gen._params, loop._replace(block=jnp.full_like(loop.block, s.num_blocks(loop))))
        resized = [self._take(loop, jnp.zeros(c, jnp.int32)) for c in {group.cap_for(group.cap * 2),
                                                                      group.cap_for(group.cap // 2)}]
        self._jax.block_until_ready((loop, done, resized))
        group.built.add(group.cap)
        with self.metrics.lock:
            self.metrics.compiles += 4 + len(resized)
        self.log(f"built the programs of bucket {group.bucket} × {group.cap} rows × "
                 f"{gen.config.num_particles} particles in {time.perf_counter() - t0:.1f}s")

    def _resize(self, group: Group, cap: int) -> None:
        """Move the running jobs to rows 0..k-1 of a loop of ``cap`` rows, doubling or halving one step
        at a time (the programs :meth:`_build` made for each row count)."""
        while group.cap != cap:
            nxt = group.cap_for(group.cap * 2) if cap > group.cap else max(cap, group.cap_for(group.cap // 2))
            running = [i for i, j in enumerate(group.jobs) if j is not None]
            if group.loop is not None and running:
                self._build(group)  # the row count's programs, before this gather's first use
                index = (running + [running[0]] * nxt)[:nxt]
                group.loop = self._take(group.loop, self._jax.numpy.asarray(index, self._jax.numpy.int32))
            elif not running:
                group.loop = None
            jobs = ([group.jobs[i] for i in running] + [None] * nxt)[:nxt]
            for slot, job in enumerate(jobs):
                if job is not None:
                    job.slot = slot
            group.jobs, group.cap = jobs, nxt

    def _admit(self) -> None:
        wanted: dict[int, tuple[Group, list[Job]]] = {}
        with self.cond:
            waiting: collections.deque[Job] = collections.deque()
            for job in self.pending:
                group = self._group(job.gen, job.prepared.bucket)
                if group is None:
                    waiting.append(job)
                    continue
                _, joining = wanted.setdefault(id(group), (group, []))
                if group.active + len(joining) < group.size:
                    joining.append(job)
                else:
                    waiting.append(job)
            self.pending = waiting
            self.metrics.queue_depth = len(self.pending)
        for group, joining in wanted.values():
            if not joining:
                continue
            self._resize(group, max(group.cap, group.cap_for(group.active + len(joining))))
            free = group.free
            jobs = {}
            for job, slot in zip(joining, free):
                job.group, job.slot = group, slot
                group.jobs[slot] = job
                jobs[slot] = job
            self._build(group, jobs)
            keys, tokens, masks = self._rows(group, jobs)
            gen = group.gen
            new = gen.sample.init(keys, gen._params, tokens, masks)
            if group.loop is None:
                group.loop = new
            else:
                take = self._jax.numpy.asarray([i in jobs for i in range(group.cap)])
                group.loop = self._merge(group.loop, new, take)
        with self.cond:
            self.metrics.active = sum(g.active for g in self.groups.values())

    def _step(self, group: Group) -> None:
        import numpy as np

        gen, jax = group.gen, self._jax
        if group.cap_for(group.active) < group.cap:  # cancelled jobs left: shrink first
            self._resize(group, group.cap_for(group.active))
        t0 = time.perf_counter()
        group.loop = gen.sample.step_block(gen._params, group.loop)
        if self._delay:
            time.sleep(self._delay)
        blocks = np.asarray(jax.device_get(group.loop.block))
        group.last_used = time.monotonic()
        with self.metrics.lock:
            self.metrics.block_steps += 1
            self.metrics.occupied_rows += group.active
            self.metrics.slot_rows += group.cap
        total = gen.sample.num_blocks(group.loop)
        streaming = [j for j in group.jobs if j is not None and j.stream and blocks[j.slot] < total]
        if streaming:
            tokens = np.asarray(jax.device_get(group.loop.state.particles.tokens))  # [S, N, P + G (+ a block)]
            final = gen.sample.rows_done(group.loop)  # generation rows no later block can change
            for j in streaming:
                gen_tokens = tokens[j.slot, :, group.bucket:group.bucket + int(final[j.slot])]
                same = np.all(gen_tokens == gen_tokens[:1], axis=0)
                shared = int(np.argmin(same)) if not same.all() else gen_tokens.shape[1]
                if shared > j.settled:
                    j.settled = shared
                    j.emit("settled", [int(t) for t in gen_tokens[0, :shared]])
        done = [j for j in group.jobs if j is not None and blocks[j.slot] >= total]
        if not done:
            return
        full = group.loop._replace(block=jax.numpy.full_like(group.loop.block, total))
        result = jax.device_get(gen.sample.finish(gen._params, full))
        seconds = time.perf_counter() - t0
        rows = {id(j): j.slot for j in done}
        for j in done:
            group.jobs[j.slot] = None
        self._resize(group, group.cap_for(group.active))  # shrink to what is left running
        with self.cond:
            self.metrics.active = sum(g.active for g in self.groups.values())
        for j in done:
            slot = rows[id(j)]
            row = jax.tree.map(lambda x, i=slot: np.asarray(x)[i], result)
            try:
                out = gen._output(j.prepared, row, seconds)
            except Exception as e:  # decoding failed: this job only
                j.emit("error", f"{type(e).__name__}: {e}")
                continue
            j.emit("done", out)

