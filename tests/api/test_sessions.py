"""Many sequences over one Model (Model.session()), cancelling a long prompt half-way, and
closing a Model while other threads still use it."""

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ggufgen
import sparsegen
import sparseinfer as si

N_THREADS = 8
PROMPTS = [f"hello world {i} " * (1 + i % 3) for i in range(N_THREADS)]


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sessions") / "dense.gguf"
    ggufgen.write_llama_model(path, weight_type="Q4_0", n_ctx=256, seed=3)
    return str(path)


@pytest.fixture(scope="module")
def sparse_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sessions") / "sparse.gguf"
    sparsegen.write_pwri_model(path, weight_type="Q4_0", threshold=0.05, seed=3)
    return str(path)


def _calls(i):
    """What thread i asks: a greedy and a seeded sampled generation, and logits."""
    return [("generate", PROMPTS[i], dict(max_tokens=12, temperature=0, ignore_eos=True)),
            ("generate", PROMPTS[i], dict(max_tokens=12, temperature=0.9, seed=i, ignore_eos=True)),
            ("logits", [1, 5 + i, 9, 40 + i], {})]


def _run(target, calls):
    out = []
    for method, arg, kwargs in calls:
        result = getattr(target, method)(arg, **kwargs)
        out.append(result.tolist() if isinstance(result, np.ndarray) else result)
    return out


@pytest.mark.parametrize("which", ["dense", "sparse"])
def test_sessions_on_many_threads_give_what_each_gives_alone(which, dense_path, sparse_path):
    path = dense_path if which == "dense" else sparse_path
    with si.Model(path, n_ctx=128, n_threads=1) as model:
        alone = [_run(model, _calls(i)) for i in range(N_THREADS)]
        together, errors = [None] * N_THREADS, []
        start = threading.Barrier(N_THREADS)

        def work(i):
            try:
                with model.session() as session:
                    start.wait()
                    for _ in range(2):  # twice, so the threads overlap in every phase
                        together[i] = _run(session, _calls(i))
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert together == alone
        # The sampled texts differ between threads: the comparison above had teeth.
        assert len({result[1] for result in alone}) > 1


def test_session_has_its_own_context_and_stats(dense_path):
    with si.Model(dense_path, n_ctx=64, n_threads=1) as model:
        session = model.session(n_ctx=16, n_threads=2)
        assert (session.n_ctx, session.n_threads, session.model) == (16, 2, model)
        with pytest.raises(si.ContextOverflowError, match="n_ctx is 16"):
            session.generate("hello world " * 20)
        text = model.generate("hello", max_tokens=5, temperature=0, ignore_eos=True)
        assert session.generate("hello", max_tokens=5, temperature=0, ignore_eos=True) == text
        assert session.stats()["generated_tokens"] == 5
        # A stream open on the Model is not disturbed by calls on the session.
        stream = model.generate("hello", max_tokens=5, temperature=0, ignore_eos=True, stream=True)
        first = next(stream)
        session.logits([1, 2, 3])
        assert first + "".join(stream) == text
        session.close()
        assert "closed" in repr(session)
        with pytest.raises(ValueError, match="session .* is closed"):
            session.generate("hello")
        assert model.generate("hello", max_tokens=5, temperature=0, ignore_eos=True) == text
        with pytest.raises(ValueError, match="n_threads"):
            model.session(n_threads=0)


def test_closing_the_model_closes_its_sessions(dense_path):
    model = si.Model(dense_path, n_ctx=64, n_threads=1)
    session = model.session()
    model.close()
    with pytest.raises(ValueError, match="closed"):
        session.generate("hello")
    with pytest.raises(ValueError, match="closed"):
        model.session()


