"""One native Model shared by sessions on many Python threads (the GIL is released while
they compute): each thread must get exactly the logits it gets alone."""

import threading

import numpy as np

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
