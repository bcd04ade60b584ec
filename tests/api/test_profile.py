"""Neuron firing counts (Session.set_neuron_counting), profile files and PowerInfer's
activation statistics.

Oracle for the counts: tests/support/sparse_reference.py, the float64 PowerInfer model,
recording each layer's gate and up pre-activations. A neuron fires for a token when its activation
relu(g) * u (relu(g) * relu(u) for bamboo) is nonzero, and on the sparse path only when
the predictor also marks it (score >= threshold). Where g, u or the score lies within
float noise of the boundary the engine may land on either side: such (token, neuron)
pairs are counted as "either", the engine's count must lie between the sure count and the
sure-or-either count, and the test requires them to be rare (so the bound stays tight).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

import ggufgen
import paths
import sparse_reference as sref
import sparsegen

import sparseinfer as si
from sparseinfer import _core
from sparseinfer import profile as prof

N_CTX = 64
NEAR = {"F32": 1e-4, "F16": 1e-3}  # x std: closer to 0 / the threshold is "either"


class RecordingReference(sref.SparseReference):
    """The reference, also keeping each layer's up pre-activations of the last eval."""

    def eval(self, tokens):
        self.ups = []
        return super().eval(tokens)

    def _mv(self, x, name):
        y = super()._mv(x, name)
        if name.endswith("ffn_up.weight"):
            self.ups.append(y)
        return y


def reference_fired(ref: RecordingReference, weight_type: str):
    """Per layer (sure, either): bool (n_tokens, n_ff) arrays for the last eval."""
    out = []
    for l in range(ref.n_layer):
        g, u = ref.gates[l], ref.ups[l]
        fired = (g > 0) & ((u > 0) if ref.relu_up else (u != 0))
        near = (np.abs(g) < NEAR[weight_type] * g.std()) | (np.abs(u) < NEAR[weight_type] * u.std())
        if ref.sparse:
            s = ref.scores[l]
            fired &= ref.masks[l]
            near |= np.abs(s - ref.threshold) < NEAR[weight_type] * s.std()
        out.append((fired & ~near, near))
    return out


def assert_counts_match(counts, layers_fired, what=""):
    """counts (n_layer, n_ff) against per-layer lists of (sure, either) token arrays."""
    assert counts.shape == (len(layers_fired), layers_fired[0][0][0].shape[1]), what
    for l, pieces in enumerate(layers_fired):
        sure = sum(s.sum(axis=0) for s, _ in pieces)
        either = sum(e.sum(axis=0) for _, e in pieces)
        total = sum(s.size for s, _ in pieces)
        assert sum(e.sum() for _, e in pieces) <= 0.005 * total, f"{what}: too many near-ties"
        low, high = sure, sure + either
        bad = np.nonzero((counts[l] < low) | (counts[l] > high))[0]
        assert bad.size == 0, (f"{what}: layer {l} neurons {bad[:8]}: engine {counts[l][bad[:8]]}, "
                               f"reference {low[bad[:8]]}..{high[bad[:8]]}")


def count_with_engine(path, token_batches, *, sparse, n_threads):
    session = _core.Session(_core.Model(str(path), predictor_q8=False), N_CTX, n_threads, sparse=sparse)
    assert not session.neuron_counting  # off by default
    session.set_neuron_counting(True)
    for batch in token_batches:
        session.eval(batch)
    return session.neuron_counts(), session.neuron_count_tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile-models")
    out = {}
    for arch in sparsegen.ARCHS:
        for weight_type in ("F32", "F16"):
            out[arch, weight_type] = sparsegen.write_pwri_model(
                d / f"{arch}-{weight_type}.gguf", arch=arch, weight_type=weight_type, n_layer=3,
                seed=11)
    return out