def _wait_for_call(target, n_prompt_tokens):
    """Returns once `target`'s call has claimed its session (so a cancel reaches it)."""
    deadline = time.monotonic() + 60
    while target.stats()["prompt_tokens"] != n_prompt_tokens:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_cancel_stops_a_long_prompt_and_the_model_stays_usable(slow_model_path):
    with si.Model(slow_model_path, n_ctx=4096, n_threads=1) as model:
        prompt = "hello world " * 170
        n_prompt = len(model.tokenize(prompt))
        assert n_prompt > 1500
        result = []
        worker = threading.Thread(target=lambda: result.append(
            model.generate(prompt, max_tokens=3, temperature=0, ignore_eos=True)))
        worker.start()
        _wait_for_call(model, n_prompt)
        model.cancel()
        worker.join(timeout=60)
        assert result == [""]
        # The evaluation stopped part-way: the KV cache holds none of the prompt.
        assert model._own.native.n_past == 0
        assert model.stats()["generated_tokens"] == 0

        # logits() has nothing to return early: it raises, and the next call is unaffected.
        ids = model.tokenize(prompt)
        errors = []

        def score():
            try:
                model.logits(ids)
            except si.CancelledError as error:
                errors.append(error)

        worker = threading.Thread(target=score)
        worker.start()
        _wait_for_call(model, n_prompt)
        model.cancel()
        worker.join(timeout=60)
        assert len(errors) == 1 and "cancel" in str(errors[0])
        short = model.tokenize("hello world " * 3)
        with si.Model(slow_model_path, n_ctx=64, n_threads=1) as fresh:
            np.testing.assert_array_equal(model.logits(short), fresh.logits(short))
            assert (model.generate("hello", max_tokens=4, temperature=0, ignore_eos=True)
                    == fresh.generate("hello", max_tokens=4, temperature=0, ignore_eos=True))


def test_cancel_before_a_call_does_not_reach_it(dense_path):
    with si.Model(dense_path, n_ctx=64, n_threads=1) as model:
        model.cancel()
        assert model.generate("hello", max_tokens=4, temperature=0, ignore_eos=True)


def test_closing_the_model_while_another_thread_streams(dense_path):
    # A context long enough that the stream is still running when close() comes, however
    # late a loaded machine schedules this thread (256 tokens took ~0.1 s and raced); past
    # the 256 tokens the file was trained for, which only warns.
    with pytest.warns(si.ContextLengthWarning):
        model = si.Model(dense_path, n_ctx=8192, n_threads=1)
    pieces, errors = [], []
    started = threading.Event()

    def consume():
        try:
            for piece in model.generate("hello", max_tokens=None, temperature=0,
                                        ignore_eos=True, stream=True):
                pieces.append(piece)
                started.set()
        except ValueError as error:
            errors.append(error)
        finally:
            started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(timeout=60)
    model.close()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert pieces and len(errors) == 1 and "closed during the call" in str(errors[0])


