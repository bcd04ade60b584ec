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
        ggufgen.write_llama_model(path, weight_type="Q4_0", n_ctx=512, seed=1)
    else:
        sparsegen.write_pwri_model(path, weight_type="Q4_0", threshold=0.05, n_ctx=512, seed=1)
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


def file_resident_bytes() -> int:
    """Resident pages of file mappings: RssFile, plus RssShmem for a file on tmpfs
    (/proc/self/status, in kB)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    if "RssFile" not in fields:
        pytest.skip("this kernel does not report RssFile")
    return sum(int(fields[k].split()[0]) * 1024 for k in ("RssFile", "RssShmem") if k in fields)


@pytest.mark.skipif(sparseinfer._core.system_info()["isa"] not in ("avx2", "avx512"),
                    reason="only the x86 levels keep interleaved copies of the weights")
def test_a_dense_model_is_resident_once(tmp_path):
    """The CPU reads interleaved copies of a dense Q4_0 model's matrices (made at load): the
    mapped originals must leave the resident set, not stay beside the copies."""
    path = tmp_path / "m.gguf"
    ggufgen.write_llama_model(path, weight_type="Q4_0", n_embd=512, n_ff=1536, n_layer=4, n_head=8,
                              n_head_kv=8, seed=1)
    size = os.path.getsize(path)
    assert size > 7 * 2**20
    before_file, before = file_resident_bytes(), resident_bytes()
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=2) as m:
        m.generate("hello world", max_tokens=4, temperature=0, ignore_eos=True)
        mapped = file_resident_bytes() - before_file
        grown = resident_bytes() - before
    # Without the release the originals stayed resident: mapped ~ the file, grown ~ twice it.
    assert mapped < 0.1 * size, f"{mapped} bytes of the {size}-byte file stayed resident"
    assert grown < 1.5 * size, f"resident memory grew by {grown} bytes for a {size}-byte model"
