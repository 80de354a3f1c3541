"""``srsmc serve`` through the real ``openai`` client against a server subprocess on a free loopback
port (the embedded Sudoku model): completions equal ``srsmc generate`` token for token, batch
invariance across request mixes, streaming of settled text, ``n``, stop strings, seeds, every
bad-request class with OpenAI's error shape, client disconnects, 429, metrics, and a SIGTERM drain
with requests in flight. Chat runs on a converted reference LLaDA with a character tokenizer.

Programs are kept in the default persistent compilation cache, so a second run starts warm.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from shared_files import REPO

pytest.importorskip("starlette", reason="the [serve] extra is not installed (pip install -e \".[serve]\")")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed (pip install -e \".[serve]\")")
openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install -e \".[test]\")")

from srsmc_jax.models.embedded import task_for

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.app.generate import generate

PUZZLE = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."
OTHER = "1.3... ...2.5 ..1..6 6.2... .4..3. ....1."
MODEL = models.load()
TASK = task_for(MODEL.path)
NAME = "srsmc-sudoku6"
# the server's defaults (-n 2 --block-length 12): 3 blocks of 12 cells
CONFIG = sr.SMCConfig(num_particles=2, gen_length=36, block_length=12, mask_id=MODEL.mask_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, *flags, model_args=(), env=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "srsmc_jax", "serve", "--port", str(self.port),
                                      *model_args, *flags], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(180):
            self.close()
            raise AssertionError("the server did not start:\n" + "".join(self.lines))
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=300)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "serving" in line:
                self.ready.set()
        self.ready.set()

    def post(self, path, body, timeout=300):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()

    def metric(self, name, outcome=None):
        for line in self.get("/metrics").splitlines():
            key = name if outcome is None else f'{name}{{outcome="{outcome}"}}'
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Served("-n", "2", "--block-length", "12", "--slots", "4", "--max-queue", "6", "--warmup")
    yield s
    s.close()


def _twins(prompt, seed, n=1, config=CONFIG):
    """What ``srsmc generate`` writes for this prompt's choices (choice j = the record with "sample": j)."""
    records = [{"id": j, "prompt": prompt, **({"sample": j} if j else {})} for j in range(n)]
    return generate(MODEL, records, config, seed=seed, task=TASK, batch_size=1, num_devices=1)


def _tokens(choice):
    return choice.model_extra["srsmc"]["tokens"]


# ---- completions -------------------------------------------------------------------------------------------
def test_completion_with_n_equals_generate(server):
    r = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=7, n=2,
                                         extra_body={"return_particles": True})
    twins = _twins(PUZZLE, 7, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    for c, t in zip(r.choices, twins):
        assert _tokens(c) == t["tokens"] and c.text == t["answer"] and c.finish_reason == "length"
        extra = c.model_extra["srsmc"]
        assert extra["selected"] == t["selected"] and extra["nfe"] == t["nfe"] == 2 * 36
        assert [p["tokens"] for p in extra["particles"]] == [p["tokens"] for p in t["particles"]]
        assert extra["resampled_at"] == t["resampled_at"] and len(extra["ess"]) == 36
    assert r.usage.prompt_tokens == 36 and r.usage.completion_tokens == 72
    assert r.model_extra["seed"] == 7
    again = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=7)
    assert _tokens(again.choices[0]) == _tokens(r.choices[0])  # choice 0 does not depend on n
    other = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=8)
    assert _tokens(other.choices[0]) == _twins(PUZZLE, 8)[0]["tokens"]


