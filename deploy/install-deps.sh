#!/usr/bin/env bash
# Installs every build and test dependency of gsa-serve from Debian 12's packages.
# Idempotent and non-interactive; run as root (or with sudo available).
# The CUDA toolkit is not a Debian package here: when nvcc is absent this says so and the
# CPU-only build goes on.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcpp-httplib-dev
  libssl-dev openssl
  bible-kjv bible-kjv-text
  nginx jq libyaml-cpp-dev
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: run as root or install sudo" >&2; exit 1
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Packages such as nginx start their service on install; the tests run their own instances, so
  # keep services from starting (a busy port 80 would otherwise fail the install).
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added_policy=1
  fi
  status=0
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
  [ "$added_policy" = 1 ] && $SUDO rm -f "$policy"
  [ "$status" = 0 ] || exit "$status"
else
  echo "install-deps: all Debian packages present"
fi

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "install-deps: CUDA toolkit found ($( (command -v nvcc || echo /usr/local/cuda/bin/nvcc) ))"
else
  echo "install-deps: no CUDA toolkit (nvcc) found; the GPU build needs CUDA 13 at /usr/local/cuda." \
       "Continuing with the CPU-only build."
fi
