package config

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is a byte count, written as PostgreSQL writes sizes ("16MB",
// "512kB", "1GB") or as a plain number of bytes. It is parsed once, when
// the configuration is read, so nothing downstream parses (or ignores
// an error of) the text again.
type Size struct{ Bytes int64 }

// sizeUnits from the largest down, so "16MB" matches MB, not B.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"B", 1}}

// ParseSize parses a size in bytes: "16MB", "1GB", "512kB" or a plain
// number of bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

// String writes the size with the largest unit that divides it: "16MB".
func (s Size) String() string {
	for _, u := range sizeUnits {
		if u.suffix == "KB" {
			continue // kB is PostgreSQL's spelling
		}
		if s.Bytes != 0 && s.Bytes%u.mult == 0 {
			return strconv.FormatInt(s.Bytes/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(s.Bytes, 10)
}

// MarshalText writes "16MB", so show-config output can be fed back in.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a size.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := ParseSize(string(b))
	if err != nil {
		return fmt.Errorf("%v: write e.g. 16MB, 512kB or a number of bytes", err)
	}
	s.Bytes = n
	return nil
}

// MarshalYAML writes the size as a string ("16MB").
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// UnmarshalYAML lets other packages decode a Size with plain yaml.v3;
// Load uses its own stricter decoder.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a size such as 16MB", n.Line)
	}
	return s.UnmarshalText([]byte(n.Value))
}
