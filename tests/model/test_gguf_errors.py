"""Malformed GGUF files must raise a sparseinfer error naming the file, never crash.

Every broken file is generated here with raw struct packing (tests/support/ggufgen.py's raw
packer) and opened in a child interpreter, so that a crash (segfault, abort, hang) fails the
test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

import ggufgen
from ggufgen import RawTensor, encode_value, gguf_bytes, pack_str

import sparseinfer.errors
from sparseinfer import _core

FORMAT = ("ModelFormatError",)
FORMAT_OR_UNSUPPORTED = ("ModelFormatError", "UnsupportedModelError")

_CHILD = r"""
import json, sys
jobs = json.load(open(sys.argv[1]))
try:
    import sparseinfer, sparseinfer._core as core
except Exception as e:  # the package itself is broken: report it as such
    print("IMPORT " + json.dumps([type(e).__name__, str(e)]), flush=True); sys.exit(0)
def attempt(out, name, fn):
    try:
        r = fn()
        out[name] = ["OK", repr(type(r))]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e), [c.__name__ for c in type(e).__mro__]]
for path, what in jobs:
    print("START " + json.dumps(path), flush=True)
    out = {}
    if what in ("info", "both"):
        attempt(out, "info", lambda: core.read_gguf_info(path))
    if what in ("model", "both"):
        attempt(out, "model", lambda: sparseinfer.Model(path, n_ctx=32, n_threads=1))
    print("RESULT " + json.dumps([path, out]), flush=True)
"""


def _run_children(jobs, tmpdir, timeout=120):
    """Runs [(path, what)] in child interpreters, as few as possible: one for all, and when
    one dies (crash, hang), the file it was on is marked and the rest go to a new child.
    Returns {path: {'info'|'model': [cls, msg, mro]} or {'crash': text}}."""
    results = {}
    todo = list(jobs)
    n = 0
    while todo:
        n += 1
        jf = os.path.join(str(tmpdir), f"jobs{n}.json")
        with open(jf, "w") as f:
            json.dump(todo, f)
        try:
            p = subprocess.run([sys.executable, "-c", _CHILD, jf], capture_output=True, text=True,
                               timeout=timeout)
            stdout, stderr, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            stdout = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr, rc = "timeout", "timeout"
        current = None
        for line in stdout.splitlines():
            if line.startswith("IMPORT "):
                pytest.fail(f"import sparseinfer failed: {line[7:]}")
            if line.startswith("START "):
                current = json.loads(line[6:])
            elif line.startswith("RESULT "):
                path, out = json.loads(line[7:])
                results[path] = out
                current = None
        todo = [j for j in todo if j[0] not in results]
        if todo:
            if current is None:  # died before starting anything
                current = todo[0][0]
            results[current] = {"crash": f"rc={rc}\nstderr: {stderr[-2000:]}"}
            todo = [j for j in todo if j[0] != current]
    return results


def open_in_child(path, what="both"):
    """Opens `path` in a child interpreter; returns {'info': [cls, msg, mro], 'model': ...}.
    Fails the test if the child crashes, hangs or prints no result."""
    res = _run_children([(str(path), what)], os.path.dirname(str(path)))[str(path)]
    if "crash" in res:
        pytest.fail(f"child crashed opening {path}: {res['crash']}")
    return res


def check_error(path, res, classes):
    if "crash" in res:
        pytest.fail(f"child crashed opening {path}: {res['crash']}")
    for name, r in res.items():
        cls, msg = r[0], r[1]
        assert cls != "OK", f"{name}: {path} was accepted"
        assert cls in classes, f"{name}: expected one of {classes}, got {cls}: {msg}"
        mro = r[2]
        assert "ValueError" in mro and "SparseInferError" in mro, mro
        assert str(path) in msg, f"{name}: message does not name the file: {msg!r}"
    return res


def expect_error(path, classes, what="both"):
    return check_error(path, open_in_child(path, what), classes)


# ---------------------------------------------------------------------------------------
# A small valid file and its section boundaries

def _base_parts(alignment_kv=None):
    kvs = [
        ("general.architecture", encode_value("llama", VT.STRING)),
        ("general.name", encode_value("broken-file-corpus", VT.STRING)),
        ("test.array", encode_value([1, 2, 3, 4], VT.ARRAY, VT.UINT32)),
    ]
    if alignment_kv is not None:
        kvs.append(("general.alignment", alignment_kv))
    a = np.arange(8, dtype=np.float32)
    b = np.arange(64, dtype=np.float32) / 7
    tensors = [RawTensor("a.weight", (8,), int(QT.F32), 0),
               RawTensor("b.weight", (32, 2), int(QT.F32), 32)]
    data = a.tobytes() + b"\0" * (32 - a.nbytes) + b.tobytes()
    return kvs, tensors, data


def base_file(**overrides) -> bytes:
    kvs, tensors, data = _base_parts()
    args = dict(kvs=kvs, tensors=tensors, data=data)
    args.update(overrides)
    return gguf_bytes(**args)


def boundaries():
    """Byte offsets inside the base file: {name: offset}."""
    kvs, tensors, data = _base_parts()
    off = {"magic": 2, "version": 6, "n_tensors": 12, "n_kv": 20}
    pos = 24
    k0, v0 = kvs[0]
    off["kv_key_len"] = pos + 4                       # inside the u64 key length
    off["kv_key"] = pos + 8 + 5                       # inside the key bytes
    off["kv_type"] = pos + 8 + len(k0) + 2            # inside the u32 value type
    off["kv_value"] = pos + 8 + len(k0) + 4 + 8 + 2   # inside the string value
    pos += 8 + len(k0) + len(v0)
    k2, v2 = kvs[1]
    pos += 8 + len(k2) + len(v2)
    k3, v3 = kvs[2]
    off["kv_array"] = pos + 8 + len(k3) + 4 + 4 + 8 + 6  # inside the array elements
    pos += 8 + len(k3) + len(v3)
    t0 = ggufgen.tensor_info_bytes(tensors[0])
    off["ti_name"] = pos + 10
    off["ti_dims"] = pos + 8 + len("a.weight") + 4 + 3
    off["ti_offset"] = pos + len(t0) - 3
    pos += len(t0)
    pos += len(ggufgen.tensor_info_bytes(tensors[1]))
    off["after_infos"] = pos  # before the padding
    data_start = pos + ((-pos) % 32)
    off["data_first"] = data_start + 10
    off["data_last"] = data_start + 32 + 64 * 4 - 1  # one byte short
    return off


def test_base_file_is_valid(tmp_path):
    """The corpus's parent file must itself be valid (else the corpus proves nothing)."""
    p = tmp_path / "ok.gguf"
    p.write_bytes(base_file())
    r = gguf.GGUFReader(str(p))
    assert [t.name for t in r.tensors] == ["a.weight", "b.weight"]
    assert np.array_equal(np.asarray(r.tensors[1].data).ravel(), np.arange(64, dtype=np.float32) / 7)
    res = open_in_child(p, "info")
    assert res["info"][0] == "OK", res


