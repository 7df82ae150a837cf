package agent

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"

	"github.com/pgha/pgha/membership"
)

// Joining needs the cluster's credentials. A node asks to join by setting
// Join in its gossip metadata and the leader adds it to Raft; nodes that
// form a new cluster take every candidate they see as a voter. When the
// cluster has API credentials (api.auth or api.token), a joining node or
// bootstrap candidate must also publish a proof that it holds them: an
// HMAC, keyed with the credential, of the cluster name, its member name
// and its Raft address. The credential itself never travels, and a proof
// copied from gossip is worth nothing for another name or address.
// Gossip encryption (gossip.key) and Raft TLS close the remaining doors:
// a node without the gossip key cannot even be seen, one without a
// certificate from the cluster CA cannot speak Raft. Without gossip.key
// anyone on the gossip port can read a proof and guess a weak credential
// offline from it: use a long random one (the README says so).

// joinProof is this node's proof for credential cred ("" when none).
func joinProof(cred, cluster, name, raftAddr string) string {
	if cred == "" {
		return ""
	}
	mac := hmac.New(sha256.New, []byte(cred))
	mac.Write([]byte("pgha-join\x00" + cluster + "\x00" + name + "\x00" + raftAddr))
	return base64.RawStdEncoding.EncodeToString(mac.Sum(nil)[:16])
}

// ownJoinProof is the proof this node publishes while it asks to join.
func (a *Agent) ownJoinProof() string {
	cred := a.cfg.API.Auth
	if cred == "" {
		cred = a.cfg.API.Token
	}
	return joinProof(cred, a.cfg.Cluster, a.cfg.Name, advertiseOr(a.cfg.Raft.Advertise, a.cfg.Raft.Addr))
}

// joinAllowed reports whether the leader may add gossip member m: always
// without API credentials, else only with a proof made from one of them.
func (a *Agent) joinAllowed(name string, m membership.Member) bool {
	creds := []string{a.cfg.API.Auth, a.cfg.API.Token}
	if creds[0] == "" && creds[1] == "" {
		return true
	}
	for _, c := range creds {
		if want := joinProof(c, a.cfg.Cluster, name, m.Meta.Raft); want != "" && hmac.Equal([]byte(want), []byte(m.Meta.JoinProof)) {
			return true
		}
	}
	return false
}

// noticeLogger logs what other members tell this one (the leader saying
// why it will not add this node), each distinct text at most once a
// minute: without it a refused node would wait without a word.
func (a *Agent) noticeLogger() func(from, text string) {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return func(from, text string) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if now.Sub(last[text]) < time.Minute {
			return
		}
		if len(last) > 64 {
			clear(last)
		}
		last[text] = now
		a.log.Warn("the cluster's leader refuses this node", "leader", from, "reason", text)
	}
}
