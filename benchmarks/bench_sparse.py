#!/usr/bin/env python3
"""Sparse vs dense decode speed on a synthetic model of MiniCPM-S-1B's shape.

Builds (once, cached under ~/.cache/sparseinfer-bench or --cache-dir) two files with the
same random weights:
  - a PowerInfer file (magic PWRI): ffn_gate / ffn_up / ffn_down_t per layer and a
    rank --rank predictor (fc1, fc2; F16 by default, as in published PowerInfer files)
    tuned so that about --active of the FFN neurons are predicted active;
  - a plain llama GGUF: ffn_down = ffn_down_t.T, no predictor. Engines run it with SiLU
    (a plain llama file says nothing about ReLU); that changes no byte read per token,
    so it is fine for timing.
Then it times token-by-token decoding (and the prompt) for
  sparseinfer sparse   (PWRI file, sparse=True; predictors as the default predictor_q8="auto"
                        makes them, and again as stored, predictor_q8=False)
  sparseinfer dense    (PWRI file, sparse=False: dense ReLU over every neuron)
  llama-cpp-python     (the plain GGUF; skipped when not installed or with --no-llama)
  PowerInfer           (--powerinfer PATH: its `main`, built by hand; never built here)
with the same threads, in rounds that take each engine in turn, on a quiet machine only
(benchutil.py: the CPUs' use is checked before and between rounds, each file is read into
the page cache before it is timed), and prints a Markdown table: best and median decode
tok/s, bytes per token and the rate they move at, against the streaming read bandwidth
measured in the same run, with the measured active fraction. Bytes per token:
  dense:  every weight but the embedding table;
  sparse: attention, norms, output, predictors, plus the active fraction of ffn_gate,
          ffn_up and ffn_down.
(sparseinfer also skips the up and down rows of active neurons whose relu(gate) is 0, so
its own ceiling can be a little higher; the synthetic predictor is built so that active
neurons nearly always have a positive gate, as a trained predictor's do.)

The predictor: per layer, with x the residual stream (ffn_inp),
  fc1 = [A; -A; C],  fc2 = [B, -B, -mu/k 1],   so  score = B A x - mu/k sum relu(C x),
  ffn_gate = B A diag(1/ffn_norm) + noise,
where A (r, n_embd), B (n_ff, r), C (k, n_embd), r + r + k = rank. sum relu(C x) is close
to a fixed multiple of |x|, so "score >= 0" is "(B A x)_j >= about mu |x| / sqrt(n_embd)":
independent of |x| (so one threshold, 0.0, serves every layer) and, since the gate follows
B A x, active neurons have positive gates. mu is calibrated on random directions for the
target active fraction; the fraction measured while decoding is what the table reports.

  python benchmarks/bench_sparse.py --type Q4_0 -t 2          # the full-size model
  python benchmarks/bench_sparse.py --type F16 --powerinfer /tmp/powerinfer/build/bin/main
  python benchmarks/bench_sparse.py --small --allow-busy       # a tiny smoke test
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
import ggufgen  # noqa: E402  (tests/support/ggufgen.py: the test vocabulary, the K-quant quantisers)
import benchutil  # noqa: E402  (quiet checks, residency, bandwidth)

FORMAT_VERSION = 1  # bump when the generated weights change, to invalidate caches

FULL_SHAPE = dict(n_vocab=73440, n_embd=1536, n_layer=52, n_head=24, n_head_kv=8, n_ff=3840,
                  n_ctx=4096, rope_base=10000.0, rms_eps=1e-5)
SMALL_SHAPE = dict(n_vocab=512, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=512,  # K-quant rows: 256s
                   n_ctx=256, rope_base=10000.0, rms_eps=1e-5)

# ---- weights ------------------------------------------------------------------------------


def _rng(seed: int, *parts) -> np.random.Generator:
    """A generator per tensor, so that any tensor can be made again on its own."""
    return np.random.default_rng([seed] + [hash_str(str(p)) for p in parts])


def hash_str(s: str) -> int:
    h = 1469598103934665603
    for b in s.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFF
    return h


def normal(rng: np.random.Generator, shape, std: float, chunk_rows: int = 1024) -> np.ndarray:
    """float32 normals, made chunk by chunk (a whole float64 matrix would double the memory)."""
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(shape[0], -1) if len(shape) > 1 else out.reshape(1, -1)
    for i in range(0, flat.shape[0], chunk_rows):
        rng.standard_normal(out=flat[i:i + chunk_rows], dtype=np.float32)
    out *= np.float32(std)
    return out


def predictor_split(rank: int) -> tuple[int, int]:
    """(r, k): rank = 2 r + k, k >= 16 rows of C."""
    r = (rank - max(16, rank // 4)) // 2
    if r < 1:
        raise ValueError(f"rank {rank} is too small (need at least 18)")
    return r, rank - 2 * r


def calibrate_mu(n_embd: int, n_ff: int, rank: int, active: float, seed: int) -> float:
    """The mu that makes `active` of the neurons score >= 0 on random directions."""
    r, k = predictor_split(rank)
    rng = np.random.default_rng(seed + 7)
    n_ff_s = min(n_ff, 2048)
    a = rng.standard_normal((r, n_embd)) / np.sqrt(n_embd)
    b = rng.standard_normal((n_ff_s, r)) / np.sqrt(r)
    c = rng.standard_normal((k, n_embd)) / np.sqrt(n_embd)
    x = rng.standard_normal((n_embd, 256))
    lin = b @ (a @ x)                       # (n_ff, samples)
    pos = np.maximum(c @ x, 0).sum(0) / k   # (samples,)
    lo, hi = -50.0, 50.0
    for _ in range(60):
        mu = 0.5 * (lo + hi)
        frac = float((lin - mu * pos[None, :] >= 0).mean())
        lo, hi = (mu, hi) if frac > active else (lo, mu)
    return 0.5 * (lo + hi)


def layer_tensors(shape: dict, il: int, rank: int, mu: float, seed: int):
    """Yields (name, float32 array) of one layer, numpy (out, in) layout, PWRI names."""
    e, f = shape["n_embd"], shape["n_ff"]
    hd = e // shape["n_head"]
    kv = shape["n_head_kv"] * hd
    p = f"blk.{il}."
    g = lambda name: _rng(seed, il, name)  # noqa: E731
    yield p + "attn_norm.weight", (1.0 + 0.1 * g("an").standard_normal(e)).astype(np.float32)
    yield p + "attn_q.weight", normal(g("q"), (e, e), 1.5 / np.sqrt(e))
    yield p + "attn_k.weight", normal(g("k"), (kv, e), 1.5 / np.sqrt(e))
    yield p + "attn_v.weight", normal(g("v"), (kv, e), 1.0 / np.sqrt(e))
    yield p + "attn_output.weight", normal(g("o"), (e, e), 0.7 / np.sqrt(e))
    ffn_norm = (1.0 + 0.1 * g("fn").standard_normal(e)).astype(np.float32)
    yield p + "ffn_norm.weight", ffn_norm
    r, k = predictor_split(rank)
    a = normal(g("A"), (r, e), 1.0 / np.sqrt(e))
    b = normal(g("B"), (f, r), 1.0 / np.sqrt(r))
    c = normal(g("C"), (k, e), 1.0 / np.sqrt(e))
    gate = b @ (a / ffn_norm[None, :])
    gate += normal(g("E"), (f, e), 0.3 / np.sqrt(e))
    yield p + "ffn_gate.weight", gate
    del gate
    yield p + "ffn_up.weight", normal(g("up"), (f, e), 1.0 / np.sqrt(e))
    yield p + "ffn_down_t.weight", normal(g("down"), (f, e), 1.0 / np.sqrt(f))
    yield p + "fc1.weight", np.concatenate([a, -a, c], axis=0)
    yield p + "fc2.weight", np.concatenate([b, -b, np.full((f, k), -mu / k, np.float32)], axis=1)


def encode(arr: np.ndarray, type_name: str) -> np.ndarray:
    if arr.ndim == 1 or type_name == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if type_name == "F16":
        return arr.astype(np.float16)
    return ggufgen.quantize(np.ascontiguousarray(arr, dtype=np.float32), type_name)


def nbytes_of(shape_np: tuple, type_name: str) -> int:
    if len(shape_np) == 1 or type_name == "F32":
        return int(np.prod(shape_np)) * 4
    if type_name == "F16":
        return int(np.prod(shape_np)) * 2
    block, size = gguf.GGML_QUANT_SIZES[QT[type_name]]
    return int(np.prod(shape_np[:-1])) * (shape_np[-1] // block) * size


def tensor_plan(shape: dict, rank: int, wtype: str, ptype: str, dense: bool) -> list[tuple[str, tuple, str]]:
    """(name, numpy shape, type) of every tensor in file order."""
    e, f, v = shape["n_embd"], shape["n_ff"], shape["n_vocab"]
    kv = shape["n_head_kv"] * (e // shape["n_head"])
    plan = [("token_embd.weight", (v, e), wtype)]
    for il in range(shape["n_layer"]):
        p = f"blk.{il}."
        plan += [(p + "attn_norm.weight", (e,), "F32"), (p + "attn_q.weight", (e, e), wtype),
                 (p + "attn_k.weight", (kv, e), wtype), (p + "attn_v.weight", (kv, e), wtype),
                 (p + "attn_output.weight", (e, e), wtype), (p + "ffn_norm.weight", (e,), "F32"),
                 (p + "ffn_gate.weight", (f, e), wtype), (p + "ffn_up.weight", (f, e), wtype)]
        if dense:
            plan.append((p + "ffn_down.weight", (e, f), wtype))
        else:
            plan += [(p + "ffn_down_t.weight", (f, e), wtype), (p + "fc1.weight", (rank, e), ptype),
                     (p + "fc2.weight", (f, rank), ptype)]
    plan += [("output_norm.weight", (e,), "F32"), ("output.weight", (v, e), wtype)]
    return plan


def open_writer(path: Path, shape: dict, plan, threshold: Optional[float]) -> gguf.GGUFWriter:
    w = gguf.GGUFWriter(str(path), "llama")
    vocab = ggufgen.default_vocab(shape["n_vocab"])
    w.add_string("general.name", "sparseinfer-bench-minicpm-s-shape")
    w.add_uint32("llama.context_length", shape["n_ctx"])
    w.add_uint32("llama.embedding_length", shape["n_embd"])
    w.add_uint32("llama.block_count", shape["n_layer"])
    w.add_uint32("llama.feed_forward_length", shape["n_ff"])
    w.add_uint32("llama.attention.head_count", shape["n_head"])
    w.add_uint32("llama.attention.head_count_kv", shape["n_head_kv"])
    w.add_float32("llama.rope.freq_base", shape["rope_base"])
    w.add_uint32("llama.rope.dimension_count", shape["n_embd"] // shape["n_head"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", shape["rms_eps"])
    w.add_uint32("llama.vocab_size", shape["n_vocab"])
    if threshold is not None:
        w.add_float32("powerinfer.sparse_threshold", threshold)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", [t for t, _, _ in vocab])
    w.add_array("tokenizer.ggml.scores", [float(s) for _, s, _ in vocab])
    w.add_array("tokenizer.ggml.token_type", [int(k) for _, _, k in vocab])
    w.add_uint32("tokenizer.ggml.unknown_token_id", ggufgen.UNK_ID)
    w.add_uint32("tokenizer.ggml.bos_token_id", ggufgen.BOS_ID)
    w.add_uint32("tokenizer.ggml.eos_token_id", ggufgen.EOS_ID)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    for name, shp, t in plan:
        raw = None if t in ("F32", "F16") or len(shp) == 1 else QT[t]
        dt = np.float16 if (t == "F16" and len(shp) > 1) else np.float32
        w.add_tensor_info(name, shp, np.dtype(dt), nbytes_of(shp, t), raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w


def encoded_layer(shape: dict, rank: int, mu: float, seed: int, wtype: str, ptype: str,
                  il: int) -> tuple[list, list]:
    """Layer il's tensors encoded for the PWRI file and for the dense file, in file order."""
    pwri, dense = [], []
    for name, arr in layer_tensors(shape, il, rank, mu, seed):
        if name.endswith(("fc1.weight", "fc2.weight")):
            pwri.append(encode(arr, ptype))
        elif name.endswith("ffn_down_t.weight"):
            pwri.append(encode(arr, wtype))
            dense.append(encode(np.ascontiguousarray(arr.T), wtype))
        else:
            pwri.append(encode(arr, wtype))
            dense.append(pwri[-1])
    return pwri, dense


