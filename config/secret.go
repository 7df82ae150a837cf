package config

import (
	"encoding/base64"
	"errors"
	"os"
	"strings"
)

// ReadSecretFiles replaces every secret value written as "file:PATH" with
// the file's content (trailing newline dropped), so passwords and keys can
// live in files readable by the agent only, rather than in the YAML or the
// environment. Load calls it before Validate. Errors name the setting and
// where it was set, never the secret itself.
func (c *Config) ReadSecretFiles() error {
	var errs []error
	for _, f := range schema.leaves {
		if !f.Secret {
			continue
		}
		v := c.leaf(f)
		path, ok := strings.CutPrefix(v.String(), SecretFilePrefix)
		if !ok {
			continue
		}
		if path == "" {
			errs = append(errs, c.originOf(f.Key).errorf(f.Key, nil, "%s needs a path, e.g. %s/etc/pgha/%s", SecretFilePrefix, SecretFilePrefix, f.Key))
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, c.originOf(f.Key).errorf(f.Key, err, "cannot read secret file: %s", pathErrText(err)))
			continue
		}
		s := strings.TrimRight(string(data), "\r\n")
		if s == "" {
			errs = append(errs, c.originOf(f.Key).errorf(f.Key, nil, "secret file %s is empty", path))
			continue
		}
		v.SetString(s)
	}
	return errors.Join(errs...)
}

// GossipKey decodes gossip.key; nil when unset. Validate has checked it.
func (c *Config) GossipKey() []byte {
	if c.Gossip.Key == "" {
		return nil
	}
	k, _ := base64.StdEncoding.DecodeString(c.Gossip.Key)
	return k
}

// validateSecurity checks the API credentials, the gossip key and that the
// TLS files come as a set.
func (v *validator) validateSecurity() {
	c := v.c
	if a := c.API.Auth; a != "" {
		if user, pass, ok := strings.Cut(a, ":"); !ok || user == "" || pass == "" {
			v.fail("api.auth", "write USER:PASSWORD (both non-empty)")
		}
	}
	if k := c.Gossip.Key; k != "" {
		raw, err := base64.StdEncoding.DecodeString(k)
		switch {
		case err != nil:
			v.fail("gossip.key", "not valid base64 (generate one with `pgha keygen`)")
		case len(raw) != 16 && len(raw) != 24 && len(raw) != 32:
			v.fail("gossip.key", "decodes to %d bytes; AES needs 16, 24 or 32 (generate one with `pgha keygen`)", len(raw))
		}
	}
	t := c.TLS
	if t.Enabled() {
		for _, kv := range [][2]string{{"tls.ca_file", t.CAFile}, {"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}} {
			if kv[1] == "" {
				v.fail(kv[0], "required when any tls file is set (tls.ca_file, tls.cert_file and tls.key_file go together)")
			}
		}
	}
	if c.API.ProtectReads && c.API.Auth == "" && c.API.Token == "" {
		v.fail("api.protect_reads", "needs api.auth or api.token")
	}
}
