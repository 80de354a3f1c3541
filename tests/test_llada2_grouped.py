"""The LLaDA2 grouped matmul (models/llada2/moe.py) against every expert computed densely: skewed and
empty experts, assignments to experts held elsewhere (expert parallelism), and ``vmap`` (the engine's
particles), whose batching rule joins the sequences into one grouped matmul."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from srsmc_jax.models.llada2.moe import IMPLS, capacity, dense_ffn, grouped_ffn

E, D, WIDTH, K = 8, 16, 8, 2
TOL = dict(rtol=1e-5, atol=1e-5)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    shapes = ((E, D, 2 * WIDTH), (E, WIDTH, D))  # gate_up_proj (gate | up), down_proj
    return tuple(jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32) for s in shapes)


def _case(t, seed, skew):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((t, D)), jnp.float32)
    p = np.ones(E) if skew is None else np.asarray(skew, float)
    idx = np.stack([rng.choice(E, K, replace=False, p=p / p.sum()) for _ in range(t)]).astype(np.int32)
    w = jnp.asarray(rng.random((t, K)), jnp.float32)
    return x, jnp.asarray(idx), w


SKEWS = {"uniform": None, "one_hot_expert": [50, 1, 1, 0, 0, 0, 0, 1], "two_empty": [1, 1, 1, 1, 1, 1, 0, 0]}


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "dense"])
@pytest.mark.parametrize("skew", list(SKEWS))
@pytest.mark.parametrize("t", [1, 5, 40, 300])
def test_equals_dense_over_all_experts(impl, skew, t):
    x, idx, w = _case(t, seed=t, skew=SKEWS[skew])
    wgu, wd = _weights()
    want = dense_ffn(x, idx, w, wgu, wd)
    got = jax.jit(lambda *a: grouped_ffn(*a, impl=impl))(x, idx, w, wgu, wd)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "dense"])
@pytest.mark.parametrize("num_experts", [None, E])
def test_experts_held_elsewhere_contribute_nothing(impl, num_experts):
    """Two halves of the experts (as two 'model' shards hold them) sum to the whole."""
    x, idx, w = _case(64, seed=3, skew=None)
    wgu, wd = _weights()
    half = jax.jit(lambda x, idx, w, wgu, wd, o: grouped_ffn(x, idx, w, wgu, wd, expert_offset=o, impl=impl,
                                                             num_experts=num_experts))  # one program, not one per op
    halves = [half(x, idx, w, wgu[o:o + E // 2], wd[o:o + E // 2], o) for o in (0, E // 2)]
    np.testing.assert_allclose(halves[0] + halves[1], jax.jit(dense_ffn)(x, idx, w, wgu, wd), **TOL)


def test_a_shard_sizes_its_batched_product_for_its_share_of_the_rows():
    """Holding half of the experts, "loop"'s batched product has half the rows (expert parallelism
    divides the FLOPs, not only the memory)."""
    x, idx, w = _case(256, seed=3, skew=None)
    wgu, wd = _weights()
    half = E // 2
    whole = capacity(256 * K, E)

    def hlo(num_experts):
        f = jax.jit(lambda x, i, w: grouped_ffn(x, i, w, wgu[:half], wd[:half], impl="loop", num_experts=num_experts))
        return f.lower(x, idx, w).as_text()

    assert f"tensor<{half}x{whole}x{D}xf32>" in hlo(E)  # [E / 2, cap, D]: the cap of the whole layer's mean
    assert f"tensor<{half}x{capacity(256 * K, half)}x{D}xf32>" in hlo(None)  # all rows assumed here: 2x


@pytest.mark.parametrize("impl,per_sequence", [("loop", False), ("loop", True), ("tiled", False), ("ragged", False)])
def test_vmap_gives_each_sequence_its_own_result(impl, per_sequence):
    """vmap, nested vmap and the chunked lax.map the engine uses give each sequence's own result."""
    xs, idxs, ws = zip(*[_case(12, seed=s, skew=None) for s in range(6)])
    x, idx, w = (jnp.stack(a).reshape(2, 3, 12, -1) for a in (xs, idxs, ws))
    wgu, wd = _weights()
    f = lambda x, i, w: grouped_ffn(x, i, w, wgu, wd, impl=impl, per_sequence=per_sequence)  # noqa: E731
    want = jnp.stack([jax.jit(dense_ffn)(a, b, c, wgu, wd) for a, b, c in zip(xs, idxs, ws)]).reshape(2, 3, 12, D)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.vmap(f)))(x, idx, w), want, **TOL)
    chunked = jax.jit(lambda *a: jax.lax.map(lambda b: jax.vmap(f)(*b), a))
    np.testing.assert_allclose(chunked(x, idx, w), want, **TOL)
    # an unmapped token batch beside mapped routing (in_axes None)
    one = jax.jit(jax.vmap(f, in_axes=(None, 0, 0)))(x[0, 0], idx[0], w[0])
    np.testing.assert_allclose(one[1], dense_ffn(x[0, 0], idx[0, 1], w[0, 1], wgu, wd), **TOL)


