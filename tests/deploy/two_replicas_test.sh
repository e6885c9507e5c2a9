#!/usr/bin/env bash
# Two gsa-server replicas behind nginx (deploy/nginx/gsa.conf, as shipped, with the replicas'
# ports, a free listen port and a temporary log path substituted), gsa-bench through nginx, and
# a SIGTERM to one replica in the middle of the run. No request may be lost. Checks:
#   - gsa-bench exits 0 and every request completed: failed == 0, completed == requests;
#   - every request streamed all its tokens (finish "length", output_tokens == N): no stream was
#     cut, in particular none of those running on the replica when it drained;
#   - both replicas served requests (nginx's access log, $upstream_addr), and the surviving one
#     served requests after the SIGTERM;
#   - the terminated replica drained (all its in-flight calls finished) and exited 0;
#   - retries: nginx cannot retry a gRPC status, so a call that reaches the terminated replica
#     between its SIGTERM and the moment its listener closes (usually none, at most a call or
#     two) is refused there at once with a trailers-only UNAVAILABLE "draining" (or CANCELLED
#     from gRPC's shutdown), before any work. gsa-bench sends such a call again (--max-retries,
#     clients/retry_policy.h) through nginx, which by then sends it to the surviving replica.
#     The test checks in nginx's log that there were exactly requests + gsa-bench's retries
#     attempts: one stream per request that ended OK, and as many trailers-only refusals (no
#     response headers, so no token) from the terminated replica after its SIGTERM as gsa-bench
#     counted retries. So no request was lost or answered twice, and none was retried after a
#     token arrived. It prints how many retries there were (in most runs none).
# GSA_DRAIN_TEST_MAX_RETRIES=N passes --max-retries N to gsa-bench (default: gsa-bench's 3);
# with 0 a refusal fails the test, which shows what the retries are for (for measuring only).
# Skips (exit 77) when nginx or jq is not installed (deploy/install-deps.sh installs both).
#
#   usage: two_replicas_test.sh BIN_DIR SOURCE_DIR
set -euo pipefail

bin_dir=${1:?usage: two_replicas_test.sh BIN_DIR SOURCE_DIR}
src_dir=${2:?usage: two_replicas_test.sh BIN_DIR SOURCE_DIR}
bench_retry_flags=()
if [ -n "${GSA_DRAIN_TEST_MAX_RETRIES:-}" ]; then bench_retry_flags=(--max-retries "$GSA_DRAIN_TEST_MAX_RETRIES"); fi
num_requests=60
concurrency=4
output_len=128
term_after=12  # SIGTERM once this many Generate calls have finished

for tool in nginx jq; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    echo "SKIP: $tool is not installed (deploy/install-deps.sh installs it)"
    exit 77
  fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d "${TMPDIR:-/tmp}/gsa-two-replicas.XXXXXX")
pids=()
status=1
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    echo "---- logs (kept in $work) ----"
    for f in "$work"/replica1.err "$work"/replica2.err "$work"/nginx/error.log "$work"/bench.out \
             "$work"/nginx/access.log; do
      [ -f "$f" ] && { echo "== $f"; tail -n 40 "$f"; }
    done
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
now() { date +%s.%N; }

# ---- two replicas on loopback, ephemeral ports ----------------------------------------------
model="$src_dir/tests/data/golden/gsa-tiny"
for i in 1 2; do
  "$bin_dir/gsa-server" --model "$model" --host 127.0.0.1 --port 0 --block-size 8 \
    --max-cache-tokens 4096 --cpu-threads 1 >"$work/replica$i.out" 2>"$work/replica$i.err" &
  pids+=($!)
  eval "replica${i}_pid=$!"
done
for i in 1 2; do
  pid_var="replica${i}_pid"
  for _ in $(seq 600); do
    grep -q "listening on" "$work/replica$i.out" 2>/dev/null && break
    kill -0 "${!pid_var}" 2>/dev/null || fail "replica $i exited during start-up"
    sleep 0.1
  done
  grep -q "listening on" "$work/replica$i.out" || fail "replica $i did not start within 60 s"
done
addr1=$(sed -n 's/^gsa-server: listening on //p' "$work/replica1.out")
addr2=$(sed -n 's/^gsa-server: listening on //p' "$work/replica2.out")
echo "replicas: $addr1 (will be terminated), $addr2"

