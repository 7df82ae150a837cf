#!/usr/bin/env bash
# Measures cluster bootstrap: `pgha demo --exit-when-ready` on a fresh
# directory, from start to a primary and N-1 streaming replicas, RUNS
# times. Writes bench/results/<date>-<host>-bootstrap.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
NODES=${NODES:-3}
BIN=${PGHA_BIN:-bin/pgha}
out=bench/results/$(date -u +%Y%m%d)-$(hostname)-bootstrap.json
mkdir -p bench/results
[ -x "$BIN" ] || { echo "bench-bootstrap: $BIN not found: run make build or set PGHA_BIN" >&2; exit 1; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
times=()
for i in $(seq 1 "$RUNS"); do
	dir=$(mktemp -d /tmp/pgha-bench-XXXXXX)
	chmod 755 "$dir"
	line=$("$BIN" demo --nodes "$NODES" --dir "$dir/c" --port-base 17000 --exit-when-ready | grep 'ready in')
	rm -rf "$dir"
	t=$(sed -E 's/.*ready in ([0-9.]+)s.*/\1/' <<<"$line")
	echo "run $i: ${t}s"
	times+=("$t")
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
min=$(head -1 <<<"$sorted"); max=$(tail -1 <<<"$sorted")
median=$(awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}' <<<"$sorted")
pgver=$(/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null || echo unknown)
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal:/ {printf "%.1f", $2/1024/1024}' /proc/meminfo)
cat >"$out" <<JSON
{
  "benchmark": "bootstrap",
  "description": "pgha demo start to 1 primary + $((NODES-1)) streaming replicas",
  "nodes": $NODES,
  "runs": $RUNS,
  "seconds": [$(IFS=,; echo "${times[*]}")],
  "min": $min, "median": $median, "max": $max,
  "machine": {"cpus": $(nproc), "cpu_model": "$cpu_model", "mem_gib": $mem_gib, "kernel": "$(uname -r)", "postgres": "$pgver", "go": "$(go version | cut -d' ' -f3)", "pgha": "$("$BIN" --version)", "host": "$(hostname)"},
  "load": {"start": "$load_start", "end": "$(cut -d' ' -f1-3 /proc/loadavg)"},
  "date": "$(date -u +%FT%TZ)"
}
JSON
echo "bootstrap (n=$RUNS): min ${min}s, median ${median}s, max ${max}s -> $out"
