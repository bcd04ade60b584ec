"""Quality measures (sparseinfer.quality): perplexity against llama-cpp-python's logits on
SmolLM2 and against llama.cpp's window convention recomputed here from the engine's own
logits(); KL divergence of a file against itself and of a PowerInfer file's sparse run against
its dense run, with the predictor's recall and precision against the float64 reference's masks
(tests/support/sparse_reference.py); score() against logits(); the CLI commands; bad input."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import ggufgen
import sparse_reference as sref
import sparsegen
from logit_checks import log_softmax
from paths import DATA
from smollm2 import smollm2_path

import sparseinfer as si
from sparseinfer import errors, quality

N_THREADS = 2
MIN_MARGIN = 3e-5  # no predictor score or gate this close (x std) to its cut: exact counts are meaningful


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sparseinfer", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def random_text(model, n_tokens, seed):
    """Text of about n_tokens tokens of the synthetic vocabulary's pieces (words, letters; not
    its byte tokens), which its own tokenization may merge a little: the tests take the model's
    tokens of it."""
    first_piece = 3 + 256
    ids = np.random.default_rng(seed).integers(first_piece, model.n_vocab, n_tokens)
    return model.detokenize(ids.tolist())


def windows_of(model, text, n_ctx):
    """llama.cpp's windows, written out independently of the package: the text's tokens in
    whole windows of n_ctx, each starting with BOS where the file adds one."""
    ids = model.tokenize(text)
    adds_bos = model.tokenize("x")[0] == model._tokenizer.bos_id
    out = []
    for i in range(len(ids) // n_ctx):
        window = ids[i * n_ctx:(i + 1) * n_ctx]
        if adds_bos:
            window[0] = model._tokenizer.bos_id
        out.append(window)
    return out


def expected_perplexity(nll):
    """llama.cpp's final estimate and its error from the scored tokens' negative log-likelihoods."""
    mean = nll.mean()
    var = (nll * nll).mean() - mean * mean
    ppl = math.exp(mean)
    return ppl, ppl * math.sqrt(var / (len(nll) - 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ggufgen.write_llama_model(tmp_path_factory.mktemp("quality") / "tiny.gguf", n_ctx=256, seed=7)


@pytest.fixture(scope="module")
def tiny_model(tiny):
    with si.Model(tiny.path, n_ctx=128, n_threads=N_THREADS) as model:
        yield model


# ---- perplexity -------------------------------------------------------------------------------

def test_smollm2_perplexity_matches_llama_cpp():
    llama_cpp = pytest.importorskip("llama_cpp")
    path = smollm2_path()
    n_ctx = 128
    with open(os.path.join(DATA, "quality_text.txt"), encoding="utf-8") as f:
        text = f.read()
    with si.Model(path, n_ctx=n_ctx, n_threads=N_THREADS) as model:
        result = model.perplexity(text, n_ctx=n_ctx)
        ours = model.tokenize(text)
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=N_THREADS, logits_all=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        assert ids == ours
        adds_bos = ids[0] == llm.token_bos()
        nll = []
        for i in range(len(ids) // n_ctx):
            window = ids[i * n_ctx:(i + 1) * n_ctx]
            if adds_bos:
                window[0] = llm.token_bos()
            llm.reset()
            llm.eval(window)
            logp = log_softmax(np.array(llm.scores[n_ctx // 2:n_ctx - 1]))
            nll.append(-logp[np.arange(len(logp)), window[n_ctx // 2 + 1:]])
    finally:
        llm.close()
    ppl, error = expected_perplexity(np.concatenate(nll))
    assert result.n_windows == len(nll) == 26 and result.n_tokens == 26 * 63
    # The engines round activations for Q4_1 differently (~0.1 nats per token either way).
    assert result.perplexity == pytest.approx(ppl, rel=5e-3)
    assert result.standard_error == pytest.approx(error, rel=0.05)
    assert result.tokens_per_second > 0


def test_perplexity_follows_llama_cpp_windows(tiny_model):
    text = random_text(tiny_model, 300, seed=1)
    n_ctx = 40
    result = tiny_model.perplexity(text, n_ctx=n_ctx)
    windows = windows_of(tiny_model, text, n_ctx)
    assert len(windows) >= 5 and all(w[0] == tiny_model._tokenizer.bos_id for w in windows)
    per_window = []
    for window in windows:
        logp = log_softmax(tiny_model.logits(window)[n_ctx // 2:n_ctx - 1])
        per_window.append(-logp[np.arange(len(logp)), window[n_ctx // 2 + 1:]])
    ppl, error = expected_perplexity(np.concatenate(per_window))
    assert result.perplexity == pytest.approx(ppl, rel=1e-12)
    assert result.standard_error == pytest.approx(error, rel=1e-9)
    assert result.mean_nll == pytest.approx(math.log(ppl), rel=1e-12)
    assert result.window_perplexities == pytest.approx([math.exp(v.mean()) for v in per_window], rel=1e-12)
    assert (result.n_windows, result.n_ctx, result.n_tokens) == (len(windows), n_ctx, len(windows) * 19)

    # The batch size and the window count limit change nothing else.
    for n_batch in (1, 7):
        assert tiny_model.perplexity(text, n_ctx=n_ctx, n_batch=n_batch).window_perplexities == \
            result.window_perplexities
    first_two = tiny_model.perplexity(text, n_ctx=n_ctx, max_windows=2)
    assert first_two.window_perplexities == result.window_perplexities[:2]


def test_perplexity_reports_progress_and_can_be_cancelled(tiny_model):
    text = random_text(tiny_model, 200, seed=2)
    calls = []
    result = tiny_model.perplexity(text, n_ctx=32, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i + 1, result.n_windows) for i in range(result.n_windows)]
    with pytest.raises(si.CancelledError, match="perplexity"):
        tiny_model.perplexity(text, n_ctx=32, progress=lambda done, total: tiny_model.cancel())
    assert tiny_model.perplexity(text, n_ctx=32).perplexity == result.perplexity  # the next call runs


def test_perplexity_bad_input(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_model.perplexity("", n_ctx=32)
    with pytest.raises(ValueError, match="white space"):
        tiny_model.perplexity(" \n\t", n_ctx=32)
    with pytest.raises(ValueError, match=r"shorter than one window of n_ctx=64"):
        tiny_model.perplexity(random_text(tiny_model, 20, seed=3), n_ctx=64)
    with pytest.raises(si.ContextOverflowError, match="n_ctx=256"):
        tiny_model.perplexity(random_text(tiny_model, 600, seed=3), n_ctx=256)
    with pytest.raises(ValueError, match="n_ctx must be >= 3"):
        tiny_model.perplexity("some text", n_ctx=2)
    with pytest.raises(TypeError, match="text must be a str"):
        tiny_model.perplexity(b"bytes", n_ctx=32)


# ---- KL divergence ----------------------------------------------------------------------------

def test_kl_of_a_file_against_itself_is_zero(tiny, tiny_model):
    text = random_text(tiny_model, 200, seed=4)
    with si.Model(tiny.path, n_ctx=128, n_threads=1) as again:
        r = tiny_model.kl_divergence(text, again, n_ctx=32)
    assert r.kl.shape == (r.perplexity.n_tokens,) and not r.kl.any()
    assert r.mean_kl == r.max_kl == r.kl_percentile(99.9) == 0.0
    assert r.top1_agreement == 1.0 and r.predictor is None
    assert r.perplexity.perplexity == r.base_perplexity.perplexity == tiny_model.perplexity(text, 32).perplexity


def test_kl_of_f16_against_f32_is_small_and_matches_numpy(tmp_path):
    f32 = ggufgen.write_llama_model(tmp_path / "f32.gguf", seed=3)
    f16 = ggufgen.write_llama_model(tmp_path / "f16.gguf", seed=3, weight_type="F16")
    with si.Model(f16.path, n_ctx=64) as model, si.Model(f32.path, n_ctx=64) as base:
        text = random_text(model, 100, seed=5)
        r = model.kl_divergence(text, base, n_ctx=32)
        windows = windows_of(model, text, 32)
        kl, same = [], []
        for window in windows:
            p, q = (log_softmax(m.logits(window)[16:31]) for m in (base, model))
            kl.append((np.exp(p) * (p - q)).sum(axis=1))
            same.append(p.argmax(axis=1) == q.argmax(axis=1))
    np.testing.assert_allclose(r.kl, np.concatenate(kl), rtol=1e-9, atol=1e-15)
    assert 0 < r.mean_kl < 1e-3
    assert r.top1_agreement == np.concatenate(same).mean()
    assert r.kl_percentile(99) == pytest.approx(np.percentile(np.concatenate(kl), 99), rel=1e-12)


def test_exact_predictor_sparse_against_dense(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "exact.gguf", predictor="exact", rank=8, seed=2)
    with si.Model(w.path, n_ctx=64, predictor_q8=False) as model:
        r = model.kl_divergence(random_text(model, 150, seed=6), n_ctx=32)
    assert r.mean_kl < 1e-9 and r.top1_agreement == 1.0
    audit = r.predictor
    assert audit.n_tokens == r.perplexity.n_windows * 31 and np.all(audit.fired > 0)
    np.testing.assert_array_equal(audit.recall, 1.0)
    np.testing.assert_array_equal(audit.precision, 1.0)


def reference_audit(w, windows):
    """Per layer (predicted, fired, both) over the windows' evaluated tokens (all but the last
    of each), from the dense float64 reference: a llama neuron fires when its gate is positive."""
    counts = 0
    for window in windows:
        ref = sref.SparseReference(w, sparse=False)
        ref.eval(window[:-1])
        gates = np.concatenate([g.ravel() for g in ref.gates])
        assert ref.threshold_margin() > MIN_MARGIN and np.abs(gates).min() / gates.std() > MIN_MARGIN, \
            "a score or a gate sits at its cut: change the seed"
        counts = counts + np.array([[m.sum(), (g > 0).sum(), (m & (g > 0)).sum()]
                                    for m, g in zip(ref.masks, ref.gates)])
    return counts


def test_random_predictor_recall_and_precision_equal_the_reference(tmp_path):
    # Few tokens (three windows of 24), so that no decision sits within MIN_MARGIN of its cut.
    w = sparsegen.write_pwri_model(tmp_path / "random.gguf", predictor="random", threshold=0.05, seed=1)
    with si.Model(w.path, n_ctx=64, predictor_q8=False) as model:
        text = random_text(model, 25, seed=9)
        r = model.kl_divergence(text, n_ctx=24)
        want = reference_audit(w, windows_of(model, text, 24))
    assert r.perplexity.n_windows == 3
    audit = r.predictor
    np.testing.assert_array_equal(np.stack([audit.predicted, audit.fired, audit.both], axis=1), want)
    np.testing.assert_array_equal(audit.recall, want[:, 2] / want[:, 1])
    np.testing.assert_array_equal(audit.precision, want[:, 2] / want[:, 0])
    assert np.all(audit.recall < 0.9) and r.mean_kl > 0.01 and r.top1_agreement < 1


def test_threshold_and_predictor_q8_reach_the_audit(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "t.gguf", predictor="random", seed=5)
    text = None
    predicted = {}
    for threshold, q8 in ((0.0, False), (0.3, False), (0.0, True)):
        with si.Model(w.path, n_ctx=64, sparse_threshold=threshold, predictor_q8=q8) as model:
            text = text or random_text(model, 100, seed=8)
            r = model.kl_divergence(text, n_ctx=32)
            predicted[threshold, q8] = r.predictor.predicted
            assert r.perplexity.perplexity == model.perplexity(text, 32).perplexity  # the same sparse run
    assert np.all(predicted[0.3, False] < predicted[0.0, False])
    assert not np.array_equal(predicted[0.0, True], predicted[0.0, False])  # 8-bit flips a few decisions


def test_kl_bad_input(tmp_path, tiny, tiny_model):
    text = random_text(tiny_model, 100, seed=9)
    with pytest.raises(errors.UnsupportedModelError, match="no predictors"):
        tiny_model.kl_divergence(text, "dense", n_ctx=32)
    with pytest.raises(ValueError, match="base must be 'dense', a Model or a Session"):
        tiny_model.kl_divergence(text, "dens", n_ctx=32)
    with pytest.raises(ValueError, match="same context window"):
        tiny_model.kl_divergence(text, tiny_model, n_ctx=32)
    bigger = ggufgen.write_llama_model(tmp_path / "v.gguf", n_vocab=330, seed=7)
    renamed = ggufgen.default_vocab(320)
    renamed[300] = ("renamed", 0.0, 1)
    other = ggufgen.write_llama_model(tmp_path / "r.gguf", vocab=renamed, seed=7)
    with si.Model(bigger.path, n_ctx=64) as base:
        with pytest.raises(ValueError, match="vocabularies differ.*320 tokens.*330"):
            tiny_model.kl_divergence(text, base, n_ctx=32)
    with si.Model(other.path, n_ctx=64) as base:
        with pytest.raises(ValueError, match="token 300 is"):
            tiny_model.kl_divergence(text, base, n_ctx=32)
    w = sparsegen.write_pwri_model(tmp_path / "p.gguf", seed=1)
    with si.Model(w.path, n_ctx=64, sparse=False) as dense:
        with pytest.raises(ValueError, match="runs dense"):
            dense.kl_divergence(text, n_ctx=32)


# ---- score ------------------------------------------------------------------------------------

CONTEXT = "the quick brown fox"
OPTIONS = [" jumps over", " sleeps", " is a test of many tokens in a row", "x"]


def test_score_equals_log_softmax_of_logits(tiny_model):
    context_ids = tiny_model.tokenize(CONTEXT)
    scores = tiny_model.score(CONTEXT, OPTIONS)
    assert len(scores) == len(OPTIONS)
    for option, s in zip(OPTIONS, scores):
        whole = tiny_model.tokenize(CONTEXT + option)
        assert list(s.tokens) == whole[len(context_ids):] and s.n_tokens == len(s.tokens) > 0
        logits = tiny_model.logits(whole[:-1])[len(context_ids) - 1:]
        logp = log_softmax(logits)[np.arange(len(s.tokens)), list(s.tokens)]
        assert s.logprob == pytest.approx(logp.sum(), rel=1e-12)
        assert s.mean_logprob == pytest.approx(logp.mean(), rel=1e-12)
        assert s.is_greedy == bool(np.all(logits.argmax(axis=1) == s.tokens))


def test_score_with_a_shared_prefix_equals_each_option_alone(tiny):
    with si.Model(tiny.path, n_ctx=64, n_threads=N_THREADS) as model:
        together = model.score(CONTEXT, OPTIONS)
        assert model.stats()["reused_tokens"] > 0
        again = model.score(CONTEXT, OPTIONS[::-1])[::-1]  # the context is still in the cache
        alone = []
        for option in OPTIONS:
            with model.session() as fresh:
                alone += fresh.score(CONTEXT, [option])
    assert together == alone == again


def test_score_moves_a_trailing_space_into_the_continuation(tiny_model):
    # lm-eval-harness's split: "fox " + "jumps" is scored as "fox" + " jumps"
    assert tiny_model.score(CONTEXT + " ", ["jumps"]) == tiny_model.score(CONTEXT, [" jumps"])


def test_score_scores_a_word_cut_in_two_whole():
    with si.Model(smollm2_path(), n_ctx=64, n_threads=N_THREADS) as model:
        cut = model.score("The capital of France is Par", ["is"])[0]
        whole = model.tokenize("The capital of France is Paris")
        assert whole[:-1] == model.tokenize("The capital of France is")  # " Paris" is one token
        assert cut.tokens == (whole[-1],)
        logp = log_softmax(model.logits(whole[:-1])[-1])
    assert cut.logprob == pytest.approx(logp[whole[-1]], rel=1e-12)


def test_score_on_a_sparse_file_runs_sparse(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "s.gguf", predictor="random", seed=4)
    with si.Model(w.path, n_ctx=64) as sparse, si.Model(w.path, n_ctx=64, sparse=False) as dense:
        s, d = sparse.score("hello", [" world"])[0], dense.score("hello", [" world"])[0]
        whole = sparse.tokenize("hello world")
        n = len(s.tokens)
        logp = log_softmax(sparse.logits(whole[:-1])[-n:])[np.arange(n), list(s.tokens)]
    assert s.logprob == pytest.approx(logp.sum(), rel=1e-12) and s.logprob != d.logprob


def test_score_bad_input(tiny_model):
    with pytest.raises(TypeError, match="list of str"):
        tiny_model.score(CONTEXT, " jumps")
    with pytest.raises(ValueError, match="must not be empty"):
        tiny_model.score(CONTEXT, [])
    with pytest.raises(ValueError, match="continuation 1 .* adds no tokens"):
        tiny_model.score(CONTEXT, [" a", ""])
    with pytest.raises(TypeError, match="continuation 0 must be a str"):
        tiny_model.score(CONTEXT, [3])
    with pytest.raises(si.ContextOverflowError, match="continuation 0"):
        tiny_model.score(CONTEXT, [random_text(tiny_model, 300, seed=1)])


# ---- multiple choice --------------------------------------------------------------------------

ITEMS = [
    {"context": "the quick brown", "options": [" fox", " dog", " a much longer option"], "answer": 0},
    {"context": "one two", "options": [" three", " four"], "answer": 1},
    {"context": "hello", "options": [" world", " there"], "answer": 1},
]


def test_evaluate_choices_by_sum_per_character_and_per_token(tiny_model):
    r = quality.evaluate_choices(tiny_model, ITEMS)
    picks = []
    for item in ITEMS:
        scores = tiny_model.score(item["context"], item["options"])
        sums = [s.logprob for s in scores]
        picks.append((int(np.argmax(sums)),
                      int(np.argmax([t / len(o) for t, o in zip(sums, item["options"])])),
                      int(np.argmax([s.mean_logprob for s in scores]))))
    right = np.array([[p == item["answer"] for p in pick] for pick, item in zip(picks, ITEMS)]).mean(axis=0)
    assert (r.acc, r.acc_norm, r.acc_per_token) == tuple(right)
    assert r.predictions == tuple(p[0] for p in picks) and r.n_items == 3
    assert r.standard_error(r.acc) == pytest.approx(math.sqrt(r.acc * (1 - r.acc) / 2))


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "options": [" b", " c"]', "not a JSON object"),
    ('["a"]', "expected a JSON object"),
    ('{"options": [" b", " c"], "answer": 0}', "missing context"),
    ('{"context": "a", "options": [" b"], "answer": 0}', "options must be a list of two or more non-empty strings"),
    ('{"context": "a", "options": [" b", ""], "answer": 0}', "options must be a list of two or more non-empty strings"),
    ('{"context": "a", "options": [" b", " c"], "answer": 2}', "answer must be the index of an option, 0 to 1"),
    ('{"context": "a", "options": [" b", " c"], "answer": true}', "answer must be"),
    ('{"context": 5, "options": [" b", " c"], "answer": 0}', "context must be a string"),
])
def test_read_choices_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"items.jsonl:3: {message}"):
        quality.read_choices(path)


def test_read_choices_refuses_an_empty_file_and_reads_a_good_one(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no items"):
        quality.read_choices(path)
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    assert quality.read_choices(path) == ITEMS


# ---- command line -----------------------------------------------------------------------------

def test_cli_perplexity_text_and_json(tiny, tiny_model, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(random_text(tiny_model, 200, seed=10), encoding="utf-8")
    expected = tiny_model.perplexity(text_file.read_text(encoding="utf-8"), n_ctx=32)
    run = run_cli("perplexity", "-m", tiny.path, "-f", text_file, "-c", 32, "-b", 5, "-t", 2)
    assert run.returncode == 0, run.stderr
    assert f"perplexity: {expected.perplexity:.4f} +/- {expected.standard_error:.5f} ({expected.n_windows} " \
           f"windows of 32 tokens, {expected.n_tokens} tokens scored" in run.stdout
    assert "tokens/s" in run.stdout and run.stderr == ""  # no progress line where stderr is not a terminal
    run = run_cli("perplexity", "-m", tiny.path, "-f", text_file, "-c", 32, "--chunks", 2, "--json")
    got = json.loads(run.stdout)
    assert got["window_perplexities"] == list(expected.window_perplexities[:2]) and got["sparse"] is False


def test_cli_kl_dense_and_file(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", predictor="random", threshold=0.05, seed=3)
    f16 = sparsegen.write_pwri_model(tmp_path / "m16.gguf", predictor="random", threshold=0.05, seed=3,
                                     weight_type="F16")
    text_file = tmp_path / "text.txt"
    with si.Model(w.path, n_ctx=32, predictor_q8=False, sparse_threshold=0.1) as model:
        text_file.write_text(random_text(model, 120, seed=11), encoding="utf-8")
        expected = model.kl_divergence(text_file.read_text(encoding="utf-8"), n_ctx=32)
    common = ["-f", text_file, "-c", 32, "-t", 2, "--predictor-q8", "off", "--sparse-threshold", 0.1]
    run = run_cli("perplexity", "-m", w.path, *common, "--kl-base", "dense", "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["sparse_threshold"] == pytest.approx(0.1) and got["predictor_q8_layers"] == 0
    assert got["kl"]["mean"] == expected.mean_kl and got["top1_agreement"] == expected.top1_agreement
    assert [layer["recall"] for layer in got["predictor"]["layers"]] == list(expected.predictor.recall)
    run = run_cli("perplexity", "-m", w.path, *common, "--kl-base", "dense")
    assert run.returncode == 0, run.stderr
    assert f"mean {expected.mean_kl:.6f}" in run.stdout and "recall" in run.stdout
    assert f"top-1 agreement: {expected.top1_agreement:.3%}" in run.stdout
    run = run_cli("perplexity", "-m", f16.path, *common, "--kl-base", w.path)
    assert run.returncode == 0, run.stderr
    assert f"({w.path})" in run.stdout and "recall" not in run.stdout


def test_cli_choose(tiny, tiny_model, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    expected = quality.evaluate_choices(tiny_model, ITEMS)
    run = run_cli("choose", "-m", tiny.path, "-f", items, "-t", 2)
    assert run.returncode == 0, run.stderr
    assert f"acc:           {expected.acc:.4f}" in run.stdout
    assert f"acc_norm:      {expected.acc_norm:.4f}" in run.stdout and "per character" in run.stdout
    assert f"acc_per_token: {expected.acc_per_token:.4f}" in run.stdout
    got = json.loads(run_cli("choose", "-m", tiny.path, "-f", items, "--json").stdout)
    assert (got["n_items"], got["acc"], got["predictions"]) == (3, expected.acc, list(expected.predictions))


def test_cli_options_reach_every_command(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", predictor="random", seed=3)
    text_file, items = tmp_path / "text.txt", tmp_path / "items.jsonl"
    text_file.write_text("hello world " * 40, encoding="utf-8")
    items.write_text(json.dumps(ITEMS[0]) + "\n", encoding="utf-8")
    for command, flags in (("perplexity", ["-f", text_file, "-c", 32]), ("choose", ["-f", items])):
        on = json.loads(run_cli(command, "-m", w.path, *flags, "--json", "--sparse-threshold", 0.25,
                                "--predictor-q8", "on").stdout)
        off = json.loads(run_cli(command, "-m", w.path, *flags, "--json", "--sparse", "off").stdout)
        assert (on["sparse"], on["sparse_threshold"], on["predictor_q8_layers"]) == (True, 0.25, 2)
        assert off["sparse"] is False


@pytest.mark.parametrize("args, message", [
    (["-f", "{empty}"], "the text is empty"),
    (["-f", "{short}"], "shorter than one window of n_ctx=512"),
    (["-f", "{short}", "-c", 2], "-c/--ctx-size must be at least 3"),
    (["-f", "{short}", "-c", 8, "--kl-base", "dens"], "--kl-base must be 'dense', a GGUF file or a repository"),
    (["-f", "{short}", "-c", 8, "--kl-base", "dense"], "no predictors"),
    (["-f", "{short}", "-c", 8, "--kl-base", "{other}"], "vocabularies differ"),
    (["-f", "{missing}"], "No such file"),
])
def test_cli_perplexity_errors(tiny, tmp_path, args, message):
    files = {"empty": tmp_path / "empty.txt", "short": tmp_path / "short.txt", "missing": tmp_path / "none.txt",
             "other": ggufgen.write_llama_model(tmp_path / "v.gguf", n_vocab=330, seed=7).path}
    files["empty"].write_text("", encoding="utf-8")
    files["short"].write_text("hello world " * 10, encoding="utf-8")
    run = run_cli("perplexity", "-m", tiny.path, *[str(a).format(**files) for a in args])
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert message in run.stderr


def test_cli_choose_error_names_the_line(tiny, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps(ITEMS[0]) + "\nnot json\n", encoding="utf-8")
    run = run_cli("choose", "-m", tiny.path, "-f", items)
    assert run.returncode == 1 and f"{items}:2: not a JSON object" in run.stderr and "Traceback" not in run.stderr


def test_progress_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from sparseinfer.cli import _Progress

    stream = Terminal()
    progress = _Progress("windows", stream)
    for done in (1, 2, 3, 4):
        progress(done, 4)
    lines = stream.getvalue().split("\r")[1:]
    assert lines[0].startswith("windows [######..................] 1/4")
    assert lines[-1].startswith("windows [########################] 4/4") and lines[-1].endswith("\n")
    quiet = io.StringIO()
    _Progress("windows", quiet)(1, 4)
    assert quiet.getvalue() == ""
