#!/usr/bin/env bash
# Side-by-side anchor: the same measurements as pgha's benchmarks, on the
# stack users run instead: Patroni (Debian's package) with its built-in
# Raft (python3-pysyncobj) and HAProxy in front, three nodes on loopback.
#
# For two Patroni settings, "default" (ttl 30, loop_wait 10,
# retry_timeout 10) and "tuned" (ttl 10, loop_wait 2, retry_timeout 4;
# Patroni wants loop_wait + 2 * retry_timeout <= ttl), it measures:
#   - bootstrap: start of the 3 Patroni processes -> a primary and 2
#     streaming replicas (BOOT_RUNS times, fresh directories);
#   - idle cost of each Patroni process (RSS, CPU) over IDLE_SECONDS;
#   - failover: SIGKILL of the primary's Patroni and postmaster -> first
#     successful write through HAProxy; the killed node's time back to
#     streaming after its restart (RUNS times);
#   - switchover: `patronictl switchover --force` -> longest gap between
#     successful writes through HAProxy (SW_RUNS times).
# The client probe is the one of integration/bench_failover_test.go: a new
# connection + one INSERT per attempt (1 s limit), 50 ms pause (20 ms
# around switchovers), every attempt recorded for the timelines.
# HAProxy (as Patroni's template): OPTIONS /primary on the REST port,
# inter 1s fall 2 rise 1, on-marked-down shutdown-sessions.
#
# Writes bench/results/<date>-<host>-patroni.json (read by bench/report).
#   RUNS=10 SW_RUNS=10 BOOT_RUNS=3 IDLE_SECONDS=60 SETTINGS="default tuned" scripts/bench-patroni.sh
# Needs root (it installs packages and runs PostgreSQL as the postgres OS
# user). Ports 19000-19100 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SW_RUNS=${SW_RUNS:-$RUNS}
BOOT_RUNS=${BOOT_RUNS:-3}
IDLE_SECONDS=${IDLE_SECONDS:-60}
SETTINGS=${SETTINGS:-default tuned}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=/usr/bin/python3 # Debian's Python, the one Patroni's modules are installed for
out=bench/results/$(date -u +%Y%m%d)-$(hostname)-patroni.json
mkdir -p bench/results