@pytest.mark.parametrize("where", sorted(boundaries()))
def test_truncated(corpus, where):
    path, res, classes = corpus["trunc_" + where]
    check_error(path, res, classes)


def _u64(x):
    return struct.pack("<Q", x)


def _cases():
    kvs, tensors, data = _base_parts()
    blob = base_file()
    c = {}
    c["empty"] = (b"", FORMAT)
    c["wrong_magic"] = (b"GGUX" + blob[4:], FORMAT)
    c["text_file"] = (b"hello, this is not a model\n" * 4, FORMAT)
    c["version_1"] = (base_file(version=1), FORMAT_OR_UNSUPPORTED)
    c["version_99"] = (base_file(version=99), FORMAT_OR_UNSUPPORTED)
    c["version_0"] = (base_file(version=0), FORMAT_OR_UNSUPPORTED)
    c["tensor_count_2^63"] = (base_file(n_tensors=2**63), FORMAT)
    c["tensor_count_2^64-1"] = (base_file(n_tensors=2**64 - 1), FORMAT)
    # one tensor info more than present, and the file ends after the infos
    c["tensor_count_plus_one"] = (base_file(n_tensors=3, data=b"", pad=False), FORMAT)
    c["kv_count_huge"] = (base_file(n_kv=2**62), FORMAT)
    c["kv_count_plus_one"] = (base_file(n_kv=len(kvs) + 1, tensors=[], data=b"", pad=False), FORMAT)
    # a key whose length field is huge
    huge_key = gguf_bytes(kvs=[], tensors=[], n_kv=1) + _u64(2**63 - 5) + b"abc"
    c["key_length_huge"] = (huge_key, FORMAT)
    c["key_length_2^64-1"] = (gguf_bytes(kvs=[], tensors=[], n_kv=1) + _u64(2**64 - 1) + b"abc", FORMAT)
    # a string value whose length is huge
    c["string_value_length_huge"] = (base_file(kvs=kvs + [("x.s", struct.pack("<I", int(VT.STRING)) + _u64(2**62) + b"ab")]), FORMAT)
    # array counts
    c["array_count_huge_u32"] = (base_file(kvs=kvs + [("x.a", struct.pack("<II", int(VT.ARRAY), int(VT.UINT32)) + _u64(2**61) + b"\0" * 16)]), FORMAT)
    c["array_count_2^64-1_u8"] = (base_file(kvs=kvs + [("x.a", struct.pack("<II", int(VT.ARRAY), int(VT.UINT8)) + _u64(2**64 - 1) + b"\0" * 16)]), FORMAT)
    c["array_count_huge_strings"] = (base_file(kvs=kvs + [("x.a", struct.pack("<II", int(VT.ARRAY), int(VT.STRING)) + _u64(2**60) + pack_str("a") * 3)]), FORMAT)
    c["array_count_huge_nested"] = (base_file(kvs=kvs + [("x.a", struct.pack("<II", int(VT.ARRAY), int(VT.ARRAY)) + _u64(2**60) + b"\0" * 32)]), FORMAT)
    # nested arrays 100000 levels deep: must be refused, not overflow the stack
    deep = struct.pack("<I", int(VT.ARRAY)) + (struct.pack("<I", int(VT.ARRAY)) + _u64(1)) * 100000 + struct.pack("<I", int(VT.UINT8)) + _u64(0)
    c["array_nested_100000_deep"] = (base_file(kvs=kvs + [("x.deep", deep)]), FORMAT)
    c["unknown_value_type_13"] = (base_file(kvs=kvs + [("x.t", struct.pack("<I", 13) + b"\0" * 8)]), FORMAT)
    c["unknown_value_type_2^31"] = (base_file(kvs=kvs + [("x.t", struct.pack("<I", 2**31) + b"\0" * 8)]), FORMAT)
    c["unknown_array_elem_type"] = (base_file(kvs=kvs + [("x.t", struct.pack("<II", int(VT.ARRAY), 77) + _u64(1) + b"\0" * 8)]), FORMAT)
    c["duplicate_key"] = (base_file(kvs=kvs + [("general.name", encode_value("again", VT.STRING))]), FORMAT)
    dup_t = [tensors[0], RawTensor("a.weight", (32, 2), int(QT.F32), 32)]
    c["duplicate_tensor_name"] = (base_file(tensors=dup_t), FORMAT)
    c["n_dims_5"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2, 1, 1, 1), int(QT.F32), 32)]), FORMAT)
    c["n_dims_2^32-1"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), int(QT.F32), 32)]).replace(
        pack_str("b.weight") + struct.pack("<I", 2), pack_str("b.weight") + struct.pack("<I", 2**32 - 1)), FORMAT)
    c["dims_overflow_product"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (2**32, 2**32, 2**8), int(QT.F32), 32)]), FORMAT)
    c["dim_2^63"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (2**63, 1), int(QT.F32), 32)]), FORMAT)
    c["offset_past_end"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), int(QT.F32), 1 << 20)]), FORMAT)
    c["offset_2^64-32"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), int(QT.F32), 2**64 - 32)]), FORMAT)
    c["offset_unaligned"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), int(QT.F32), 4)]), FORMAT)
    c["data_overlaps_end"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 3), int(QT.F32), 32)]), FORMAT)
    c["data_missing_entirely"] = (base_file(data=b""), FORMAT)
    c["unknown_ggml_type_999"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), 999, 32)]), FORMAT_OR_UNSUPPORTED)
    c["removed_ggml_type_4"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (32, 2), 4, 32)]), FORMAT_OR_UNSUPPORTED)
    c["q4_0_row_not_block_multiple"] = (base_file(tensors=[tensors[0], RawTensor("b.weight", (33, 2), int(QT.Q4_0), 32)]), FORMAT)
    for name, val in [("alignment_0", encode_value(0, VT.UINT32)),
                      ("alignment_3", encode_value(3, VT.UINT32)),
                      ("alignment_48", encode_value(48, VT.UINT32)),
                      ("alignment_negative", encode_value(-32, VT.INT32)),
                      ("alignment_string", encode_value("32", VT.STRING)),
                      ("alignment_2^63", encode_value(2**63, VT.UINT64))]:
        c[name] = (base_file(kvs=kvs + [("general.alignment", val)]), FORMAT)
    return c