def build_models(shape: dict, wtype: str, ptype: str, rank: int, active: float, seed: int,
                 cache: Path, rebuild: bool = False, log=print) -> tuple[Path, Path, dict]:
    """Writes (or finds) the PWRI and dense files; returns their paths and build info."""
    tag = (f"v{FORMAT_VERSION}-e{shape['n_embd']}-l{shape['n_layer']}-f{shape['n_ff']}"
           f"-v{shape['n_vocab']}-{wtype}-p{ptype}-r{rank}-a{active:g}-s{seed}")
    cache.mkdir(parents=True, exist_ok=True)
    pwri, dense, meta = cache / f"{tag}.pwri.gguf", cache / f"{tag}.dense.gguf", cache / f"{tag}.json"
    if not rebuild and pwri.exists() and dense.exists() and meta.exists():
        return pwri, dense, json.loads(meta.read_text())
    t0 = time.perf_counter()
    mu = calibrate_mu(shape["n_embd"], shape["n_ff"], rank, active, seed)
    log(f"building {tag} (mu={mu:.3f}) in {cache} ...")
    tmp_p, tmp_d = pwri.with_suffix(".tmp"), dense.with_suffix(".tmp")
    wp = open_writer(tmp_p, shape, tensor_plan(shape, rank, wtype, ptype, dense=False), 0.0)
    wd = open_writer(tmp_d, shape, tensor_plan(shape, rank, wtype, ptype, dense=True), None)

    def put(writer, arr, t):
        writer.write_tensor_data(encode(arr, t))

    embd = normal(_rng(seed, "embd"), (shape["n_vocab"], shape["n_embd"]), 1.0)
    put(wp, embd, wtype)
    put(wd, embd, wtype)
    del embd
    # Layers are made and encoded in worker processes (quantising is most of the time), a
    # window of them at a time so that memory stays bounded, and written in order here.
    workers = max(1, min(os.cpu_count() or 1, shape["n_layer"]))
    make = functools.partial(encoded_layer, shape, rank, mu, seed, wtype, ptype)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        for first in range(0, shape["n_layer"], 2 * workers):
            window = range(first, min(first + 2 * workers, shape["n_layer"]))
            for il, (pwri_data, dense_data) in zip(window, pool.map(make, window)):
                for data in pwri_data:
                    wp.write_tensor_data(data)
                for data in dense_data:
                    wd.write_tensor_data(data)
                if il % 8 == 7:
                    log(f"  layer {il + 1}/{shape['n_layer']} ({time.perf_counter() - t0:.0f} s)")
    onorm = (1.0 + 0.1 * _rng(seed, "onorm").standard_normal(shape["n_embd"])).astype(np.float32)
    out = normal(_rng(seed, "output"), (shape["n_vocab"], shape["n_embd"]), 3.0 / np.sqrt(shape["n_embd"]))
    for w in (wp, wd):
        put(w, onorm, "F32")
        put(w, out, wtype)
        w.close()
    with open(tmp_p, "r+b") as fh:
        fh.write(b"PWRI")
    os.replace(tmp_p, pwri)
    os.replace(tmp_d, dense)
    info = dict(tag=tag, mu=mu, build_seconds=time.perf_counter() - t0)
    meta.write_text(json.dumps(info))
    log(f"built in {info['build_seconds']:.0f} s: {pwri.stat().st_size / 2**30:.2f} GiB + "
        f"{dense.stat().st_size / 2**30:.2f} GiB")
    return pwri, dense, info


