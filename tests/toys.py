"""Toy denoisers for engine tests, and exact enumeration of the SR-SMC path measure on them.

The exact toy: a random joint distribution p(x) over V^G sequences (tiny V and G). Its denoiser
predicts, for every masked position, the exact conditional marginal p(x_j | revealed tokens), so
every trajectory of the sampler can be enumerated in float64.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from srsmc_jax import schedules


class ExactToy:
    """Joint p over ``vocab``^``gen`` (real tokens 0..vocab-1, mask id = vocab)."""

    def __init__(self, vocab: int = 3, gen: int = 3, seed: int = 0, concentration: float = 0.7):
        rng = np.random.default_rng(seed)
        self.vocab, self.gen, self.mask_id = vocab, gen, vocab
        self.states = np.array(list(itertools.product(range(vocab), repeat=gen)), np.int32)  # [S, G]
        self.joint = rng.dirichlet(np.full(len(self.states), concentration))  # float64[S]

    # ---- the denoiser (jax) --------------------------------------------------------------------
    def denoiser(self, params, tokens):
        """tokens: int32[P + G] (the prompt is ignored) -> float32[P + G, vocab + 1]."""
        del params
        gen_tokens = tokens[-self.gen:]
        states = jnp.asarray(self.states)
        joint = jnp.asarray(self.joint, jnp.float32)
        observed = gen_tokens != self.mask_id
        consistent = jnp.all((states == gen_tokens[None]) | ~observed[None], axis=1)  # [S]
        mass = jnp.where(consistent, joint, 0.0)
        onehot = jax.nn.one_hot(states, self.vocab)  # [S, G, V]
        marg = jnp.einsum("s,sgv->gv", mass, onehot)
        marg = marg / jnp.sum(marg, axis=1, keepdims=True)
        logits = jnp.concatenate([jnp.log(marg), jnp.full((self.gen, 1), -jnp.inf)], axis=1)
        prompt_rows = jnp.zeros((tokens.shape[0] - self.gen, self.vocab + 1))
        return jnp.concatenate([prompt_rows, logits], axis=0)

    # ---- exact enumeration (numpy, float64) ----------------------------------------------------
    def marginals(self, x):
        """Conditional marginals float64[G, V] given a partial state (tuple, None = masked)."""
        ok = np.ones(len(self.states), bool)
        for j, v in enumerate(x):
            if v is not None:
                ok &= self.states[:, j] == v
        m = np.zeros((self.gen, self.vocab))
        for j in range(self.gen):
            np.add.at(m[j], self.states[ok, j], self.joint[ok])
        return m / m.sum(axis=1, keepdims=True)

    def enumerate(self, select: str, steps: int, weight, schedule: str = "linear", threshold: float = 0.9,
                  block: int | None = None):
        """Exact final-state measures (τ = 1), the generation split into blocks of ``block`` positions
        (None: one block) with ``steps`` steps per block.

        weight(logp_revealed_sum, revealed_fraction) -> log increment.
        Returns (q, gamma): q[s] = proposal probability of ending in state s, gamma[s] = Σ over
        paths ending in s of q(path)·exp(Σ log increments). Z = gamma.sum().
        """
        block = self.gen if block is None else block
        counts = schedules.transfer_counts(block, steps)
        index = {tuple(int(v) for v in s): i for i, s in enumerate(self.states)}
        num = len(self.states)

        # the process is Markov in (partial state, block, step): memoised, each returns the measures
        # (q, gamma) over final states from there, so long paths (e.g. ancestral with many steps)
        # cost what the few distinct partial states cost
        @functools.lru_cache(maxsize=None)
        def rec(x, b, step):
            lo, hi = b * block, (b + 1) * block
            masked = [j for j in range(lo, hi) if x[j] is None]
            if not masked or step == steps:
                if hi < self.gen:
                    return rec(x, b + 1, 0)
                q, gamma = np.zeros(num), np.zeros(num)
                q[index[x]] = gamma[index[x]] = 1.0
                return q, gamma
            q, gamma = np.zeros(num), np.zeros(num)
            marg = self.marginals(x)
            for draw in itertools.product(range(self.vocab), repeat=len(masked)):
                p_draw = np.prod([marg[j, v] for j, v in zip(masked, draw)])
                if p_draw == 0:
                    continue
                conf = {j: marg[j, v] for j, v in zip(masked, draw)}
                for subset, p_sub in _reveal_sets(select, masked, conf, counts, step, steps, schedule, threshold):
                    if p_sub == 0:
                        continue
                    nx = list(x)
                    for j, v in zip(masked, draw):
                        if j in subset:
                            nx[j] = v
                    lp = sum(math.log(conf[j]) for j in subset)
                    frac = sum(v is not None for v in nx) / self.gen
                    sub_q, sub_gamma = rec(tuple(nx), b, step + 1)
                    q += p_draw * p_sub * sub_q
                    gamma += p_draw * p_sub * math.exp(weight(lp, frac)) * sub_gamma
            return q, gamma

        return rec(tuple([None] * self.gen), 0, 0)

    def state_index(self, gen_tokens: np.ndarray) -> np.ndarray:
        """Index into ``self.states`` of each row of int[..., G] (−1 if any position is still masked)."""
        gen_tokens = np.asarray(gen_tokens)
        idx = np.zeros(gen_tokens.shape[:-1], np.int64)
        for j in range(self.gen):
            idx = idx * self.vocab + gen_tokens[..., j]
        return np.where(np.all(gen_tokens < self.vocab, axis=-1), idx, -1)


def _reveal_sets(select, masked, conf, counts, step, steps, schedule, threshold):
    """Every possible SELECT outcome with its probability, mirroring srsmc_jax.proposal.select."""
    if select == "topk":
        order = sorted(masked, key=lambda j: (-conf[j], j))
        yield set(order[: counts[step]]), 1.0
    elif select == "threshold":
        best = sorted(masked, key=lambda j: (-conf[j], j))[0]
        yield {j for j in masked if conf[j] >= threshold} | {best}, 1.0
    elif select == "ancestral":
        p = float(schedules.unmask_probability(schedule, step, steps))
        for r in range(len(masked) + 1):
            for sub in itertools.combinations(masked, r):
                yield set(sub), p ** r * (1 - p) ** (len(masked) - r)
    elif select == "first_hitting":
        for j in masked:
            yield {j}, 1.0 / len(masked)
    else:
        raise ValueError(select)


def make_attention_denoiser(vocab: int, dim: int = 16, seed: int = 0, padding_aware: bool = False,
                            never_predict: int | None = None):
    """A small random bidirectional one-layer attention model (params, tokens[, seq]) -> logits.

    With ``padding_aware`` it masks padded keys and uses positions counted from the first real
    token, so left padding cannot change its predictions.
    """
    k = jax.random.split(jax.random.key(seed), 6)
    params = {
        "emb": jax.random.normal(k[0], (vocab, dim)),
        "pos": jax.random.normal(k[1], (256, dim)) * 0.5,
        "wq": jax.random.normal(k[2], (dim, dim)) / math.sqrt(dim) * 2,
        "wk": jax.random.normal(k[3], (dim, dim)) / math.sqrt(dim) * 2,
        "wv": jax.random.normal(k[4], (dim, dim)) / math.sqrt(dim),
        "out": jax.random.normal(k[5], (dim, vocab)) / math.sqrt(dim) * 3,
        "bias": jnp.zeros((vocab,)),
    }

    def forward(p, tokens, valid):
        pos = jnp.cumsum(valid) - 1
        h = p["emb"][tokens] + p["pos"][jnp.maximum(pos, 0)]
        s = (h @ p["wq"]) @ (h @ p["wk"]).T / math.sqrt(dim)
        s = jnp.where(valid[None, :], s, -1e30)
        h = h + jax.nn.softmax(s, axis=-1) @ (h @ p["wv"])
        return (jnp.tanh(h) @ p["out"] + p["bias"]).astype(jnp.float32)

    if never_predict is not None:  # like a trained model, never predict this id (e.g. [MASK])
        params["out"] = params["out"].at[:, never_predict].set(0.0)
        params["bias"] = params["bias"].at[never_predict].set(-30.0)
    if padding_aware:
        return params, lambda p, tokens, seq: forward(p, tokens, seq.valid)
    return params, lambda p, tokens: forward(p, tokens, jnp.ones(tokens.shape, bool))


def seq_info(valid, prompt_len: int = 0):
    """``SequenceInfo`` of one sequence: ``valid`` is a length (no padding) or a bool[L] mask."""
    from srsmc_jax.denoiser import SequenceInfo

    valid = jnp.ones((valid,), bool) if isinstance(valid, int) else jnp.asarray(valid, bool)
    return SequenceInfo(valid=valid, prompt=jnp.arange(valid.shape[0]) < prompt_len)


def raw_cached_logits(model, tokens, cache, window_start: int, lo: int, hi: int) -> np.ndarray:
    """float32[Q, V]: the raw logits of a query window (``tokens`` int[Q] at ``window_start``) through a
    LLaDA / Dream module's cached path, every window row (the official cached call's output), with
    the cache ``{"k", "v"}`` of ``model.as_denoiser(cache=...)``; one jitted program."""
    from flax import nnx
    from srsmc_jax.models.attention import CacheWindow
    from srsmc_jax.models.transformer import AttentionInputs, CachedKV

    gd, params = nnx.split(model.model)
    pos = jnp.arange(cache["k"].shape[1])[None]
    q_len = tokens.shape[0]
    window = CacheWindow(start=jnp.int32(window_start), lo=jnp.int32(lo), hi=jnp.int32(hi))

    @jax.jit
    def raw(params, tokens, k, v, window):
        mod = nnx.merge(gd, params)
        inputs = AttentionInputs(q_pos=pos[:, window_start:window_start + q_len], k_pos=pos)
        h, _ = mod.hidden(tokens[None], inputs, CachedKV(k[None], v[None], window))
        return mod.head(h[0])

    return np.asarray(raw(params, jnp.asarray(tokens), cache["k"], cache["v"], window))
