#!/usr/bin/env bash
# Stock-client compatibility: Triton's perf_analyzer against (a) a standalone edge node and
# (b) the coordinator fronting 2 edge nodes, all on loopback.
#
# Usage: bench/perf_analyzer.sh            (from anywhere; ~1 minute once the venv exists)
#
# perf_analyzer is not shipped by current tritonclient wheels: it lives in a SEPARATE venv
# (outside the repo, default /work/perfvenv; override with PERFVENV=...), created here if
# missing (idempotent): libb64-0d from apt, tritonclient[grpc]==2.51.0 and
# nvidia-cuda-runtime-cu12 from PyPI (no GPU is needed; the binary only links libcudart).
# The fleet is started by bench/bench_fleet.py hold and stopped (SIGTERM) on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERFVENV=${PERFVENV:-/work/perfvenv}
BASE_PYTHON=${BASE_PYTHON:-python3.11}
REPO_PYTHON=${REPO_PYTHON:-$ROOT/.venv/bin/python}
MODEL=${MODEL:-mnist_edge}
# Another model: REPOSITORY=DIR (served instead of the shipped models), SHAPE=NAME:D1,D2,..
# for an input with a variable dimension besides the batch ("" for fixed shapes), and
# BATCH=N for the batched runs (BATCH=1 for a model that cannot batch).
REPOSITORY=${REPOSITORY:-}
SHAPE=${SHAPE-image:28,28,1}
BATCH=${BATCH:-8}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/edgeshard-perf-analyzer.XXXXXX)}
PA_TIMEOUT=${PA_TIMEOUT:-120}

setup() {
    if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
        echo "installing libb64-0d (apt)" >&2
        apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
    fi
    if [[ ! -x $PERFVENV/bin/perf_analyzer ]]; then
        echo "creating $PERFVENV with tritonclient[grpc]==2.51.0" >&2
        "$BASE_PYTHON" -m venv "$PERFVENV"
        "$PERFVENV/bin/pip" install -q 'tritonclient[grpc]==2.51.0' nvidia-cuda-runtime-cu12
    fi
}

setup
CUDART=$(echo "$PERFVENV"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
export LD_LIBRARY_PATH=$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PA=$PERFVENV/bin/perf_analyzer
"$PA" --version 2>/dev/null | head -1 || true

# Start the fleet: a coordinator with 2 registered nodes (--workers 1 each) and a
# standalone node (--workers 2). It prints one JSON line with the addresses.
coproc FLEET { exec "$REPO_PYTHON" "$ROOT/bench/bench_fleet.py" hold --nodes 2 --standalone \
    --max-seconds 600 ${REPOSITORY:+--repository "$REPOSITORY"}; }
FLEET_PID=$FLEET_PID
cleanup() { kill -TERM "$FLEET_PID" 2>/dev/null || true; wait "$FLEET_PID" 2>/dev/null || true; }
trap cleanup EXIT
read -r -t 90 ADDRS <&"${FLEET[0]}"
NODE=$(echo "$ADDRS" | "$REPO_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["standalone"])')
COORD=$(echo "$ADDRS" | "$REPO_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["coordinator"])')
echo "edge node (standalone, --workers 2): $NODE"
echo "coordinator (2 nodes, --workers 1 each): $COORD"
echo "full perf_analyzer output: $LOGDIR"

rc=0
run() {  # run TARGET_LABEL ADDRESS LOGNAME [extra perf_analyzer args...]
    local label=$1 addr=$2 log=$LOGDIR/$3.log
    shift 3
    local shape=()
    [[ -n $SHAPE ]] && shape=(--shape "$SHAPE")
    local cmd=("$PA" -m "$MODEL" -u "$addr" -i grpc "${shape[@]}" -p 1667 -r 3 -s 100 "$@")
    echo
    echo "== $label: perf_analyzer -m $MODEL -u $addr -i grpc ${shape[*]} -p 1667 -r 3 -s 100 $*"
    local ok=0
    timeout "$PA_TIMEOUT" "${cmd[@]}" >"$log" 2>&1 && ok=1
    if [[ $ok == 0 ]] && grep -q 'Failed to obtain stable measurement' "$log"; then
        # a noisy shared 2-core machine: allow more windows before giving up (not an error
        # of the server; the RPCs all succeeded)
        echo "   (unstable within 3 windows; retrying with -r 10)"
        timeout "$PA_TIMEOUT" "${cmd[@]}" -r 10 >"$log" 2>&1 && ok=1
    fi
    if [[ $ok == 1 ]]; then
        grep -E '^(Request concurrency|  Batch size)|Throughput:|p50 latency|p99 latency|Avg request latency' "$log" || true
        sed -n '/^Inferences\/Second vs/,$p' "$log"
    else
        echo "FAILED; last lines of $log:"
        tail -20 "$log"
        rc=1
    fi
}

run "edge node" "$NODE" node-b1 --concurrency-range 1:4
[[ $BATCH -gt 1 ]] && run "edge node" "$NODE" node-b$BATCH -b "$BATCH" --concurrency-range 4
run "coordinator" "$COORD" coord-b1 --concurrency-range 1:4
[[ $BATCH -gt 1 ]] && run "coordinator" "$COORD" coord-b$BATCH -b "$BATCH" --concurrency-range 4
exit $rc