# ---- nginx with deploy/nginx/gsa.conf, in the foreground, in a temporary prefix --------------
mkdir -p "$work/nginx/tmp"
start_nginx() {  # $1: port; returns 0 when nginx is up, 1 when the port was taken
  local port=$1
  sed -e "s|server 127.0.0.1:50051 |server $addr1 |" \
      -e "s|server 127.0.0.1:50052 |server $addr2 |" \
      -e "s|listen 127.0.0.1:8080 http2;|listen 127.0.0.1:$port http2;|" \
      -e "s|access_log /var/log/nginx/gsa-access.log gsa_grpc;|access_log $work/nginx/access.log gsa_grpc;|" \
      "$src_dir/deploy/nginx/gsa.conf" >"$work/nginx/gsa.conf"
  for s in "server $addr1 " "server $addr2 " "listen 127.0.0.1:$port http2;" \
           "access_log $work/nginx/access.log gsa_grpc;"; do
    grep -qF "$s" "$work/nginx/gsa.conf" || fail "deploy/nginx/gsa.conf changed: cannot substitute '$s'"
  done
  cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log notice;
events { worker_connections 1024; }
http {
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  include $work/nginx/gsa.conf;
}
EOF
  : >"$work/nginx/error.log"
  "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
    >"$work/nginx/stdout.log" 2>&1 &
  nginx_pid=$!
  for _ in $(seq 100); do
    if ! kill -0 "$nginx_pid" 2>/dev/null; then
      wait "$nginx_pid" 2>/dev/null || true
      grep -q "Address already in use" "$work/nginx/error.log" "$work/nginx/stdout.log" && return 1
      cat "$work/nginx/error.log" "$work/nginx/stdout.log"
      fail "nginx exited at start-up"
    fi
    grep -q "start worker process" "$work/nginx/error.log" && { pids+=("$nginx_pid"); return 0; }
    sleep 0.05
  done
  fail "nginx did not start within 5 s"
}
lb_port=""
for _ in $(seq 20); do
  port=$((20000 + RANDOM % 40000))
  if start_nginx "$port"; then lb_port=$port; break; fi
done
[ -n "$lb_port" ] || fail "no free port for nginx after 20 tries"
echo "nginx: 127.0.0.1:$lb_port -> $addr1, $addr2"

# ---- gsa-bench through nginx; SIGTERM replica 1 mid-run --------------------------------------
t_start=$(now)
"$bin_dir/gsa-bench" --target "127.0.0.1:$lb_port" --num-requests "$num_requests" \
  --concurrency "$concurrency" --input-len 32 --output-len "$output_len" --timeout-s 60 \
  --progress off "${bench_retry_flags[@]}" --json "$work/bench.json" >"$work/bench.out" 2>&1 &
bench_pid=$!
pids+=("$bench_pid")
generate_lines() { grep -c '"POST /gsa.v1.Generation/Generate HTTP/2.0"' "$work/nginx/access.log" 2>/dev/null || true; }
for _ in $(seq 600); do
  [ "$(generate_lines)" -ge "$term_after" ] && break
  kill -0 "$bench_pid" 2>/dev/null || fail "gsa-bench ended before the SIGTERM"
  sleep 0.05
done
[ "$(generate_lines)" -ge "$term_after" ] || fail "fewer than $term_after requests in 30 s"
t_term=$(now)
kill -TERM "$replica1_pid"
echo "SIGTERM to replica 1 after $(generate_lines) finished calls"

bench_rc=0
wait "$bench_pid" || bench_rc=$?
replica1_rc=0
wait "$replica1_pid" || replica1_rc=$?
t_end=$(now)

# ---- checks -----------------------------------------------------------------------------------
grep -A20 "gsa-bench results" "$work/bench.out" | sed -n '1,12p'
[ "$bench_rc" -eq 0 ] || fail "gsa-bench exited $bench_rc"
[ "$replica1_rc" -eq 0 ] || fail "the terminated replica exited $replica1_rc, expected 0"
# Its log (prose or one JSON object a line) says how many calls it was running at the SIGTERM
# and that all of them finished.
grep -Eq 'drained, exiting|"drained":true' "$work/replica1.err" \
  || fail "the terminated replica did not report a clean drain"
in_flight=$(grep -Eo 'draining [0-9]+ in-flight|"in_flight":[0-9]+' "$work/replica1.err" | head -n 1 | tr -dc '0-9')

json="$work/bench.json"
completed=$(jq '.results.completed' "$json")
failed=$(jq '.results.failed' "$json")
retries=$(jq '.results.retries' "$json")
[ "$(jq '.results.num_requests' "$json")" -eq "$num_requests" ] || fail "gsa-bench ran the wrong number of requests"
[ "$failed" -eq 0 ] \
  || fail "$failed request(s) lost: $(jq -c '[.requests[] | select(.status != "OK") | {index, status, error, retries, output_tokens}]' "$json")"
