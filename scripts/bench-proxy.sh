#!/usr/bin/env bash
# Proxy overhead: pgbench -S (read-only) and -N (simple writes), -c 8 -j 2,
# directly against the primary, through the pgha write port, and through
# HAProxy 2.6 in TCP mode (installed from Debian if missing), alternating
# A/B/C several times on one running demo cluster. Writes
# bench/results/<date>-<host>-proxy.json and prints the medians and ratios.
#   ROUNDS=3 DURATION=15 scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
BIN=${PGHA_BIN:-bin/pgha}
PGBIN=/usr/lib/postgresql/15/bin
if ! command -v haproxy >/dev/null; then
	echo "installing haproxy (Debian package) for the comparison"
	apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
work=$(mktemp -d /tmp/pgha-benchproxy-XXXXXX)
chmod 755 "$work"
demo_pid=""
ha_pid=""
cleanup() {
	[ -n "$ha_pid" ] && kill "$ha_pid" 2>/dev/null || true
	[ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

"$BIN" demo --nodes 3 --dir "$work/c" --port-base 18000 >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 120); do
	grep -q "ready in" "$work/demo.log" && break
	sleep 1
done
grep -q "ready in" "$work/demo.log" || { cat "$work/demo.log"; echo "demo did not start"; exit 1; }
pass=$(python3 -c 'import json,sys,urllib.parse as u; d=json.load(open(sys.argv[1])); print(u.urlparse(d["nodes"][0]["dsn"]).password)' "$work/c/cluster.json")
primary_port=$(python3 - "$work/c/cluster.json" <<'PY'
import json, sys, urllib.request
d = json.load(open(sys.argv[1]))
ci = json.load(urllib.request.urlopen("http://" + d["nodes"][0]["api"] + "/cluster"))
for n in d["nodes"]:
    if n["name"] == ci["primary"]:
        print(n["postgres"].split(":")[1])
PY
)
export PGPASSWORD=$pass
# HAProxy in TCP mode in front of the primary, as users deploy it (the
# health check part is irrelevant to throughput).
cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 200
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
listen primary
    bind 127.0.0.1:18090
    server pg 127.0.0.1:$primary_port
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
ha_pid=$!
sleep 1

"$PGBIN/pgbench" -h 127.0.0.1 -p "$primary_port" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
declare -A target=([direct]=$primary_port [pgha]=18004 [haproxy]=18090)
results="$work/results.txt"
: >"$results"
for mode in S N; do
	for r in $(seq 1 "$ROUNDS"); do
		for name in direct pgha haproxy; do
			tps=$("$PGBIN/pgbench" -h 127.0.0.1 -p "${target[$name]}" -U postgres -c 8 -j 2 -T "$DURATION" "-$mode" -n postgres 2>/dev/null | awk '/^tps/ {print $3; exit}')
			echo "$mode $name $r $tps" | tee -a "$results"
		done
	done
done
out=bench/results/$(date -u +%Y%m%d)-$(hostname)-proxy.json
python3 - "$results" "$out" "$ROUNDS" "$DURATION" <<'PY'
import json, sys, statistics, os, subprocess, datetime
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
res = {}
for mode, name, r, tps in rows:
    res.setdefault(mode, {}).setdefault(name, []).append(float(tps))
summary = {}
for mode, by in res.items():
    med = {k: statistics.median(v) for k, v in by.items()}
    summary[mode] = {"tps": by, "median": med,
                     "pgha_vs_direct": med["pgha"] / med["direct"],
                     "haproxy_vs_direct": med["haproxy"] / med["direct"],
                     "pgha_vs_haproxy": med["pgha"] / med["haproxy"]}
    print(f"-{mode}: direct {med['direct']:.0f} tps, pgha {med['pgha']:.0f} ({summary[mode]['pgha_vs_direct']:.3f}x), "
          f"haproxy {med['haproxy']:.0f} ({summary[mode]['haproxy_vs_direct']:.3f}x); pgha/haproxy {summary[mode]['pgha_vs_haproxy']:.3f}")
doc = {"benchmark": "pgbench -c 8 -j 2 scale 10, direct vs pgha write port vs HAProxy 2.6 TCP, alternating",
       "rounds": int(sys.argv[3]), "duration_s": int(sys.argv[4]), "results": summary,
       "machine": {"cpus": os.cpu_count(), "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]},
       "date": datetime.datetime.utcnow().isoformat() + "Z"}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print("->", sys.argv[2])
PY
