"""The include rules of docs/architecture.md: each directory of cpp/src includes only itself
and the directories the table there lists for it, so the layout cannot rot unseen."""

import pathlib
import re

import paths

ROOT = pathlib.Path(paths.ROOT)
SRC = ROOT / "cpp" / "src"
# "sparseinfer" is the public include directory (cpp/include/sparseinfer).
ALLOWED = {
    "common": {"sparseinfer"},
    "tensor": {"common"},
    "gguf": {"common", "tensor"},
    "cpu": {"common", "tensor"},
    "tokenizer": {"common", "gguf"},
    "sample": {"common"},
    "model": {"common", "tensor", "gguf", "cpu", "tokenizer", "model/architectures"},
    "model/architectures": {"common", "tensor", "gguf", "model"},
    "gpu": {"common", "model", "cuda_abi"},
    "cuda": {"cuda_abi"},
    "cuda_abi": set(),
    "session": {"common", "tensor", "cpu", "model", "gpu"},
    "api": {"sparseinfer", "common", "tensor", "gguf", "cpu", "tokenizer", "sample", "model", "gpu", "session"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _directory(path):
    relative = path.parent.relative_to(SRC).as_posix()
    return relative


def test_every_source_directory_has_a_rule():
    directories = {_directory(p) for p in SRC.rglob("*") if p.is_file()}
    assert directories <= set(ALLOWED), f"directories without a rule: {sorted(directories - set(ALLOWED))}"


def test_each_directory_includes_only_what_its_rule_allows():
    broken = []
    for path in sorted(SRC.rglob("*")):
        if not path.is_file() or path.suffix not in {".h", ".cpp", ".cu", ".cuh", ".inc"}:
            continue
        directory = _directory(path)
        for included in INCLUDE.findall(path.read_text(encoding="utf-8")):
            if "/" not in included:
                continue  # a file of the same directory (the CUDA plugin's own)
            target = included.rsplit("/", 1)[0]
            if target == directory or included in ALLOWED[directory] or target in ALLOWED[directory]:
                continue
            broken.append(f"{path.relative_to(ROOT)} includes {included}")
    assert not broken, "includes that docs/architecture.md does not allow:\n" + "\n".join(broken)


def test_only_the_architecture_files_know_tensor_names():
    # The GGUF tensor names of the blocks ("blk.N.attn_q.weight") belong to model/architectures/.
    names = re.compile(r'"(blk\.|[a-z_]*\.weight")')
    found = [str(p.relative_to(ROOT)) for p in SRC.rglob("*.cpp")
             if names.search(p.read_text(encoding="utf-8")) and _directory(p) != "model/architectures"]
    assert found == ["cpp/src/model/architecture.cpp"], found  # token_embd.weight gives n_vocab


def test_the_python_binding_goes_through_the_public_header():
    # The one front door: what Python can do, an embedder can do through sparseinfer.h. Only
    # the test hooks (_core.testing) reach inside.
    bindings = ROOT / "cpp" / "python"
    broken = []
    for path in sorted(bindings.glob("*.cpp")) + sorted(bindings.glob("*.h")):
        if path.name == "bind_testing.cpp":
            continue
        for included in INCLUDE.findall(path.read_text(encoding="utf-8")):
            if included != "bindings.h" and not included.startswith("sparseinfer/"):
                broken.append(f"{path.relative_to(ROOT)} includes {included}")
    assert not broken, "the bindings must include only the public headers:\n" + "\n".join(broken)
