#!/usr/bin/env bash
# Smoke-test a built codexlb binary:
#
#   build/smoke.sh dist/codexlb
#
# Checks `version`, then starts `serve` on a free loopback port with a throwaway
# data dir and an environment without Python, waits for /health/ready, stops it
# over to a new process with `upgrade`, stops that with SIGTERM and expects
# clean exits; then runs `demo` and asks it for a response. Exits non-zero on the first failure.
set -euo pipefail
set +m   # no job control: a background child is then never a group leader, so setsid below execs in place

if [[ $# -ne 1 ]]; then
    echo "usage: $0 BINARY" >&2
    exit 2
fi
BIN="$(realpath -- "$1")"
READY_TIMEOUT_S=20
STOP_TIMEOUT_S=15

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    # The server runs in its own process group: kill the bootloader and its
    # Python child together (a SIGKILLed bootloader cannot forward the signal).
    if [[ -n "$server_pid" ]]; then
        kill -KILL -- "-$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # run the EXIT trap on Ctrl-C too

[[ -x "$BIN" ]] || fail "$BIN is not an executable file"

# Helpers (curl, python3 for the free port) run with the caller's environment.
for cmd in curl python3 setsid; do
    command -v "$cmd" >/dev/null || fail "smoke.sh needs $cmd"
done
# The binary runs with `env -i` and PATH set to an empty directory: no Python
# (nor anything else) can be found, and no PYTHONHOME/PYTHONPATH/VIRTUAL_ENV
# leaks in. TMPDIR is where the one-file binary unpacks itself.
CLEAN_PATH="$tmp/empty-path"
mkdir -p -- "$CLEAN_PATH" "$tmp/home"
CLEAN_ENV=(env -i PATH="$CLEAN_PATH" HOME="$tmp/home" TMPDIR="$tmp" LANG=C.UTF-8)

# 0. The clean environment really has no Python to fall back on.
for py in python3 python; do
    if PATH="$CLEAN_PATH" command -v "$py" >/dev/null 2>&1; then
        fail "$py is reachable on the clean PATH $CLEAN_PATH"
    fi
done
pass "clean environment: env -i, PATH=$CLEAN_PATH (empty), no python reachable"

# 1. version
out="$("${CLEAN_ENV[@]}" "$BIN" version)" || fail "'$BIN version' exited $?"
[[ "$out" =~ ^codexlb\ [0-9][^[:space:]]*$ ]] || fail "'version' printed '$out', want 'codexlb <ver>'"
pass "version: $out"

# 2. serve on a free port
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$tmp/serve.log"
# setsid -> env -> BIN all exec in place, so $! is the binary itself (the
# one-file bootloader, which forwards signals to its Python child) and leads
# its own process group. The data dir is created by serve.
setsid "${CLEAN_ENV[@]}" "$BIN" serve --host 127.0.0.1 --port "$port" --data-dir "$tmp/data" --log-format json \
    >"$log" 2>&1 &
server_pid=$!

url="http://127.0.0.1:$port/health/ready"
deadline=$((SECONDS + READY_TIMEOUT_S))
code=000
while (( SECONDS < deadline )); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$log" >&2
        fail "server exited before becoming ready"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
    [[ "$code" == 200 ]] && break
    sleep 0.2
done
if [[ "$code" != 200 ]]; then
    cat "$log" >&2
    fail "GET $url did not return 200 within ${READY_TIMEOUT_S}s (last: $code)"
fi
pass "GET /health/ready -> 200 on port $port"
grep -q '"event":"listening"' "$log" || { cat "$log" >&2; fail "no JSON 'listening' log line"; }
pass "JSON 'listening' log line present"
# The dashboard's files travel inside the binary.
for asset in / /dashboard/app.js /dashboard/style.css; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port$asset" || true)"
    [[ "$code" == 200 ]] || fail "GET $asset -> $code (dashboard files missing from the binary?)"
done
pass "dashboard served from the binary"

# 3. upgrade: a new process from the same binary takes the socket over once it serves; the old one drains
#    and exits 0 (its bootloader is $server_pid); the new one runs in the same process group.
record_pid() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$tmp/data/server.json"; }
old_pid="$(record_pid)"
"${CLEAN_ENV[@]}" "$BIN" upgrade --data-dir "$tmp/data" >"$tmp/upgrade.out" 2>&1 \
    || { cat "$tmp/upgrade.out" "$log" >&2; fail "'upgrade' failed"; }
new_pid="$(record_pid)"
[[ "$new_pid" != "$old_pid" ]] || { cat "$tmp/upgrade.out" "$log" >&2; fail "server.json still names pid $old_pid"; }
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 "$server_pid" 2>/dev/null && (( SECONDS < deadline )); do
    sleep 0.1
done
kill -0 "$server_pid" 2>/dev/null && { cat "$log" >&2; fail "the old process still runs ${STOP_TIMEOUT_S}s after the hand-over"; }
rc=0
wait "$server_pid" || rc=$?
[[ "$rc" -eq 0 ]] || { cat "$log" >&2; fail "the old process exited $rc after the hand-over, want 0"; }
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
[[ "$code" == 200 ]] || { cat "$log" >&2; fail "GET /health/ready -> $code after the upgrade"; }
pass "upgrade: pid $old_pid handed the port over to pid $new_pid, which serves; the old one exited 0"

# 4. SIGTERM -> clean exit 0 within the bound (to the new process: not our child, so watched by pid)
server_group="$server_pid"
kill -TERM "$new_pid"
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 -- "-$server_group" 2>/dev/null && (( SECONDS < deadline )); do
    sleep 0.1
done
if kill -0 -- "-$server_group" 2>/dev/null; then
    cat "$log" >&2
    fail "a process of the server still runs ${STOP_TIMEOUT_S}s after SIGTERM"
fi
server_pid=""
[[ "$(grep -c '"event":"stopped"' "$log")" -eq 2 ]] || { cat "$log" >&2; fail "want a 'stopped' line from each process"; }
grep -q '"level":"error"' "$log" && { cat "$log" >&2; fail "an error was logged"; }
pass "SIGTERM -> a clean drain and stop, no error logged"
if compgen -G "$tmp/_MEI*" >/dev/null; then
    fail "the one-file unpack dir was not removed: $(echo "$tmp"/_MEI*)"
fi
pass "no leftover process or unpack dir"

# 5. demo: the README's first command, answered end to end through its own simulated backend
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$tmp/demo.log"
setsid "${CLEAN_ENV[@]}" "$BIN" demo --port "$port" >"$log" 2>&1 &
server_pid=$!
deadline=$((SECONDS + READY_TIMEOUT_S))
answer=""
while (( SECONDS < deadline )); do
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "demo exited before answering"; }
    answer="$(curl -s --max-time 5 "http://127.0.0.1:$port/v1/responses" -H 'Content-Type: application/json' \
        -d '{"model": "gpt-5.5", "input": "smoke"}' || true)"
    [[ "$answer" == *"You said: smoke"* ]] && break
    sleep 0.2
done
[[ "$answer" == *"You said: smoke"* ]] || { cat "$log" >&2; fail "demo did not answer /v1/responses (last: $answer)"; }
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
[[ "$rc" -eq 0 ]] || { cat "$log" >&2; fail "demo exited $rc after SIGTERM, want 0"; }
pass "demo answers /v1/responses through its simulated backend and stops with exit 0"

echo "PASS: all smoke checks for $BIN"