# fail writes the reason into the result file (so the report says why
# Patroni's columns are missing) and exits non-zero.
fail() {
	echo "bench-patroni: $*" >&2
	printf '{\n  "benchmark": "patroni",\n  "error": "%s",\n  "date": "%s"\n}\n' "${*//\"/\'}" "$(date -u +%FT%TZ)" >"$out"
	echo "bench-patroni: wrote the failure to $out" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root: it installs Debian packages and runs PostgreSQL as the postgres OS user"
[ -x "$PGBIN/postgres" ] || fail "PostgreSQL 15 binaries not found in $PGBIN (apt-get install -y postgresql-15, or set PGBIN)"
id postgres >/dev/null 2>&1 || fail "no 'postgres' OS user to run PostgreSQL (make deps creates it)"
[ -x "$PY" ] || fail "$PY not found (Debian's python3 runs Patroni)"

missing=()
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
"$PY" -c 'import pysyncobj' >/dev/null 2>&1 || missing+=(python3-pysyncobj)
"$PY" -c 'import psycopg2' >/dev/null 2>&1 || missing+=(python3-psycopg2)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench-patroni: installing ${missing[*]} with apt-get"
	command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install them"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/bench-patroni-apt.log 2>&1; then
		apt-get update -qq >/dev/null 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/bench-patroni-apt.log 2>&1 ||
			fail "apt-get install -y ${missing[*]} failed (see /tmp/bench-patroni-apt.log): Patroni cannot be measured here"
	fi
fi
if ! { command -v patroni && "$PY" -c 'import pysyncobj, psycopg2' && command -v haproxy; } >/dev/null 2>&1; then
	fail "patroni, python3-pysyncobj, python3-psycopg2 or haproxy still missing after apt-get"
fi
# Debian's package enables a systemd unit; it must not run here (no
# systemd in containers, and it would not use our configuration anyway).

work=$(mktemp -d /tmp/pgha-benchpatroni-XXXXXX)
chmod 755 "$work"
# Logs stay for a look when something failed.
cleanup() {
	local rc=$?
	if [ "$rc" -eq 0 ]; then
		rm -rf "$work"
	else
		echo "bench-patroni: failed (exit $rc); logs kept in $work" >&2
	fi
}
trap cleanup EXIT
echo "bench-patroni: $(patroni --version), $(haproxy -v | head -1 | cut -d' ' -f1-3), work dir $work"
echo "bench-patroni: settings [$SETTINGS], RUNS=$RUNS SW_RUNS=$SW_RUNS BOOT_RUNS=$BOOT_RUNS IDLE_SECONDS=$IDLE_SECONDS"

RUNS=$RUNS SW_RUNS=$SW_RUNS BOOT_RUNS=$BOOT_RUNS IDLE_SECONDS=$IDLE_SECONDS SETTINGS=$SETTINGS PGBIN=$PGBIN \
	WORK=$work OUT=$out timeout 7200 "$PY" - <<'PY'
import datetime, json, os, platform, pwd, signal, socket, statistics, subprocess, sys, threading, time, urllib.request
import psycopg2

E = os.environ
RUNS, SW_RUNS, BOOT_RUNS = int(E["RUNS"]), int(E["SW_RUNS"]), int(E["BOOT_RUNS"])
IDLE = int(E["IDLE_SECONDS"])
PGBIN, WORK, OUT = E["PGBIN"], E["WORK"], E["OUT"]
SETTINGS = {"default": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
            "tuned": {"ttl": 10, "loop_wait": 2, "retry_timeout": 4}}
SUPER, REPL = "bench-super", "bench-repl"
HAPORT = 19090
PG_UID = pwd.getpwnam("postgres")
CLK = os.sysconf("SC_CLK_TCK")
NODES = [{"name": f"p{i}", "pg": 19000 + 10 * i, "api": 19001 + 10 * i, "raft": 19002 + 10 * i} for i in (1, 2, 3)]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def stats(name, kind, values, failed=None, probe=None):
    v = sorted(values)
    s = {"name": name, "kind": kind, "seconds": values, "min": v[0] if v else 0, "max": v[-1] if v else 0,
         "median": statistics.median(v) if v else 0}
    if failed is not None:
        s["failed_attempts"] = failed
    if probe:
        s["probe"] = probe
    return s


def port_free(p):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Cluster:
    def __init__(self, setting, idx):
        self.setting = setting
        self.dir = os.path.join(WORK, f"{setting}-{idx}")
        os.makedirs(self.dir)
        os.chown(self.dir, PG_UID.pw_uid, PG_UID.pw_gid)
        self.procs = {}
        self.logs = {}
        for n in NODES:
            self.write_config(n)

    def cfg(self, n):
        return os.path.join(self.dir, n["name"] + ".yml")

    def write_config(self, n):
        d = os.path.join(self.dir, n["name"])
        os.makedirs(d, mode=0o700)
        os.chown(d, PG_UID.pw_uid, PG_UID.pw_gid)
        partners = ", ".join(f"127.0.0.1:{o['raft']}" for o in NODES if o is not n)
        t = SETTINGS[self.setting]
        y = f"""scope: bench
name: {n['name']}
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:{n['api']}
  connect_address: 127.0.0.1:{n['api']}
raft:
  data_dir: {d}/raft
  self_addr: 127.0.0.1:{n['raft']}
  partner_addrs: [{partners}]
bootstrap:
  dcs:
    ttl: {t['ttl']}
    loop_wait: {t['loop_wait']}
    retry_timeout: {t['retry_timeout']}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 30
        shared_buffers: 32MB
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: 127.0.0.1:{n['pg']}
  connect_address: 127.0.0.1:{n['pg']}
  data_dir: {d}/data
  bin_dir: {PGBIN}
  pgpass: {d}/pgpass
  authentication:
    superuser: {{username: postgres, password: {SUPER}}}
    replication: {{username: replicator, password: {REPL}}}
    rewind: {{username: postgres, password: {SUPER}}}
  parameters:
    unix_socket_directories: {d}
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
"""
        with open(self.cfg(n), "w") as f:
            f.write(y)
        os.chmod(self.cfg(n), 0o644)

    def start(self, n):
        lf = open(os.path.join(self.dir, n["name"] + ".log"), "ab")
        env = {"PATH": "/usr/bin:/bin", "HOME": os.path.join(self.dir, n["name"]), "LANG": "C.UTF-8"}
        p = subprocess.Popen(["patroni", self.cfg(n)], stdout=lf, stderr=lf, stdin=subprocess.DEVNULL,
                             user=PG_UID.pw_uid, group=PG_UID.pw_gid, env=env, start_new_session=True,
                             cwd=self.dir)
        self.procs[n["name"]] = p

    def start_all(self):
        for n in NODES:
            self.start(n)

    def postmaster_pid(self, n):
        try:
            return int(open(os.path.join(self.dir, n["name"], "data", "postmaster.pid")).readline())
        except (OSError, ValueError):
            return 0

    def kill(self, n):
        """SIGKILL the node's Patroni and postmaster (the whole node dies)."""
        p = self.procs.pop(n["name"])
        pm = self.postmaster_pid(n)
        p.kill()
        if pm:
            try:
                os.kill(pm, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()

    def stop_all(self):
        for p in self.procs.values():
            p.terminate()
        deadline = time.time() + 60
        for p in self.procs.values():
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = {}
        # A postmaster left behind by a killed Patroni: end it (by PID).
        for n in NODES:
            pm = self.postmaster_pid(n)
            if pm:
                try:
                    os.kill(pm, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def api(self, n, path, method="GET", timeout=2):
        req = urllib.request.Request(f"http://127.0.0.1:{n['api']}{path}", method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def leader(self):
        for n in NODES:
            if n["name"] not in self.procs:
                continue
            try:
                c = self.api(n, "/cluster")
            except Exception:
                continue
            for m in c.get("members", []):
                if m.get("role") == "leader" and m.get("state") == "running":
                    return next(x for x in NODES if x["name"] == m["name"])
        return None

    def healthy(self):
        """A running leader with the two others streaming from it."""
        ld = self.leader()
        if ld is None:
            return None
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=ld["pg"], user="postgres", password=SUPER,
                                    dbname="postgres", connect_timeout=1)
            try:
                conn.autocommit = True
                cur = conn.cursor()
                cur.execute("SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')")
                rec, streaming = cur.fetchone()
            finally:
                conn.close()
        except Exception:
            return None
        return ld if (not rec and streaming == len(NODES) - 1) else None

    def wait_healthy(self, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"patroni {name} exited ({p.returncode}) while waiting for {what}; see {self.dir}/{name}.log")
            ld = self.healthy()
            if ld:
                return ld
            time.sleep(0.1)
        raise SystemExit(f"timed out after {timeout}s waiting for {what}; logs in {self.dir}")


class HAProxy:
    def __init__(self, d):
        cfg = os.path.join(d, "haproxy.cfg")
        servers = "\n".join(f"    server {n['name']} 127.0.0.1:{n['pg']} maxconn 100 check port {n['api']}" for n in NODES)
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 300
defaults
    mode tcp
    timeout connect 1s
    timeout client 30m
    timeout server 30m
    timeout check 1s
listen primary
    bind 127.0.0.1:{HAPORT}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
""")
        self.p = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=open(os.path.join(d, "haproxy.log"), "ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


_ids = [0]
_ids_lock = threading.Lock()


def next_id():
    with _ids_lock:
        _ids[0] += 1
        return _ids[0]


def write_once():
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=HAPORT, user="postgres", password=SUPER, dbname="postgres",
                                connect_timeout=1, options="-c statement_timeout=1000")
    except Exception:
        return False
    try:
        conn.autocommit = True
        conn.cursor().execute("INSERT INTO probe (id) VALUES (%s)", (next_id(),))
        return True
    except Exception:
        return False
    finally:
        conn.close()


class Writer:
    """New connection + INSERT through HAProxy, pause, repeat; every attempt recorded."""

    def __init__(self, pause):
        self.pause, self.attempts, self.stopped = pause, [], threading.Event()
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stopped.is_set():
            start = time.monotonic()
            ok = write_once()
            with self.lock:
                self.attempts.append((start, time.monotonic(), ok))
            self.stopped.wait(self.pause)

    def ok_after(self, t):
        with self.lock:
            return any(ok and s > t for s, _, ok in self.attempts)

    def finish(self):
        self.stopped.set()
        self.t.join()
        return list(self.attempts)


def recovery(att, t0, done):
    failed = 0
    for s, e, ok in att:
        if e <= t0:
            continue
        if ok and s > done:
            return e - t0, failed
        if not ok:
            failed += 1
    return None, failed


def write_gap(att, t0):
    gap, last, failed = 0.0, None, 0
    for s, e, ok in att:
        if e > t0 and not ok:
            failed += 1
        if not ok:
            continue
        if last is not None and e > t0:
            gap = max(gap, e - last)
        last = e
    return gap, failed


def timeline(run, att, t0, before=1.0):
    ok, bad = [], []
    for s, e, good in att:
        off = e - t0 + before
        if off < 0:
            continue
        i = int(off / 0.1)
        while len(ok) <= i:
            ok.append(0)
            bad.append(0)
        (ok if good else bad)[i] += 1
    return {"run": run, "bucket_ms": 100, "start_ms": int(-before * 1000), "ok": ok, "failed": bad}


def proc_cpu(pid):
    s = open(f"/proc/{pid}/stat").read()
    f = s[s.rindex(") ") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK


def proc_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def run_setting(setting):
    log(f"== Patroni {setting}: {SETTINGS[setting]}")
    res = {"patroni": SETTINGS[setting], "timelines": {"kill": {"haproxy": []}, "switchover": {"haproxy": []}}}
    load0 = loadavg()
    boot = []
    c = None
    for i in range(1, BOOT_RUNS + 1):
        if c:
            c.stop_all()
        c = Cluster(setting, i)
        t0 = time.monotonic()
        c.start_all()
        c.wait_healthy(180, "bootstrap")
        boot.append(time.monotonic() - t0)
        log(f"bootstrap {i}: {boot[-1]:.2f}s")
    ha = HAProxy(c.dir)
    try:
        ld = c.healthy()
        conn = psycopg2.connect(host="127.0.0.1", port=ld["pg"], user="postgres", password=SUPER, dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE probe (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.close()
        wait_until(write_once, 30, "a first write through HAProxy")

        # Idle cost of each Patroni process (PostgreSQL excluded).
        time.sleep(10)
        pids = {name: p.pid for name, p in c.procs.items()}
        cpu0 = {n: proc_cpu(pid) for n, pid in pids.items()}
        rss = {n: [] for n in pids}
        t0 = time.monotonic()
        while time.monotonic() - t0 < IDLE:
            for n, pid in pids.items():
                rss[n].append(proc_rss_mb(pid))
            time.sleep(1)
        el = time.monotonic() - t0
        agents = [{"name": n, "pid": pid, "rss_mean_mb": statistics.mean(rss[n]), "rss_max_mb": max(rss[n]),
                   "cpu_percent": (proc_cpu(pid) - cpu0[n]) / el * 100} for n, pid in pids.items()]
        for a in agents:
            log(f"idle {a['name']}: RSS {a['rss_mean_mb']:.1f} MB, CPU {a['cpu_percent']:.2f}%")
        res["idle"] = {"window_s": el, "agents": agents}

        kill, kill_failed, rejoin = [], [], []
        for i in range(1, RUNS + 1):
            old = c.wait_healthy(180, "a healthy cluster before the kill")
            w = Writer(0.05)
            time.sleep(1)
            t0 = time.monotonic()
            c.kill(old)
            done = time.monotonic()
            wait_until(lambda: w.ok_after(done), 180, "a write through HAProxy after the kill")
            time.sleep(1)
            att = w.finish()
            d, failed = recovery(att, t0, done)
            kill.append(d)
            kill_failed.append(failed)
            res["timelines"]["kill"]["haproxy"].append(timeline(i, att, t0))
            log(f"kill {i} ({old['name']}): {d:.2f}s, {failed} failed attempts")
            t1 = time.monotonic()
            c.start(old)
            c.wait_healthy(300, "the killed node back to streaming")
            rejoin.append(time.monotonic() - t1)
            log(f"rejoin {i}: {rejoin[-1]:.2f}s")

        sw, sw_failed = [], []
        for i in range(1, SW_RUNS + 1):
            old = c.wait_healthy(180, "a healthy cluster before the switchover")
            # HAProxy must see the current primary before the next one.
            wait_until(write_once, 30, "writes through HAProxy before the switchover")
            w = Writer(0.02)
            time.sleep(1)
            t0 = time.monotonic()
            r = subprocess.run(["patronictl", "-c", c.cfg(old), "switchover", "--force"], capture_output=True, text=True, timeout=180)
            done = time.monotonic()
            if r.returncode != 0:
                w.finish()
                raise SystemExit(f"patronictl switchover failed: {r.stdout} {r.stderr}")
            wait_until(lambda: w.ok_after(done), 120, "writes through HAProxy after the switchover")
            time.sleep(1.5)
            att = w.finish()
            gap, failed = write_gap(att, t0)
            sw.append(gap)
            sw_failed.append(failed)
            res["timelines"]["switchover"]["haproxy"].append(timeline(i, att, t0))
            log(f"switchover {i}: gap {gap:.2f}s, {failed} failed attempts (patronictl took {done - t0:.1f}s)")
        c.wait_healthy(180, "a healthy cluster after the switchovers")
    finally:
        ha.stop()
        c.stop_all()

    # A figure this run did not measure (RUNS=0 for an idle-only run, as
    # make bench-idle does) is left out, so the report keeps the last
    # run's value of it rather than an empty one.
    res["series"] = [x for x in [
        stats("bootstrap: start -> primary + 2 streaming replicas, s", "bootstrap", boot),
        stats("whole-node SIGKILL of the primary -> first write through HAProxy, s", "kill", kill, kill_failed, "haproxy"),
        stats("switchover (patronictl switchover --force) -> longest write gap through HAProxy, s", "switchover", sw, sw_failed, "haproxy"),
        stats("killed node restarted -> streaming again, s", "rejoin", rejoin),
        stats("Patroni RSS, MB (mean over the window, per process)", "rss", [a["rss_mean_mb"] for a in res["idle"]["agents"]]),
        stats("Patroni CPU, % of one core (per process)", "idle-cpu", [a["cpu_percent"] for a in res["idle"]["agents"]]),
    ] if x["seconds"]]
    res["load"] = {"start": load0, "end": loadavg()}
    return res


for n in NODES:
    for p in (n["pg"], n["api"], n["raft"]):
        if not port_free(p):
            raise SystemExit(f"port {p} is in use on 127.0.0.1: another run still going?")
if not port_free(HAPORT):
    raise SystemExit(f"port {HAPORT} is in use on 127.0.0.1")


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
doc = {"benchmark": "patroni",
       "probe": "new connection + INSERT through HAProxy per attempt, 1 s limit, 50 ms pause (20 ms around switchovers)",
       "haproxy": "mode tcp; option httpchk OPTIONS /primary; inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
       "settings": {},
       "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": round(mem / 1024 / 1024, 1),
                   "kernel": platform.release(), "postgres": version([f"{PGBIN}/postgres", "--version"]),
                   "patroni": version(["patroni", "--version"]), "haproxy": version(["haproxy", "-v"]),
                   "pysyncobj": version(["dpkg-query", "-W", "-f=${Version}", "python3-pysyncobj"]),
                   "python": platform.python_version(), "host": socket.gethostname()},
       "runs": RUNS, "switchover_runs": SW_RUNS, "bootstrap_runs": BOOT_RUNS}
load_start = loadavg()
for s in E["SETTINGS"].split():
    if s not in SETTINGS:
        raise SystemExit(f"unknown setting {s}: use default and/or tuned")
    doc["settings"][s] = run_setting(s)
doc["load"] = {"start": load_start, "end": loadavg(), "note": "1/5/15-minute load averages (/proc/loadavg): other work shares the cores"}
doc["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
with open(OUT, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
for s, r in doc["settings"].items():
    for x in r["series"]:
        log(f"{s}: {x['name']}: min {x['min']:.2f} / median {x['median']:.2f} / max {x['max']:.2f}")
log("->", OUT)
PY
