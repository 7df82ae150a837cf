package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// maxFileSize bounds what we hand to the YAML parser: a node's
// configuration is a few kilobytes, and a huge file is a mistake (wrong
// path) that should not cost memory.
const maxFileSize = 1 << 20

// Load builds a node's configuration: defaults, then the YAML file at path
// (skipped when path is empty), then PGHA_* variables from environ
// (os.Environ() format), then flags (dotted key -> value, see
// ApplyFlags). It fills derived defaults (Resolve) and validates the
// result. Every error it returns is, or joins, *Error values.
func Load(path string, environ []string, flags map[string]string) (*Config, error) {
	cfg := new(Config)
	*cfg = Default()
	if path != "" {
		var err error
		if cfg, err = LoadFile(path); err != nil {
			return nil, err
		}
	}
	if err := ApplyEnv(cfg, environ); err != nil {
		return nil, err
	}
	if err := ApplyFlags(cfg, flags); err != nil {
		return nil, err
	}
	if err := cfg.ReadSecretFiles(); err != nil {
		return nil, err
	}
	cfg.Resolve()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// LoadFile returns the defaults overlaid with the YAML file at path. It
// neither resolves derived defaults nor validates.
func LoadFile(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Msg: "cannot read: " + pathErrText(err), Err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Msg: "cannot read: " + pathErrText(err), Err: err}
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes; is this the configuration file?", maxFileSize)}
	}
	return data, nil
}

// pathErrText drops the path from an *fs.PathError: the *Error already
// starts with it.
func pathErrText(err error) string {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

// Parse returns the defaults overlaid with YAML data; name is the file
// name used in error messages. It neither resolves nor validates.
func Parse(name string, data []byte) (*Config, error) {
	cfg := Default()
	root, err := parseYAML(name, data)
	if err != nil {
		return nil, err
	}
	if root == nil {
		return &cfg, nil
	}
	d := &decoder{file: name, cfg: &cfg}
	d.section(root, "")
	if err := joinErrors(d.errs); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// yamlLine extracts the line yaml.v3 puts in its syntax errors.
var yamlLine = regexp.MustCompile(`^yaml: (?:line ([0-9]+): )?(.*)$`)

// parserProblems are the messages of yaml.v3's parser stage (parserc.go),
// as opposed to its scanner. yaml.v3 v3.0.1 adds one to the 0-based line
// of scanner errors but not of parser errors, and leaves the line out
// when it is 0; syntaxError undoes that so every message cites a 1-based
// line.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// readerProblems come from yaml.v3's input decoding, which reports no
// position at all; the offending byte is found again instead.
var readerProblems = []string{"control characters are not allowed", "UTF-8", "UTF-16", "invalid Unicode character"}

// unknownAnchor is the one composer error whose position can be found
// again: the first use of the alias.
var unknownAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

func syntaxError(name string, data []byte, err error) *Error {
	m := yamlLine.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{File: name, Msg: "invalid YAML: " + err.Error(), Err: err}
	}
	msg := m[2]
	line, _ := strconv.Atoi(m[1]) // 0 when absent
	switch {
	case parserProblems[msg]:
		line++
	case slices.ContainsFunc(readerProblems, func(p string) bool { return strings.Contains(msg, p) }):
		line = badByteLine(data)
	case unknownAnchor.MatchString(msg):
		line = 0
		if i := bytes.Index(data, []byte("*"+unknownAnchor.FindStringSubmatch(msg)[1])); i >= 0 {
			line = 1 + bytes.Count(data[:i], []byte("\n"))
		}
	case strings.HasPrefix(msg, "anchor ") || strings.Contains(msg, "alias"):
		// Composer errors about anchors have no position.
	case line == 0:
		line = 1
	}
	return &Error{File: name, Line: line, Msg: "invalid YAML: " + msg, Err: err}
}

// badByteLine returns the line of the first byte YAML does not accept
// (invalid UTF-8 or a control character other than tab and line breaks),
// or 0 if there is none.
func badByteLine(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return line
		case r == '\n':
			line++
		case r < 0x20 && r != '\t' && r != '\r', r == 0x7f:
			return line
		}
		i += size
	}
	return 0
}

