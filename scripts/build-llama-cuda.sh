#!/usr/bin/env bash
# Build a llama-cpp-python wheel with llama.cpp's CUDA backend, from its sdist.
#
#   scripts/build-llama-cuda.sh SDIST_OR_VERSION ARCHS OUTDIR
#
#   SDIST_OR_VERSION  a llama_cpp_python-X.Y.Z.tar.gz on disk, or a version (0.3.36) that pip
#                     downloads as an sdist (needs a package index)
#   ARCHS             CMAKE_CUDA_ARCHITECTURES, ';' or ',' separated: 90 (H100/H200), 87 (Orin),
#                     110 (Thor), 89 (Ada), 86 (Ampere), 80 (A100); `edgekit doctor` prints the
#                     one for the GPU it sees
#   OUTDIR            the wheel and build.log land here
#
# Environment:
#   CUDACXX       nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
#   CUBLAS_ROOT   a directory with include/cublas_v2.h and lib/libcublas.so*, for a toolkit that
#                 ships only the compiler and cudart (as on a pip- or container-installed nvcc):
#                 e.g. the nvidia/cu13 directory of the `nvidia-cublas` wheel. Found by itself
#                 in the toolkit, or in the Python's site-packages (torch's CUDA wheels bring it)
#   NATIVE=1      -march=native CPU code (default: a portable AVX2/FMA/F16C build, so the wheel
#                 runs on another x86-64 host than the one that built it)
#   EXTRA_CMAKE_ARGS   appended to CMAKE_ARGS
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default: all cores)
#   BUILD_DIR     CMake's build tree (default: OUTDIR/build). It is kept, so running the script
#                 again after an interruption resumes where the compile stopped: the CUDA
#                 kernels take hours on a 2-core host or a Jetson, and pip's default temporary
#                 tree would start them over
#
# Why the explicit CUDACXX: without it CMake may not find nvcc (it is not on PATH on Jetson's
# JetPack by default) and llama-cpp-python then builds a CPU-only library without an error
# (llama-cpp-python #1779). This script refuses instead, and checks the built library for
# CUDA before it reports success.
#
# At run time libggml-cuda.so needs libcudart.so.* and libcublas.so.* on the loader's path
# (LD_LIBRARY_PATH, or the ones in torch's nvidia/cu13/lib).
set -euo pipefail

die() { echo "build-llama-cuda: error: $*" >&2; exit 2; }