def test_closing_the_model_during_a_long_prompt(slow_model_path):
    model = si.Model(slow_model_path, n_ctx=4096, n_threads=1)
    prompt = "hello world " * 170
    n_prompt = len(model.tokenize(prompt))
    errors = []

    def run():
        try:
            model.generate(prompt, max_tokens=3)
        except ValueError as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    _wait_for_call(model, n_prompt)
    model.close()  # stops the prompt within a layer instead of waiting for it
    worker.join(timeout=60)
    assert len(errors) == 1 and "closed" in str(errors[0])
    del model
    gc.collect()


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan reserves more address space than the limit allows")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_a_kv_cache_beyond_the_address_space_limit_is_refused_with_its_size(tmp_path):
    # 4 layers x 2^20 positions x 512 values x 2 caches x 2 bytes = 8 GiB, over a 4 GiB limit.
    path = tmp_path / "wide.gguf"
    ggufgen.write_llama_model(path, n_embd=512, n_layer=4, n_head=4, n_head_kv=4, n_ff=32,
                              n_ctx=4096, weight_type="Q4_0", seed=0)
    code = textwrap.dedent(f"""
        import resource, sparseinfer
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))
        try:
            sparseinfer.Model({str(path)!r}, n_ctx=1 << 20, n_threads=1)
        except MemoryError as error:
            print("MemoryError:", error)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MemoryError: a KV cache of 4 layers x n_ctx=1048576 x 512 K and V values needs " \
           "8.00 GiB and this process may use 4.00 GiB" in out.stdout


def test_breaking_out_of_a_stream_leaves_the_session_reusable(dense_path):
    with si.Model(dense_path, n_ctx=64, n_threads=1) as model:
        whole = model.generate("hello", max_tokens=8, temperature=0, ignore_eos=True)
        with model.session() as session:
            for i, _ in enumerate(session.generate("hello", max_tokens=40, temperature=0,
                                                   ignore_eos=True, stream=True)):
                if i == 2:
                    break
            assert session.generate("hello", max_tokens=8, temperature=0, ignore_eos=True) == whole


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_model_and_sessions_work_in_a_forked_child(kind, dense_path, sparse_path):
    # multiprocessing's default on Linux: the child inherits the Model, whose native sessions'
    # worker threads did not survive the fork (a call there used to wait for them forever).
    import multiprocessing

    def replies(sequences):
        return [seq.generate(PROMPTS[1], max_tokens=8, temperature=0, ignore_eos=True) for seq in sequences]

    context = multiprocessing.get_context("fork")
    with si.Model(dense_path if kind == "dense" else sparse_path, n_threads=4) as m:
        session = m.session()
        expected = replies([m, session])
        results = context.Queue()

        def in_child():
            results.put(replies([m, session]))
            m.close()  # and closing there frees nothing of the parent's

        child = context.Process(target=in_child)
        child.start()
        try:
            got = results.get(timeout=120)  # a hang fails here, not forever
            child.join(60)
        finally:
            if child.is_alive():
                child.kill()
                child.join()
        assert child.exitcode == 0
        assert got == expected
        assert replies([m, session]) == expected  # the parent's are untouched
        session.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_child_forked_while_the_parent_computes_has_every_core(slow_model_path):
    # The cores a parent's thread held at the fork are not the child's to share: there the
    # count starts at zero, and the child's session computes on all the threads it asked for.
    import multiprocessing

    from sparseinfer import _core

    context = multiprocessing.get_context("fork")
    with si.Model(slow_model_path, n_ctx=4096, n_threads=2) as m:
        expected = m.generate(PROMPTS[0], max_tokens=4, temperature=0, ignore_eos=True)
        busy = m.session()
        long_prompt = threading.Thread(target=busy.logits, args=([1] + [5 + i % 200 for i in range(3000)],))
        long_prompt.start()
        while long_prompt.is_alive() and _core.testing.core_share_stats()["in_use"] == 0:
            pass
        results = context.Queue()

        def in_child():
            cores_held = _core.testing.core_share_stats()["in_use"]
            results.put((cores_held, m.generate(PROMPTS[0], max_tokens=4, temperature=0, ignore_eos=True)))

        child = context.Process(target=in_child)
        child.start()
        try:
            cores_held, reply = results.get(timeout=120)
            child.join(60)
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            long_prompt.join()
        assert child.exitcode == 0
        assert (cores_held, reply) == (0, expected)
        busy.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_thread_that_cannot_start_is_a_memory_error(dense_path):
    # Under an address-space limit the system refuses thread stacks: the pool's error, not
    # std::terminate (the process used to abort), and the process goes on.
    code = textwrap.dedent(f"""
        import resource
        import sparseinfer as si
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
        try:
            si.Model({dense_path!r}, n_ctx=64, n_threads=1000)
        except MemoryError as error:
            print("MemoryError:", error)
        with si.Model({dense_path!r}, n_ctx=64, n_threads=2) as m:
            print("then:", len(m.generate("hello", max_tokens=4, temperature=0, ignore_eos=True)) > 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MemoryError: could not start thread " in result.stdout, result.stdout
    assert "of 1000 (" in result.stdout and "use fewer threads (n_threads)" in result.stdout
    assert "then: True" in result.stdout
