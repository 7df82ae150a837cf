package config

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"
)

// bareNumber matches a number without a unit. time.ParseDuration accepts
// "0" and rejects "5" with a cryptic message; both are almost always a
// misunderstanding ("seconds or milliseconds?"), so they get a hint.
var bareNumber = regexp.MustCompile(`^[+-]?[0-9]+(\.[0-9]*)?$`)

// errBareNumber is the cause of a duration given without a unit.
var errBareNumber = errors.New("duration without a unit")

// parseDuration parses a Go duration ("1s", "500ms", "1m30s"). The
// returned message is meant to follow the key in an *Error.
func parseDuration(s string) (time.Duration, string, error) {
	if bareNumber.MatchString(s) {
		return 0, fmt.Sprintf("invalid duration %s: a number needs a unit (write %ss)", quote(s), s), errBareNumber
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Sprintf("invalid duration %s", quote(s)), fmt.Errorf("parse duration: %w", err)
	}
	return d, "", nil
}

// MarshalText writes the duration as "1s", "500ms" so that show-config and
// JSON output can be fed back in.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalText parses a Go duration string; bare numbers are refused.
func (d *Duration) UnmarshalText(b []byte) error {
	v, msg, err := parseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%s: %w", msg, err)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string ("1s"); without it yaml.v3
// would emit the struct's nanosecond count.
func (d Duration) MarshalYAML() (any, error) {
	return d.String(), nil
}

// UnmarshalYAML lets other packages decode a Duration with plain yaml.v3;
// Load uses its own stricter decoder.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a duration such as 1s", n.Line)
	}
	return d.UnmarshalText([]byte(n.Value))
}
