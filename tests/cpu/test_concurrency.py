"""One native Model shared by sessions on many Python threads (the GIL is released while
they compute): each thread must get exactly the logits it gets alone."""

import threading

import numpy as np
import pytest

import ggufgen
import sparsegen
from sparseinfer import _core

N_THREADS = 8


def _prompts(n_vocab):
    rng = np.random.default_rng(0)
    return [[1] + [int(t) for t in rng.integers(3, n_vocab, 12 + i)] for i in range(N_THREADS)]


def _run_concurrently(model, prompts, sparse):
    results, errors = [None] * len(prompts), []
    start = threading.Barrier(len(prompts))

    def work(i):
        try:
            session = _core.Session(model, 64, 1, sparse=sparse)
            start.wait()
            for _ in range(3):  # repeat, so the threads overlap in every part of the pass
                session.reset()
                session.eval(prompts[i], all_logits=True)
            results[i] = session.logits()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    return results


def _alone(model, prompt, sparse):
    session = _core.Session(model, 64, 1, sparse=sparse)
    session.eval(prompt, all_logits=True)
    return session.logits()


def test_dense_sessions_on_many_threads_match_running_alone(tmp_path):
    path = tmp_path / "dense.gguf"
    ggufgen.write_llama_model(path, weight_type="Q4_0", seed=2)
    model = _core.Model(str(path))
    prompts = _prompts(model.n_vocab)
    together = _run_concurrently(model, prompts, sparse=False)
    for prompt, got in zip(prompts, together):
        np.testing.assert_array_equal(got, _alone(model, prompt, sparse=False))


def test_sparse_sessions_on_many_threads_match_running_alone(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "sparse.gguf", weight_type="Q4_0", threshold=0.05, seed=2)
    model = _core.Model(str(w.path))
    prompts = _prompts(model.n_vocab)
    together = _run_concurrently(model, prompts, sparse=True)
    for prompt, got in zip(prompts, together):
        np.testing.assert_array_equal(got, _alone(model, prompt, sparse=True))


def test_a_session_computing_beside_another_runs_on_the_cores_left_with_the_same_logits(slow_model_path):
    # While one session holds every core (a long prompt), another runs on the cores still free,
    # at least one, instead of a second pool of all of them: its logits are the same bits as
    # alone, since no result depends on the thread count.
    model = _core.Model(slow_model_path)
    capacity = _core.testing.core_share_stats()["capacity"]
    prompt = [1, 7, 300, 41, 9, 100]
    short = _core.Session(model, 64, capacity + 1)  # wants more cores than the machine has
    short.eval(prompt, all_logits=True)
    alone = short.logits()

    long_session = _core.Session(model, 4096, capacity)
    long_prompt = [1] + [int(t) for t in np.random.default_rng(0).integers(3, model.n_vocab, 3000)]
    errors = []

    def long_prompt_work():
        try:
            long_session.eval(long_prompt, all_logits=False)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    narrowed_before = _core.testing.core_share_stats()["narrowed"]
    worker = threading.Thread(target=long_prompt_work)
    worker.start()
    while worker.is_alive() and _core.testing.core_share_stats()["in_use"] == 0:
        pass
    beside = 0
    while worker.is_alive():
        short.reset()
        short.eval(prompt, all_logits=True)
        np.testing.assert_array_equal(short.logits(), alone)
        beside += 1
    worker.join()
    assert not errors, errors
    assert beside > 0
    assert _core.testing.core_share_stats()["narrowed"] > narrowed_before
    assert _core.testing.core_share_stats()["in_use"] == 0  # every share was given back


def test_a_pool_beyond_the_width_of_a_job_word_is_refused(tmp_path):
    path = tmp_path / "dense.gguf"
    ggufgen.write_llama_model(path, seed=2)
    model = _core.Model(str(path))
    with pytest.raises(ValueError, match="n_threads must be at most 65535, got 70000"):
        _core.Session(model, 64, 70000)