def test_batch_invariance_across_request_mixes(server):
    """The seeded request returns its generate twin alone and amid requests of other prompts, lengths
    (token ids of another bucket) and sampler settings, sent at once."""
    alone = server.client.completions.create(model=NAME, prompt=OTHER, seed=11)
    twin = _twins(OTHER, 11)[0]["tokens"]
    assert _tokens(alone.choices[0]) == twin
    mix = [dict(prompt=OTHER, seed=11), dict(prompt=PUZZLE, seed=1, n=3),
           dict(prompt=[1, 2, 3, 4, 5, 6] * 5, seed=2),  # 30 ids: bucket 32, another group
           dict(prompt=OTHER, seed=11, extra_body={"num_particles": 3, "temperature": 0.5}),
           dict(prompt=PUZZLE, seed=3), dict(prompt=OTHER, seed=11)]
    with ThreadPoolExecutor(len(mix)) as pool:
        out = list(pool.map(lambda kw: server.client.completions.create(model=NAME, **kw), mix))
    assert _tokens(out[0].choices[0]) == twin and _tokens(out[5].choices[0]) == twin
    three = CONFIG.replace(num_particles=3, temperature=0.5)
    assert _tokens(out[3].choices[0]) == _twins(OTHER, 11, config=three)[0]["tokens"]
    assert [_tokens(c) for c in out[1].choices] == [t["tokens"] for t in _twins(PUZZLE, 1, n=3)]
    ids = generate(MODEL, [{"id": 0, "prompt_ids": [1, 2, 3, 4, 5, 6] * 5}], CONFIG, seed=2, task=TASK,
                   batch_size=1, num_devices=1)[0]
    assert _tokens(out[2].choices[0]) == ids["tokens"] and out[2].choices[0].model_extra["srsmc"]["bucket"] == 32


def test_streaming_sends_only_settled_text(server):
    full = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=5, extra_body={"num_particles": 1})
    chunks = list(server.client.completions.create(model=NAME, prompt=PUZZLE, seed=5, stream=True,
                                                   extra_body={"num_particles": 1}))
    texts = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert "".join(texts) == full.choices[0].text
    assert [len(t) for t in texts] == [12, 12, 12]  # N = 1: each finished block of 12 cells
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices[0].model_extra["srsmc"]["tokens"] == _tokens(full.choices[0])
    # N = 2: what both particles share, then the rest; the same text as without streaming
    full2 = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=5, n=2)
    chunks2 = list(server.client.completions.create(model=NAME, prompt=PUZZLE, seed=5, n=2, stream=True,
                                                    stream_options={"include_usage": True}))
    for i in range(2):
        assert "".join(c.choices[0].text for c in chunks2 if c.choices and c.choices[0].index == i) == \
            full2.choices[i].text
    assert chunks2[-1].usage.completion_tokens == 72


def test_stop_strings_cut_the_text_not_the_tokens(server):
    full = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=7)
    text = full.choices[0].text
    stop = text[5:7]
    cut = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=7, stop=[stop, "zz"])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert _tokens(cut.choices[0]) == _tokens(full.choices[0])
    streamed = server.client.completions.create(model=NAME, prompt=PUZZLE, seed=7, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


# ---- errors -----------------------------------------------------------------------------------------------
BAD = [
    (b'{"model": "srsmc-sudoku6", "prompt": ', 400, None, "invalid_json"),
    (b'[1, 2]', 400, None, "invalid_json"),
    ({"model": NAME, "prompt": PUZZLE, "temprature": 1.0}, 400, "temprature", "unknown_field"),
    ({"model": NAME, "prompt": PUZZLE, "n": 0}, 400, "n", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "seed": -1}, 400, "seed", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "temperature": -1}, 400, "temperature", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "num_particles": 0}, 400, "num_particles", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "select": "nope"}, 400, "select", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "max_tokens": 10}, 400, "max_tokens", "invalid_value"),
    ({"model": NAME, "prompt": PUZZLE, "logprobs": 3}, 400, "logprobs", "unsupported_value"),
    ({"model": NAME, "prompt": "12345"}, 400, "prompt", "invalid_value"),
    ({"model": NAME, "prompt": [1] * 40}, 400, "prompt", "context_length_exceeded"),
    ({"model": NAME, "prompt": PUZZLE, "num_particles": 10**8}, 400, "num_particles", "insufficient_memory"),
    ({"model": NAME, "prompt": PUZZLE, "n": 7}, 400, "n", "invalid_value"),  # 7 choices > --max-queue 6
    ({"model": "gpt-4", "prompt": PUZZLE}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize("body,status,param,code", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors(server, body, status, param, code):
    got, out = server.post("/v1/completions", body)
    assert got == status, out
    assert set(out) == {"error"} and set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["param"] == param and out["error"]["code"] == code
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["message"]


def test_errors_through_the_openai_client(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model=NAME, prompt=PUZZLE, extra_body={"threshold": 0.5})
    assert e.value.body["code"] == "invalid_value" and "threshold" in e.value.body["message"]  # unused with topk
    with pytest.raises(openai.BadRequestError) as e:  # the embedded model has no chat template
        server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PUZZLE}])
    assert e.value.body["code"] == "chat_not_supported"
    with pytest.raises(openai.NotFoundError):
        server.client.completions.create(model="other", prompt=PUZZLE)
    assert [m.id for m in server.client.models.list()] == [NAME]
    assert json.loads(server.get("/health")) == {"status": "ok"}


