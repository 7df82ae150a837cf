package pgnode

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseLSN parses PostgreSQL's textual LSN "X/Y" (two hexadecimal 32-bit
// halves) into hi<<32 | lo. Numeric comparison of the result orders WAL
// positions, which the text form does not.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || !isHex32(hi) || !isHex32(lo) {
		return 0, fmt.Errorf("parse lsn %q: want X/Y with 1-8 hex digits each", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return h<<32 | l, nil
}

// isHex32 accepts only plain hex digits: ParseUint alone would also take
// a sign or underscores in some bases.
func isHex32(s string) bool {
	if len(s) == 0 || len(s) > 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// FormatLSN renders an LSN the way PostgreSQL prints it ("16/B374D848").
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn))
}
