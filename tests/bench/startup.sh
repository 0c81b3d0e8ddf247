#!/bin/sh
# Start-up: `probe check 127.0.0.1:PORT` from process start to exit, against `nc -z` as the
# floor, both to a loopback listener this script owns, and to a closed port; the interpreter
# alone (`python -c pass`, with and without site) as the floor of any Python command.
# Goal (issue 13): at most 60 ms. Needs hyperfine and nc (Debian: hyperfine, netcat-openbsd).
# Usage: sh tests/bench/startup.sh   (from the project root, with .venv installed)
#   PROBE=/venv/bin/probe    another install's console script (a regular `pip install .`)
#   BEFORE=/venv/bin/probe   also that install's check, in the same hyperfine run (before/after)
set -eu
probe=${PROBE:-.venv/bin/probe}
python=$(dirname "$probe")/python
# Bytecode as an installed wheel has it: with PYTHONDONTWRITEBYTECODE set (as on these
# machines) an editable install would otherwise compile every module on every run (~70 ms).
# (A regular install has its bytecode from pip; compiling the tree here is then harmless.)
"$python" -m compileall -q probe
port=$(python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
)
python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $port)); s.listen(4096)
end = time.time() + 120
s.settimeout(1)
while time.time() < end:
    try: s.accept()[0].close()
    except OSError: pass
" &
listener=$!
trap 'kill $listener' EXIT
sleep 0.3
closed=$(python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
)
uptime
# -i: a closed port exits 1 (no open attempt), as it should.
# The floor: nc -z, or (no nc installed) bash's own /dev/tcp connect.
floor="nc -z 127.0.0.1 $port"
command -v nc >/dev/null || floor="bash -c 'exec 3<>/dev/tcp/127.0.0.1/$port'"
set -- "$floor" "$python -S -c pass" "$python -c pass"
if [ -n "${BEFORE:-}" ]; then
    (cd "$(dirname "$BEFORE")/../.." 2>/dev/null && [ -d probe ] &&
        "$(dirname "$BEFORE")/python" -m compileall -q probe) || true
    set -- "$@" "$BEFORE check 127.0.0.1:$port" "$BEFORE check 127.0.0.1:$closed"
fi
hyperfine -N -i --warmup 3 --runs ${RUNS:-30} "$@" \
    "$probe check 127.0.0.1:$port" "$probe check 127.0.0.1:$closed"
uptime
# Where the rest goes: the imports of the check path, largest cumulative first.
"$python" -X importtime -m probe check "127.0.0.1:$port" 2>&1 >/dev/null |
    sort -t'|' -k2 -n -r | head -12
