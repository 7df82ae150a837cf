package agent

import (
	"testing"

	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/membership"
)

func TestJoinAllowed(t *testing.T) {
	leader := func(auth, token string) *Agent {
		cfg := config.Default()
		cfg.Cluster, cfg.API.Auth, cfg.API.Token = "c", auth, token
		return &Agent{cfg: &cfg}
	}
	member := func(proof, raftAddr string) membership.Member {
		return membership.Member{Meta: membership.Meta{Raft: raftAddr, JoinProof: proof}}
	}
	good := joinProof("admin:pw", "c", "n4", "10.0.0.4:8300")
	tests := []struct {
		name string
		a    *Agent
		m    membership.Member
		want bool
	}{
		{"no credentials configured", leader("", ""), member("", "10.0.0.4:8300"), true},
		{"no proof", leader("admin:pw", ""), member("", "10.0.0.4:8300"), false},
		{"right proof", leader("admin:pw", ""), member(good, "10.0.0.4:8300"), true},
		{"proof for another address", leader("admin:pw", ""), member(good, "10.6.6.6:8300"), false},
		{"proof from other credentials", leader("admin:other", ""), member(good, "10.0.0.4:8300"), false},
		{"token accepted", leader("", "tok"), member(joinProof("tok", "c", "n4", "10.0.0.4:8300"), "10.0.0.4:8300"), true},
		{"either credential", leader("admin:x", "tok"), member(joinProof("tok", "c", "n4", "10.0.0.4:8300"), "10.0.0.4:8300"), true},
	}
	for _, tt := range tests {
		if got := tt.a.joinAllowed("n4", tt.m); got != tt.want {
			t.Errorf("%s: joinAllowed = %v, want %v", tt.name, got, tt.want)
		}
	}
	if joinAllowedName := leader("admin:pw", "").joinAllowed("n5", member(good, "10.0.0.4:8300")); joinAllowedName {
		t.Error("a proof made for n4 admitted n5")
	}
}