[ $# -eq 3 ] || die "usage: $0 SDIST_OR_VERSION ARCHS OUTDIR (e.g. 0.3.36 90 /tmp/llama-cuda)"
src=$1
archs=${2//,/;}
out=$3
[[ $archs =~ ^[0-9]+[af]?(-real|-virtual)?(\;[0-9]+[af]?(-real|-virtual)?)*$ ]] \
    || die "ARCHS '$2' is not a list of CUDA architectures -- give numbers like 90 or 87;110"
mkdir -p "$out"
out=$(cd "$out" && pwd)

nvcc=${CUDACXX:-$(command -v nvcc || true)}
[ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
[ -x "$nvcc" ] || die "nvcc not found -- install the CUDA toolkit or set CUDACXX=/path/to/nvcc"
# nvcc may be a wrapper script (as /usr/local/bin/nvcc is on some images): ask it where it lives.
here=$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)
[ -n "$here" ] || here=$(dirname "$(readlink -f "$nvcc")")
nvcc=$here/nvcc
cuda_home=$(cd "$here/.." && pwd)
cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
cuda_major=${cuda_version%%.*}
[ -n "$cuda_version" ] || die "could not read the CUDA version from '$nvcc --version'"

# cuBLAS: ggml-cuda links it. Toolkit first, then CUBLAS_ROOT, then a pip-installed wheel.
cublas_args=""
rpath_link=""
if [ -e "$cuda_home/include/cublas_v2.h" ]; then
    cublas_root=$cuda_home
else
    cublas_root=${CUBLAS_ROOT:-}
    if [ -z "$cublas_root" ]; then
        cublas_root=$(python3 - "$cuda_major" <<'EOF' || true
import importlib.util, pathlib, sys
for name in (f"nvidia.cu{sys.argv[1]}", "nvidia.cublas"):
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        continue
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (pathlib.Path(loc) / "include" / "cublas_v2.h").exists():
            print(loc)
            raise SystemExit(0)
EOF
)
    fi
    [ -n "$cublas_root" ] && [ -e "$cublas_root/include/cublas_v2.h" ] || die \
        "cuBLAS headers not in $cuda_home -- pip install --target DIR nvidia-cublas==$cuda_version.* and set CUBLAS_ROOT=DIR/nvidia/cu$cuda_major (or install the toolkit's cuBLAS package)"
    libdir=$cublas_root/lib
    lib=$(ls "$libdir"/libcublas.so* 2>/dev/null | head -1)
    liblt=$(ls "$libdir"/libcublasLt.so* 2>/dev/null | head -1)
    [ -n "$lib" ] && [ -n "$liblt" ] || die "no libcublas.so* / libcublasLt.so* in $libdir"
    # The wheel ships only versioned names; pass the files so find_library needs no symlink.
    cublas_args="-DCUDA_cublas_LIBRARY=$lib -DCUDA_cublasLt_LIBRARY=$liblt"
    cublas_args+=" -DCMAKE_CUDA_FLAGS=-I$cublas_root/include -DCMAKE_CXX_FLAGS=-I$cublas_root/include"
    rpath_link=$libdir
fi

# The driver library (libcuda.so) comes with the GPU driver, not the compiler. ggml-cuda links it
# for its virtual-memory pool; on a build host without a driver link a stub, as the toolkit's own
# lib64/stubs/libcuda.so is: every driver entry point cuda.h declares, as empty functions, under
# the driver's soname, so the real libcuda.so.1 is loaded at run time. The stub goes nowhere else.
driver_args=""
if ! ls "$cuda_home"/lib64/stubs/libcuda.so "$cuda_home"/targets/*/lib/stubs/libcuda.so \
        /usr/lib/*/libcuda.so /usr/lib64/libcuda.so >/dev/null 2>&1; then
    mkdir -p "$out/stubs"
    gcc -E -P -I"$cuda_home/include" -x c - <<<'#include <cuda.h>' \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' | sed 's/\s*($//' | sort -u \
        | sed 's/.*/void &(void) {}/' >"$out/stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/stubs/libcuda.so" "$out/stubs/libcuda_stub.c"
    ln -sf libcuda.so "$out/stubs/libcuda.so.1"  # what an executable's link looks up through libggml-cuda's NEEDED
    driver_args="-DCUDA_cuda_driver_LIBRARY=$out/stubs/libcuda.so"
    rpath_link=${rpath_link:+$rpath_link:}$out/stubs
fi
# Executables linked against libggml-cuda (llama.cpp's tools, when enabled) resolve its NEEDED
# libraries at link time: point the linker at the cuBLAS wheel and the stub (not recorded in the output).
if [ -n "$rpath_link" ]; then
    driver_args+=" -DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath-link,$rpath_link -DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$rpath_link"
fi

if [ -f "$src" ]; then
    sdist=$(readlink -f "$src")
else
    mkdir -p "$out/sdist"
    python3 -m pip download --no-deps --no-binary :all: -d "$out/sdist" "llama-cpp-python==$src"
    sdist=$(ls "$out"/sdist/llama_cpp_python-*.tar.gz | head -1)
fi

native=OFF
[ "${NATIVE:-0}" = 1 ] && native=ON
export CUDACXX=$nvcc
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$archs -DCUDAToolkit_ROOT=$cuda_home -DGGML_NATIVE=$native $cublas_args $driver_args ${EXTRA_CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

# Build isolation needs a package index for scikit-build-core; without one, use the installed one.
isolation=""
python3 -c "import scikit_build_core" 2>/dev/null && isolation="--no-build-isolation"

echo "sdist:   $sdist"
echo "nvcc:    $nvcc (CUDA $cuda_version)"
echo "cuBLAS:  $cublas_root"
echo "driver:  ${driver_args:-system libcuda}"
echo "archs:   $archs   jobs: $CMAKE_BUILD_PARALLEL_LEVEL   native CPU: $native"
build_dir=${BUILD_DIR:-$out/build}
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
# A stable source tree too: CMake refuses a build tree made from another source directory, and
# pip unpacks an sdist into a new temporary one each run.
srcdir=$build_dir/src
if [ ! -e "$srcdir/pyproject.toml" ] || [ "$(cat "$build_dir/sdist.sha256" 2>/dev/null)" != "$(sha256sum "$sdist" | cut -d' ' -f1)" ]; then
    rm -rf "$srcdir" && mkdir -p "$srcdir"
    tar -xzf "$sdist" -C "$srcdir" --strip-components=1
    sha256sum "$sdist" | cut -d' ' -f1 >"$build_dir/sdist.sha256"
fi
echo "build:   $build_dir$( [ -e "$build_dir/cmake/build.ninja" ] && echo '   (resuming)')"
echo "CMAKE_ARGS=$CMAKE_ARGS"
start=$(date +%s)
# Append, so a resumed build keeps the log of the part that ran before.
# The seconds of earlier, interrupted runs are kept beside the tree, so 'time' is the whole compile.
earlier=$(cat "$build_dir/seconds" 2>/dev/null || echo 0)
trap 'echo $(( $(date +%s) - start + earlier )) >"$build_dir/seconds"; exit 130' INT TERM HUP
status=0
python3 -m pip wheel --no-deps $isolation -w "$out" -v -C build-dir="$build_dir/cmake" "$srcdir" >>"$out/build.log" 2>&1 \
    || status=$?
secs=$(( $(date +%s) - start + earlier ))
echo "$secs" >"$build_dir/seconds"
[ "$status" = 0 ] || die "build failed after $secs s -- see $out/build.log (run again to resume)"

wheel=$(ls -t "$out"/llama_cpp_python-*.whl | head -1)
# llama-cpp-python sets CMAKE_INSTALL_RPATH_USE_LINK_PATH, so CMake writes the directories of the
# libraries linked from outside the build tree into every installed library's RUNPATH: here the
# driver stub's and CUBLAS_ROOT's. On this host the stub would then shadow the driver's
# libcuda.so.1 at run time. Those entries are removed with patchelf, the wheel's RECORD updated.
build_only="${driver_args:+$out/stubs}${cublas_args:+:$cublas_root/lib}"
if [ -n "$build_only" ]; then
    command -v patchelf >/dev/null || die "patchelf is needed to clear the build host's paths from the libraries' run path -- pip install patchelf (or apt-get install patchelf), then run this again (the compile is kept)"
    python3 - "$wheel" "$build_only" <<'EOF_PY' || die "could not rewrite the run paths in $wheel"
import base64, hashlib, os, subprocess, sys, tempfile, zipfile

wheel, drop = sys.argv[1], {d for d in sys.argv[2].split(":") if d}
tmp = wheel + ".tmp"
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst, \
        tempfile.TemporaryDirectory() as work:
    changed = {}
    for info in src.infolist():
        data = src.read(info)
        name = os.path.basename(info.filename)
        if ".so" in name and data[:4] == b"\x7fELF":
            path = os.path.join(work, "lib.so")
            with open(path, "wb") as f:
                f.write(data)
            rpath = subprocess.run(["patchelf", "--print-rpath", path], check=True, capture_output=True,
                                   text=True).stdout.strip()
            keep = ":".join(p for p in rpath.split(":") if p and p.rstrip("/") not in drop)
            if keep != rpath:
                subprocess.run(["patchelf", "--set-rpath", keep, path], check=True)
                with open(path, "rb") as f:
                    data = f.read()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                changed[info.filename] = f"{info.filename},sha256={digest},{len(data)}"
        if info.filename.endswith(".dist-info/RECORD"):
            continue  # written last, with the new hashes
        dst.writestr(info, data)
    record = next(i for i in src.infolist() if i.filename.endswith(".dist-info/RECORD"))
    lines = [changed.get(line.split(",", 1)[0], line) for line in src.read(record).decode().splitlines()]
    dst.writestr(record, "\n".join(lines) + "\n")
os.replace(tmp, wheel)
print(f"run path:  build-host directories removed from {len(changed)} libraries")
EOF_PY
fi
# A wheel without libggml-cuda is the silent CPU-only build this script exists to prevent.
unzip -l "$wheel" | grep -q 'libggml-cuda\.so' \
    || die "$wheel has no libggml-cuda.so: CUDA was not built -- see $out/build.log"
# The stub must never be found at run time (it would shadow the driver's libcuda.so.1): the
# installed libraries carry llama-cpp-python's $ORIGIN run path, not the build tree's.
check=$(mktemp -d)
unzip -q -o "$wheel" 'llama_cpp/lib/libggml-cuda.so*' -d "$check"
for lib in "$check"/llama_cpp/lib/libggml-cuda.so*; do
    rpath=$(readelf -d "$lib" | grep -E 'R(UN)?PATH' || true)
    if grep -q -e "$out/stubs" ${cublas_args:+-e "$cublas_root"} <<<"$rpath"; then
        rm -rf "$check"; die "$(basename "$lib") has a build-host run path (${rpath##*: }) -- report this"
    fi
done
rm -rf "$check"
echo "built:   $wheel"
echo "size:    $(du -m "$wheel" | cut -f1) MiB   time: ${secs} s (all runs of this build tree)"
# what was built, for the record (benchmarks/results/ keeps one)
python3 - "$wheel" "$archs" "$cuda_version" "$secs" "$CMAKE_BUILD_PARALLEL_LEVEL" "$(nproc)" >"$out/build-info.json" <<'EOF_PY'
import hashlib, json, os, platform, sys, zipfile
wheel, archs, cuda, secs, jobs, cores = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    cuda_lib = max((i.file_size for i in z.infolist() if "libggml-cuda.so" in i.filename), default=0)
h = hashlib.sha256()
with open(wheel, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(json.dumps({"wheel": os.path.basename(wheel), "wheel_bytes": os.path.getsize(wheel), "sha256": h.hexdigest(),
                  "libggml_cuda_bytes": cuda_lib, "cuda_architectures": archs, "cuda_version": cuda,
                  "compile_seconds_all_runs": int(secs), "jobs": int(jobs), "host_cores": int(cores),
                  "host": platform.node(), "machine": platform.machine()}, indent=2))
EOF_PY
