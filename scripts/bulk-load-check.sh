#!/usr/bin/env bash
# bulk-load-check.sh: a bulk load must not make a healthy primary fence
# itself or fail over (issue 15: the leader lease is read off the Raft
# heartbeats, not off a confirmation that waits on the log's fsync).
#
# Starts a 3-node `pgha demo` in DIR (default /tmp/pgha-bulk), runs
# `pgbench -i -s SCALE` (default 150, ~2.3 GB) and then SECONDS (default
# 60) of `pgbench -N -c 8 -j 2` against the primary, and prints the
# history (one bootstrap entry expected) and the number of fences in the
# agents' logs (0 expected). Exit 1 if either is not as expected.
set -euo pipefail
B=${PGHA_BIN:-$(dirname "$0")/../bin/pgha}
DIR=${1:-/tmp/pgha-bulk}
SCALE=${SCALE:-150}
SECS=${SECONDS_RUN:-60}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
[ -x "$B" ] || { echo "build pgha first: make build" >&2; exit 2; }
[ -x "$PGBIN/pgbench" ] || { echo "pgbench not found in $PGBIN (apt-get install -y postgresql-15)" >&2; exit 2; }
rm -rf "$DIR"
"$B" demo --dir "$DIR" --nodes 3 > "$DIR.out" 2>&1 &
DEMO=$!
trap 'kill -INT $DEMO 2>/dev/null; wait $DEMO 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q 'cluster ready' "$DIR.out" && break; sleep 1; done
grep -q 'cluster ready' "$DIR.out" || { echo "demo did not start; see $DIR.out" >&2; exit 2; }
API=$(python3 -c "import json;d=json.load(open('$DIR/cluster.json'));print(d['nodes'][0]['api'])" 2>/dev/null || echo 127.0.0.1:15001)
PRIM=$("$B" list --api "$API" -o json | python3 -c "import json,sys; d=json.load(sys.stdin); print([m['host'] for m in d['members'] if m['role'] in ('leader','primary')][0])")
export PGPASSWORD
PGPASSWORD=$(python3 -c "import json;print(json.load(open('$DIR/demo.json'))['password'])")
H=${PRIM%:*}; P=${PRIM#*:}
echo "primary $PRIM; pgbench -i -s $SCALE"
"$PGBIN/pgbench" -h "$H" -p "$P" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1
echo "pgbench -N -c 8 -j 2 -T $SECS"
"$PGBIN/pgbench" -h "$H" -p "$P" -U postgres -N -c 8 -j 2 -T "$SECS" postgres 2>&1 | grep -E 'tps|failed'
"$B" history --api "$API"
entries=$("$B" history --api "$API" -o json | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
fences=$(cat "$DIR"/n*/agent.log | grep -c 'fencing' || true)
echo "history entries: $entries (want 1), fences: $fences (want 0)"
[ "$entries" = 1 ] && [ "$fences" = 0 ]