// parseYAML returns the document's root node, or nil for an empty file.
func parseYAML(name string, data []byte) (root *yaml.Node, err error) {
	// The parser is third-party code fed with whatever is in the file;
	// yaml.v3 has had panics on malformed input before. A broken file
	// must be reported as such, not crash the agent.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &Error{File: name, Msg: fmt.Sprintf("invalid YAML: parser failed: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty or comments only: all defaults
		}
		return nil, syntaxError(name, data, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(name, data, err)
	default:
		// yaml.v3 would silently ignore the rest; a second document is
		// more likely two files pasted together than intent.
		return nil, &Error{File: name, Line: extra.Line, Msg: "more than one YAML document; the configuration must be a single document"}
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// decoder walks the YAML node tree against the key schema. It goes on
// after an error so that one run reports every problem in the file.
type decoder struct {
	file string
	cfg  *Config
	errs []error
}

func (d *decoder) fail(line int, key string, cause error, format string, args ...any) {
	d.errs = append(d.errs, origin{file: d.file, line: line}.errorf(key, cause, format, args...))
}

// resolveAlias follows *alias nodes to their anchor. The parser refuses
// an anchor that contains itself, the bound is only a safety net.
func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return quote(n.Value)
	}
	return "an unsupported YAML node"
}

// stringLike reports whether a scalar can stand for a string setting. A
// number or boolean is taken as written ("0123" stays "0123"), which is
// what a password of digits or a parameter value of "on" need; binary and
// custom tags are not plausible values.
func stringLike(n *yaml.Node) bool {
	if n.Kind != yaml.ScalarNode {
		return false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return true
	}
	return false
}

// section decodes a mapping into the struct at prefix ("" for the root).
// A null section ("raft:" with nothing under it) keeps the defaults.
func (d *decoder) section(n *yaml.Node, prefix string) {
	line := n.Line
	n = resolveAlias(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		if prefix == "" {
			d.fail(line, "", nil, "expected a mapping of settings at the top level, got %s", describe(n))
		} else {
			d.fail(line, prefix, nil, "expected a mapping, got %s", describe(n))
		}
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := resolveAlias(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			d.fail(kn.Line, prefix, nil, "a key must be a plain name, got %s", describe(kn))
			continue
		}
		key := joinKey(prefix, kn.Value)
		if kn.ShortTag() == "!!merge" {
			// Merge keys would let a value hide in another part of the
			// file; with at most a few dozen settings they buy nothing.
			d.fail(kn.Line, key, nil, "merge keys (<<) are not supported")
			continue
		}
		if first, dup := seen[kn.Value]; dup {
			d.fail(kn.Line, key, nil, "set twice (first on line %d)", first)
			continue
		}
		seen[kn.Value] = kn.Line
		f := schema.byKey[key]
		if f == nil {
			d.fail(kn.Line, key, ErrUnknownKey, "unknown key")
			continue
		}
		if f.section {
			d.section(vn, key)
			continue
		}
		d.leaf(vn, f)
	}
}

// leaf decodes one setting. A null value ("advertise:" or "~") leaves the
// default in place, like an absent key.
func (d *decoder) leaf(n *yaml.Node, f *field) {
	line := n.Line
	n = resolveAlias(n)
	if isNull(n) {
		return
	}
	v := d.cfg.leaf(f)
	ok := false
	switch f.Kind {
	case KindString:
		ok = d.str(n, line, f, v)
	case KindInt:
		ok = d.integer(n, line, f, v)
	case KindBool:
		ok = d.boolean(n, line, f, v)
	case KindDuration:
		ok = d.duration(n, line, f, v)
	case KindSize:
		ok = d.size(n, line, f, v)
	case KindList:
		ok = d.list(n, line, f, v)
	case KindMap:
		ok = d.mapping(n, line, f, v)
	}
	if ok {
		d.cfg.setOrigin(f.Key, origin{file: d.file, line: line})
	}
}

func (d *decoder) str(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if !stringLike(n) {
		d.fail(line, f.Key, nil, "expected a string, got %s", d.describeSecret(n, f))
		return false
	}
	v.SetString(n.Value)
	return true
}

// describeSecret is describe, except that a password's value is never
// echoed.
func (d *decoder) describeSecret(n *yaml.Node, f *field) string {
	if f.Secret && n.Kind == yaml.ScalarNode {
		return "a " + strings.TrimPrefix(n.ShortTag(), "!!")
	}
	return describe(n)
}