# ---- native counts against the reference ---------------------------------------------------


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("weight_type", ["F32", "F16"])
@pytest.mark.parametrize("arch", sparsegen.ARCHS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_counts_match_reference(models, arch, weight_type, n_threads, sparse):
    w = models[arch, weight_type]
    # A prompt, then single tokens (the decoding path) through one KV cache.
    toks = ggufgen.random_tokens(30, seed=3)
    batches = [toks[:24]] + [[t] for t in toks[24:]]
    ref = RecordingReference(w, sparse=sparse)
    pieces = [[] for _ in range(ref.n_layer)]
    for batch in batches:
        ref.eval(batch)
        for l, fired in enumerate(reference_fired(ref, weight_type)):
            pieces[l].append(fired)
    counts, tokens = count_with_engine(w.path, batches, sparse=sparse, n_threads=n_threads)
    assert tokens == len(toks)
    assert counts.dtype == np.int64
    assert_counts_match(counts, pieces, f"{arch} {weight_type} sparse={sparse} t={n_threads}")
    # ReLU models fire about half their neurons here; the sparse mask removes some of them.
    rate = counts.sum() / (tokens * counts.size / counts.shape[0] * counts.shape[0])
    assert 0.1 < rate < 0.7


def test_counts_do_not_depend_on_the_thread_count(models):
    w = models["llama", "F16"]
    toks = [ggufgen.random_tokens(40, seed=9)]
    first, _ = count_with_engine(w.path, toks, sparse=True, n_threads=1)
    for n_threads in (2, 4):
        again, _ = count_with_engine(w.path, toks, sparse=True, n_threads=n_threads)
        np.testing.assert_array_equal(again, first)


def test_counts_span_several_batches(tmp_path):
    # The engine evaluates at most 256 tokens per batch; counts are committed per batch.
    w = sparsegen.write_pwri_model(tmp_path / "long.gguf", n_layer=2, n_embd=32, n_ff=64,
                                   rank=16, seed=4)
    toks = ggufgen.random_tokens(300, seed=4)
    ref = RecordingReference(w, sparse=False)
    ref.eval(toks)
    session = _core.Session(_core.Model(w.path, predictor_q8=False), 320, 2)
    session.set_neuron_counting(True)
    session.eval(toks)
    assert session.neuron_count_tokens == 300
    assert_counts_match(session.neuron_counts(), [[f] for f in reference_fired(ref, "F32")])


def test_counting_is_opt_in_and_resets(models):
    w = models["llama", "F32"]
    toks = ggufgen.random_tokens(12, seed=1)
    session = _core.Session(_core.Model(w.path, predictor_q8=False), N_CTX, 2)
    session.eval(toks)
    assert session.neuron_count_tokens == 0
    assert not session.neuron_counts().any()
    session.reset()
    session.set_neuron_counting(True)
    session.eval(toks)
    once = session.neuron_counts()
    assert session.neuron_count_tokens == 12 and once.any()
    session.set_neuron_counting(False)  # keeps the counts, adds nothing
    session.reset()
    session.eval(toks)
    np.testing.assert_array_equal(session.neuron_counts(), once)
    session.set_neuron_counting(True)
    session.reset()
    session.eval(toks)  # the same sequence again: the same neurons fire
    np.testing.assert_array_equal(session.neuron_counts(), 2 * once)
    assert session.neuron_count_tokens == 24
    session.reset_neuron_counts()
    assert session.neuron_count_tokens == 0 and not session.neuron_counts().any()


def test_dense_silu_model_refuses_counting(tmp_path):
    w = ggufgen.write_llama_model(tmp_path / "dense.gguf", n_vocab=300, n_embd=32, n_layer=2,
                                  n_head=4, n_head_kv=2, n_ff=48, n_ctx=64, seed=1)
    session = _core.Session(_core.Model(str(w.path)), 32, 1)
    with pytest.raises(si.UnsupportedModelError, match="ReLU"):
        session.set_neuron_counting(True)
    assert not session.neuron_counting
    with pytest.raises(si.UnsupportedModelError, match="ReLU"):
        si.profile_model(str(w.path), "some text", n_ctx=16)


# ---- profile_model, the file, the CLI ------------------------------------------------------

TEXTS = ["the quick brown fox jumps over the lazy dog " * 6, "hello world, a second text " * 4]


def reference_profile(w, texts, n_ctx):
    """Counts by the reference: each text tokenized as the engine does, windows of n_ctx
    tokens, each a fresh sequence."""
    tokenizer = _core.Model(w.path).tokenizer
    pieces = [[] for _ in range(w.hparams["n_layer"])]
    tokens = 0
    for text in texts:
        ids = tokenizer.encode(text, add_bos=tokenizer.add_bos)
        for start in range(0, len(ids), n_ctx):
            ref = RecordingReference(w, sparse=False)
            ref.eval(ids[start:start + n_ctx])
            tokens += len(ids[start:start + n_ctx])
            for l, fired in enumerate(reference_fired(ref, "F32")):
                pieces[l].append(fired)
    return pieces, tokens


def test_profile_model_counts_windows_like_the_reference(models, tmp_path):
    w = models["bamboo", "F32"]
    n_ctx = 16
    pieces, tokens = reference_profile(w, TEXTS, n_ctx)
    assert tokens > 2 * n_ctx  # several windows
    out = tmp_path / "p.npz"
    result = si.profile_model(w.path, TEXTS, n_ctx=n_ctx, n_threads=2, output=out)
    assert result.tokens == tokens and result.n_ctx == n_ctx and result.source == "sparseinfer"
    assert_counts_match(np.stack(result.counts), pieces, "profile_model")
    # A native model and a path give the same profile.
    again = si.profile_model(_core.Model(w.path), TEXTS, n_ctx=n_ctx, n_threads=1)
    for a, b in zip(again.counts, result.counts):
        np.testing.assert_array_equal(a, b)
    loaded = si.load_profile(out, model_path=w.path)
    for a, b in zip(loaded.counts, result.counts):
        np.testing.assert_array_equal(a, b)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sparseinfer", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_a_profile_that_round_trips(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "cli.gguf", n_layer=2, seed=2)
    texts = []
    for i, text in enumerate(TEXTS):
        (tmp_path / f"t{i}.txt").write_text(text, encoding="utf-8")
        texts += ["--text", str(tmp_path / f"t{i}.txt")]
    info = run_cli("info", w.path)
    assert info.returncode == 0 and "profile:        none" in info.stdout, info.stdout
    result = run_cli("profile", w.path, *texts, "-c", "16", "-t", "2")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "cli.gguf.profile.npz"
    assert str(path) in result.stdout
    # The documented layout, read with NumPy alone.
    with np.load(path, allow_pickle=False) as data:
        assert str(data["format"]) == "sparseinfer.neuron-profile"
        assert int(data["version"]) == 1 and int(data["n_layer"]) == 2
        assert int(data["model_size"]) == os.path.getsize(w.path)
        assert str(data["model_name"]) == "cli.gguf"
        counts = [data[f"counts_{i}"] for i in range(2)]
        tokens = int(data["tokens"])
    pieces, want_tokens = reference_profile(w, TEXTS, 16)
    assert tokens == want_tokens
    assert_counts_match(np.stack(counts), pieces, "cli")
    info = run_cli("info", w.path)
    assert f"profile:        cli.gguf.profile.npz ({tokens} tokens)" in info.stdout
    # -o elsewhere
    other = tmp_path / "elsewhere.npz"
    assert run_cli("profile", w.path, *texts, "-c", "16", "-o", str(other)).returncode == 0
    assert si.load_profile(other, model_path=w.path).tokens == tokens


def test_cli_profile_errors_are_messages(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "e.gguf", n_layer=2, seed=2)
    result = run_cli("profile", w.path, "--text", str(tmp_path / "missing.txt"))
    assert result.returncode == 1 and "missing.txt" in result.stderr
    (tmp_path / "t.txt").write_text("text", encoding="utf-8")
    result = run_cli("profile", w.path, "--text", str(tmp_path / "t.txt"), "-c", "0")
    assert result.returncode == 1 and "ctx-size" in result.stderr


def test_stale_profile_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    w = sparsegen.write_pwri_model(path, n_layer=2, seed=2)
    made = si.profile_model(w.path, TEXTS[:1], n_ctx=16, output=prof.default_profile_path(path))
    made.check_model(path)
    sparsegen.write_pwri_model(path, n_layer=2, seed=3)  # same shape and size, other weights
    with pytest.raises(si.StaleProfileError, match="same size but different content"):
        si.load_profile(prof.default_profile_path(path), model_path=path)
    with pytest.raises(ValueError, match="profile the model again"):
        si.plan_placement(made, neuron_bytes=1, fixed_bytes=0, budget=10, model_path=path)
    sparsegen.write_pwri_model(path, n_layer=3, seed=2)  # another size
    with pytest.raises(si.StaleProfileError, match="a different size"):
        prof.find_profile(path)
    assert "stale" in run_cli("info", str(path)).stdout


# ---- broken and hostile profile files ------------------------------------------------------


def good_fields():
    return {"format": np.array(prof.FORMAT), "version": np.array(1), "source": np.array("sparseinfer"),
            "model_name": np.array("m.gguf"), "model_size": np.array(-1), "model_fingerprint": np.array(""),
            "tokens": np.array(10), "n_ctx": np.array(16), "n_layer": np.array(2),
            "counts_0": np.arange(8), "counts_1": np.arange(8)[::-1].copy()}


def write_npz(path, fields):
    with open(path, "wb") as f:
        np.savez(f, **fields)
    return path


def test_good_hand_written_profile_loads(tmp_path):
    p = si.load_profile(write_npz(tmp_path / "ok.npz", good_fields()))
    assert p.tokens == 10 and p.n_layer == 2
    np.testing.assert_array_equal(p.counts[1], np.arange(8)[::-1])
    np.testing.assert_allclose(p.frequencies()[0], np.arange(8) / 10)


@pytest.mark.parametrize("change, message", [
    ({"format": np.array("something else")}, "not a sparseinfer neuron profile"),
    ({"version": np.array(99)}, "version 99 is not supported"),
    ({"n_layer": np.array(3)}, "layer 2 has no counts"),
    ({"counts_1": np.array([1, -1])}, "negative counts"),
    ({"counts_0": np.array([11, 0])}, "fired 11 times in 10 tokens"),
    ({"counts_0": np.array([[1, 2]])}, "1-D"),
    ({"counts_0": np.array([np.nan])}, "NaN"),
    ({"tokens": np.array("ten")}, "'tokens' has the wrong type"),
    ({"n_layer": np.array(10**9)}, "out of range"),
])
def test_broken_profile_fields_are_refused(tmp_path, change, message):
    fields = good_fields()
    fields.update(change)
    with pytest.raises(si.ProfileError, match=message):
        si.load_profile(write_npz(tmp_path / "bad.npz", fields))


def test_missing_entry_is_refused(tmp_path):
    fields = good_fields()
    del fields["tokens"]
    with pytest.raises(si.ProfileError, match="no 'tokens' entry"):
        si.load_profile(write_npz(tmp_path / "bad.npz", fields))


class _Trap:
    """Unpickling this would create a file: proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_objects_in_a_profile_never_run(tmp_path):
    trap = tmp_path / "ran"
    fields = good_fields()
    fields["counts_0"] = np.array([_Trap(str(trap))], dtype=object)
    path = write_npz(tmp_path / "hostile.npz", fields)
    with pytest.raises(si.ProfileError, match="Python objects"):
        si.load_profile(path)
    assert not trap.exists()


def test_truncated_junk_and_oversized_files_are_refused(tmp_path):
    good = write_npz(tmp_path / "good.npz", good_fields())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(300))
    for path in (cut, junk, tmp_path / "absent.npz"):
        with pytest.raises(si.ProfileError, match=str(path.name)):
            si.load_profile(path)
    # A member whose header promises far more data than it holds.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (10**12,)})
    big = tmp_path / "big.npz"
    with zipfile.ZipFile(big, "w") as zf:
        for name, value in good_fields().items():
            if name == "counts_0":
                continue
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(name + ".npy", buf.getvalue())
        zf.writestr("counts_0.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(si.ProfileError, match="shorter than its shape"):
        si.load_profile(big)
    extra = tmp_path / "extra.npz"
    extra.write_bytes(good.read_bytes())
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("payload.py", "print('hi')")
    with pytest.raises(si.ProfileError, match="unexpected member"):
        si.load_profile(extra)


# ---- PowerInfer's activation_{i}.pt files, read without torch --------------------------------

STORAGES = {np.dtype("int64"): "LongStorage", np.dtype("float32"): "FloatStorage",
            np.dtype("float64"): "DoubleStorage", np.dtype("int32"): "IntStorage"}


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in `torch` and `torch._utils` modules so that the stdlib pickler writes the
    names torch.save() writes (torch is not a test dependency): the tensor is rebuilt by
    torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks),
    the storage is a persistent id ('storage', torch.<Type>Storage, key, location, numel)
    whose bytes are the zip member <archive>/data/<key>."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in set(STORAGES.values()):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Storage:
    def __init__(self, array):
        self.array = array


class _Tensor:
    def __init__(self, array, offset=0, size=None, stride=(1,)):
        self.storage, self.offset = _Storage(array), offset
        self.size = (len(array) - offset,) if size is None else size
        self.stride = stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return (rebuild, (self.storage, self.offset, self.size, self.stride, False,
                          collections.OrderedDict()))


def save_fake_tensor(path, tensor: _Tensor, *, byteorder="little", archive="archive",
                     storage_bytes=None):
    torch = sys.modules["torch"]

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                kind = getattr(torch, STORAGES[obj.array.dtype])
                return ("storage", kind, "0", "cpu", obj.array.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensor)
    data = tensor.storage.array.astype(tensor.storage.array.dtype.newbyteorder(
        "<" if byteorder == "little" else ">"))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{archive}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive}/byteorder", byteorder)
        zf.writestr(f"{archive}/data/0", data.tobytes() if storage_bytes is None else storage_bytes)
        zf.writestr(f"{archive}/version", "3\n")
    return path


def test_powerinfer_activation_folder_is_read_without_torch(tmp_path, fake_torch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "activation"
    folder.mkdir()
    layers = []
    for i in range(11):  # activation_10 must come after activation_9, not after activation_1
        dtype = [np.int64, np.float32, np.float64, np.int32][i % 4]
        counts = rng.integers(0, 1000, 40).astype(dtype)
        layers.append(counts)
        save_fake_tensor(folder / f"activation_{i}.pt", _Tensor(counts), archive=f"activation_{i}",
                         byteorder="big" if i == 3 else "little")
    (folder / "README.txt").write_text("ignored")
    loaded = prof.load_powerinfer_activations(folder)
    assert loaded.source == "powerinfer" and loaded.tokens == 0 and loaded.n_layer == 11
    for got, want in zip(loaded.counts, layers):
        np.testing.assert_array_equal(got, want.astype(np.float64))
    # A view into a larger storage (offset and stride) is honoured.
    base = np.arange(20, dtype=np.int64)
    save_fake_tensor(tmp_path / "view.pt", _Tensor(base, offset=3, size=(5,), stride=(2,)))
    np.testing.assert_array_equal(prof.read_torch_tensor(tmp_path / "view.pt"), base[3:13:2])
    # find_profile falls back to the folder next to a model that has no profile of its own.
    model = tmp_path / "m.gguf"
    model.write_bytes(b"PWRI")
    assert prof.find_profile(model).n_layer == 11
    # ... and the plan accepts float counts
    plan = si.plan_placement(loaded, neuron_bytes=10, fixed_bytes=0, budget=10 * 40 * 11 // 2)
    assert sum(plan.n_hot) == 40 * 11 // 2


def hostile_pickle(trap) -> bytes:
    # GLOBAL os.system, then REDUCE with one string argument: runs a command when loaded
    # by an unrestricted unpickler.
    command = f"touch {trap}".encode()
    return (b"\x80\x02cos\nsystem\nq\x00X" + len(command).to_bytes(4, "little") + command
            + b"q\x01\x85q\x02Rq\x03.")


def test_hostile_torch_pickles_never_run(tmp_path):
    trap = tmp_path / "ran"
    assert pickle.loads.__module__  # the payload is a real exploit: check it with plain pickle
    sanity = tmp_path / "sanity"
    pickle.loads(hostile_pickle(sanity))
    assert sanity.exists()
    folder = tmp_path / "activation"
    folder.mkdir()
    with zipfile.ZipFile(folder / "activation_0.pt", "w") as zf:
        zf.writestr("archive/data.pkl", hostile_pickle(trap))
    with pytest.raises(si.ProfileError, match="refusing to load os.system"):
        prof.load_powerinfer_activations(folder)
    assert not trap.exists()


def test_broken_powerinfer_files_are_refused(tmp_path, fake_torch):
    folder = tmp_path / "activation"
    folder.mkdir()
    with pytest.raises(si.ProfileError, match="no activation_N.pt"):
        prof.load_powerinfer_activations(folder)
    save_fake_tensor(folder / "activation_0.pt", _Tensor(np.arange(8)))
    save_fake_tensor(folder / "activation_2.pt", _Tensor(np.arange(8)))
    with pytest.raises(si.ProfileError, match=r"layers \[1\] are missing"):
        prof.load_powerinfer_activations(folder)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps([1, 2, 3]))  # a bare pickle, not a torch zip
    with pytest.raises(si.ProfileError, match="not a torch zip file"):
        prof.read_torch_tensor(bad)
    save_fake_tensor(bad, _Tensor(np.arange(8), offset=4, size=(8,)))  # reaches past the end
    with pytest.raises(si.ProfileError, match="past the end"):
        prof.read_torch_tensor(bad)
    save_fake_tensor(bad, _Tensor(np.arange(8), size=(10**12,), stride=(0,)))  # a memory bomb
    with pytest.raises(si.ProfileError, match="larger than its storage"):
        prof.read_torch_tensor(bad)
    save_fake_tensor(bad, _Tensor(np.arange(8)), storage_bytes=b"\0" * 8)  # storage too short
    with pytest.raises(si.ProfileError, match="does not hold 8 elements"):
        prof.read_torch_tensor(bad)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(save_fake_tensor(tmp_path / "whole.pt", _Tensor(np.arange(8))).read_bytes()[:100])
    with pytest.raises(si.ProfileError):
        prof.read_torch_tensor(cut)
    with pytest.raises(si.ProfileError, match="no PowerInfer activation folder"):
        prof.load_powerinfer_activations(tmp_path / "nowhere")


# Files written by real torch 2.13 (`pip install torch==2.13.0`), with what torch.load gives
# for them in expected.npz:
#   torch.manual_seed(0)
#   activation_0.pt, activation_2.pt: torch.randint(0, 1000, (96,), dtype=torch.int64)
#   activation_1.pt: torch.rand(96) * 100 (float32)
#   view.pt: torch.arange(200, dtype=torch.int32)[10:106] (a view into a larger storage)
TORCH_SAVED = os.path.join(paths.DATA, "torch_saved")


def test_files_saved_by_real_torch_read_as_torch_loads_them():
    expected = np.load(os.path.join(TORCH_SAVED, "expected.npz"))
    loaded = prof.load_powerinfer_activations(os.path.join(TORCH_SAVED, "activation"))
    assert len(loaded.counts) == 3
    for i, counts in enumerate(loaded.counts):
        np.testing.assert_array_equal(counts, expected[f"activation_{i}"])
    view = prof.read_torch_tensor(os.path.join(TORCH_SAVED, "view.pt"))
    assert view.dtype == np.int32
    np.testing.assert_array_equal(view, expected["view"])
