#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, with ASan + UBSan) and runs each for SECONDS.
#   fuzz/run.sh [SECONDS]          # default 60 per target
# Seeds: small valid models written by the test builders (dense, PowerInfer, SPM and BPE
# vocabularies); new inputs found go to build/fuzz/corpus-*, crashes to build/fuzz/crash-*
# (turn each into a regression file under tests/). Linux only (memfd).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
out=build/fuzz
mkdir -p "$out"
cxx=${FUZZ_CXX:-clang++}
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Icpp/src -Icpp/include -DSPARSEINFER_X86=1)

engine=(cpp/src/common/memory.cpp cpp/src/gguf/gguf_file.cpp cpp/src/tensor/dtype.cpp cpp/src/cpu/dispatch.cpp
        cpp/src/cpu/kernels_generic.cpp cpp/src/cpu/thread_pool.cpp cpp/src/cpu/matmul.cpp
        cpp/src/cpu/attention.cpp cpp/src/cpu/neuron_sum.cpp cpp/src/model/*.cpp cpp/src/session/*.cpp
        cpp/src/model/architectures/*.cpp
        cpp/src/gpu/*.cpp cpp/src/tokenizer/*.cpp)
# The x86 SIMD files need their own flags; the fuzzer runs the generic level, so they are
# compiled in (dispatch refers to them) but SPARSEINFER_ISA=generic keeps them unused.
"$cxx" "${flags[@]}" -mavx2 -mfma -mf16c -c cpp/src/cpu/kernels_avx2.cpp -o "$out/avx2.o"
"$cxx" "${flags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c \
    -c cpp/src/cpu/kernels_avx512.cpp -o "$out/avx512.o"
for target in gguf_fuzzer tokenizer_fuzzer; do
    "$cxx" "${flags[@]}" "${engine[@]}" "$out/avx2.o" "$out/avx512.o" "fuzz/$target.cpp" \
        -lpthread -ldl -o "$out/$target"
done

# The seeds are written by the test builders: a Python with the `gguf` package.
"${FUZZ_PYTHON:-python3}" fuzz/make_seeds.py "$out/seeds-gguf" "$out/seeds-text" "$out/vocab"
export SPARSEINFER_ISA=generic
export ASAN_OPTIONS=detect_leaks=1
status=0
run() {  # name, corpus dir, seeds dir
    local name=$1 corpus=$2 seeds=$3
    mkdir -p "$corpus"
    echo "== $name, ${seconds}s"
    "$out/$name" "$corpus" "$seeds" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$out/crash-$(basename "$corpus")-" -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|Done)" || true
    if ls "$out"/crash-"$(basename "$corpus")"-* >/dev/null 2>&1; then
        echo "$name: crashes found: $(ls "$out"/crash-"$(basename "$corpus")"-*)"
        status=1
    else
        echo "$name: no crashes"
    fi
}
run gguf_fuzzer "$out/corpus-gguf" "$out/seeds-gguf"
for vocab in "$out"/vocab/*.gguf; do
    SPARSEINFER_FUZZ_VOCAB="$vocab" run tokenizer_fuzzer "$out/corpus-text-$(basename "$vocab" .gguf)" "$out/seeds-text"
done
exit $status
