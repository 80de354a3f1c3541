"""BD3-LM stopping rules replayed on finished samples."""

import numpy as np
from srsmc_jax.models.dit.stopping import check_stop, unigram_entropy


def test_unigram_entropy():
    assert unigram_entropy(np.zeros(10, int)) == 0.0
    assert abs(unigram_entropy(np.arange(64)) - np.log(64)) < 1e-12


def test_fixed_length_rejects_low_entropy_and_keeps_diverse_samples():
    rng = np.random.default_rng(0)
    diverse = rng.integers(0, 5000, 1024)
    assert check_stop(diverse, block_size=16, eos_id=50256) == (False, False, 1024)
    repetitive = diverse.copy()
    repetitive[600:] = 7  # from here on one token repeats: the 256-window entropy collapses
    d = check_stop(repetitive, block_size=16, eos_id=50256)
    assert d.stopped and d.rejected and 600 < d.length <= 1024 and d.length % 16 == 0
    # the rule fires at the first block end whose last-256 window has entropy < 4 nats
    assert unigram_entropy(repetitive[d.length - 256:d.length]) < 4
    assert unigram_entropy(repetitive[d.length - 256 - 16:d.length - 16]) >= 4


def test_variable_length_truncates_after_the_second_eos():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5000, 1024)
    x[0] = 50256  # BOS doubles as EOS
    x[700] = 50256
    d = check_stop(x, block_size=16, eos_id=50256, var_length=True)
    assert d == (True, False, 701)
    x[300] = 7
    x[700] = 1
    assert check_stop(x, block_size=16, eos_id=50256, var_length=True).stopped is False
    x[400:] = 3
    d = check_stop(x, block_size=16, eos_id=50256, var_length=True)
    assert d.stopped and not d.rejected and (d.length + 256) % 16 == 0
    assert unigram_entropy(x[d.length:d.length + 256]) < 4  # the low-entropy tail is cut off
