"""The public C++ API (cpp/include/sparseinfer/sparseinfer.h), as an application embeds it:
the engine built with CMake without Python (SPARSEINFER_PYTHON=OFF) and linked into
cpp/tests/embed_check.cpp, whose output must equal the Python package's on the same files
(tokens, logits bit for bit, greedy text, errors, cancel)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import ggufgen
import sparsegen
from paths import ROOT

import sparseinfer
from sparseinfer import _core


# The build and the program are not instrumented: no sanitizer runtime preloaded into them
# (tools/run_sanitized_tests.sh preloads one into the test process).
ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def tool(name, package_dir):
    """A build tool from PATH, else from its PyPI package (the test extra installs both)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        module = __import__(name)
    except ImportError:
        pytest.fail(f"{name} is needed to build the C++ embedding check: pip install {name}")
    return os.path.join(getattr(module, package_dir), name)


@pytest.fixture(scope="module")
def embed_check(tmp_path_factory):
    build = tmp_path_factory.mktemp("embed-build")
    cmake, ninja = tool("cmake", "CMAKE_BIN_DIR"), tool("ninja", "BIN_DIR")
    configure = subprocess.run(
        [cmake, "-S", ROOT, "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
         "-DSPARSEINFER_PYTHON=OFF", "-DSPARSEINFER_EMBED_CHECK=ON"],
        capture_output=True, text=True, env=ENV, timeout=600)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    proc = subprocess.run([cmake, "--build", str(build), "--target", "embed_check"], capture_output=True,
                          text=True, env=ENV, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(build / "embed_check")


def run(program, path, *args):
    proc = subprocess.run([program, str(path), *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


@pytest.mark.parametrize("kind", ["dense", "sparse", "sparse, threshold 0.3"])
def test_cpp_api_matches_python(embed_check, tmp_path, kind):
    path = tmp_path / "m.gguf"
    if kind == "dense":
        ggufgen.write_llama_model(path, weight_type="Q4_0")
    else:
        sparsegen.write_pwri_model(path, weight_type="Q4_0")
    threshold = 0.3 if kind.endswith("0.3") else None
    args = [] if kind == "dense" else ["sparse"] + ([str(threshold)] if threshold is not None else [])
    out = run(embed_check, path, *args)
    info = _core.read_gguf_info(str(path))
    assert out["info"] == f"{info['metadata']['general.architecture']} {len(info['tensors'])} {int(info['powerinfer'])}"
    tokenizer = _core.Tokenizer(str(path))
    assert out["vocab"] == f"{tokenizer.n_vocab} {tokenizer.bos_id}"
    costs = _core.device_costs(_core.Model(str(path), sparse_threshold=threshold, prepare_weights=False), 64)
    assert out["costs"] == f"{costs['batch_bytes']} {costs['shared_bytes']}"
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=2, sparse=kind != "dense",
                           sparse_threshold=threshold) as m:
        ids = m.tokenize("Hello world, hello!")
        assert [int(t) for t in out["tokens"].split()] == ids
        want = m.logits(ids)[-1, :5]
        np.testing.assert_array_equal(np.array(out["logits"].split(), dtype=np.float32), want)
        text = m.generate("Once upon a time", max_tokens=8, temperature=0)
    assert bytes.fromhex(out["text"]).decode("utf-8", errors="replace") == text
    assert out["streamed"] == "same"
    assert bytes.fromhex(out["sampled"]) == _sampled_text(path, kind != "dense", threshold).encode()
    assert "is outside the vocabulary" in out["error"]
    assert out["cancelled"] == "yes"
    n_past, after = out["n_past"].split()
    assert n_past == after  # neither the bad id nor the cancelled eval changed the sequence


def _sampled_text(path, sparse, threshold):
    """Eight tokens drawn with seed 42 after "Once upon a time", through the Python bindings."""
    model = _core.Model(str(path), sparse_threshold=threshold)
    session = _core.Session(model, 64, 2, sparse)
    sampler = _core.Sampler(seed=42)
    decoder = _core.StreamDecoder(model.tokenizer)
    prompt = model.tokenizer.encode("Once upon a time", add_bos=model.tokenizer.add_bos)
    for token in prompt:
        sampler.accept(token)
    session.eval(prompt)
    text = ""
    for _ in range(8):
        token = session.sample(sampler)
        sampler.accept(token)
        text += decoder.feed(token)
        session.eval([token])
    return text + decoder.flush()


def test_cpp_api_reports_a_broken_file(embed_check, tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 10)
    proc = subprocess.run([embed_check, str(path)], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("failed ") and "broken.gguf" in proc.stdout
