"""The native sampler against a NumPy implementation of the same filters.

Oracle: penalty (llama.cpp rule), top-k, top-p, min-p and the temperature softmax written
out in NumPy, plus a pure-Python mt19937_64 that reproduces the exact draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparseinfer import _core

MASK64 = (1 << 64) - 1


class MersenneTwister64:
    """std::mt19937_64 from its published definition (Matsumoto & Nishimura, 2004)."""

    N, M = 312, 156
    MATRIX_A = 0xB5026F5AA96619E9
    UPPER, LOWER = MASK64 ^ ((1 << 31) - 1), (1 << 31) - 1

    def __init__(self, seed: int) -> None:
        self.state = [seed & MASK64]
        for i in range(1, self.N):
            prev = self.state[-1]
            self.state.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64)
        self.index = self.N

    def next(self) -> int:
        if self.index == self.N:
            mt = self.state
            for i in range(self.N):
                x = (mt[i] & self.UPPER) | (mt[(i + 1) % self.N] & self.LOWER)
                mt[i] = mt[(i + self.M) % self.N] ^ (x >> 1) ^ (self.MATRIX_A if x & 1 else 0)
            self.index = 0
        y = self.state[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & MASK64

    def uniform01(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def test_reference_twister_matches_the_standard():
    # The C++ standard ([rand.predef]) pins the 10000th output of a default-seeded engine.
    rng = MersenneTwister64(5489)
    for _ in range(9999):
        rng.next()
    assert rng.next() == 9981545732273789042


def penalised(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    out = logits.astype(np.float32).copy()
    for token in sorted(set(recent)):
        if token < len(out):
            out[token] = out[token] / np.float32(penalty) if out[token] > 0 else out[token] * np.float32(penalty)
    return out


def filtered(logits, *, top_k=0, top_p=1.0, min_p=0.0, recent=(), repeat_penalty=1.0):
    """(candidate ids in the sampler's order, their logits) after penalty and filters."""
    values = penalised(np.asarray(logits), list(recent), repeat_penalty).astype(np.float64)
    values[np.isnan(values)] = -np.inf
    values[values == np.inf] = np.finfo(np.float32).max
    ids = np.arange(len(values))
    ordered = False
    if 0 < top_k < len(values):
        ids = np.lexsort((ids, -values))[:top_k]  # best first, lower id on ties
        ordered = True
    if top_p < 1.0:
        if not ordered:
            ids = np.lexsort((ids, -values))
            ordered = True
        weights = np.exp(values[ids] - values[ids[0]])
        cumulative = np.cumsum(weights)
        reached = np.nonzero(cumulative >= top_p * weights.sum())[0]
        if len(reached):
            ids = ids[: reached[0] + 1]
    if min_p > 0.0:
        kept = values[ids]
        ids = ids[kept >= kept.max() + math.log(min_p)]
    return ids, values[ids]


def tempered_probabilities(kept_logits: np.ndarray, temperature: float) -> np.ndarray:
    weights = np.exp((kept_logits - kept_logits.max()) / temperature)
    return weights / weights.sum()


def random_logits(rng: np.random.Generator, n_vocab: int, scale: float = 3.0) -> np.ndarray:
    return (rng.standard_normal(n_vocab) * scale).astype(np.float32)


FILTER_SETTINGS = [
    dict(top_k=40, top_p=0.95, min_p=0.05),
    dict(top_k=5, top_p=1.0, min_p=0.0),
    dict(top_k=0, top_p=0.5, min_p=0.0),
    dict(top_k=0, top_p=1.0, min_p=0.2),
    dict(top_k=0, top_p=1.0, min_p=0.0),
    dict(top_k=100, top_p=0.8, min_p=0.1, repeat_penalty=1.3),
]


@pytest.mark.parametrize("settings", FILTER_SETTINGS)
def test_sampled_token_is_in_the_numpy_allowed_set(settings):
    rng = np.random.default_rng(1)
    for seed in range(30):
        logits = random_logits(rng, 1000)
        recent = [int(t) for t in rng.integers(0, 1000, size=20)]
        sampler = _core.Sampler(temperature=0.9, seed=seed, repeat_last_n=64, **settings)
        for token in recent:
            sampler.accept(token)
        allowed, _ = filtered(logits, recent=recent, **settings)
        for _ in range(5):
            assert sampler.sample(logits) in set(allowed.tolist())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_empirical_distribution_matches_numpy_softmax(temperature):
    logits = np.array([2.0, 1.5, 1.4, 0.3, -1.0, 2.2, -4.0, 0.0], dtype=np.float32)
    settings = dict(top_k=6, top_p=0.97, min_p=0.02)
    allowed, kept_logits = filtered(logits, **settings)
    expected = tempered_probabilities(kept_logits, temperature)
    sampler = _core.Sampler(temperature=temperature, seed=123, **settings)
    draws = 20000
    counts = np.bincount([sampler.sample(logits) for _ in range(draws)], minlength=len(logits))
    assert counts[np.setdiff1d(np.arange(len(logits)), allowed)].sum() == 0
    observed = counts[allowed]
    chi_square = float((((observed - draws * expected) ** 2) / (draws * expected)).sum())
    degrees = len(allowed) - 1
    assert chi_square < degrees + 8 * math.sqrt(2 * degrees)


@pytest.mark.parametrize("settings", FILTER_SETTINGS)
def test_draws_match_a_reference_twister_exactly(settings):
    """Same seed, same tokens on every platform: the draw is pinned down to the bit."""
    rng = np.random.default_rng(7)
    logits = random_logits(rng, 500)
    temperature, seed = 0.7, 2024
    ids, kept = filtered(logits, **settings)
    cumulative = np.cumsum(np.exp((kept - kept.max()) / temperature))
    twister = MersenneTwister64(seed)
    expected = [int(ids[np.searchsorted(cumulative, twister.uniform01() * cumulative[-1], side="right")])
                for _ in range(200)]
    sampler = _core.Sampler(temperature=temperature, seed=seed, **settings)
    assert [sampler.sample(logits) for _ in range(200)] == expected


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_argmax(temperature):
    rng = np.random.default_rng(3)
    sampler = _core.Sampler(temperature=temperature, seed=5)
    for _ in range(20):
        logits = random_logits(rng, 50000)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_greedy_ties_go_to_the_lowest_id():
    logits = np.array([0.0, 5.0, 1.0, 5.0, 5.0], dtype=np.float32)
    assert _core.Sampler(temperature=0.0).sample(logits) == 1


def test_repetition_penalty_changes_the_argmax_as_numpy_predicts():
    logits = np.array([3.0, 2.9, -0.5, -0.6, 1.0], dtype=np.float32)
    for recent, penalty in [([0], 1.1), ([0, 0, 1], 1.5), ([4, 0], 2.0), ([2], 1.5), ([0, 1], 0.5)]:
        sampler = _core.Sampler(temperature=0.0, repeat_penalty=penalty, repeat_last_n=8)
        for token in recent:
            sampler.accept(token)
        expected = int(np.argmax(penalised(logits, recent, penalty)))
        assert sampler.sample(logits) == expected
    # Sanity on the oracle itself: a strong penalty on token 0 hands the win to token 1.
    assert int(np.argmax(penalised(logits, [0], 1.1))) == 1


def test_repetition_penalty_only_looks_at_the_last_n_tokens():
    logits = np.array([3.0, 2.9, 0.0], dtype=np.float32)
    sampler = _core.Sampler(temperature=0.0, repeat_penalty=2.0, repeat_last_n=2)
    for token in [0, 2, 2]:  # token 0 has left the window
        sampler.accept(token)
    assert sampler.sample(logits) == 0


def test_penalised_tokens_outside_the_vocabulary_are_ignored():
    sampler = _core.Sampler(temperature=0.0, repeat_penalty=2.0)
    sampler.accept(10**6)
    assert sampler.sample(np.array([0.0, 1.0], dtype=np.float32)) == 1


def test_same_seed_gives_the_same_sequence_and_reset_replays_it():
    logits = random_logits(np.random.default_rng(9), 2000, scale=1.0)
    first = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=77)
    second = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=77)
    other = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=78)
    run = [first.sample(logits) for _ in range(50)]
    assert run == [second.sample(logits) for _ in range(50)]
    assert run != [other.sample(logits) for _ in range(50)]
    first.reset()
    assert run == [first.sample(logits) for _ in range(50)]


