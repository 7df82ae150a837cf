package config

import (
	"maps"
	"reflect"
	"slices"
)

// RedactedPassword replaces passwords in Redacted output.
const RedactedPassword = "******"

// Clone returns a deep copy: lists and maps are not shared, so either copy
// can be changed without affecting the other.
func (c *Config) Clone() Config {
	out := *c
	for _, f := range schema.leaves {
		v := out.leaf(f)
		switch f.Kind {
		case KindList:
			if !v.IsNil() {
				v.Set(reflect.ValueOf(slices.Clone(v.Interface().([]string))))
			}
		case KindMap:
			if !v.IsNil() {
				v.Set(reflect.ValueOf(maps.Clone(v.Interface().(map[string]string))))
			}
		}
	}
	out.origins = maps.Clone(c.origins)
	return out
}

// Redacted returns a deep copy with every password that is set replaced by
// RedactedPassword, for logs and show-config. An empty password stays
// empty: that it is unset is useful to know and reveals nothing.
func (c *Config) Redacted() Config {
	out := c.Clone()
	for _, f := range schema.leaves {
		if v := out.leaf(f); f.Secret && v.String() != "" {
			v.SetString(RedactedPassword)
		}
	}
	return out
}