CASES = _cases()


def test_corpus_size():
    assert len(CASES) + len(boundaries()) >= 15


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Writes every broken file and opens them all with read_gguf_info in one child
    (a new child after any crash). {case: (path, result, expected classes)}."""
    d = tmp_path_factory.mktemp("corpus")
    files = {}
    blob = base_file()
    for where, off in boundaries().items():
        assert 0 < off < len(blob)
        files["trunc_" + where] = (blob[:off], FORMAT)
    files.update(CASES)
    jobs, paths = [], {}
    for name, (data, classes) in files.items():
        p = d / f"{name}.gguf"
        p.write_bytes(data)
        paths[name] = str(p)
        jobs.append((str(p), "info"))
    results = _run_children(jobs, d)
    return {name: (paths[name], results[paths[name]], files[name][1]) for name in files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_file(corpus, name):
    path, res, classes = corpus[name]
    check_error(path, res, classes)


@pytest.mark.parametrize("name", ["empty", "wrong_magic", "tensor_count_2^63", "offset_past_end",
                                  "alignment_0", "array_nested_100000_deep"])
def test_broken_file_model(tmp_path, name):
    """sparseinfer.Model reports the same errors as the header reader."""
    blob, classes = CASES[name]
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(blob)
    expect_error(p, classes, "model")


def test_missing_file(tmp_path):
    p = tmp_path / "does_not_exist.gguf"
    res = open_in_child(p, "both")
    for name, r in res.items():
        assert "OSError" in r[2], r
        assert str(p) in r[1], r


def test_directory(tmp_path):
    res = open_in_child(tmp_path, "both")
    for name, r in res.items():
        assert r[0] != "OK", r
        assert "OSError" in r[2] or "ValueError" in r[2], r
        assert str(tmp_path) in r[1], r


# ---------------------------------------------------------------------------------------
# Valid GGUF, wrong model

MODEL_BROKEN = {
    "missing_attn_q": (dict(skip_tensors=["blk.1.attn_q.weight"]), FORMAT),
    "missing_token_embd": (dict(skip_tensors=["token_embd.weight"]), FORMAT),
    "wrong_shape_ffn_up": (dict(reshape_tensors={"blk.0.ffn_up.weight": (64, 96)}), FORMAT),
    "missing_embedding_length": (dict(skip_keys=["llama.embedding_length"]), FORMAT),
    "missing_architecture": (dict(skip_keys=["general.architecture"]), FORMAT),
    "unknown_architecture": (dict(arch="gpt-17"), ("UnsupportedModelError",)),
    "head_count_not_divisor": (dict(extra_kv={"llama.attention.head_count": 3}), FORMAT),
    "missing_vocab": (dict(skip_keys=["tokenizer.ggml.tokens"]), FORMAT),
}


@pytest.mark.parametrize("name", sorted(MODEL_BROKEN))
def test_broken_model(tmp_path, name):
    kw, classes = MODEL_BROKEN[name]
    p = tmp_path / f"{name}.gguf"
    ggufgen.write_llama_model(p, n_layer=2, **kw)
    expect_error(p, classes, "model")


# ---------------------------------------------------------------------------------------
# Positive: every metadata value type is read back exactly

def _norm(v):
    if isinstance(v, (bytes, bytearray)):
        return list(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def test_read_gguf_info_all_value_types(tmp_path):
    import sparseinfer._core as core

    p = tmp_path / "all_types.gguf"
    kvs = ggufgen.write_all_types_file(p)
    info = core.read_gguf_info(str(p))
    assert info["version"] == 3
    assert info["powerinfer"] is False
    md = info["metadata"]
    reader = gguf.GGUFReader(str(p))
    for key, value, vtype, sub in kvs:
        assert key in md, key
        got = _norm(md[key])
        # expected value as stored (f32 rounding for FLOAT32)
        if vtype == VT.FLOAT32:
            exp = float(np.float32(value))
        elif vtype == VT.ARRAY and sub == VT.FLOAT32:
            exp = [float(np.float32(x)) for x in value]
        else:
            exp = value
        assert got == exp, (key, got, exp)
        # types survive: bools stay bools, ints stay ints, floats stay floats
        if vtype == VT.BOOL:
            assert isinstance(md[key], bool), key
        elif vtype in (VT.FLOAT32, VT.FLOAT64):
            assert isinstance(md[key], float), key
        elif vtype in (VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64):
            assert isinstance(md[key], int) and not isinstance(md[key], bool), key
        elif vtype == VT.STRING:
            assert isinstance(md[key], str), key
        # and agree with gguf.GGUFReader where it can tell (it flattens nested arrays)
        if sub != VT.ARRAY:
            rv = reader.fields[key].contents()
            if vtype == VT.FLOAT32:
                rv = float(np.float32(rv))
            elif vtype == VT.ARRAY and sub == VT.FLOAT32:
                rv = [float(np.float32(x)) for x in rv]
            assert got == _norm(rv), (key, got, rv)
    tensors = info["tensors"]
    assert len(tensors) == 1
    name, type_name, shape = tensors[0]
    assert (name, type_name, tuple(shape)) == ("t.weight", "F32", (8,))


def test_read_gguf_info_model_file(tmp_path):
    """Tensor index of a generated model agrees with gguf.GGUFReader (names, types, shapes
    in ggml order: ne0, the row length, first)."""
    import sparseinfer._core as core

    p = tmp_path / "m.gguf"
    ggufgen.write_llama_model(p, weight_type="Q4_1", n_layer=1)
    info = core.read_gguf_info(str(p))
    reader = gguf.GGUFReader(str(p))
    exp = [(t.name, QT(t.tensor_type).name, tuple(int(x) for x in t.shape)) for t in reader.tensors]
    got = [(n, ty, tuple(s)) for n, ty, s in info["tensors"]]
    assert got == exp
    assert info["metadata"]["llama.embedding_length"] == 64
    assert info["metadata"]["tokenizer.ggml.tokens"][3] == "<0x00>"
    assert info["metadata"]["general.architecture"] == "llama"


def test_powerinfer_magic_flag(tmp_path):
    import sparseinfer._core as core

    p = tmp_path / "pwri.gguf"
    p.write_bytes(b"PWRI" + base_file()[4:])
    assert core.read_gguf_info(str(p))["powerinfer"] is True


def test_nested_arrays_valid(tmp_path):
    """Nested arrays (array of arrays, including empty and string arrays) load fine."""
    import sparseinfer._core as core

    kvs, tensors, data = _base_parts()
    nested = encode_value([[1, 2], [], [3]], VT.ARRAY, VT.ARRAY)
    nested_str = struct.pack("<II", int(VT.ARRAY), int(VT.ARRAY)) + _u64(2) + \
        ggufgen.encode_payload(["x", "yz"], VT.ARRAY, VT.STRING) + ggufgen.encode_payload([], VT.ARRAY, VT.STRING)
    p = tmp_path / "nested.gguf"
    p.write_bytes(base_file(kvs=kvs + [("x.nested", nested), ("x.nested_str", nested_str)]))
    res = open_in_child(p, "info")
    assert res["info"][0] == "OK", res
    md = core.read_gguf_info(str(p))["metadata"]
    assert _norm(md["x.nested"]) == [[1, 2], [], [3]]
    assert _norm(md["x.nested_str"]) == [["x", "yz"], []]


@pytest.mark.parametrize("arch, message", [
    ("gpt-17", "architecture 'gpt-17' is not supported (supported: llama, bamboo, minicpm, qwen2, qwen3, gemma3, falcon, opt)"),
    ("bamboo", "architecture 'bamboo' runs from PowerInfer files (magic PWRI) only, and this file is not one"),
])
def test_an_architecture_the_engine_cannot_run_is_named(tmp_path, arch, message):
    p = tmp_path / "m.gguf"
    ggufgen.write_llama_model(p, n_layer=2, arch=arch)
    with pytest.raises(sparseinfer.errors.UnsupportedModelError, match=re.escape(message)):
        _core.Model(str(p))
