#!/usr/bin/env bash
# failover-test.sh: an operator's end-to-end failover check of a running
# pgha cluster. It kills the primary node, so run it on a cluster that
# may lose its primary for a few seconds (staging, or a maintenance
# window), never by surprise.
#
# Steps, each printed as a ✓ or ✗ line (exit status 1 if any ✗):
#   1. every node's REST API answers GET /health and its PostgreSQL
#      answers psql;
#   2. a row written on the primary ...
#   3. ... is read back on every replica;
#   4. the primary node is killed (--kill-cmd, or the local demo);
#   5. writes resume on a new primary (time from the kill measured), also
#      through the pgha write port of the surviving nodes;
#   6. the old primary, restarted (--restart-cmd, if it does not come back
#      by itself), rejoins as a streaming replica and has the rows written
#      after the failover.
#
# Usage:
#   scripts/failover-test.sh [options] API_ADDR...
#   PGHA_NODES=db1:8008,db2:8008,db3:8008 scripts/failover-test.sh [options]
#   scripts/failover-test.sh --demo /tmp/pgha-demo      # the local `pgha demo`
#
# Options:
#   --kill-cmd CMD     shell command that kills the primary node; {name},
#                      {host} (host of its API address), {api} and {pg}
#                      (its PostgreSQL host:port) are replaced. Example:
#                      --kill-cmd 'ssh root@{host} systemctl kill --signal=SIGKILL pgha'
#                      (systemd kills the whole unit: agent and PostgreSQL)
#   --restart-cmd CMD  shell command that starts it again (same placeholders),
#                      e.g. --restart-cmd 'ssh root@{host} systemctl start pgha'
#   --demo DIR         a `pgha demo` directory (reads DIR/cluster.json): the
#                      nodes and password come from there; the primary's
#                      agent is killed by the PID cluster.json gives (its
#                      PostgreSQL dies with it) and the demo restarts it
#                      (pgha demo --restart-after); with an older demo whose
#                      cluster.json has no PIDs, the agent and postmaster are
#                      frozen with SIGSTOP and resumed with SIGCONT
#   --pg-port PORT     reach PostgreSQL at the API host on PORT instead of
#                      the address each node advertises
#   --timeout SECONDS  bound for the failover and for the rejoin (default 60)
#   -y, --yes          do not ask for confirmation before the kill
# PostgreSQL connection: PGUSER (default postgres), PGPASSWORD,
# PGDATABASE (default postgres), PGSSLMODE and the other libpq variables.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

apis=()
kill_cmd=""
restart_cmd=""
demo=""
pg_port=""
timeout_s=60
yes=0
while [ $# -gt 0 ]; do
	case "$1" in
	--kill-cmd) kill_cmd=${2:?--kill-cmd needs a command}; shift 2 ;;
	--restart-cmd) restart_cmd=${2:?--restart-cmd needs a command}; shift 2 ;;
	--demo) demo=${2:?--demo needs a directory}; shift 2 ;;
	--pg-port) pg_port=${2:?--pg-port needs a port}; shift 2 ;;
	--timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
	-y | --yes) yes=1; shift ;;
	-h | --help) usage; exit 0 ;;
	-*) echo "failover-test: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) apis+=("$1"); shift ;;
	esac
done

for tool in curl psql jq; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		case $tool in
		psql) hint="apt-get install -y postgresql-client" ;;
		*) hint="apt-get install -y $tool" ;;
		esac
		echo "failover-test: $tool is missing ($hint)" >&2
		exit 2
	fi
done

export PGUSER=${PGUSER:-postgres} PGDATABASE=${PGDATABASE:-postgres} PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-2}
if [ -n "$demo" ]; then
	[ -r "$demo/cluster.json" ] || { echo "failover-test: $demo/cluster.json not found: is \`pgha demo --dir $demo\` running?" >&2; exit 2; }
	mapfile -t apis < <(jq -r '.nodes[].api' "$demo/cluster.json")
	PGPASSWORD=$(jq -r '.nodes[0].dsn' "$demo/cluster.json" | sed -E 's#^[a-z]+://[^:]*:([^@]*)@.*#\1#')
	export PGPASSWORD
	yes=1
