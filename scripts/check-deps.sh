#!/usr/bin/env bash
# Checks what building and testing pgha needs, and installs what a fresh
# Debian machine lacks when it can (root + apt-get). Prints how to get
# anything it cannot install.
set -uo pipefail

fail=0
if ! command -v go >/dev/null 2>&1; then
	echo "missing: Go toolchain (https://go.dev/dl/, or apt-get install -y golang)" >&2
	fail=1
fi

find_pg_bindir() {
	if [ -n "${PGHA_PG_BIN:-}" ] && [ -x "$PGHA_PG_BIN/postgres" ]; then echo "$PGHA_PG_BIN"; return 0; fi
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir 2>/dev/null)
		if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	fi
	for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
		if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	done
	return 1
}

if ! bindir=$(find_pg_bindir); then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "PostgreSQL server binaries not found: installing postgresql-15 with apt-get" >&2
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
	fi
	if ! bindir=$(find_pg_bindir); then
		echo "missing: PostgreSQL server binaries (initdb, postgres). Install them with: apt-get install -y postgresql-15, or set PGHA_PG_BIN to their directory" >&2
		fail=1
	fi
fi

# PostgreSQL refuses to run as root: pgha runs it as an unprivileged user.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
	echo "creating the unprivileged OS user 'postgres' that runs PostgreSQL when pgha runs as root" >&2
	useradd --system --no-create-home --shell /usr/sbin/nologin postgres || fail=1
fi
# HAProxy is optional: the test that drives a real HAProxy with pgha's
# Patroni-style health endpoints, and make bench-proxy, use it.
if ! command -v haproxy >/dev/null 2>&1 && [ "${PGHA_SKIP_HAPROXY:-}" = "" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "haproxy not found: installing it with apt-get (for the HAProxy compatibility test)" >&2
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; } >/dev/null 2>&1 ||
			echo "note: could not install haproxy; the HAProxy compatibility test will be skipped (apt-get install -y haproxy)" >&2
	else
		echo "note: haproxy not found; the HAProxy compatibility test will be skipped (apt-get install -y haproxy)" >&2
	fi
fi
exit $fail
