package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Credentials are what mutating requests must present when the agent is
// configured with api.auth and/or api.token. The zero value turns
// authentication off (the demo on loopback, tests).
type Credentials struct {
	// Basic is "user:password".
	Basic string
	// Token is a bearer token.
	Token string
}

// authenticator checks the Authorization header. It compares digests in
// constant time, so neither the length nor a prefix of a secret leaks
// through response timing.
type authenticator struct {
	basic, token [sha256.Size]byte
	hasBasic     bool
	hasToken     bool
}

func newAuthenticator(c Credentials) *authenticator {
	a := &authenticator{hasBasic: c.Basic != "", hasToken: c.Token != ""}
	if a.hasBasic {
		a.basic = sha256.Sum256([]byte(c.Basic))
	}
	if a.hasToken {
		a.token = sha256.Sum256([]byte(c.Token))
	}
	return a
}

func (a *authenticator) enabled() bool { return a.hasBasic || a.hasToken }

// ok reports whether r carries valid credentials.
func (a *authenticator) ok(r *http.Request) bool {
	if !a.enabled() {
		return true
	}
	if user, pass, found := r.BasicAuth(); found && a.hasBasic {
		got := sha256.Sum256([]byte(user + ":" + pass))
		return subtle.ConstantTimeCompare(got[:], a.basic[:]) == 1
	}
	h := r.Header.Get("Authorization")
	if tok, found := strings.CutPrefix(h, "Bearer "); found && a.hasToken {
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		return subtle.ConstantTimeCompare(got[:], a.token[:]) == 1
	}
	return false
}

// require wraps a handler that needs credentials: 401 with a
// WWW-Authenticate challenge without them.
func (a *authenticator) require(next http.HandlerFunc) http.HandlerFunc {
	if !a.enabled() {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.ok(r) {
			if a.hasBasic {
				w.Header().Set("WWW-Authenticate", `Basic realm="pgha"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pgha"`)
			}
			msg := "credentials required: pass --api-auth USER:PASSWORD (or PGHA_API_AUTH) or --api-token"
			if r.Header.Get("Authorization") != "" {
				msg = "wrong credentials"
			}
			writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: msg})
			return
		}
		next(w, r)
	}
}

// setAuth adds credentials to an outgoing request.
func (c Credentials) setAuth(req *http.Request) {
	switch {
	case c.Basic != "":
		user, pass, _ := strings.Cut(c.Basic, ":")
		req.SetBasicAuth(user, pass)
	case c.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}
