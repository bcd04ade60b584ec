#!/usr/bin/env bash
# Builds cpp/tests/kernel_check.cpp against the engine's kernel sources and runs it: natively
# (x86-64: generic, AVX2, AVX-512 as the CPU allows; AArch64: generic, NEON), and, when an
# AArch64 cross compiler and qemu-aarch64 are installed on an x86-64 host, cross-built
# (static, so qemu needs no sysroot) and run under qemu for the NEON level.
#
#   tools/check_kernels.sh            # build into a temporary directory, run, clean up
#   CXX=clang++ tools/check_kernels.sh
#   BUILD_DIR=build/kernel_check tools/check_kernels.sh   # keep the binaries
#
# The native check runs twice: as CMake builds the engine, and with -ffp-contract=off (what
# MSVC does by default): the bit-for-bit checks (batch invariance, kernels.h) must not depend
# on whether the compiler fuses a * b + c in scalar code.
#
# Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu qemu-user  (for the AArch64 run).
# Exits non-zero if any build or any check fails; a missing cross toolchain is a skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CXX="${CXX:-g++}"
CROSS_CXX="${CROSS_CXX:-aarch64-linux-gnu-g++}"
QEMU="${QEMU:-qemu-aarch64}"
CXXFLAGS_COMMON=(-std=c++17 -O2 -Icpp/src -Icpp/include)
# Warnings for the files this check owns (GCC 12's AVX-512 headers are noisy under -Wall).
WARN_FLAGS=(-Wall -Wextra)

if [[ -n "${BUILD_DIR:-}" ]]; then
    OUT="$BUILD_DIR"
    mkdir -p "$OUT"
else
    OUT="$(mktemp -d)"
    trap 'rm -rf "$OUT"' EXIT
fi

COMMON_SRCS=(cpp/tests/kernel_check.cpp cpp/src/cpu/kernels_generic.cpp cpp/src/cpu/dispatch.cpp
             cpp/src/tensor/dtype.cpp)

# build NAME COMPILER x86|arm64|generic [EXTRA LINK FLAGS...]; per-file ISA flags as in
# CMakeLists.txt; EXTRA_CXXFLAGS (an array) is added to every compile.
EXTRA_CXXFLAGS=()
build() {
    local name="$1" cxx="$2" arch="$3"
    shift 3
    local dir="$OUT/$name"
    mkdir -p "$dir"
    local objs=()
    local src
    local srcs=("${COMMON_SRCS[@]}")
    local def
    case "$arch" in
        x86) def=-DSPARSEINFER_X86=1; srcs+=(cpp/src/cpu/kernels_avx2.cpp cpp/src/cpu/kernels_avx512.cpp) ;;
        arm64) def=-DSPARSEINFER_ARM64=1; srcs+=(cpp/src/cpu/kernels_neon.cpp) ;;
        *) def= ;;
    esac
    for src in "${srcs[@]}"; do
        local flags=()
        case "$src" in
            */kernels_avx2.cpp) flags=(-mavx2 -mfma -mf16c) ;;
            */kernels_avx512.cpp) flags=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c) ;;
            */kernel_check.cpp|*/kernels_neon.cpp) flags=("${WARN_FLAGS[@]}") ;;
        esac
        local obj="$dir/$(basename "${src%.cpp}").o"
        # ${a[@]+"${a[@]}"}: empty arrays under set -u with bash 3.2 (macOS).
        "$cxx" "${CXXFLAGS_COMMON[@]}" ${EXTRA_CXXFLAGS[@]+"${EXTRA_CXXFLAGS[@]}"} ${def:+"$def"} \
            ${flags[@]+"${flags[@]}"} -c "$src" -o "$obj"
        objs+=("$obj")
    done
    "$cxx" "${objs[@]}" -o "$dir/kernel_check" ${1+"$@"}
}

status=0
host="$(uname -m)"
case "$host" in
    x86_64|amd64) native_arch=x86 ;;
    aarch64|arm64) native_arch=arm64 ;;
    *) native_arch=generic ;;
esac

echo "== native ($host, $CXX)"
build native "$CXX" "$native_arch"
"$OUT/native/kernel_check" || status=1

echo "== native, -ffp-contract=off"
EXTRA_CXXFLAGS=(-ffp-contract=off)
build native-no-contract "$CXX" "$native_arch"
EXTRA_CXXFLAGS=()
"$OUT/native-no-contract/kernel_check" || status=1

if [[ "$native_arch" != arm64 ]]; then
    if command -v "$CROSS_CXX" >/dev/null 2>&1 && command -v "$QEMU" >/dev/null 2>&1; then
        echo "== aarch64 under $QEMU ($CROSS_CXX)"
        build aarch64 "$CROSS_CXX" arm64 -static
        "$QEMU" "$OUT/aarch64/kernel_check" || status=1
    else
        echo "== aarch64: skipped ($CROSS_CXX or $QEMU not found)"
    fi
fi

exit "$status"
