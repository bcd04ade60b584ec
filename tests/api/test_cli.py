"""`python -m sparseinfer` in a subprocess, checked against the Python API and the file the
test wrote (oracle for `info`: the values given to the GGUF builder)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sparseinfer as si

import ggufgen

PROMPT = "the model is a small test"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "sparseinfer", *args],
                            capture_output=True, timeout=120)
    result.stdout = result.stdout.decode("utf-8")
    result.stderr = result.stderr.decode("utf-8")
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return ggufgen.write_llama_model(
        path, n_vocab=300, n_embd=32, n_layer=3, n_head=4, n_head_kv=2, n_ff=48, n_ctx=512,
        seed=5, extra_kv={"tokenizer.chat_template": "{{ messages }}"})


def test_generate_streams_the_same_text_as_the_api(tiny):
    with si.Model(tiny.path, n_ctx=128) as model:
        expected = model.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
    result = run_cli("generate", "-m", tiny.path, "-p", PROMPT, "-n", "12", "--temp", "0",
                     "--ignore-eos", "-c", "128", "-t", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_generate_reads_the_prompt_from_a_file(tiny, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT, encoding="utf-8")
    common = ["-m", tiny.path, "-n", "10", "--temp", "0.9", "-s", "42", "--ignore-eos",
              "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--repeat-penalty", "1.1"]
    from_flag = run_cli("generate", *common, "-p", PROMPT)
    from_file = run_cli("generate", *common, "-f", str(prompt_file))
    assert from_flag.returncode == 0 and from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == from_flag.stdout
    with si.Model(tiny.path) as model:
        assert from_flag.stdout == model.generate(
            PROMPT, max_tokens=10, temperature=0.9, seed=42, ignore_eos=True, top_k=20,
            top_p=0.9, min_p=0.01, repeat_penalty=1.1) + "\n"


def test_generate_stats_go_to_stderr(tiny):
    result = run_cli("generate", "-m", tiny.path, "-p", PROMPT, "-n", "5", "--ignore-eos",
                     "--stats")
    assert result.returncode == 0, result.stderr
    assert "generated: 5 tokens" in result.stderr
    assert "tokens/s" in result.stderr
    assert "tokens/s" not in result.stdout


def test_info_describes_the_file_without_loading_it(tiny):
    result = run_cli("info", tiny.path)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    assert fields["magic"] == "GGUF"
    assert fields["architecture"] == "llama"
    assert fields["n_embd"] == "32"
    assert fields["n_layer"] == "3"
    assert fields["n_head"] == "4 (kv 2)"
    assert fields["n_ff"] == "48"
    assert fields["n_ctx_train"] == "512"
    assert fields["rope scaling"] == "none"
    assert fields["n_vocab"] == "300"
    assert fields["tokenizer"] == "llama"
    assert fields["chat template"] == "present"
    assert fields["tensors"].startswith(f"{len(tiny)} ")
    assert fields["tensor types"] == f"F32 x{len(tiny)}"
    assert fields["runs"] == "yes"


def _info_fields(path) -> dict[str, str]:
    result = run_cli("info", str(path))
    assert result.returncode == 0, result.stderr
    return {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)}


@pytest.mark.parametrize("kv, freq_factors, shown, runs", [
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
      "llama.rope.scaling.original_context_length": 128}, [1.0, 2.0, 4.0, 8.0],
     "yarn x4 from 128 positions, frequency factors (rope_freqs.weight)", "yes"),
    ({"llama.rope.scale_linear": 2.0, "llama.rope.scaling.attn_factor": 1.5}, None,
     "linear x2, attn_factor 1.5", "yes"),
    ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 8.0}, None, "none", "yes"),
    ({"llama.rope.scaling.type": "longrope"}, None, "longrope",
     "no: RoPE scaling 'longrope' is not supported (supported: none, linear, yarn)"),
], ids=["yarn_with_factors", "old_linear_key", "none", "longrope"])
def test_info_shows_the_rope_scaling(tmp_path, kv, freq_factors, shown, runs):
    path = tmp_path / "scaled.gguf"
    ggufgen.write_llama_model(path, n_embd=32, n_head=4, n_ctx=512, extra_kv=kv,
                              extra_tensors=None if freq_factors is None else {"rope_freqs.weight": freq_factors})
    fields = _info_fields(path)
    assert fields["rope scaling"] == shown
    assert fields["runs"] == runs


def test_info_system_reports_the_isa_in_use():
    result = run_cli("info", "--system")
    assert result.returncode == 0, result.stderr
    assert str(si._core.system_info()["isa"]) in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "-m", "/no/such/model.gguf", "-p", "hi"], "/no/such/model.gguf"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--top-p", "2"], "top_p"),
        (["generate", "-m", "{tiny}", "-p", "hi", "-c", "0"], "n_ctx"),
        (["generate", "-m", "{tiny}", "-p", "hi", "-t", "0"], "n_threads"),
        (["generate", "-m", "{tiny}", "-p", PROMPT * 50, "-c", "64"], "n_ctx"),
        (["generate", "-m", "{tiny}", "-f", "/no/such/prompt.txt"], "/no/such/prompt.txt"),
        (["generate", "-m", "{junk}", "-p", "hi"], "junk.gguf"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--vram-budget", "6 bananas"], "vram_budget"),
        (["generate", "-m", "{tiny}", "-p", "hi", "-ngl", "-5"], "n_gpu_layers"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--device", "cuda"], "device='cuda'"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--device", "tpu"], "device"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--sparse-threshold", "0.1"], "sparse_threshold applies to"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--sparse-threshold", "nan"], "sparse_threshold must be"),
        (["info", "{junk}"], "junk.gguf"),
        (["info", "/no/such/model.gguf"], "/no/such/model.gguf"),
        (["info"], "MODEL"),
    ],
)
def test_errors_print_one_line_and_exit_non_zero(tiny, tmp_path, args, message):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 100)
    args = [a.format(tiny=tiny.path, junk=junk) for a in args]
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparseinfer: error:")
    assert message in lines[0]


def test_sparse_threshold_reaches_the_model(tmp_path):
    import sparsegen

    w = sparsegen.write_pwri_model(tmp_path / "sparse.gguf", seed=4)
    with si.Model(w.path, n_ctx=128, sparse_threshold=0.3) as model:
        expected = model.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
    with si.Model(w.path, n_ctx=128) as model:
        assert model.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True) != expected
    result = run_cli("generate", "-m", w.path, "-p", PROMPT, "-n", "12", "--temp", "0",
                     "--ignore-eos", "-c", "128", "--sparse-threshold", "0.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_usage_errors_exit_with_status_2():
    result = run_cli("generate", "-p", "no model given")
    assert result.returncode == 2
    assert "--model" in result.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sparseinfer {si.__version__}"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX argv holds bytes")
def test_text_that_is_not_utf8_is_named(tiny, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    result = run_cli("generate", "-m", tiny.path, "-f", str(bad))
    assert result.returncode == 1
    assert f"{bad}: not UTF-8 text (byte 0xe9 at offset 3)" in result.stderr
    result = subprocess.run([sys.executable, "-m", "sparseinfer", "generate", "-m", tiny.path, "-p", b"ab\xffc"],
                            capture_output=True, timeout=120)
    assert result.returncode == 1
    assert b"-p/--prompt is not UTF-8 text (byte 0xff at character 2)" in result.stderr
