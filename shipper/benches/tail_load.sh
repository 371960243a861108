#!/usr/bin/env bash
# End-to-end load measurement of the release lode-shipper binary: FILES CRI files of LINES
# lines each under a fake /var/log/pods tree, pushed to a sink that answers 204 to every
# push. Prints lines/s (wall), CPU seconds, lines per CPU-second and peak RSS.
#   cargo build --release -p lode-shipper && shipper/benches/tail_load.sh [FILES] [LINES]
set -euo pipefail
FILES=${1:-200}
LINES=${2:-2500}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/lode-shipper}
WORK=$(mktemp -d)
trap 'kill $SINK $SHIP 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$WORK/pods" "$FILES" "$LINES" <<'PY'
import os, sys
root, files, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for f in range(files):
    d = os.path.join(root, f"shop_web-7d9f8c6b5d-{f:05d}_uid{f}", "app")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "0.log"), "w") as out:
        for i in range(lines):
            out.write(f"2024-05-01T10:00:{i % 60:02d}.{i:09d}Z stdout F level=info msg=\"request served\" path=/api/v1/items/{i} status=200 duration_ms={i % 997}\n")
PY

SINK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$SINK_PORT" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
SINK=$!
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sleep 0.5

START=$(date +%s.%N)
"$BIN" --client.url "http://127.0.0.1:$SINK_PORT/loki/api/v1/push" \
  --positions.file "$WORK/positions.json" --glob "$WORK/pods/*/*/*.log" \
  --node-name bench --server.http-listen-port "$METRICS_PORT" --log.level warn &
SHIP=$!
TOTAL=$((FILES * LINES))
while :; do
  SENT=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^lode_shipper_sent_entries_total /{print $2}')
  [ "${SENT%.*}" -ge "$TOTAL" ] 2>/dev/null && break
  [ -n "${DEBUG:-}" ] && echo "sent=${SENT:-?}" >&2
  sleep 0.1
done
END=$(date +%s.%N)
TICKS=$(getconf CLK_TCK)
CPU=$(awk -v t="$TICKS" '{print ($14 + $15) / t}' "/proc/$SHIP/stat")
RSS=$(awk '/VmHWM/{print $2}' "/proc/$SHIP/status")
python3 - "$TOTAL" "$START" "$END" "$CPU" "$RSS" "$FILES" <<'PY'
import sys
total, start, end, cpu, rss, files = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
wall = end - start
print(f"files={files} lines={total} wall={wall:.2f}s lines/s={total/wall:,.0f} "
      f"cpu={cpu:.2f}s lines/cpu-s={total/cpu:,.0f} cpu-per-10k-lines/s={10000*cpu/total:.3f} cores "
      f"peak_rss={rss/1024:.1f}MiB")
PY