# ---- operations ----------------------------------------------------------------------------------------------
def _raw_stream(server, body):
    """A streaming request on a raw socket: returns the socket after the first settled chunk."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while b"data: " not in got:
        got += s.recv(4096)
    return s


def test_disconnect_frees_its_slot_and_leaves_the_batch_alone(server):
    cancelled = server.metric("srsmc_requests_total", "cancelled")
    body = {"model": NAME, "prompt": PUZZLE, "seed": 5, "n": 3, "stream": True, "num_particles": 1}
    with ThreadPoolExecutor(1) as pool:
        neighbour = pool.submit(server.client.completions.create, model=NAME, prompt=OTHER, seed=11)
        s = _raw_stream(server, body)
        s.close()  # gone after its first settled block
        result = neighbour.result()
    assert _tokens(result.choices[0]) == _twins(OTHER, 11)[0]["tokens"]
    for _ in range(100):
        if server.metric("srsmc_requests_total", "cancelled") > cancelled and server.metric("srsmc_active_slots") == 0:
            break
        time.sleep(0.1)
    assert server.metric("srsmc_requests_total", "cancelled") == cancelled + 1
    assert server.metric("srsmc_active_slots") == 0 and server.metric("srsmc_queue_depth") == 0


@pytest.fixture(scope="module")
def slow():
    """A server whose engine sleeps 0.5 s after each block (SRSMC_SERVE_BLOCK_DELAY, for tests), so that
    requests stay in flight: 2 slots, a queue of 4."""
    s = Served("-n", "2", "--block-length", "12", "--slots", "2", "--max-queue", "4",
               env={"SRSMC_SERVE_BLOCK_DELAY": "0.5"})
    yield s
    s.close()


def test_full_queue_is_429(slow):
    """2 slots busy with one request's 2 choices, the queue holding 4 of another: the next is 429."""
    body = {"model": NAME, "prompt": PUZZLE, "seed": 1}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(slow.post, "/v1/completions", {**body, "n": 2})
        _wait_for(lambda: slow.metric("srsmc_active_slots") == 2)
        second = pool.submit(slow.post, "/v1/completions", {**body, "n": 4})
        _wait_for(lambda: slow.metric("srsmc_queue_depth") == 4)
        status, out = slow.post("/v1/completions", body)
        assert status == 429, out
        assert out["error"]["code"] == "queue_full" and out["error"]["type"] == "rate_limit_error"
        assert first.result()[0] == 200 and second.result()[0] == 200
    assert slow.metric("srsmc_requests_total", "rejected") == 1
    assert slow.metric("srsmc_requests_total", "ok") == 2


