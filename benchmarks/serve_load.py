"""``srsmc serve`` under load, against ``srsmc generate`` on the same prompts (the embedded Sudoku model).

In one run of this script:

* **Offline ceiling**: ``srsmc_jax.app.generate.generate`` (what ``srsmc generate`` runs) on the
  prompt pool with the same sampler settings and ``--batch-size`` equal to the server's ``--slots``;
  timed on a second pass (the first compiles). Its records are also every request's *twin*.
* **Throughput at concurrency 1, 8, 32**: a server subprocess (``--warmup``) and C client threads, each
  sending streaming requests (``stream=true``) back to back. Reported per level: requests/s and answer
  tokens/s, the ratio to the offline ceiling, time to first settled text (TTFT) and end-to-end latency,
  p50 and p99.
* **Load run**: ``--load-requests`` requests at concurrency 32 over two sampler settings (N = 4 and
  N = 2: two groups batched side by side), ``--disconnect`` of them closed by the client after the
  first settled chunk, and a SIGTERM once ``--load-requests`` − 32 have been sent; the rest are sent
  after it and must be refused (503 while the server drains, or the connection refused once it has
  stopped listening), never half-answered. Checked: 0 lost
  (an accepted request without its final event, not disconnected by us), 0 malformed (an event that is
  not JSON of the expected shape), every completed response's tokens equal to its generate twin,
  exit status 0.

    python -m benchmarks.serve_load --json benchmarks/results/serve_load.json
    python -m benchmarks.serve_load --load-requests 200 --pool 64      # quicker

The machine is shared: the load average before and after is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.serve_load"

REPO = Path(__file__).resolve().parents[1]
NAME = "srsmc-sudoku6"
BLOCK = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 4)


class Server:
    def __init__(self, slots: int, queue: int, particles: int):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "srsmc_jax", "serve", "--port", str(self.port), "--slots", str(slots),
             "--max-queue", str(queue), "-n", str(particles), "--block-length", str(BLOCK), "--warmup"],
            cwd=REPO, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=CHILD)
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if "serving" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(600)
        if self.proc.poll() is not None:
            raise SystemExit("the server did not start:\n" + "".join(self.lines))


def one_request(port: int, body: dict, disconnect: bool = False) -> dict:
    """A streaming request on its own connection -> {status, ttft, latency, tokens, text, malformed,
    disconnected, finished, error}."""
    import http.client

    out = {"status": None, "ttft": None, "latency": None, "tokens": None, "text": "", "malformed": 0,
           "disconnected": False, "finished": False, "error": None}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        out["status"] = r.status
        if r.status != 200:
            try:
                json.loads(r.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                out["malformed"] += 1
            return out
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if not line:
                continue
            if not line.startswith("data: "):
                out["malformed"] += 1
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                out["finished"] = out["tokens"] is not None
                break
            try:
                choice = json.loads(data)["choices"][0]
                text = choice["text"]
            except (ValueError, KeyError, IndexError, TypeError):
                out["malformed"] += 1
                continue
            if text and out["ttft"] is None:
                out["ttft"] = time.perf_counter() - t0
            out["text"] += text
            if choice.get("finish_reason") is not None:
                out["tokens"] = choice["srsmc"]["tokens"]
            if disconnect and text:
                out["disconnected"] = True
                return out  # the connection is closed below, mid-stream
        out["latency"] = time.perf_counter() - t0
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        out["error"] = "ConnectError" if isinstance(e, ConnectionRefusedError) else type(e).__name__
    finally:
        conn.close()
    return out


def offline(prompts, config, slots, seed=0):
    """generate() on the pool: (records, seconds of the timed pass)."""
    from srsmc_jax.models.embedded import task_for

    from srsmc_jax import models
    from srsmc_jax.app.generate import run_generation

    model = models.load()
    task = task_for(model.path)
    records = [{"id": i, "prompt": p} for i, p in enumerate(prompts)]
    run_generation(model, records, config, seed=seed, task=task, batch_size=slots, num_devices=1)  # compiles
    t0 = time.perf_counter()
    out, report, _ = run_generation(model, records, config, seed=seed, task=task, batch_size=slots, num_devices=1)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=128, help="distinct puzzles (default: 128)")
    ap.add_argument("--per-level", type=int, default=64, help="requests per concurrency level (default: 64)")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--load-requests", type=int, default=1000)
    ap.add_argument("--disconnect", type=float, default=0.1, help="fraction closed after the first chunk")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    check_out(args.json, module=MODULE)

    from srsmc_jax.models.embedded import task_for

    import srsmc_jax as sr
    from srsmc_jax import models
    from srsmc_jax.app import compile_cache

    compile_cache.enable()
    load_before = os.getloadavg()
    model = models.load()
    task = task_for(model.path)
    prompts = [p[task.problem_field] for p in task.make_problems(1234, args.pool)]
    config = sr.SMCConfig(num_particles=args.particles, gen_length=36, block_length=BLOCK, mask_id=model.mask_id)
    config2 = config.replace(num_particles=2)
    twins, offline_s = offline(prompts, config, args.slots)
    twins2, _ = offline(prompts, config2, args.slots)
    offline_rps = len(prompts) / offline_s
    print(f"offline generate: {len(prompts)} prompts in {offline_s:.2f}s = {offline_rps:.2f} prompts/s", flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_average_before": [round(x, 2) for x in load_before]},
              "settings": {"model": "embedded sudoku6", "num_particles": args.particles, "gen_length": 36,
                           "block_length": BLOCK, "slots": args.slots, "batch_size": args.slots, "pool": args.pool},
              "offline": {"prompts": len(prompts), "seconds": round(offline_s, 3),
                          "prompts_per_s": round(offline_rps, 3), "tokens_per_s": round(offline_rps * 36, 1)}}

    server = Server(args.slots, max(256, 2 * args.load_requests), args.particles)
    levels = []
    mismatched = 0
    if True:
        for c in [int(x) for x in args.levels.split(",")]:
            n = args.per_level if c > 1 else max(8, args.per_level // 4)
            picks = [i % len(prompts) for i in range(n)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                outs = list(pool.map(lambda i: one_request(server.port, {
                    "model": NAME, "prompt": prompts[i], "seed": 0, "stream": True}), picks))
            wall = time.perf_counter() - t0
            bad = sum(o["tokens"] != twins[i]["tokens"] for o, i in zip(outs, picks))
            mismatched += bad
            rps = n / wall
            level = {"concurrency": c, "requests": n, "seconds": round(wall, 3), "requests_per_s": round(rps, 3),
                     "tokens_per_s": round(rps * 36, 1), "vs_generate": round(rps / offline_rps, 3),
                     "ttft_p50_s": _pct([o["ttft"] for o in outs if o["ttft"]], 50),
                     "ttft_p99_s": _pct([o["ttft"] for o in outs if o["ttft"]], 99),
                     "latency_p50_s": _pct([o["latency"] for o in outs if o["latency"]], 50),
                     "latency_p99_s": _pct([o["latency"] for o in outs if o["latency"]], 99),
                     "not_equal_to_generate": bad}
            print(json.dumps(level), flush=True)
            levels.append(level)
        result["levels"] = levels

        # the load run
        rng = random.Random(0)
        total = args.load_requests
        plan = [(rng.randrange(len(prompts)), rng.random() < 0.5, rng.random() < args.disconnect) for _ in range(total)]
        sent = [0]
        lock = threading.Lock()
        term_at = max(0, total - 32)
        termed = threading.Event()

        def worker(k):
            i, two, disconnect = plan[k]
            with lock:
                sent[0] += 1
                if sent[0] > term_at and not termed.is_set():
                    termed.set()
                    server.proc.send_signal(signal.SIGTERM)
                after = termed.is_set()
            body = {"model": NAME, "prompt": prompts[i], "seed": 0, "stream": True}
            if two:
                body["num_particles"] = 2
            o = one_request(server.port, body, disconnect)
            o.update(k=k, i=i, two=two, after_term=after)
            return o

        t0 = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            outs = list(pool.map(worker, range(total)))
        wall = time.perf_counter() - t0
        code = server.proc.wait(120)
    completed = [o for o in outs if o["finished"]]
    disconnected = [o for o in outs if o["disconnected"]]
    answered_503 = [o for o in outs if o["status"] == 503]
    # no response begun: the connection was refused or closed before the server read the request
    unread = [o for o in outs if o["status"] is None and o["error"] is not None]
    refused = answered_503 + unread
    lost = [o for o in outs if o not in completed and o not in disconnected and o not in refused]
    malformed = sum(o["malformed"] for o in outs)
    unequal = sum(o["tokens"] != (twins2 if o["two"] else twins)[o["i"]]["tokens"] for o in completed)
    refused_before_term = sum(not o["after_term"] for o in refused)
    result["load"] = {"requests": total, "concurrency": 32, "seconds": round(wall, 2),
                      "completed": len(completed), "disconnected_by_client": len(disconnected),
                      "answered_503_while_draining": len(answered_503), "connection_closed_unread": len(unread),
                      "refused_sent_before_sigterm": refused_before_term,
                      "lost": len(lost), "malformed_events": malformed, "completed_not_equal_to_generate": unequal,
                      "sigterm_after_sent": term_at, "server_exit_status": code,
                      "lost_detail": [{k: o[k] for k in ("k", "status", "error")} for o in lost[:5]]}
    result["levels_not_equal_to_generate"] = mismatched
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["server_log_tail"] = [line.rstrip() for line in server.lines[-3:]]
    print(json.dumps(result["load"]), flush=True)
    if args.json:
        save(args.json, result, module=MODULE)
    ok = not lost and not malformed and not unequal and not mismatched and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    run_benchmark(MODULE, main)
