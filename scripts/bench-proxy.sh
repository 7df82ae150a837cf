#!/usr/bin/env bash
# Proxy overhead: pgbench -S (read-only) and -N (simple writes), -c 8 -j 2,
# and -S with a single client (S1, for the latency a proxy adds per query),
# directly against the primary, through the pgha write port, and through
# HAProxy 2.6 in TCP mode (installed from Debian if missing), alternating
# A/B/C several times on one running demo cluster. Writes
# bench/results/<date>-<host>-proxy.json and prints the medians, ratios,
# the average latency per transaction and what pgha and HAProxy add to it.
# Every run uses the same pgbench flags; the order inside a round is
# rotated so no target always runs first (or right after the same one).
# The load average before each run is recorded: other work on the
# machine moves the absolute numbers, the in-run ratios much less.
#   ROUNDS=5 DURATION=15 PGHA_BIN=/tmp/pgha scripts/bench-proxy.sh
# MODES="S" runs a subset; the agents' environment reaches the nodes
# (e.g. PGHA_PROXY_EVENT_LOOPS=2 GOMAXPROCS=4); HAPROXY_NBTHREAD=1 sets
# HAProxy's thread count (default: one per CPU).
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
    maxconn 200${HAPROXY_NBTHREAD:+
    nbthread $HAPROXY_NBTHREAD}
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
# Settle what the load left behind (autovacuum and the checkpoint after
# it would otherwise land in the first measured run), then warm every
# path once, unrecorded: the first run after the load was always the
# slowest, whichever target it was.
"$PGBIN/psql" -h 127.0.0.1 -p "$primary_port" -U postgres -qAt -c "VACUUM ANALYZE" -c "CHECKPOINT" postgres >/dev/null
declare -A target=([direct]=$primary_port [pgha]=18004 [haproxy]=18090)
# The processes behind the two proxies, for their CPU time per
# transaction: a steadier figure than tps on a shared machine.
pgha_pid=$(ss -Hltnp 'sport = :18004' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy (user, nice, system, irq, softirq, steal) and idle (idle, iowait)
# ticks of the whole machine: where a proxy that spends less CPU still
# loses throughput, the cores sat idle (bench/RESULTS.md).
machineticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat; }
clk=$(getconf CLK_TCK)
results="$work/results.txt"
for name in direct pgha haproxy; do
	"$PGBIN/pgbench" -h 127.0.0.1 -p "${target[$name]}" -U postgres -c 8 -j 2 -S -T 3 -n postgres >/dev/null 2>&1
done
: >"$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
names=(direct pgha haproxy)
# S1 is -S with one client: no queueing, so its latency average is the
# round trip itself and the difference to direct what a proxy adds.
for mode in ${MODES:-S N S1}; do
	case $mode in
	S1) flags=(-c 1 -j 1 -S) ;;
	*) flags=(-c 8 -j 2 "-$mode") ;;
	esac
	for r in $(seq 1 "$ROUNDS"); do
		for i in 0 1 2; do
			name=${names[$(((i + r) % 3))]}
			load=$(cut -d' ' -f1 /proc/loadavg)
			p0=$(cputicks "$pgha_pid")
			h0=$(cputicks "$ha_pid")
			m0=$(machineticks)
			out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "${target[$name]}" -U postgres "${flags[@]}" -T "$DURATION" -n postgres 2>/dev/null)
			m1=$(machineticks)
			p1=$(cputicks "$pgha_pid")
			h1=$(cputicks "$ha_pid")
			tps=$(awk '/^tps/ {print $3; exit}' <<<"$out")
			lat=$(awk '/^latency average/ {print $4; exit}' <<<"$out")
			tx=$(awk -F'[:/ ]+' '/^number of transactions actually processed/ {print $6; exit}' <<<"$out")
			# CPU seconds of the pgha node and of HAProxy during the run.
			# and the whole machine's busy and idle CPU seconds.
			echo "$mode $name $r $tps $lat $load $tx $(((p1 - p0)))/$clk $(((h1 - h0)))/$clk $(((${m1% *} - ${m0% *})))/$clk $(((${m1#* } - ${m0#* })))/$clk" | tee -a "$results"
		done
	done
done
out=${OUT:-bench/results/$(date -u +%Y%m%d)-$(hostname)-proxy.json}
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$results" "$out" "$ROUNDS" "$DURATION" "$load_start" "$load_end" <<'PY'
import json, sys, statistics, os, subprocess, datetime, random, math
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
res, lats, loads, rounds, cpu, idle = {}, {}, [], {}, {}, {}
frac = lambda x: float(x.split("/")[0]) / float(x.split("/")[1])
machine = {}
for mode, name, r, tps, lat, load, tx, pcpu, hcpu, mbusy, midle in rows:
    b, i = frac(mbusy), frac(midle)
    machine.setdefault(mode, {}).setdefault(name, []).append((b / int(tx) * 1e6, 100 * i / (b + i)))
    res.setdefault(mode, {}).setdefault(name, []).append(float(tps))
    lats.setdefault(mode, {}).setdefault(name, []).append(float(lat))
    rounds.setdefault(mode, {}).setdefault(r, {})[name] = float(tps)
    loads.append(float(load))
    pcpu, hcpu = frac(pcpu), frac(hcpu)
    # A proxy's process burns some CPU when it carries nothing (the pgha
    # node runs its agent): measured while the other targets run.
    idle.setdefault(mode, {"pgha": [], "haproxy": []})
    if name != "pgha":
        idle[mode]["pgha"].append(pcpu)
    if name != "haproxy":
        idle[mode]["haproxy"].append(hcpu)
    if name in ("pgha", "haproxy"):
        cpu.setdefault(mode, {}).setdefault(name, []).append((pcpu if name == "pgha" else hcpu, int(tx)))
