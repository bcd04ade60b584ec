"""Rewrites the CUDA plugin's sources as C++ for the emulator (cuda_runtime.h here):
`kernel<<<grid, block, ...>>>(args)` becomes `emu::launch(kernel, dim3(grid), dim3(block),
args)` and the two half-conversion asm lines become calls. .cu files are written as .cpp.

    python translate.py SOURCE_DIR OUT_DIR
"""

import os
import sys

ASM_REPLACEMENTS = {
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));': "f = emu::h2f(h);",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));': "h = emu::f2h(f);",
}


def split_top_level(text: str) -> list[str]:
    """The comma-separated parts of text, commas inside brackets kept."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def closing_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses in a kernel launch")


def translate(text: str, name: str) -> str:
    for asm, call in ASM_REPLACEMENTS.items():
        text = text.replace(asm, call)
    if "asm(" in text:
        raise ValueError(f"{name}: inline asm the emulator does not know")
    while "<<<" in text:
        start = text.index("<<<")
        name_start = start
        while text[name_start - 1].isalnum() or text[name_start - 1] == "_":
            name_start -= 1
        config_end = text.index(">>>", start)
        config = split_top_level(text[start + 3:config_end])
        if text[config_end + 3] != "(":
            raise ValueError(f"{name}: unexpected text after a launch configuration")
        args_end = closing_paren(text, config_end + 3)
        args = text[config_end + 4:args_end]
        text = (text[:name_start]
                + f"emu::launch({text[name_start:start]}, dim3({config[0]}), dim3({config[1]}), {args})"
                + text[args_end + 1:])
    return text


def main(src_dir: str, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith((".cu", ".cuh", ".h")):
            continue
        with open(os.path.join(src_dir, name), encoding="utf-8") as f:
            text = f.read()
        if name.endswith((".cu", ".cuh")):
            text = translate(text, name)
        out_name = name[:-3] + ".cpp" if name.endswith(".cu") else name
        with open(os.path.join(out_dir, out_name), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
