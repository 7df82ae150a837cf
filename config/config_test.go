package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgha/pgha/config"
)

// fullFile sets every key, each to a non-default value where possible.
const fullFile = `# every section
name: node-1
cluster: prod
data_dir: /var/lib/pgha
bootstrap_expect: 3
log_level: debug
log_format: json
raft:
  addr: 10.0.0.1:8300
  advertise: node1.example:8300
  heartbeat_timeout: 2s
  election_timeout: 3s
  leader_lease_timeout: 1500ms
  snapshot_threshold: 4096
gossip:
  addr: 10.0.0.1:7946
  advertise: node1.example:7946
  join:
    - 10.0.0.2:7946
    - "[fd00::3]:7946"
api:
  addr: 10.0.0.1:8008
  advertise: node1.example:8008
postgresql:
  bin_dir: /usr/lib/postgresql/16/bin
  data_dir: /srv/pgdata
  listen: 10.0.0.1
  port: 5433
  connect_address: node1.example:5433
  os_user: pg
  superuser:
    username: admin
    password: s3cret
  replication:
    username: repl
    password: 12345
  parameters:
    work_mem: 8MB
    fsync: on
    max_connections: 200
    pg_stat_statements.max: 1000
  pg_hba:
    - host all all 10.0.0.0/8 scram-sha-256
  allowed_networks: [10.0.0.0/8, "fd00::/8"]
  max_slot_wal_keep_size: 512MB
  start_timeout: 2m
proxy:
  write_addr: 10.0.0.1:5000
  read_addr: 10.0.0.1:5001
tags:
  nofailover: true
  noloadbalance: true
  failover_priority: 5
`

// minimal is the least a valid file needs.
const minimal = "name: n1\ndata_dir: /data\n"

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.yml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// configErr asserts that err carries a *config.Error and returns the first.
func configErr(t *testing.T, err error) *config.Error {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %q (%T) is not a *config.Error", err, err)
	}
	return ce
}

func TestLoadFullFile(t *testing.T) {
	cfg, err := config.Load(writeFile(t, fullFile), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"name", cfg.Name, "node-1"},
		{"cluster", cfg.Cluster, "prod"},
		{"bootstrap_expect", cfg.BootstrapExpect, 3},
		{"log_format", cfg.LogFormat, "json"},
		{"raft.advertise", cfg.Raft.Advertise, "node1.example:8300"},
		{"raft.heartbeat_timeout", cfg.Raft.HeartbeatTimeout.Duration, 2 * time.Second},
		{"raft.leader_lease_timeout", cfg.Raft.LeaderLeaseTimeout.Duration, 1500 * time.Millisecond},
		{"raft.snapshot_threshold", cfg.Raft.SnapshotThreshold, 4096},
		{"gossip.join", cfg.Gossip.Join, []string{"10.0.0.2:7946", "[fd00::3]:7946"}},
		{"api.advertise", cfg.API.Advertise, "node1.example:8008"},
		{"postgresql.data_dir", cfg.PostgreSQL.DataDir, "/srv/pgdata"},
		{"postgresql.port", cfg.PostgreSQL.Port, 5433},
		{"postgresql.superuser", cfg.PostgreSQL.Superuser, config.Credentials{Username: "admin", Password: "s3cret"}},
		// A password of digits is a string, taken as written.
		{"postgresql.replication.password", cfg.PostgreSQL.Replication.Password, "12345"},
		{"postgresql.parameters", cfg.PostgreSQL.Parameters, map[string]string{
			"work_mem": "8MB", "fsync": "on", "max_connections": "200", "pg_stat_statements.max": "1000"}},
		{"postgresql.pg_hba", cfg.PostgreSQL.PgHBA, []string{"host all all 10.0.0.0/8 scram-sha-256"}},
		{"postgresql.allowed_networks", cfg.PostgreSQL.AllowedNetworks, []string{"10.0.0.0/8", "fd00::/8"}},
		{"postgresql.start_timeout", cfg.PostgreSQL.StartTimeout.Duration, 2 * time.Minute},
		{"proxy.read_addr", cfg.Proxy.ReadAddr, "10.0.0.1:5001"},
		{"tags", cfg.Tags, config.Tags{NoFailover: true, NoLoadBalance: true, FailoverPriority: 5}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}

	// Round trip: what show-config prints (yaml.Marshal) loads back to
	// the same configuration.
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := config.Load(writeFile(t, string(out)), nil, nil)
	if err != nil {
		t.Fatalf("reloading marshalled config: %v\n%s", err, out)
	}
	out2, err := yaml.Marshal(again)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(out2) {
		t.Errorf("round trip changed the config:\n%s\n---\n%s", out, out2)
	}
}