# ---- bytes per token --------------------------------------------------------------------


def bytes_per_token(shape: dict, rank: int, wtype: str, ptype: str, active: float) -> dict:
    attn = norms = ffn = pred = output = 0
    for name, shp, t in tensor_plan(shape, rank, wtype, ptype, dense=False):
        b = nbytes_of(shp, t)
        if name == "token_embd.weight":
            continue
        if len(shp) == 1:
            norms += b
        elif name == "output.weight":
            output += b
        elif ".attn_" in name:
            attn += b
        elif ".fc" in name:
            pred += b
        else:
            ffn += b
    dense = attn + norms + output + ffn
    sparse = attn + norms + output + pred + active * ffn
    return dict(attention=attn, norms=norms, output=output, ffn=ffn, predictor=pred,
                dense=dense, sparse=sparse, ideal_speedup=dense / sparse)


# ---- timing -----------------------------------------------------------------------------


def predictor_q8_agreement(shape: dict, rank: int, active: float, pred_type: str, seed: int,
                           n_samples: int = 256) -> dict:
    """How many active-neuron decisions survive requantising the predictors to Q8_0.

    Regenerates fc1 and fc2 of the first, middle and last layers exactly as the model file
    holds them (pred_type), scores fc2 relu(fc1 x) for random inputs x (the distribution the
    predictor was calibrated on) with them and with their Q8_0 round trip, threshold 0 as in
    the file, and compares the decisions.
    """
    mu = calibrate_mu(shape["n_embd"], shape["n_ff"], rank, active, seed)
    rng = np.random.default_rng(seed + 11)
    q8 = gguf.GGMLQuantizationType.Q8_0
    agree = total = kept = n_active = 0
    for il in sorted({0, shape["n_layer"] // 2, shape["n_layer"] - 1}):
        fc = {}
        for name, arr in layer_tensors(shape, il, rank, mu, seed):
            if name.endswith(("fc1.weight", "fc2.weight")):
                stored = arr.astype(np.float16).astype(np.float32) if pred_type == "F16" else arr
                requantised = gguf.quants.dequantize(gguf.quants.quantize(stored, q8), q8)
                fc[name.split(".")[2]] = (stored, requantised.reshape(stored.shape))
        x = rng.standard_normal((shape["n_embd"], n_samples)).astype(np.float32)
        masks = [fc["fc2"][k] @ np.maximum(fc["fc1"][k] @ x, 0) >= 0 for k in (0, 1)]
        agree += int(np.sum(masks[0] == masks[1]))
        total += masks[0].size
        kept += int(np.sum(masks[0] & masks[1]))
        n_active += int(np.sum(masks[0]))
    return dict(agreement=agree / total, active_kept=kept / max(n_active, 1))


def time_prompt_and_decode(evaluate, prompt: list[int], stream: list[int], warmup: int,
                           after_warmup=lambda: None) -> dict:
    """Prompt tok/s (one evaluation of the prompt) and decode tok/s (the stream one token at a
    time, the first `warmup` tokens untimed) of an engine whose state was just reset."""
    t0 = time.perf_counter()
    evaluate(prompt)
    prompt_seconds = time.perf_counter() - t0
    for t in stream[:warmup]:
        evaluate([t])
    after_warmup()
    t0 = time.perf_counter()
    for t in stream[warmup:]:
        evaluate([t])
    return dict(decode=(len(stream) - warmup) / (time.perf_counter() - t0), prompt=len(prompt) / prompt_seconds)


class SparseInferRunner:
    """sparseinfer on the PWRI file: sparse (default or stored predictors) or dense ReLU."""

    def __init__(self, name: str, model, sparse: bool, path: Path, threads: int, n_ctx: int):
        from sparseinfer import _core

        self.name, self.path = name, path
        self.session = _core.Session(model, n_ctx, threads, sparse=sparse)

    def run(self, prompt: list[int], stream: list[int], warmup: int) -> dict:
        s = self.session
        s.reset()
        # reset_stats after the warm-up: the active fractions cover the timed tokens only
        result = time_prompt_and_decode(lambda tokens: s.eval(tokens, all_logits=False), prompt, stream, warmup,
                                        after_warmup=s.reset_stats)
        return dict(result, active_fraction=float(np.mean(s.active_fractions())))


class LlamaCppRunner:
    """llama-cpp-python on the plain dense GGUF."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp

        self.name, self.path, self.version = "llama-cpp-python dense", path, llama_cpp.__version__
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, n_batch=512, verbose=False)

    def run(self, prompt: list[int], stream: list[int], warmup: int) -> dict:
        self.llm.reset()
        return time_prompt_and_decode(self.llm.eval, prompt, stream, warmup)


class PowerInferRunner:
    """PowerInfer's `main` (a binary the user built by hand; never built or fetched here) on
    the PWRI file: its own timings of the prompt and of the tokens it generates greedily."""

    TIMING = re.compile(r"^llama_print_timings:\s+(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+)", re.M)

    def __init__(self, binary: Path, path: Path, threads: int, n_ctx: int, prompt_text: str):
        self.name, self.path, self.binary = "PowerInfer sparse", path, binary
        self.threads, self.n_ctx, self.prompt_text = threads, n_ctx, prompt_text

    def run(self, prompt: list[int], stream: list[int], warmup: int) -> dict:
        # Its main drops SentencePiece's leading space from -p (FACTS.md), hence the " ".
        cmd = [str(self.binary), "-m", str(self.path), "-t", str(self.threads), "-c", str(self.n_ctx),
               "-n", str(len(stream)), "-p", " " + self.prompt_text, "--temp", "0", "--ignore-eos",
               "--seed", "1"]
        with tempfile.TemporaryDirectory() as scratch:  # where its main writes main.log
            out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=900, cwd=scratch)
        timings = {kind: (float(ms), int(count)) for kind, ms, count in self.TIMING.findall(out.stderr)}
        if out.returncode != 0 or "eval" not in timings or "prompt eval" not in timings:
            tail = "\n".join(out.stderr.splitlines()[-15:])
            raise RuntimeError(f"PowerInfer's main failed (exit {out.returncode}):\n{tail}")
        (p_ms, p_n), (e_ms, e_n) = timings["prompt eval"], timings["eval"]
        return dict(decode=e_n / (e_ms / 1000), prompt=p_n / (p_ms / 1000), prompt_tokens=p_n)


# ---- main -------------------------------------------------------------------------------

PROMPT_TEXT = ("Sparse inference computes only the neurons that will fire. A small predictor looks at "
               "the hidden state before each feed-forward block and guesses which rows of the gate and "
               "up projections matter; the others are never read from memory.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", default="Q4_0", choices=["F16", "Q4_0", "Q8_0", "F32", "Q4_K", "Q6_K"],
                    help="weight type of every matrix but the predictor (default Q4_0)")
    ap.add_argument("--pred-type", default="F16", choices=["F16", "Q4_0", "Q8_0", "F32"],
                    help="predictor (fc1, fc2) type (default F16, as in PowerInfer's files)")
    ap.add_argument("--rank", type=int, default=None, help="predictor rank (default 256; 32 with --small)")
    ap.add_argument("--active", type=float, default=0.12,
                    help="target fraction of active FFN neurons (default 0.12: MiniCPM-S's ~88%% sparsity)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--tokens", type=int, default=None, help="decode tokens timed (default 64; 32 with --small)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; each times every engine once, in turn (default 3): best and median are reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="a tiny model: a quick smoke test of this script")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparseinfer-bench")
    ap.add_argument("--rebuild", action="store_true", help="write the model files again")
    ap.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    ap.add_argument("--no-dense", action="store_true", help="skip sparseinfer's dense mode of the PWRI file")
    ap.add_argument("--powerinfer", type=Path, default=None,
                    help="PowerInfer's `main` binary, built by hand (../shared/tools/build_powerinfer.sh): "
                         "adds it to the comparison")
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even when the machine is not quiet (the results are marked unreliable)")
    ap.add_argument("--busy-limit", type=float, default=0.10,
                    help="share of all CPUs' time in use that still counts as quiet (default 0.10)")
    ap.add_argument("--save", action="store_true", help="write JSON results to benchmarks/results/")
    args = ap.parse_args(argv)

    shape = dict(SMALL_SHAPE if args.small else FULL_SHAPE)
    rank = args.rank or (32 if args.small else 256)
    n_tok = args.tokens or (32 if args.small else 64)
    n_ctx = args.prompt_tokens + args.warmup + n_tok + 8
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    if args.powerinfer is not None and not os.access(args.powerinfer, os.X_OK):
        sys.exit(f"--powerinfer {args.powerinfer}: not an executable file")

    pwri, dense, build = build_models(shape, args.type, args.pred_type, rank, args.active, args.seed,
                                      args.cache_dir, args.rebuild, log)
    from sparseinfer import _core

    # The prompt: English text in the file's vocabulary, so that PowerInfer's main, which takes
    # text, reads the same tokens; the decode stream: random tokens, fed one at a time.
    tokenizer = _core.Tokenizer(str(pwri))
    text = PROMPT_TEXT
    while len(tokenizer.encode(text)) < args.prompt_tokens:
        text += " " + PROMPT_TEXT
    prompt = tokenizer.encode(text)[:args.prompt_tokens]
    prompt_text = tokenizer.decode(prompt[1:]).decode("utf-8").lstrip()
    rng = np.random.default_rng(args.seed + 1)
    stream = [int(t) for t in rng.integers(3, shape["n_vocab"], args.warmup + n_tok)]

    quiet = benchutil.Quiet(busy_limit=args.busy_limit, allow_busy=args.allow_busy, log=log)
    quiet.check("before loading the engines")
    log("loading the engines ...")
    model = _core.Model(str(pwri))  # predictor_q8="auto"
    q8_share = float(np.mean(model.predictor_q8_layers))
    runners = [SparseInferRunner("sparseinfer sparse", model, True, pwri, args.threads, n_ctx)]
    if q8_share > 0:
        stored = _core.Model(str(pwri), predictor_q8=False)
        runners.append(SparseInferRunner("sparseinfer sparse, stored predictors", stored, True, pwri,
                                         args.threads, n_ctx))
    if not args.no_dense:
        runners.append(SparseInferRunner("sparseinfer dense", model, False, pwri, args.threads, n_ctx))
    llama_note = None
    if args.no_llama:
        llama_note = "skipped (--no-llama)"
    else:
        try:
            runners.append(LlamaCppRunner(dense, args.threads, n_ctx))
        except ImportError:
            llama_note = "skipped (llama-cpp-python not installed)"
    if args.powerinfer is not None:
        runners.append(PowerInferRunner(args.powerinfer, pwri, args.threads, n_ctx, prompt_text))
    for r in runners:  # page in and warm up each engine once, untimed
        benchutil.make_resident(str(r.path))
        r.run(prompt, stream[:args.warmup + 2], args.warmup)

    bandwidth, rounds = [], {r.name: [] for r in runners}
    for k in range(args.rounds):
        quiet.check(f"before round {k + 1}")
        bandwidth.append(benchutil.read_bandwidth(args.threads))
        for r in runners:
            resident = benchutil.make_resident(str(r.path))
            quiet.check(f"before {r.name}, round {k + 1}")
            result = r.run(prompt, stream, args.warmup)
            result["file_resident_before"] = resident
            rounds[r.name].append(result)
            log(f"round {k + 1}: {r.name}: decode {result['decode']:.2f} tok/s, prompt {result['prompt']:.1f} tok/s")
    quiet.check("after the last round")

    active = float(np.median([r["active_fraction"] for r in rounds["sparseinfer sparse"]]))
    bpt = bytes_per_token(shape, rank, args.type, args.pred_type, active)
    bpt_q8 = bytes_per_token(shape, rank, args.type, "Q8_0", active)
    # The default run's predictors: q8_share of the layers as 8-bit copies, the rest as stored.
    auto_bytes = q8_share * bpt_q8["sparse"] + (1 - q8_share) * bpt["sparse"]
    engine_bytes = {"sparseinfer sparse": auto_bytes, "sparseinfer sparse, stored predictors": bpt["sparse"],
                    "sparseinfer dense": bpt["dense"], "llama-cpp-python dense": bpt["dense"],
                    "PowerInfer sparse": bpt["sparse"]}
    # The memory's speed drifts between rounds on a shared machine (the probe has seen 32 to
    # 59 GB/s within minutes), so comparisons pair each round's figures: an engine against
    # another is the median over rounds of their ratio in that round.
    stream_rate = float(np.median(bandwidth))
    results = {}
    for name, rs in rounds.items():
        decode = benchutil.spread([r["decode"] for r in rs])
        results[name] = dict(decode=decode, prompt=benchutil.spread([r["prompt"] for r in rs]),
                             bytes_per_token=engine_bytes[name],
                             gb_per_s=engine_bytes[name] * decode["median"] / 1e9,
                             of_stream_bandwidth=engine_bytes[name] * decode["median"] / stream_rate,
                             rounds=rs)

    def paired(name, reference):
        return float(np.median([a["decode"] / b["decode"] for a, b in zip(rounds[name], rounds[reference])]))

    title = "tiny smoke-test model" if args.small else "MiniCPM-S-1B-shaped synthetic model"
    print(f"\n### Decode speed: {title}, {args.type} weights, {args.pred_type} predictors (rank {rank}), "
          f"{args.threads} threads\n")
    print(f"shape: hidden {shape['n_embd']}, {shape['n_layer']} layers, {shape['n_head']} heads / "
          f"{shape['n_head_kv']} KV heads, FFN {shape['n_ff']}, vocab {shape['n_vocab']}; "
          f"prompt {args.prompt_tokens} tokens, {args.warmup} warm-up + {n_tok} timed decode tokens; "
          f"{args.rounds} rounds, engines in turn\n")
    refs = [k for k in ("llama-cpp-python dense", "PowerInfer sparse") if k in results]
    for name, r in results.items():
        r["vs"] = {ref: paired(name, ref) for ref in refs}
    print("| engine | decode tok/s best | median | MiB/token | GB/s (median) | of stream bandwidth | "
          + "".join(f"vs {k.split()[0]} | " for k in refs) + "prompt tok/s best | median |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(refs) + "---:|---:|")
    for name, r in results.items():
        d, p = r["decode"], r["prompt"]
        print(f"| {name} | {d['best']:.2f} | {d['median']:.2f} | {r['bytes_per_token'] / 2**20:.1f} | "
              f"{r['gb_per_s']:.1f} | {r['of_stream_bandwidth']:.0%} | "
              + "".join(f"{r['vs'][ref]:.2f}x | " for ref in refs)
              + f"{p['best']:.1f} | {p['median']:.1f} |")
    if llama_note:
        print(f"| llama-cpp-python dense | {llama_note} |")
    print()
    print(f"- vs columns: the median over rounds of the two engines' ratio in the same round; "
          f"streaming read bandwidth, {args.threads} threads, measured between rounds: median "
          f"{stream_rate / 1e9:.1f} GB/s (each round: {', '.join(f'{b / 1e9:.1f}' for b in bandwidth)})")
    print(f"- measured active fraction (sparse decode, all layers, median of rounds): {active:.4f} "
          f"(target {args.active:g}; sparsity {1 - active:.2%})")
    print(f"- bytes read per token: dense {bpt['dense'] / 2**20:.1f} MiB, sparse {bpt['sparse'] / 2**20:.1f} MiB "
          f"(attention {bpt['attention'] / 2**20:.1f}, output {bpt['output'] / 2**20:.1f}, "
          f"predictors {bpt['predictor'] / 2**20:.1f}, FFN {bpt['ffn'] / 2**20:.1f} x {active:.3f}); "
          f"ideal sparse speedup over dense {bpt['ideal_speedup']:.2f}x")
    if "llama-cpp-python dense" in results:
        # Each round's ceiling: sparseinfer's bytes at the rate llama-cpp-python's dense decode
        # moved in that round.
        ceiling_share = [s["decode"] / (l["decode"] * bpt["dense"] / auto_bytes)
                         for s, l in zip(rounds["sparseinfer sparse"], rounds["llama-cpp-python dense"])]
        build["ceiling_share"] = ceiling_share
        print(f"- sparse ceiling, each round: sparseinfer's {auto_bytes / 2**20:.0f} MiB per token at the rate "
              f"llama-cpp-python's dense decode moved in that round; sparseinfer sparse reaches a median "
              f"{np.median(ceiling_share):.0%} of it (rounds: {', '.join(f'{c:.0%}' for c in ceiling_share)})")
    if args.pred_type in ("F16", "F32"):
        q8 = predictor_q8_agreement(shape, rank, args.active, args.pred_type, args.seed)
        print(f"- predictors: predictor_q8='auto' made {q8_share:.0%} of the layers' 8-bit; "
              f"{q8['agreement']:.2%} of the decisions unchanged by an 8-bit copy "
              f"({q8['active_kept']:.2%} of active neurons kept) on random inputs")
        build["predictor_q8_agreement"] = q8
    print("- the dense GGUF is a plain llama file, so llama.cpp runs SiLU on it: the same bytes "
          "per token as ReLU, fine for timing, not for comparing outputs")
    if "PowerInfer sparse" in results:
        print(f"- PowerInfer's main ({args.powerinfer}) generates its own tokens greedily from the same "
              f"prompt text ({results['PowerInfer sparse']['rounds'][0]['prompt_tokens']} prompt tokens "
              "by its tokenizer); its figures are its own printed timings")
    checks = quiet.summary()
    busiest = max(c["busy"] for c in checks["checks"])
    print(f"- quiet machine: {'yes' if checks['all_quiet'] else 'NO: these numbers are not reliable'} "
          f"({len(checks['checks'])} checks before and between rounds, busiest {busiest:.0%} of the CPUs' "
          f"time, limit {args.busy_limit:.0%}; load average before the run "
          f"{checks['checks'][0]['load_average']:.2f})")

    if args.save:
        outdir = HERE / "results"
        outdir.mkdir(exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = outdir / f"sparse-{'small' if args.small else 'minicpm-s'}-{args.type}-t{args.threads}-{stamp}.json"
        out.write_text(json.dumps(dict(
            benchmark="bench_sparse", format=2, when=stamp, machine=platform.machine(),
            processor=platform.processor(), cpu_count=os.cpu_count(), shape=shape, weight_type=args.type,
            pred_type=args.pred_type, rank=rank, target_active=args.active, threads=args.threads,
            prompt_tokens=args.prompt_tokens, decode_tokens=n_tok, warmup=args.warmup, rounds=args.rounds,
            build=build, bytes_per_token=bpt, stream_bandwidth=bandwidth, quiet_check=checks,
            load_before=checks["checks"][0]["load_average"], results=results, llama_note=llama_note,
            powerinfer=str(args.powerinfer) if args.powerinfer else None), indent=2))
        log(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
