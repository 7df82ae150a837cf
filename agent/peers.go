package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pgha/pgha/internal/safefile"
)

// peersFile remembers the gossip addresses of the other members, so a
// node that joined with `pgha join` (no gossip.join in its config) finds
// its cluster again after a restart, as Consul's serf snapshot does.
const peersFile = "peers.json"

func (a *Agent) peersPath() string { return filepath.Join(a.cfg.DataDir, peersFile) }

// knownPeers returns the gossip addresses saved by a previous run.
func (a *Agent) knownPeers() []string {
	data, err := os.ReadFile(a.peersPath())
	if err != nil {
		return nil
	}
	var peers []string
	if err := json.Unmarshal(data, &peers); err != nil {
		a.log.Warn("ignoring unreadable peers file", "path", a.peersPath(), "err", err)
		return nil
	}
	return peers
}

// savePeers writes the current gossip peers when they changed. Only
// members of the Raft configuration count: they are the cluster.
func (l *haLoop) savePeers(inRaft map[string]bool) {
	var peers []string
	for name, m := range l.gossipByName() {
		if name != l.cfg.Name && inRaft[name] {
			peers = append(peers, m.Addr)
		}
	}
	if len(peers) == 0 {
		return
	}
	sort.Strings(peers)
	key := strings.Join(peers, ",")
	if key == l.savedPeers {
		return
	}
	data, _ := json.Marshal(peers)
	if _, err := safefile.Replace(l.peersPath(), data, 0o600, safefile.Keep); err != nil {
		l.log.Warn("save peers", "err", err)
		return
	}
	l.savedPeers = key
}

// joinAddrs is the configured join list plus the saved peers.
func (a *Agent) joinAddrs() []string {
	seen := map[string]bool{}
	var out []string
	for _, addr := range append(append([]string(nil), a.cfg.Gossip.Join...), a.knownPeers()...) {
		if !seen[addr] {
			seen[addr] = true
			out = append(out, addr)
		}
	}
	return out
}