fi
if [ ${#apis[@]} -eq 0 ] && [ -n "${PGHA_NODES:-}" ]; then
	IFS=', ' read -r -a apis <<<"$PGHA_NODES"
fi
if [ ${#apis[@]} -lt 2 ]; then
	echo "failover-test: give the REST API address (host:port) of every node, or PGHA_NODES=h1:8008,h2:8008,..., or --demo DIR (see --help)" >&2
	exit 2
fi
if [ -z "$demo" ] && [ -z "$kill_cmd" ]; then
	echo "failover-test: --kill-cmd is required to kill the primary of a real deployment (see --help)" >&2
	exit 2
fi

failures=0
start_s=$(date +%s.%N)
if [ -t 1 ]; then green=$'\033[32m' red=$'\033[31m' plain=$'\033[0m'; else green="" red="" plain=""; fi
ok() { printf '%s✓%s %s\n' "$green" "$plain" "$*"; }
bad() { printf '%s✗%s %s\n' "$red" "$plain" "$*"; failures=$((failures + 1)); }
note() { printf '  %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
finish() {
	echo
	if [ "$failures" -eq 0 ]; then
		echo "failover-test: all steps passed ($(since "$start_s")s)"
		exit 0
	fi
	echo "failover-test: $failures step(s) failed"
	exit 1
}
# abort: a step failed that later steps depend on.
abort() { bad "$*"; note "later steps skipped"; finish; }

api_get() { curl -fsS --max-time 3 "http://$1$2" 2>/dev/null; }
# health returns the body of /health whatever the status (503 = unhealthy).
health() { curl -sS --max-time 3 "http://$1/health" 2>/dev/null; }
cluster_json() {
	local a
	for a in "${apis[@]}"; do
		if api_get "$a" /cluster; then return 0; fi
	done
	return 1
}
api_of() { jq -r --arg n "$2" '.members[] | select(.name == $n) | .api // empty' <<<"$1"; }
pg_of() {
	local host
	if [ -n "$pg_port" ]; then
		host=$(api_of "$1" "$2")
		echo "${host%:*}:$pg_port"
	else
		jq -r --arg n "$2" '.members[] | select(.name == $n) | .host // empty' <<<"$1"
	fi
}
# sql HOST:PORT QUERY: one psql call, tuples only, bounded in time.
sql() { timeout 5 psql -h "${1%:*}" -p "${1##*:}" -X -q -t -A -v ON_ERROR_STOP=1 -c "$2" 2>&1; }
template() {
	local s=$1
	s=${s//\{name\}/$2}
	s=${s//\{host\}/${3%:*}}
	s=${s//\{api\}/$3}
	s=${s//\{pg\}/$4}
	echo "$s"
}

echo "pgha failover test: nodes ${apis[*]}"

# 1. Connectivity.
ci=$(cluster_json) || abort "no node's REST API answers GET /cluster (${apis[*]})"
names=$(jq -r '.members[] | select(.role != "witness") | .name' <<<"$ci")
for a in "${apis[@]}"; do
	if h=$(health "$a") && [ -n "$h" ]; then
		ok "API $a: $(jq -r '"\(.name) \(.role) \(.state)"' <<<"$h" 2>/dev/null || echo answers)"
	else
		bad "API $a does not answer GET /health"
	fi
done
for n in $names; do
	pg=$(pg_of "$ci" "$n")
	if out=$(sql "$pg" "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END"); then
		ok "PostgreSQL of $n at $pg answers ($out)"
	else
		bad "PostgreSQL of $n at $pg: ${out:-no answer}"
	fi
done
primary=$(jq -r '.primary // empty' <<<"$ci")
[ -n "$primary" ] || abort "the cluster has no primary: $(jq -c '[.members[] | {name, role, state}]' <<<"$ci")"
replicas=$(jq -r --arg p "$primary" '.members[] | select(.name != $p and .role != "witness") | .name' <<<"$ci")
[ -n "$replicas" ] || abort "no replica to fail over to"
primary_pg=$(pg_of "$ci" "$primary")
primary_api=$(api_of "$ci" "$primary")
note "primary: $primary ($primary_pg), replicas: $(tr '\n' ' ' <<<"$replicas")"

# 2. Write on the primary.
run=$(date +%s)-$$
table=pgha_failover_test
if out=$(sql "$primary_pg" "CREATE TABLE IF NOT EXISTS $table (id bigserial PRIMARY KEY, run text, step text, at timestamptz DEFAULT now()); INSERT INTO $table (run, step) VALUES ('$run', 'before')"); then
	ok "write on the primary $primary"
else
	abort "write on the primary $primary: $out"
fi

# 3. Read on every replica.
for r in $replicas; do
	pg=$(pg_of "$ci" "$r")
	got=""
	deadline=$(($(date +%s) + 15))
	while [ "$(date +%s)" -lt $deadline ]; do
		got=$(sql "$pg" "SELECT count(*) FROM $table WHERE run = '$run'" || true)
		[ "$got" = 1 ] && break
		sleep 0.2
	done
	if [ "$got" = 1 ]; then ok "read on the replica $r: the row is there"; else bad "read on the replica $r: row not there after 15s (${got:-no answer})"; fi
done

# 4. Kill the primary.
if [ "$yes" -ne 1 ]; then
	read -r -p "Kill the primary $primary now? [y/N] " answer
	[ "$answer" = y ] || [ "$answer" = Y ] || { echo "failover-test: stopped before the kill"; exit 1; }
fi
frozen=()
demo_pid=""
if [ -n "$demo" ]; then
	demo_pid=$(jq -r --arg n "$primary" '.nodes[] | select(.name == $n) | .agent_pid // empty' "$demo/cluster.json")
fi
if [ -n "$demo_pid" ] && [ -d "/proc/$demo_pid" ]; then
	# The demo restarts an agent that dies (pgha demo --restart-after).
	kill_at=$(now)
	kill -KILL "$demo_pid"
	ok "primary $primary killed (SIGKILL of agent $demo_pid; its PostgreSQL dies with it)"
elif [ -n "$demo" ]; then
	# An older demo without agent PIDs: freeze instead of kill.
	pm=$(head -1 "$demo/$primary/pgdata/postmaster.pid" 2>/dev/null || true)
	agent=""
	if [ -n "$pm" ]; then agent=$(ps -o ppid= -p "$pm" | tr -d ' ' || true); fi
	if [ -z "$pm" ] || [ -z "$agent" ] || [ "$agent" = 1 ]; then
		abort "demo: cannot find the postmaster and agent PIDs of $primary under $demo/$primary"
	fi
	kill_at=$(now)
	kill -STOP "$agent" "$pm"
	frozen=("$agent" "$pm")
	ok "primary $primary frozen (SIGSTOP of agent $agent and postmaster $pm)"
else
	cmd=$(template "$kill_cmd" "$primary" "$primary_api" "$primary_pg")
	kill_at=$(now)
	if out=$(timeout 30 bash -c "$cmd" 2>&1); then
		ok "primary $primary killed: $cmd"
	else
		bad "kill command failed: $cmd: $out"
	fi
fi
# A frozen demo node is resumed whatever happens next.
resume() { [ ${#frozen[@]} -gt 0 ] && kill -CONT "${frozen[@]}" 2>/dev/null; frozen=(); }
trap resume EXIT

# 5. Writes resume on a new primary.
new=""
deadline=$(awk -v a="$kill_at" -v t="$timeout_s" 'BEGIN { printf "%d", a + t }')
others=()
for a in "${apis[@]}"; do [ "$a" != "$primary_api" ] && others+=("$a"); done
while [ "$(date +%s)" -lt "$deadline" ]; do
	for a in "${others[@]}"; do
		c=$(api_get "$a" /cluster) || continue
		p=$(jq -r '.primary // empty' <<<"$c")
		if [ -n "$p" ] && [ "$p" != "$primary" ]; then
			if sql "$(pg_of "$c" "$p")" "INSERT INTO $table (run, step) VALUES ('$run', 'after')" >/dev/null; then
				new=$p
				ci=$c
				break 2
			fi
		fi
	done
	sleep 0.1
done
if [ -n "$new" ]; then
	ok "writes resume on the new primary $new $(since "$kill_at")s after the kill"
else
	abort "no write succeeded on a new primary within ${timeout_s}s of the kill"
fi
# The proxies of the surviving nodes follow the new primary (allowing
# them a few seconds to converge).
for n in $(jq -r --arg p "$primary" '.members[] | select(.name != $p and .write != null and .write != "") | .name' <<<"$ci"); do
	w=$(jq -r --arg n "$n" '.members[] | select(.name == $n) | .write' <<<"$ci")
	deadline=$(($(date +%s) + 10))
	while :; do
		if out=$(sql "$w" "INSERT INTO $table (run, step) VALUES ('$run', 'proxy $n')"); then
			ok "write through the pgha write port of $n ($w), $(since "$kill_at")s after the kill"
			break
		fi
		if [ "$(date +%s)" -ge $deadline ]; then
			bad "write through the pgha write port of $n ($w) still fails $(since "$kill_at")s after the kill: $out"
			break
		fi
		sleep 0.2
	done
done

# 6. The old primary rejoins as a replica.
if [ -n "$demo_pid" ]; then
	note "the demo restarts $primary's agent"
elif [ -n "$demo" ]; then
	resume
	note "resumed $primary (SIGCONT)"
elif [ -n "$restart_cmd" ]; then
	cmd=$(template "$restart_cmd" "$primary" "$primary_api" "$primary_pg")
	if out=$(timeout 60 bash -c "$cmd" 2>&1); then note "restarted $primary: $cmd"; else bad "restart command failed: $cmd: $out"; fi
fi
rejoin_at=$(now)
rejoin_from="its restart"
if [ -n "$demo_pid" ]; then
	# The demo restarts the agent on its own schedule: count from the kill.
	rejoin_at=$kill_at
	rejoin_from="the kill (the demo restarts the agent after --restart-after)"
fi
state=""
deadline=$(($(date +%s) + timeout_s))
while [ "$(date +%s)" -lt $deadline ]; do
	if c=$(cluster_json); then
		state=$(jq -r --arg n "$primary" '.members[] | select(.name == $n) | "\(.role)/\(.state)"' <<<"$c")
		case $state in replica/streaming | sync_standby/streaming) break ;; esac
	fi
	sleep 0.5
done
case $state in
replica/streaming | sync_standby/streaming) ok "old primary $primary rejoined as a streaming replica $(since "$rejoin_at")s after $rejoin_from" ;;
*) bad "old primary $primary is ${state:-not listed}, not a streaming replica, $(since "$rejoin_at")s after $rejoin_from" ;;
esac
old_pg=$(pg_of "$ci" "$primary")
got=""
deadline=$(($(date +%s) + 15))
while [ "$(date +%s)" -lt $deadline ]; do
	got=$(sql "$old_pg" "SELECT count(*) FROM $table WHERE run = '$run' AND step = 'after'" || true)
	[ "$got" = 1 ] && break
	sleep 0.5
done
if [ "$got" = 1 ]; then ok "old primary $primary has the row written after the failover"; else bad "old primary $primary lacks the row written after the failover (${got:-no answer})"; fi
sql "$(pg_of "$ci" "$new")" "DELETE FROM $table WHERE run = '$run'" >/dev/null || note "could not clean the test rows of run $run"
finish