func (d *decoder) integer(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		// Decimal first: YAML 1.2 reads "0123" as 123, and ParseInt with
		// base 0 would take it for octal. Base 0 then covers 0x, 0o, 0b.
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil {
			i, err = strconv.ParseInt(n.Value, 0, 64)
		}
		if err == nil && !v.OverflowInt(i) {
			v.SetInt(i)
			return true
		}
		d.fail(line, f.Key, err, "integer %s out of range", quote(n.Value))
		return false
	}
	if _, err := strconv.Atoi(n.Value); err == nil && n.Kind == yaml.ScalarNode {
		d.fail(line, f.Key, nil, "expected an integer, got the string %s (remove the quotes)", quote(n.Value))
		return false
	}
	d.fail(line, f.Key, nil, "expected an integer, got %s", describe(n))
	return false
}

func (d *decoder) boolean(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		var b bool
		if err := n.Decode(&b); err != nil {
			d.fail(line, f.Key, err, "invalid boolean %s", quote(n.Value))
			return false
		}
		v.SetBool(b)
		return true
	}
	d.fail(line, f.Key, nil, "expected true or false, got %s", describe(n))
	return false
}

func (d *decoder) duration(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if !stringLike(n) {
		d.fail(line, f.Key, nil, "expected a duration such as 1s, got %s", describe(n))
		return false
	}
	dur, msg, err := parseDuration(n.Value)
	if err != nil {
		d.fail(line, f.Key, err, "%s", msg)
		return false
	}
	v.Set(reflect.ValueOf(Duration{dur}))
	return true
}

func (d *decoder) size(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		d.fail(line, f.Key, nil, "expected a size such as 16MB, got %s", describe(n))
		return false
	}
	b, err := ParseSize(n.Value)
	if err != nil {
		d.fail(line, f.Key, err, "invalid size %s: write e.g. 16MB, 512kB or a number of bytes", quote(n.Value))
		return false
	}
	v.Set(reflect.ValueOf(Size{b}))
	return true
}

func (d *decoder) list(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if n.Kind != yaml.SequenceNode {
		d.fail(line, f.Key, nil, "expected a list, got %s", describe(n))
		return false
	}
	items := make([]string, 0, len(n.Content))
	lines := make([]int, 0, len(n.Content))
	ok := true
	for i, item := range n.Content {
		itemLine := item.Line
		item = resolveAlias(item)
		switch {
		case isNull(item):
			d.fail(itemLine, f.Key, nil, "entry %d is empty", i+1)
			ok = false
		case !stringLike(item):
			d.fail(itemLine, f.Key, nil, "entry %d: expected a string, got %s", i+1, describe(item))
			ok = false
		default:
			items = append(items, item.Value)
			lines = append(lines, itemLine)
		}
	}
	if !ok {
		return false
	}
	v.Set(reflect.ValueOf(items))
	d.cfg.forgetEntries(f.Key)
	for i, l := range lines {
		d.cfg.setOrigin(fmt.Sprintf("%s[%d]", f.Key, i), origin{file: d.file, line: l})
	}
	return true
}

func (d *decoder) mapping(n *yaml.Node, line int, f *field, v reflect.Value) bool {
	if n.Kind != yaml.MappingNode {
		d.fail(line, f.Key, nil, "expected a mapping of NAME: VALUE, got %s", describe(n))
		return false
	}
	m := make(map[string]string, len(n.Content)/2)
	lines := map[string]int{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := resolveAlias(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode || kn.ShortTag() == "!!merge" {
			d.fail(kn.Line, f.Key, nil, "a name must be a plain string, got %s", describe(kn))
			ok = false
			continue
		}
		key := f.Key + "." + kn.Value
		if first, dup := lines[kn.Value]; dup {
			d.fail(kn.Line, key, nil, "set twice (first on line %d)", first)
			ok = false
			continue
		}
		lines[kn.Value] = kn.Line
		valLine := vn.Line
		vn = resolveAlias(vn)
		switch {
		case isNull(vn):
			d.fail(valLine, key, nil, "no value (write %s: '' for an empty string)", kn.Value)
			ok = false
		case !stringLike(vn):
			d.fail(valLine, key, nil, "expected a string, got %s", describe(vn))
			ok = false
		default:
			m[kn.Value] = vn.Value
		}
	}
	if !ok {
		return false
	}
	v.Set(reflect.ValueOf(m))
	d.cfg.forgetEntries(f.Key)
	for name, l := range lines {
		d.cfg.setOrigin(f.Key+"."+name, origin{file: d.file, line: l})
	}
	return true
}
