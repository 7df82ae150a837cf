package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
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
	guard        *loginGuard
	log          *slog.Logger
}

func newAuthenticator(c Credentials, log *slog.Logger) *authenticator {
	a := &authenticator{hasBasic: c.Basic != "", hasToken: c.Token != "", guard: newLoginGuard(), log: log}
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
// WWW-Authenticate challenge without them, 429 while the client's
// address is throttled for failed logins (checked first, so a throttled
// guesser learns nothing from its guesses).
func (a *authenticator) require(next http.HandlerFunc) http.HandlerFunc {
	if !a.enabled() {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		src := clientKey(r)
		presented := r.Header.Get("Authorization") != ""
		res := a.guard.attempt(src, time.Now(), presented, func() bool { return a.ok(r) })
		if res.wait > 0 {
			secs := int(res.wait.Round(time.Second) / time.Second)
			if secs < 1 {
				secs = 1
			}
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeJSON(w, http.StatusTooManyRequests, ErrorBody{
				Error: fmt.Sprintf("too many failed logins from %s; retry in %d s", src, secs)})
			return
		}
		if !res.ok {
			if a.hasBasic {
				w.Header().Set("WWW-Authenticate", `Basic realm="pgha"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pgha"`)
			}
			msg := "credentials required: pass --api-auth USER:PASSWORD (or PGHA_API_AUTH) or --api-token"
			if presented {
				msg = "wrong credentials"
				a.logFailure(r, src, res)
			}
			writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: msg})
			return
		}
		next(w, r)
	}
}

// logFailure logs a request that presented wrong credentials (a few
// times a minute per address at most).
func (a *authenticator) logFailure(r *http.Request, src string, res attemptResult) {
	if !res.logIt || a.log == nil {
		return
	}
	user := ""
	if u, _, ok := r.BasicAuth(); ok {
		user = u
	}
	a.log.Warn("API login failed", "from", src, "endpoint", r.Method+" "+r.URL.Path,
		"user", user, "failures", res.failures, "throttled_after", throttleAfter)
}

// clientKey is what failed logins are counted by: the client's IPv4
// address, or its IPv6 /64 (one host commonly holds a whole /64, so a
// single address would let it rotate through 2^64 of them).
func clientKey(r *http.Request) string {
	host := clientHost(r)
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !a.Is4In6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return host
}

func clientHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
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