[ "$completed" -eq "$num_requests" ] || fail "completed $completed of $num_requests requests"
short=$(jq --argjson n "$output_len" '[.requests[] | select(.output_tokens != $n or .finish_reason != "length")] | length' "$json")
[ "$short" -eq 0 ] || fail "$short request(s) did not stream all $output_len tokens"

log="$work/nginx/access.log"
gen_log="$work/nginx/generate.log"
grep '"POST /gsa.v1.Generation/Generate HTTP/2.0"' "$log" >"$gen_log" || true
served1=$(grep -c "upstream=\[$addr1\]" "$gen_log" || true)
served2=$(grep -c "upstream=\[$addr2\]" "$gen_log" || true)
nginx_retried=$(grep -c "upstream=\[$addr1, $addr2\]" "$gen_log" || true)
[ "$served1" -ge 1 ] || fail "replica 1 ($addr1) served no request"
[ "$served2" -ge 1 ] || fail "replica 2 ($addr2) served no request"
# Calls that started (end time $msec minus $request_time) after the SIGTERM and were served by
# replica 2: proof that the SIGTERM came in the middle of the run.
after_term=$(awk -v t="$t_term" -v a="$addr2" '
  index($0, "upstream=[" a "]") && match($0, /request_time=[0-9.]+/) {
    if ($2 - substr($0, RSTART + 13, RLENGTH - 13) > t) n++
  } END { print n + 0 }' "$gen_log")
[ "$after_term" -ge 1 ] || fail "replica 2 served no call that started after the SIGTERM: the SIGTERM was not mid-run"

# The calls replica 1 was running at the SIGTERM streamed to the end (grpc-status 0 in the
# trailers, finished after the SIGTERM).
finished_in_drain=$(awk -v t="$t_term" -v a="$addr1" \
  'index($0, "upstream=[" a "]") && / grpc_status_trailers=0 / && $2 > t { n++ } END { print n + 0 }' "$gen_log")
if [ -n "$in_flight" ]; then
  [ "$finished_in_drain" -ge "$in_flight" ] \
    || fail "replica 1 was running $in_flight call(s) at the SIGTERM, only $finished_in_drain finished"
fi

# Every attempt went through nginx: the requests plus gsa-bench's retries. One stream per request
# ended OK (grpc-status 0 in the trailers); each other attempt is a call that replica 1 refused
# before any work after its SIGTERM: a trailers-only answer (grpc-status in the response headers,
# so no response message) UNAVAILABLE (14) or CANCELLED (1), which nginx passed on.
attempts=$(wc -l <"$gen_log")
[ "$attempts" -eq $((num_requests + retries)) ] \
  || fail "nginx logged $attempts Generate calls, expected $num_requests requests + $retries retries"
streams_ok=$(grep -c " grpc_status_trailers=0 " "$gen_log" || true)
[ "$streams_ok" -eq "$num_requests" ] \
  || fail "nginx logged $streams_ok streams that ended OK, expected one per request ($num_requests)"
refused=$(grep -Ec "grpc_status_headers=(14|1) " "$gen_log" || true)
[ "$refused" -eq "$retries" ] \
  || fail "gsa-bench retried $retries time(s), nginx logged $refused trailers-only UNAVAILABLE/CANCELLED answers"
not_victim=$(grep -E "grpc_status_headers=(14|1) " "$gen_log" | grep -vc "upstream=\[$addr1\]" || true)
[ "$not_victim" -eq 0 ] || fail "refusals came from a replica other than the terminated one"
early=$(awk -v t="$t_term" '/grpc_status_headers=(14|1) / && $2 < t { n++ } END { print n + 0 }' "$gen_log")
[ "$early" -eq 0 ] || fail "refusals before the SIGTERM"
retried_requests=$(jq '.results.retried_requests' "$json")

printf 'two_replicas_test: %d requests: %d completed, %d failed, %d retried (%d retries); replica 1 served %d (%s running at the SIGTERM, %d finished during the drain; %d refused after the SIGTERM and retried by gsa-bench; %d refused connections retried by nginx on replica 2), replica 2 served %d (%d started after the SIGTERM); %.1f s\n' \
  "$num_requests" "$completed" "$failed" "$retried_requests" "$retries" "$served1" "${in_flight:-?}" \
  "$finished_in_drain" "$refused" "$nginx_retried" "$served2" "$after_term" \
  "$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { print b - a }')"
status=0
echo "PASS"
