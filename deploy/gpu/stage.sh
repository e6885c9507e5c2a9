#!/usr/bin/env bash
# Stages built binaries and the non-system shared libraries they load into one folder, so they run
# on a machine that has the NVIDIA driver and CUDA 13 but none of Debian's gRPC, Abseil, protobuf
# or sentencepiece packages (the GPU machine of ../../../shared/GPU.md).
#
#   deploy/gpu/stage.sh BUILD_DIR STAGE_DIR [binary ...]
#
# STAGE_DIR/bin gets the binaries and libgsa_spm.so, STAGE_DIR/lib the libraries. On the other
# machine: export LD_LIBRARY_PATH=STAGE_DIR/lib:/usr/local/cuda/lib64. The C library, libstdc++,
# libgcc, libm, zlib and the CUDA/driver libraries are left out: that machine has its own.
set -euo pipefail
build=${1:?usage: stage.sh BUILD_DIR STAGE_DIR [binary ...]}
stage=${2:?usage: stage.sh BUILD_DIR STAGE_DIR [binary ...]}
shift 2
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  bins=(gsa-server gsa-cli gsa-bench gsa-make-model cuda_kernels_test cuda_backend_test)
fi
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
files=()
for b in "${bins[@]}"; do
  if [ ! -x "$build/bin/$b" ]; then echo "stage.sh: $build/bin/$b is not built" >&2; exit 1; fi
  cp "$build/bin/$b" "$stage/bin/"
  files+=("$build/bin/$b")
done
cp "$build/bin/libgsa_spm.so" "$stage/bin/"
files+=("$build/bin/libgsa_spm.so")
skip='^(libc|libm|libgcc_s|libstdc\+\+|libz|ld-linux-x86-64|libdl|libpthread|librt|libcuda|libcudart|libcublas|libcublasLt|libnvidia.*)\.so'
for f in "${files[@]}"; do
  ldd "$f" | awk '/=> \//{print $3}' | while read -r lib; do
    name=$(basename "$lib")
    if [[ "$name" =~ $skip ]]; then continue; fi
    [ -e "$stage/lib/$name" ] || cp -L "$lib" "$stage/lib/$name"
  done
done
du -sh "$stage"