def test_vmap_runs_one_grouped_matmul():
    """Under vmap the loop runs once over the joined rows (one while loop over the experts in the
    HLO, not one per sequence), and the batched part's capacity follows the joined rows' mean."""
    x, idx, w = _case(32, seed=1, skew=None)
    wgu, wd = _weights()
    f = jax.vmap(lambda x, i, w: grouped_ffn(x, i, w, wgu, wd, impl="loop"))
    hlo = jax.jit(f).lower(*(jnp.stack([a] * 8) for a in (x, idx, w))).as_text()
    assert hlo.count("stablehlo.while") == 1 + 2  # the overflow loop, its tile loops (cap rows, then 16): once
    assert capacity(8 * 32 * K, E) == 72 and capacity(32 * K, E) == 16 and capacity(100, E) == 16


@pytest.mark.parametrize("impl", ["loop", "tiled"])
def test_batched_down_projection_reads_its_rows_transposed(impl):
    """The batched down projection gets its rows as [G, I, C], written out behind an optimization
    barrier (XLA:CPU runs that product on all cores; folded back, on one core at I < 256): a
    refactor that drops the barrier or the transpose is seen here, not only in the benchmark."""
    x, idx, w = _case(64, seed=3, skew=None)
    wgu, wd = _weights()
    text = jax.jit(lambda x, i, w: grouped_ffn(x, i, w, wgu, wd, impl=impl)).lower(x, idx, w).as_text()
    barrier = re.search(r"(%\w+) = stablehlo.optimization_barrier %\w+ : tensor<\d+x" + str(WIDTH) + r"x\d+xf32>", text)
    assert barrier, "the down projection's rows are not written out transposed"
    assert re.search(rf"stablehlo.dot_general {barrier.group(1)}, %\w+, batching_dims = \[0\] x \[0\], "
                     r"contracting_dims = \[1\] x \[1\]", text)


def test_loop_overflow_of_every_size():
    """Every overflow of one expert past the batched part's capacity (80 rows here: tiles of 80, then
    of 16, the last one partly spilling) gives every row (a missed row would be 0)."""
    t = 264
    cap = capacity(t * K, E)
    assert cap == 80
    x = _case(t, seed=2, skew=None)[0]
    w = jnp.asarray(np.random.default_rng(3).random((t, K)), jnp.float32)
    wgu, wd = _weights()
    f = jax.jit(lambda x, i, w: grouped_ffn(x, i, w, wgu, wd, impl="loop"))
    ref = jax.jit(lambda x, i, w: dense_ffn(x, i, w, wgu, wd))
    i = np.arange(t)
    # n0 tokens pick expert 0 (the rest do not)
    for n0 in list(range(cap - 1, cap + 41)) + [2 * cap - 1, 2 * cap, 2 * cap + 17, t - 1, t]:
        idx = np.where((i < n0)[:, None], np.stack([np.zeros(t), 1 + i % 7], 1),
                       np.stack([1 + i % 7, 1 + (i + 1) % 7], 1)).astype(np.int32)
        idx = jnp.asarray(idx)
        np.testing.assert_allclose(f(x, idx, w), ref(x, idx, w), **TOL, err_msg=f"{n0} rows of expert 0")


