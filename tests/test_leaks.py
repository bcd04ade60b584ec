"""Loading, generating and closing many times must not grow the process: every native
object (mapping, KV cache, thread pool, tokenizer) is freed with its last reference."""

import gc
import os
import sys

import pytest

import ggufgen
import sparsegen
import sparseinfer

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
    # AddressSanitizer keeps freed memory resident in its quarantine, so resident size says
    # nothing there (tools/run_sanitized_tests.sh); the fuzzers' LeakSanitizer covers leaks.
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason="under ASan"),
]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cycle(path, sparse):
    with sparseinfer.Model(str(path), n_ctx=512, n_threads=2, sparse=sparse) as m:
        m.generate("hello world", max_tokens=8, temperature=0.7, seed=1, ignore_eos=True)
        for _ in m.generate("again", max_tokens=4, stream=True, ignore_eos=True):
            break  # a stream left unfinished must not leak either


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_load_generate_close_cycles_do_not_grow(tmp_path, kind):
    path = tmp_path / "m.gguf"
    if kind == "dense":
        ggufgen.write_llama_model(path, weight_type="Q4_0", seed=1)
    else:
        sparsegen.write_pwri_model(path, weight_type="Q4_0", threshold=0.05, seed=1)
    for _ in range(10):  # warm up allocator pools and caches
        cycle(path, kind == "sparse")
    gc.collect()
    before = resident_bytes()
    for _ in range(60):
        cycle(path, kind == "sparse")
    gc.collect()
    grown = resident_bytes() - before
    # Each cycle allocates a KV cache of 512 positions and a model; a leak of either would
    # add well over 100 KiB a cycle (6 MiB over 60 cycles).
    assert grown < 4 * 2**20, f"resident memory grew by {grown} bytes over 60 cycles"