def _wait_for(condition, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_metrics(server):
    text = server.get("/metrics")
    for name in ("srsmc_requests_total", "srsmc_completion_tokens_total", "srsmc_nfe_total", "srsmc_compiles_total",
                 "srsmc_queue_depth", "srsmc_batch_occupancy", "srsmc_active_slots", "srsmc_prompt_tokens_total"):
        assert f"# TYPE {name} " in text
    assert server.metric("srsmc_requests_total", "ok") >= 5 and server.metric("srsmc_nfe_total") > 0
    assert server.metric("srsmc_requests_total", "bad_request") >= len(BAD)
    assert 0 < server.metric("srsmc_batch_occupancy") <= 1 and server.metric("srsmc_compiles_total") >= 4


def test_a_waiting_client_that_goes_away_frees_its_slots(slow):
    """A non-streaming request whose client closes the connection while its choices run."""
    cancelled = slow.metric("srsmc_requests_total", "cancelled")
    data = json.dumps({"model": NAME, "prompt": PUZZLE, "seed": 9, "n": 2}).encode()
    s = socket.create_connection(("127.0.0.1", slow.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    _wait_for(lambda: slow.metric("srsmc_active_slots") == 2)
    s.close()
    _wait_for(lambda: slow.metric("srsmc_requests_total", "cancelled") == cancelled + 1)
    _wait_for(lambda: slow.metric("srsmc_active_slots") == 0)
    assert slow.metric("srsmc_queue_depth") == 0 and any(" 499 cancelled " in line for line in slow.lines)


def test_sigterm_drains_requests_in_flight(slow):
    """Requests in flight when SIGTERM arrives (2 running, 2 queued) all finish with their generate
    twins' tokens; then the server stops listening and exits 0, one log line per request."""
    seeds = [21, 22, 23, 24]
    with ThreadPoolExecutor(len(seeds)) as pool:
        futures = [pool.submit(slow.client.completions.create, model=NAME, prompt=PUZZLE, seed=s) for s in seeds]
        _wait_for(lambda: slow.metric("srsmc_active_slots") + slow.metric("srsmc_queue_depth") == len(seeds))
        slow.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert slow.proc.wait(60) == 0
    for s, r in zip(seeds, results):
        assert _tokens(r.choices[0]) == _twins(PUZZLE, s)[0]["tokens"]
    log = "".join(slow.lines)
    assert "SIGTERM: draining" in log and log.rstrip().endswith("stopped")
    assert sum(" 200 ok " in line for line in slow.lines) == 2 + len(seeds)  # the 429 test's 2, then these
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", slow.port), timeout=2)


# ---- chat: a converted reference LLaDA with a character tokenizer -------------------------------------------
def _char_tokenizer(path):
    """A character-level tokenizer.json whose ids fit the reference LLaDA's vocabulary (320; EOS 290,
    mask 300), with the LLaDA chat template's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models

    vocab = {"<unk>": 0, **{chr(c): c - 31 for c in range(32, 127)}, "\n": 96}
    specials = {"<|startoftext|>": 97, "<|start_header_id|>": 98, "<|end_header_id|>": 99, "<|eot_id|>": 100,
                "<|endoftext|>": 290, "<|mdm_mask|>": 300}
    tok = Tokenizer(tok_models.WordLevel({**vocab, **specials}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def chat_server(reference_checkpoint, tmp_path_factory):
    ckpt = reference_checkpoint("llada")
    tok = _char_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    s = Served("-n", "2", "--slots", "2", model_args=("--model", str(ckpt), "--tokenizer", str(tok)))
    yield s, models.load(ckpt).with_tokenizer(tok)
    s.close()


def test_chat_uses_the_family_template_and_equals_generate_chat(chat_server):
    server, model = chat_server
    name = server.client.models.list().data[0].id
    question = "What is 7*8?"
    r = server.client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                              seed=3, max_tokens=32)
    config = sr.SMCConfig(num_particles=2, gen_length=32, block_length=32, mask_id=model.mask_id)
    twin = generate(model, [{"id": 0, "prompt": question}], config, seed=3, chat=True, batch_size=1,
                    num_devices=1)[0]
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == twin["answer"] and _tokens(r.choices[0]) == twin["tokens"]
    assert r.object == "chat.completion" and r.usage.prompt_tokens == twin["prompt_tokens"]
    chunks = list(server.client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": question}], seed=3, max_tokens=32, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    with pytest.raises(openai.BadRequestError) as e:  # the template takes one user turn
        server.client.chat.completions.create(model=name, seed=3, max_tokens=32, messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": question}])
    assert e.value.body["param"] == "messages"


def test_startup_flags_are_checked_before_the_weights_are_read(damaged_embedded):
    """``srsmc serve`` checks its request defaults against the model's config before it reads the
    weights: with one bit of the weights flipped (only the sha256 check on load finds it), --steps 99
    is the one-line error; with good flags, the damage is."""
    ckpt = damaged_embedded
    for extra, message in ((["--steps", "99"], "--steps (99) exceeds block_length (36)"), ([], "corrupt")):
        r = subprocess.run([sys.executable, "-m", "srsmc_jax", "serve", "--port", str(_free_port()), "--model",
                            str(ckpt), *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
        err = [line for line in r.stderr.splitlines() if line.startswith("srsmc: error:")]
        assert r.returncode == 2 and len(err) == 1 and message in err[0], r.stderr