func TestLoadEmptyAndNullSections(t *testing.T) {
	for _, content := range []string{"", "# only a comment\n", "---\n", "~\n"} {
		cfg, err := config.Parse("node.yml", []byte(content))
		if err != nil {
			t.Fatalf("%q: %v", content, err)
		}
		if !reflect.DeepEqual(cfg.Raft, config.Default().Raft) {
			t.Errorf("%q: defaults not kept", content)
		}
	}
	// An empty section or value keeps the defaults.
	cfg, err := config.Parse("node.yml", []byte("raft:\napi:\n  addr:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Raft.Addr != "127.0.0.1:8300" || cfg.API.Addr != "127.0.0.1:8008" {
		t.Errorf("null values changed defaults: %+v %+v", cfg.Raft, cfg.API)
	}
}

func TestFileErrors(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"unknown top-level key", "name: n1\nraft_addr: x\n", `node.yml:2: unknown key "raft_addr"`},
		{"unknown nested key", "name: n1\nraft:\n  addr: 10.0.0.1:8300\n  adr: x\n", `node.yml:4: unknown key "raft.adr"`},
		{"unknown deeply nested key", "postgresql:\n  superuser:\n    user: x\n", `node.yml:3: unknown key "postgresql.superuser.user"`},
		{"bad duration", "name: n1\ndata_dir: /d\n\n\n\nraft:\n  heartbeat_timeout: abc\n", `node.yml:7: raft.heartbeat_timeout: invalid duration "abc"`},
		{"bare number duration", "raft:\n  heartbeat_timeout: 1\n", `node.yml:2: raft.heartbeat_timeout: invalid duration "1": a number needs a unit (write 1s)`},
		{"string for int", "postgresql:\n  port: abc\n", `node.yml:2: postgresql.port: expected an integer, got "abc"`},
		{"quoted int", "postgresql:\n  port: \"5432\"\n", `node.yml:2: postgresql.port: expected an integer, got the string "5432" (remove the quotes)`},
		{"list for string", "name: [a, b]\n", `node.yml:1: name: expected a string, got a list`},
		{"scalar for list", "gossip:\n  join: 10.0.0.2:7946\n", `node.yml:2: gossip.join: expected a list, got "10.0.0.2:7946"`},
		{"scalar for section", "raft: 10.0.0.1:8300\n", `node.yml:1: raft: expected a mapping, got "10.0.0.1:8300"`},
		{"bad bool", "tags:\n  nofailover: maybe\n", `node.yml:2: tags.nofailover: expected true or false, got "maybe"`},
		{"duplicate key", "name: a\nname: b\n", `node.yml:2: name: set twice (first on line 1)`},
		{"null parameter", "postgresql:\n  parameters:\n    work_mem:\n", `node.yml:3: postgresql.parameters.work_mem: no value (write work_mem: '' for an empty string)`},
		{"syntax error", "name: n1\nraft:\n  addr: [x\n", `node.yml:3: invalid YAML: did not find expected ',' or ']'`},
		{"two documents", "name: a\n---\nname: b\n", `node.yml:2: more than one YAML document; the configuration must be a single document`},
		{"top level list", "- a\n", `node.yml:1: expected a mapping of settings at the top level, got a list`},
		{"merge key", "raft:\n  <<: {addr: x}\n", `node.yml:2: raft.<<: merge keys (<<) are not supported`},
		{"alias", "raft:\n  addr: &a 10.0.0.1:8300\napi:\n  addr: *a\n  adr: *a\n", `node.yml:5: unknown key "api.adr"`},
		{"unknown anchor", "name: n1\nraft:\n  addr: *nope\n", `node.yml:3: invalid YAML: unknown anchor 'nope' referenced`},
		{"scanner error", "name: n1\nraft:\n  addr: x: y\n", `node.yml:3: invalid YAML: mapping values are not allowed in this context`},
		{"parser error", "name: n1\nraft:\n  addr: x\n bad: y\n", `node.yml:4: invalid YAML: did not find expected key`},
		{"control character", "name: n1\nraft:\n  addr: \x01\n", `node.yml:3: invalid YAML: control characters are not allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("node.yml", []byte(tt.file))
			configErr(t, err)
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestFileErrorFields(t *testing.T) {
	_, err := config.Parse("node.yml", []byte("raft:\n  adr: x\n"))
	ce := configErr(t, err)
	if ce.File != "node.yml" || ce.Line != 2 || ce.Key != "raft.adr" {
		t.Errorf("got %+v", ce)
	}
	if !errors.Is(err, config.ErrUnknownKey) {
		t.Error("unknown key error does not wrap ErrUnknownKey")
	}
}

func TestAllFileErrorsReported(t *testing.T) {
	_, err := config.Parse("node.yml", []byte("nam: x\nraft:\n  adr: x\n  heartbeat_timeout: 5\n"))
	configErr(t, err)
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "node.yml:1:") || !strings.HasPrefix(lines[2], "node.yml:4:") {
		t.Errorf("want three errors in file order, got:\n%s", err)
	}
}

func TestLoadFileErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yml")
	_, err := config.Load(missing, nil, nil)
	ce := configErr(t, err)
	if ce.File != missing || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %+v", ce)
	}
	if want := missing + ": cannot read: no such file or directory"; err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}

	path := writeFile(t, "name: n1\nbogus: 1\n")
	_, err = config.Load(path, nil, nil)
	if want := path + `:2: unknown key "bogus"`; configErr(t, err) != nil && err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
}

func TestPrecedence(t *testing.T) {
	path := writeFile(t, minimal+"raft:\n  addr: 10.0.0.1:8300\napi:\n  addr: 10.0.0.1:8008\nlog_level: warn\n")
	env := []string{
		"PGHA_RAFT_ADDR=10.0.0.2:8300",
		"PGHA_API_ADDR=10.0.0.2:8008",
		"PGHA_LOG_LEVEL=", // empty: ignored
		"PGHA_CONFIG=/elsewhere.yml",
		"HOME=/root",
	}
	flags := map[string]string{"api.addr": "10.0.0.3:8008"}
	cfg, err := config.Load(path, env, flags)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Raft.Addr != "10.0.0.2:8300" {
		t.Errorf("env did not beat file: raft.addr = %s", cfg.Raft.Addr)
	}
	if cfg.API.Addr != "10.0.0.3:8008" {
		t.Errorf("flag did not beat env: api.addr = %s", cfg.API.Addr)
	}
	if cfg.LogLevel != "warn" {
		t.Errorf("empty env var overrode the file: log_level = %s", cfg.LogLevel)
	}
	// Derived defaults follow the final value.
	if cfg.Raft.Advertise != "10.0.0.2:8300" || cfg.API.Advertise != "10.0.0.3:8008" {
		t.Errorf("advertise not derived from final addr: %s %s", cfg.Raft.Advertise, cfg.API.Advertise)
	}
}

func TestEnvListsAndMaps(t *testing.T) {
	path := writeFile(t, minimal+"postgresql:\n  parameters:\n    work_mem: 4MB\n    fsync: on\n")
	env := []string{
		"PGHA_GOSSIP_JOIN=10.0.0.2:7946, 10.0.0.3:7946,",
		"PGHA_BOOTSTRAP_EXPECT=3",
		"PGHA_RAFT_HEARTBEAT_TIMEOUT=2s",
		"PGHA_RAFT_ELECTION_TIMEOUT=2s",
		"PGHA_TAGS_NOFAILOVER=true",
		"PGHA_POSTGRESQL_SUPERUSER_PASSWORD=pw",
		"PGHA_POSTGRESQL_PARAMETERS=work_mem=8MB, shared_preload_libraries=pg_stat_statements,auto_explain,shared_buffers=32MB",
		"PGHA_POSTGRESQL_PG_HBA=host db1,db2 all 10.0.0.0/8 scram-sha-256;local all all peer",
	}
	cfg, err := config.Load(path, env, map[string]string{"postgresql.parameters.max_connections": "50"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.2:7946", "10.0.0.3:7946"}; !reflect.DeepEqual(cfg.Gossip.Join, want) {
		t.Errorf("gossip.join = %q, want %q", cfg.Gossip.Join, want)
	}
	if cfg.BootstrapExpect != 3 || cfg.Raft.HeartbeatTimeout.Duration != 2*time.Second || !cfg.Tags.NoFailover {
		t.Errorf("scalars not applied: %d %s %v", cfg.BootstrapExpect, cfg.Raft.HeartbeatTimeout, cfg.Tags.NoFailover)
	}
	if cfg.PostgreSQL.Superuser.Password != "pw" {
		t.Errorf("superuser password = %q", cfg.PostgreSQL.Superuser.Password)
	}
	wantParams := map[string]string{
		"work_mem":                 "8MB",
		"fsync":                    "on", // from the file: env entries merge
		"shared_preload_libraries": "pg_stat_statements,auto_explain",
		"shared_buffers":           "32MB",
		"max_connections":          "50",
	}
	if !reflect.DeepEqual(cfg.PostgreSQL.Parameters, wantParams) {
		t.Errorf("parameters = %v, want %v", cfg.PostgreSQL.Parameters, wantParams)
	}
	wantHBA := []string{"host db1,db2 all 10.0.0.0/8 scram-sha-256", "local all all peer"}
	if !reflect.DeepEqual(cfg.PostgreSQL.PgHBA, wantHBA) {
		t.Errorf("pg_hba = %q, want %q", cfg.PostgreSQL.PgHBA, wantHBA)
	}
}

func TestEnvAndFlagErrors(t *testing.T) {
	tests := []struct {
		name  string
		env   []string
		flags map[string]string
		want  string
	}{
		{"env duration", []string{"PGHA_RAFT_HEARTBEAT_TIMEOUT=abc"}, nil, `PGHA_RAFT_HEARTBEAT_TIMEOUT: invalid duration "abc"`},
		{"env int", []string{"PGHA_POSTGRESQL_PORT=x"}, nil, `PGHA_POSTGRESQL_PORT: invalid integer "x"`},
		{"env map", []string{"PGHA_POSTGRESQL_PARAMETERS=oops"}, nil, `PGHA_POSTGRESQL_PARAMETERS: expected NAME=VALUE, got "oops"`},
		{"flag bool", nil, map[string]string{"tags.nofailover": "maybe"}, `--tags.nofailover: invalid boolean "maybe" (use true or false)`},
		{"flag unknown", nil, map[string]string{"raft.adr": "x"}, `--raft.adr: unknown key "raft.adr"`},
		{"flag section", nil, map[string]string{"raft": "x"}, `--raft: unknown key "raft"`},
		{"env validation", []string{"PGHA_RAFT_ADDR=nowhere"}, nil, `PGHA_RAFT_ADDR: invalid address "nowhere": missing port in address`},
		{"flag validation", nil, map[string]string{"raft.addr": "10.0.0.1:99999"}, `--raft.addr: invalid address "10.0.0.1:99999": port must be 1-65535`},
		{"flag parameter validation", nil, map[string]string{"postgresql.parameters.port": "6000"}, `--postgresql.parameters.port: managed by pgha: set postgresql.port`},
		{"env parameter validation", []string{"PGHA_POSTGRESQL_PARAMETERS=port=6000"}, nil, `PGHA_POSTGRESQL_PARAMETERS: postgresql.parameters.port: managed by pgha: set postgresql.port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"PGHA_NAME=n1", "PGHA_DATA_DIR=/data"}, tt.env...)
			_, err := config.Load("", env, tt.flags)
			ce := configErr(t, err)
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			if ce.File != "" || ce.Source == "" {
				t.Errorf("source not recorded: %+v", ce)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name, file string
		flags      map[string]string
		want       string
	}{
		{"missing name", "data_dir: /d\n", nil, `name: required`},
		{"bad name", "name: Node1\ndata_dir: /d\n", nil,
			`node.yml:1: name: invalid name "Node1": use 1-63 lower-case letters, digits, '_' or '-', starting with a letter or digit (it is part of a replication slot name)`},
		{"missing data_dir", "name: n1\n", nil, `data_dir: required`},
		{"lease longer than heartbeat", minimal + "raft:\n  heartbeat_timeout: 1s\n  leader_lease_timeout: 2s\n", nil,
			`node.yml:5: raft.leader_lease_timeout: 2s is longer than raft.heartbeat_timeout (1s)`},
		{"election shorter than heartbeat", minimal + "raft:\n  heartbeat_timeout: 2s\n  leader_lease_timeout: 1s\n", nil,
			`raft.election_timeout: 1s is shorter than raft.heartbeat_timeout (2s)`},
		{"lease from flag", minimal, map[string]string{"raft.leader_lease_timeout": "5s"},
			`--raft.leader_lease_timeout: 5s is longer than raft.heartbeat_timeout (1s)`},
		{"tiny timeout", minimal + "raft:\n  heartbeat_timeout: 1ms\n  leader_lease_timeout: 1ms\n", nil,
			"node.yml:4: raft.heartbeat_timeout: must be at least 5ms, got 1ms\nnode.yml:5: raft.leader_lease_timeout: must be at least 5ms, got 1ms"},
		{"bad log level", minimal + "log_level: verbose\n", nil, `node.yml:3: log_level: invalid value "verbose": use debug, info, warn, error`},
		{"negative bootstrap", minimal + "bootstrap_expect: -1\n", nil, `node.yml:3: bootstrap_expect: must be 0 (join only) or more, got -1`},
		{"wildcard needs advertise", minimal + "raft:\n  addr: 0.0.0.0:8300\n", nil,
			`node.yml:4: raft.advertise: required because raft.addr "0.0.0.0:8300" listens on all interfaces`},
		{"wildcard postgres needs connect address", minimal + "postgresql:\n  listen: '*'\n", nil,
			`node.yml:4: postgresql.connect_address: required because postgresql.listen "*" is not a single address others can reach`},
		{"bad join entry", minimal + "gossip:\n  join:\n    - 10.0.0.2:7946\n    - 10.0.0.3\n", nil,
			`node.yml:6: gossip.join: entry 2: invalid address "10.0.0.3": missing port in address`},
		{"bad cidr", minimal + "postgresql:\n  allowed_networks:\n    - 10.0.0.0/33\n", nil,
			`node.yml:5: postgresql.allowed_networks: entry 1: invalid CIDR "10.0.0.0/33" (write e.g. 10.0.0.0/8 or 10.1.2.3/32)`},
		{"cidr host bits", minimal + "postgresql:\n  allowed_networks: [10.1.2.3/8]\n", nil,
			`node.yml:4: postgresql.allowed_networks: entry 1: "10.1.2.3/8" has host bits set; write 10.0.0.0/8 for the network or 10.1.2.3/32 for one host`},
		{"bad wal size", minimal + "postgresql:\n  max_slot_wal_keep_size: 4 gigs\n", nil,
			`node.yml:4: postgresql.max_slot_wal_keep_size: invalid size "4 gigs": write e.g. 4GB, 512MB or -1 (no limit)`},
		{"port out of range", minimal + "postgresql:\n  port: 70000\n", nil,
			`node.yml:4: postgresql.port: must be 1-65535, got 70000`},
		{"port conflict", minimal + "api:\n  addr: 127.0.0.1:8300\n", nil,
			`node.yml:4: api.addr: port 8300 is also used by raft.addr`},
		{"api auth without password", minimal + "api:\n  auth: admin\n", nil,
			`node.yml:4: api.auth: write USER:PASSWORD (both non-empty)`},
		{"gossip key not base64", minimal + "gossip:\n  key: not-a-key!\n", nil,
			"node.yml:4: gossip.key: not valid base64 (generate one with `pgha keygen`)"},
		{"gossip key too short", minimal + "gossip:\n  key: AAAA\n", nil,
			"node.yml:4: gossip.key: decodes to 3 bytes; AES needs 16, 24 or 32 (generate one with `pgha keygen`)"},
		{"tls files incomplete", minimal + "tls:\n  ca_file: /ca.pem\n", nil,
			"tls.cert_file: required when any tls file is set (tls.ca_file, tls.cert_file and tls.key_file go together)\ntls.key_file: required when any tls file is set (tls.ca_file, tls.cert_file and tls.key_file go together)"},
		{"proxy network wider than postgres'", minimal + "postgresql:\n  allowed_networks: [10.1.0.0/16]\nproxy:\n  allowed_networks: [10.1.2.0/24, 10.0.0.0/8]\n", nil,
			`node.yml:6: proxy.allowed_networks: entry 2: 10.0.0.0/8 is not inside postgresql.allowed_networks (10.1.0.0/16): the proxy would let through clients PostgreSQL refuses`},
		{"plain host line with tls", minimal + "tls:\n  ca_file: /ca.pem\n  cert_file: /c.pem\n  key_file: /k.pem\npostgresql:\n  pg_hba:\n    - hostssl all app 10.0.0.0/8 scram-sha-256\n    - host all app 10.0.0.0/8 scram-sha-256\n", nil,
			`node.yml:10: postgresql.pg_hba: entry 2: host lines accept sessions without TLS while tls is set; write hostssl`},
		{"protect reads without auth", minimal + "api:\n  protect_reads: true\n", nil,
			`node.yml:4: api.protect_reads: needs api.auth or api.token`},
		{"newline in value", minimal + "postgresql:\n  pg_hba:\n    - |\n      host all all 0.0.0.0/0 trust\n      local all all trust\n", nil,
			`node.yml:5: postgresql.pg_hba: entry 1 contains a control character (newline?)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse("node.yml", []byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if err := config.ApplyFlags(cfg, tt.flags); err != nil {
				t.Fatal(err)
			}
			cfg.Resolve()
			err = cfg.Validate()
			configErr(t, err)
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestValidationReportsEverything(t *testing.T) {
	cfg, err := config.Parse("node.yml", []byte("name: Bad\nlog_format: xml\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	err = cfg.Validate()
	configErr(t, err)
	want := []string{"node.yml:1: name: invalid name", "data_dir: required", "node.yml:2: log_format: invalid value"}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestValidWalSizes(t *testing.T) {
	for _, size := range []string{"4GB", "512MB", "-1", "1024", "64 kB", "0"} {
		_, err := config.Load("", []string{"PGHA_NAME=n1", "PGHA_DATA_DIR=/d", "PGHA_POSTGRESQL_MAX_SLOT_WAL_KEEP_SIZE=" + size}, nil)
		if err != nil {
			t.Errorf("%q: %v", size, err)
		}
	}
}

func TestResolve(t *testing.T) {
	cfg, err := config.Load("", []string{"PGHA_NAME=n1", "PGHA_DATA_DIR=/data", "PGHA_GOSSIP_ADDR=:7946", "PGHA_GOSSIP_ADVERTISE=10.0.0.1:7946"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pg := cfg.PostgreSQL
	if pg.DataDir != "/data/pgdata" {
		t.Errorf("postgresql.data_dir = %q", pg.DataDir)
	}
	if pg.ConnectAddress != "127.0.0.1:5432" {
		t.Errorf("postgresql.connect_address = %q", pg.ConnectAddress)
	}
	if cfg.Raft.Advertise != cfg.Raft.Addr || cfg.API.Advertise != cfg.API.Addr {
		t.Errorf("advertise not defaulted: %q %q", cfg.Raft.Advertise, cfg.API.Advertise)
	}
	if cfg.Gossip.Advertise != "10.0.0.1:7946" {
		t.Errorf("explicit advertise replaced: %q", cfg.Gossip.Advertise)
	}
	if want := []string{"127.0.0.1/32", "::1/128"}; !reflect.DeepEqual(pg.AllowedNetworks, want) {
		t.Errorf("allowed_networks = %q", pg.AllowedNetworks)
	}
	// IPv6 listen addresses get brackets.
	cfg, err = config.Load("", []string{"PGHA_NAME=n1", "PGHA_DATA_DIR=/data", "PGHA_POSTGRESQL_LISTEN=::1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PostgreSQL.ConnectAddress != "[::1]:5432" {
		t.Errorf("postgresql.connect_address = %q", cfg.PostgreSQL.ConnectAddress)
	}
}

func TestRedacted(t *testing.T) {
	cfg, err := config.Load(writeFile(t, fullFile), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Redacted()
	if r.PostgreSQL.Superuser.Password != config.RedactedPassword || r.PostgreSQL.Replication.Password != config.RedactedPassword {
		t.Errorf("passwords not redacted: %+v %+v", r.PostgreSQL.Superuser, r.PostgreSQL.Replication)
	}
	out, err := yaml.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3cret") || strings.Contains(string(out), "12345") {
		t.Errorf("password leaked:\n%s", out)
	}
	// The original is untouched, and the copy shares no list or map.
	if cfg.PostgreSQL.Superuser.Password != "s3cret" {
		t.Error("Redacted changed the original")
	}
	r.PostgreSQL.Parameters["work_mem"] = "1GB"
	r.Gossip.Join[0] = "changed:1"
	if cfg.PostgreSQL.Parameters["work_mem"] != "8MB" || cfg.Gossip.Join[0] != "10.0.0.2:7946" {
		t.Error("Redacted copy shares lists or maps with the original")
	}
	// An unset password stays visibly unset.
	def := config.Default()
	if def.Redacted().PostgreSQL.Superuser.Password != "" {
		t.Error("empty password redacted")
	}
}

func TestKeys(t *testing.T) {
	byKey := map[string]config.KeyInfo{}
	for _, k := range config.Keys() {
		byKey[k.Key] = k
		if k.Help == "" {
			t.Errorf("%s has no help text; add it to the help table in keys.go", k.Key)
		}
		if k.Env != config.EnvName(k.Key) {
			t.Errorf("%s: env %s", k.Key, k.Env)
		}
	}
	for key, env := range map[string]string{
		"raft.addr":                     "PGHA_RAFT_ADDR",
		"postgresql.superuser.password": "PGHA_POSTGRESQL_SUPERUSER_PASSWORD",
		"gossip.join":                   "PGHA_GOSSIP_JOIN",
		"bootstrap_expect":              "PGHA_BOOTSTRAP_EXPECT",
		"witness":                       "PGHA_WITNESS",
		"postgresql.parameters":         "PGHA_POSTGRESQL_PARAMETERS",
	} {
		if byKey[key].Env != env {
			t.Errorf("%s: env = %q, want %s", key, byKey[key].Env, env)
		}
	}
	if k := byKey["postgresql.superuser.password"]; !k.Secret {
		t.Error("password not marked secret")
	}
	if k := byKey["gossip.join"]; k.Kind != config.KindList || k.Sep != "," {
		t.Errorf("gossip.join: %+v", k)
	}
	if k := byKey["raft.heartbeat_timeout"]; k.Kind != config.KindDuration || k.Default != "1s" {
		t.Errorf("raft.heartbeat_timeout: %+v", k)
	}
	if _, ok := byKey["raft"]; ok {
		t.Error("sections must not be listed as keys")
	}
	// Every key can be set through the environment.
	if n := len(byKey); n != 51 {
		t.Errorf("got %d keys; update this count when adding settings", n)
	}
}

func TestUnknownEnv(t *testing.T) {
	got := config.UnknownEnv([]string{"PGHA_RAFT_ADDR=x", "PGHA_RAFT_ADR=x", "PGHA_CONFIG=x", "PATH=/bin"}, "PGHA_CONFIG")
	if !reflect.DeepEqual(got, []string{"PGHA_RAFT_ADR"}) {
		t.Errorf("got %q", got)
	}
}

func TestDurationText(t *testing.T) {
	var d config.Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Errorf("got %v, %v", d, err)
	}
	if err := d.UnmarshalText([]byte("30")); err == nil {
		t.Error("bare number accepted")
	}
	var s struct{ T config.Duration }
	if err := yaml.Unmarshal([]byte("t: 500ms\n"), &s); err != nil || s.T.Duration != 500*time.Millisecond {
		t.Errorf("yaml.Unmarshal: %v, %v", s.T, err)
	}
}

// FuzzLoad feeds arbitrary bytes through the whole loader: it must return
// a config or *Error values, never panic or return another error type.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(fullFile))
	f.Add([]byte(minimal))
	f.Add([]byte("raft:\n  heartbeat_timeout: abc\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("base: &b {addr: 1}\nraft:\n  <<: *b\n"))
	f.Add([]byte("postgresql:\n  parameters: {a: [1], b: ~}\n"))
	f.Add([]byte("name: n1\n---\nname: n2\n"))
	f.Add([]byte("\xff\xfe"))
	// One file per worker process, rewritten for each input: a fresh
	// TempDir per input would cost more than the load itself.
	path := filepath.Join(f.TempDir(), "node.yml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path, nil, nil)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		if cfg != nil {
			t.Fatal("config returned with an error")
		}
		// Every joined error must be an *Error.
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			if _, ok := e.(*config.Error); !ok {
				t.Fatalf("error %q is %T, not *config.Error", e, e)
			}
		}
	})
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte("MDEyMzQ1Njc4OWFiY2RlZg==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, minimal+"gossip:\n  key: file:"+keyFile+"\napi:\n  auth: admin:s3cret\n")
	_, err := config.Load(path, []string{"PGHA_API_TOKEN=file:" + filepath.Join(dir, "missing")}, nil)
	ce := configErr(t, err)
	if ce.Source != "PGHA_API_TOKEN" || !strings.Contains(err.Error(), "cannot read secret file") {
		t.Errorf("got %q (source %q)", err, ce.Source)
	}
	cfg, err := config.Load(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Gossip.Key != "MDEyMzQ1Njc4OWFiY2RlZg==" || string(cfg.GossipKey()) != "0123456789abcdef" {
		t.Errorf("gossip key %q", cfg.Gossip.Key)
	}
	red := cfg.Redacted()
	if red.Gossip.Key != config.RedactedPassword || red.API.Auth != config.RedactedPassword {
		t.Errorf("secrets not redacted: %+v %+v", red.Gossip, red.API)
	}
	for _, k := range config.Keys() {
		switch k.Key {
		case "api.auth", "api.token", "gossip.key", "postgresql.superuser.password", "postgresql.replication.password":
			if !k.Secret {
				t.Errorf("%s not secret", k.Key)
			}
		default:
			if k.Secret {
				t.Errorf("%s marked secret", k.Key)
			}
		}
	}
}
