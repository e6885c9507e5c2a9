#!/usr/bin/env bash
# Quick start: installs dependencies, builds, starts gsa-server on the bundled default model and
# streams one completion with gsa-cli. The server keeps running afterwards (its log and pid are
# in build/quickstart/); stop it with: kill $(cat build/quickstart/gsa-server.pid)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j --target gsa-server gsa-cli gsa-bench
mkdir -p build/quickstart
port=${GSA_PORT:-50051}
if [ -f build/quickstart/gsa-server.pid ] && kill -0 "$(cat build/quickstart/gsa-server.pid)" 2>/dev/null; then
  kill "$(cat build/quickstart/gsa-server.pid)" && sleep 1
fi
build/bin/gsa-server --port "$port" > build/quickstart/gsa-server.out 2> build/quickstart/gsa-server.log &
echo $! > build/quickstart/gsa-server.pid
for _ in $(seq 1 120); do
  grep -q "listening on" build/quickstart/gsa-server.out && break
  kill -0 "$(cat build/quickstart/gsa-server.pid)" 2>/dev/null || { cat build/quickstart/gsa-server.log >&2; exit 1; }
  sleep 0.5
done
echo "== $(cat build/quickstart/gsa-server.out)"
echo "== gsa-cli \"In the beginning\" --max-tokens 48"
build/bin/gsa-cli --target "127.0.0.1:$port" "In the beginning" --max-tokens 48 --seed 1 --temperature 0.8
echo "== the server is still running (pid $(cat build/quickstart/gsa-server.pid)); try build/bin/gsa-cli --help"