def test_unknown_impl_is_an_error():
    x, idx, w = _case(4, seed=0, skew=None)
    with pytest.raises(ValueError, match="impl must be one of"):
        grouped_ffn(x, idx, w, *_weights(), impl="einsum")


def test_tiled_is_batch_invariant_bit_for_bit():
    """The opt-in "tiled": a sequence's output is the same bits whatever it is batched with."""
    xs, idxs, ws = zip(*[_case(12, seed=s, skew=SKEWS["one_hot_expert"] if s % 2 else None) for s in range(4)])
    wgu, wd = _weights()
    f = jax.jit(jax.vmap(lambda x, i, w: grouped_ffn(x, i, w, wgu, wd, impl="tiled")))
    batch = np.asarray(f(jnp.stack(xs), jnp.stack(idxs), jnp.stack(ws)))
    for j in range(4):
        alone = np.asarray(f(xs[j][None], idxs[j][None], ws[j][None]))[0]
        np.testing.assert_array_equal(batch[j], alone)


def test_moe_benchmark_runs_tiny_and_records_its_cpu(tmp_path):
    """benchmarks/llada2_moe.py at a toy shape: every MoE implementation gives the dense-over-all-experts
    logits, the ratios carry quartiles, and the record says which CPU measured it (ratios differ
    between CPUs of one model name)."""
    import json
    import os

    from benchmarks import llada2_moe

    out = tmp_path / "moe.json"
    assert llada2_moe.main(["--length", "32", "--batch", "2", "--layers", "1", "--hidden", "64", "--heads", "2",
                            "--vocab", "128", "--experts", "8", "--groups", "2", "--expert-width", "32",
                            "--repeats", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["same_logits"] is True
    assert set(rec["seconds"]) == {"moe_loop", "moe_tiled", "moe_dense", "moe_ragged", "moe_loop_fitted_bias",
                                   "dense_active_width"}
    lo, hi = rec["moe_over_dense_active"]["quartiles"]
    assert lo <= rec["moe_over_dense_active"]["median"] <= hi
    assert rec["cpu_count"] == os.cpu_count() and rec["cpu_model"]
    if os.path.exists("/proc/cpuinfo"):
        assert isinstance(rec["cpu"]["isa"], list)
    if os.path.isdir("/sys/devices/system/cpu/cpu0/cache"):
        assert rec["cpu"]["cache_per_core"]
    (busiest,) = rec["busiest_expert_over_mean_rows"]  # one MoE layer
    # at least the mean; at most every token (a token picks k = 4 distinct of E = 8 experts): E / k
    assert 1.0 <= busiest <= 8 / 4
    # the expert_bias fitted on these tokens evens their load (64 tokens x 4 picks over 8 experts)
    (fitted,) = rec["busiest_expert_over_mean_rows_fitted_bias"]
    assert 1.0 <= fitted <= min(busiest, 1.25)
    lo, hi = rec["moe_fitted_bias_over_dense_active"]["quartiles"]
    assert lo <= rec["moe_fitted_bias_over_dense_active"]["median"] <= hi
    floor = rec["expert_product_batched_over_flat"]
    # the batched part's rows per expert at this shape: 2 x 32 tokens x 4 picks over 8 experts, x 1.125
    assert floor["experts"] == 8 and floor["rows_per_expert"] == capacity(2 * 32 * 4, 8) == 40
    for product in ("gate_up", "down"):
        lo, hi = floor[product]["quartiles"]
        assert lo <= floor[product]["median"] <= hi and set(floor[product]["seconds"]) == {"batched", "flat"}


SHAPE = "the MoE shape (--experts, --groups, --topk, --heads): "


@pytest.mark.parametrize("argv,message", [
    (["--experts", "0"], "argument --experts: expected an integer >= 1, got 0"),
    (["--experts", "30"], SHAPE + "num_experts 30 is not a multiple of n_group 4"),
    (["--topk", "40"], SHAPE + "num_experts_per_tok 40 exceeds"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
])
def test_moe_benchmark_bad_flags_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    from benchmarks import llada2_moe

    out = tmp_path / "moe.json"
    with pytest.raises(SystemExit) as e:
        llada2_moe.main([*argv, "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m benchmarks.llada2_moe: error: ") and message in err, err
