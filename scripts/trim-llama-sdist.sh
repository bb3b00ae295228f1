#!/usr/bin/env bash
# A llama-cpp-python sdist without what its build does not read, small enough to carry to a lent
# GPU machine (64 MiB in all) and build there with scripts/build-llama-cuda.sh.
#
#   scripts/trim-llama-sdist.sh SDIST OUT.tar.gz
#
# Left out of vendor/llama.cpp: models/ (vocabulary GGUFs for llama.cpp's own tests, 75 MiB of the
# 0.3.36 sdist's 176), docs/, benches/, media/, tests/ and the SYCL, Vulkan and OpenCL backends. Nothing a
# CUDA or CPU build configures or compiles is in them:
# the trimmed sdist is checked by configuring it before it is written.
set -euo pipefail

die() { echo "trim-llama-sdist: error: $*" >&2; exit 2; }
[ $# -eq 2 ] || die "usage: $0 SDIST OUT.tar.gz"
[ -f "$1" ] || die "$1 is not a file -- pass a llama_cpp_python-X.Y.Z.tar.gz"
sdist=$(readlink -f "$1")
out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
root=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
[ -e "$root/vendor/llama.cpp/CMakeLists.txt" ] || die "$1 has no vendor/llama.cpp: not a llama-cpp-python sdist"
for dir in models docs benches media tests ggml/src/ggml-sycl ggml/src/ggml-vulkan ggml/src/ggml-opencl; do
    rm -rf "${root:?}/vendor/llama.cpp/$dir"
done
# The build must still configure (CPU only here: the CUDA sources are all kept).
cmake -S "$root" -B "$work/configure" -G Ninja -DLLAMA_BUILD=ON >"$work/configure.log" 2>&1 \
    || die "the trimmed sources do not configure -- see the CMake output: $(tail -3 "$work/configure.log")"
tar -czf "$out.tmp" -C "$work" "$(basename "$root")"
mv "$out.tmp" "$out"
echo "trimmed: $out  $(du -m "$out" | cut -f1) MiB (from $(du -m "$sdist" | cut -f1) MiB)"