def median_ci(xs, n=2000):
    """95% bootstrap interval of the median (fixed seed: reruns of the
    report give the same interval)."""
    rnd = random.Random(1)
    meds = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(n))
    return [meds[int(0.025 * n)], meds[int(0.975 * n) - 1]]
def sign_p(k, n):
    """Two-sided sign test: the chance of a split at least this uneven
    if pgha and HAProxy were equally likely to win a round."""
    tail = sum(math.comb(n, j) for j in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
summary = {}
for mode, by in res.items():
    med = {k: statistics.median(v) for k, v in by.items()}
    lat = {k: statistics.median(v) for k, v in lats[mode].items()}
    base = {k: statistics.median(v) for k, v in idle[mode].items()}
    us_per_tx = {k: [round(max(c - base[k], 0) / tx * 1e6, 2) for c, tx in v] for k, v in cpu[mode].items()}
    # pgha/HAProxy within each round (the two ran minutes apart at most).
    per_round = [v["pgha"] / v["haproxy"] for v in rounds[mode].values()]
    summary[mode] = {"tps": by, "median": med,
                     "latency_ms": lats[mode], "latency_ms_median": lat,
                     "added_latency_ms": {"pgha": lat["pgha"] - lat["direct"], "haproxy": lat["haproxy"] - lat["direct"]},
                     "pgha_vs_direct": med["pgha"] / med["direct"],
                     "haproxy_vs_direct": med["haproxy"] / med["direct"],
                     "pgha_vs_haproxy": med["pgha"] / med["haproxy"],
                     "pgha_vs_haproxy_per_round": per_round,
                     "pgha_vs_haproxy_per_round_median": statistics.median(per_round),
                     "pgha_vs_haproxy_per_round_median_ci95": median_ci(per_round),
                     "rounds_pgha_at_or_above_haproxy": sum(x >= 1 for x in per_round),
                     "sign_test_p": sign_p(sum(x >= 1 for x in per_round), len(per_round)),
                     "machine_busy_us_per_tx_median": {k: statistics.median(b for b, _ in v) for k, v in machine[mode].items()},
                     "machine_idle_pct_median": {k: statistics.median(i for _, i in v) for k, v in machine[mode].items()},
                     "proxy_cpu_us_per_tx": us_per_tx,
                     "proxy_cpu_us_per_tx_median": {k: statistics.median(v) for k, v in us_per_tx.items()},
                     "proxy_idle_cpu_s_per_run": base}
    s = summary[mode]
    print(f"-{mode}: direct {med['direct']:.0f} tps, pgha {med['pgha']:.0f} ({s['pgha_vs_direct']:.3f}x), "
          f"haproxy {med['haproxy']:.0f} ({s['haproxy_vs_direct']:.3f}x); pgha/haproxy {s['pgha_vs_haproxy']:.3f} "
          f"(per-round median {s['pgha_vs_haproxy_per_round_median']:.3f})")
    print(f"    latency avg: direct {lat['direct']:.3f} ms, pgha {lat['pgha']:.3f} (+{lat['pgha'] - lat['direct']:.3f}), "
          f"haproxy {lat['haproxy']:.3f} (+{lat['haproxy'] - lat['direct']:.3f})")
    c = s["proxy_cpu_us_per_tx_median"]
    print(f"    proxy CPU per transaction: pgha {c['pgha']:.1f} us, haproxy {c['haproxy']:.1f} us")
    lo, hi = s["pgha_vs_haproxy_per_round_median_ci95"]
    print(f"    per-round pgha/haproxy: median {s['pgha_vs_haproxy_per_round_median']:.3f}, 95% CI {lo:.3f}-{hi:.3f}, "
          f"{s['rounds_pgha_at_or_above_haproxy']} of {len(per_round)} rounds >= 1 (sign test p {s['sign_test_p']:.2f})")
    mb, mi = s["machine_busy_us_per_tx_median"], s["machine_idle_pct_median"]
    print("    whole machine per transaction: " + ", ".join(f"{k} {mb[k]:.0f} us busy, {mi[k]:.1f}% idle" for k in ("direct", "pgha", "haproxy")))
print(f"load average before runs: min {min(loads):.2f} median {statistics.median(loads):.2f} max {max(loads):.2f}")
doc = {"benchmark": "pgbench -c 8 -j 2 (S, N) and -c 1 -j 1 (S1) scale 10, direct vs pgha write port vs HAProxy 2.6 TCP, alternating",
       "rounds": int(sys.argv[3]), "duration_s": int(sys.argv[4]), "results": summary,
       "load": {"start": sys.argv[5], "end": sys.argv[6],
                "note": "1/5/15-minute load averages (/proc/loadavg): other work shares the cores"},
       "load_average_before_runs": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
       "machine": {"cpus": os.cpu_count(), "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]},
       "date": datetime.datetime.utcnow().isoformat() + "Z"}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print("->", sys.argv[2])
PY