def test_tiny_top_p_keeps_at_least_the_best_token():
    logits = random_logits(np.random.default_rng(4), 300)
    sampler = _core.Sampler(temperature=1.5, top_k=0, top_p=1e-6, min_p=0.0, seed=1)
    assert {sampler.sample(logits) for _ in range(50)} == {int(np.argmax(logits))}


def test_logits_are_not_modified():
    logits = random_logits(np.random.default_rng(5), 100)
    before = logits.copy()
    sampler = _core.Sampler(repeat_penalty=1.5, seed=3)
    sampler.accept(int(np.argmax(logits)))
    sampler.sample(logits)
    np.testing.assert_array_equal(logits, before)


def test_large_vocabulary_with_top_k():
    logits = random_logits(np.random.default_rng(6), 150_000)
    allowed, _ = filtered(logits, top_k=40, top_p=0.95, min_p=0.05)
    sampler = _core.Sampler(seed=11)
    assert all(sampler.sample(logits) in set(allowed.tolist()) for _ in range(100))


def test_nan_and_infinite_logits_do_not_break_sampling():
    logits = np.array([np.nan, 1.0, np.inf, -np.inf, 2.0], dtype=np.float32)
    for temperature in (0.0, 0.8):
        sampler = _core.Sampler(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=2)
        assert {sampler.sample(logits) for _ in range(30)} == {2}
    nan_and_finite = np.array([np.nan, 0.5, np.nan, 0.4], dtype=np.float32)
    sampler = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=2)
    assert {sampler.sample(nan_and_finite) for _ in range(100)} == {1, 3}


def test_logits_without_a_finite_value_raise():
    with pytest.raises(ValueError, match="finite"):
        _core.Sampler().sample(np.array([np.nan, -np.inf], dtype=np.float32))


@pytest.mark.parametrize("logits", [np.zeros((2, 3), np.float32), np.zeros(0, np.float32)])
def test_logits_of_the_wrong_shape_raise(logits):
    with pytest.raises(ValueError, match="logits"):
        _core.Sampler().sample(logits)


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", float("nan")),
        ("min_p", -0.1),
        ("min_p", 1.01),
        ("min_p", float("nan")),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", -1.0),
        ("repeat_penalty", float("nan")),
        ("repeat_last_n", -1),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        _core.Sampler(**{name: value})


def test_accept_rejects_negative_tokens():
    with pytest.raises(ValueError, match="token"):
        _core.Sampler().accept(-1)
