// Package configload reads a configuration struct from a YAML file,
// PHXGATE_* environment variables and command-line flags, with errors that
// name the key they are about ("config: routes[1].backend: …",
// "config: listn: unknown key (line 3)").
//
// The keys are the structs themselves: every exported field carries a
// `yaml:"name"` tag (`yaml:"-"` for fields that are not configuration, such
// as clocks and callbacks) and, for a flag's help, a `usage:"…"` tag. A
// field whose type is a struct is a section (its keys are "name.key"); an
// embedded struct tagged `yaml:",inline"` adds its keys to the enclosing
// level. So a package owns its section once, in its Config type, and adding
// a key is adding a field. A field tagged `yaml:"name,noyaml"` is a key of
// the flags and the environment only: a file that sets it is refused, for
// switches that must be asked for on purpose at each start (dev mode).
//
// What each field kind accepts:
//
//   - string, bool, int, int64, float64: a YAML scalar; flags and
//     environment variables parse it (strconv).
//   - time.Duration: a string such as "250ms" or "10s" everywhere.
//   - []string: a YAML list; flags and environment variables take a
//     comma-separated list.
//   - a slice of structs: a YAML list of mappings, replacing the default.
//   - a map of structs: a YAML mapping of names to mappings, merged over the
//     default entries (a name given in part keeps the rest of its default).
//   - a map of strings: a YAML mapping, replacing the default.
//   - a type whose pointer implements Setter also has a flag and
//     environment form, parsed by its Set method.
//
// Why not a general-purpose loader (koanf, viper): they flatten the
// document into a map before decoding, so an unknown key loses its line
// number, a wrong type is reported against a Go field (mapstructure's
// messages) rather than the key, and a typo in a key is silently ignored
// unless every section is checked by hand. Keeping those errors precise is
// the point of this package, and the walk is a few hundred lines over
// gopkg.in/yaml.v3 nodes, which the module already depends on.
package configload

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrConfig is wrapped by every configuration error; the message names the
// offending key, e.g. "config: routes[1].backend: unknown backend".
var ErrConfig = errors.New("config")

// KeyErr is a configuration error about key.
func KeyErr(key string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
}

// sectionError rewords a section's own error in the loader's form while
// both sentinels stay reachable with errors.Is.
type sectionError struct {
	msg   string
	cause error
}

func (e *sectionError) Error() string   { return e.msg }
func (e *sectionError) Unwrap() []error { return []error{ErrConfig, e.cause} }

// Section rewords err, returned by the Validate of a section's Config
// ("<sentinel>: <key>: <problem>", with key relative to the section), as
// "config: <prefix><key>: <problem>". A nil err stays nil.
func Section(prefix string, err, sentinel error) error {
	if err == nil {
		return nil
	}
	msg := strings.TrimPrefix(err.Error(), sentinel.Error()+": ")
	return &sectionError{msg: ErrConfig.Error() + ": " + prefix + msg, cause: err}
}

// Setter is implemented by a field type (on its pointer) with a compact
// flag and environment form, e.g. "name=per_second:burst,…".
type Setter interface {
	Set(s string) error
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	setterType   = reflect.TypeFor[Setter]()
)

// A Leaf is a key with a flag and environment form.
type Leaf struct {
	// Key is the dotted key, e.g. "auth.required".
	Key string
	// Usage is the flag's help.
	Usage string
	// Bool is set for boolean keys (a flag that needs no value).
	Bool  bool
	index []int
	typ   reflect.Type
}

// Loader knows the keys of one configuration type.
type Loader struct {
	typ    reflect.Type
	leaves []Leaf
	byKey  map[string]int
}

// New returns the Loader of the struct type T. It panics when an exported
// field has no yaml tag: every field is a key or says it is not one.
func New[T any]() *Loader {
	l := &Loader{typ: reflect.TypeFor[T](), byKey: map[string]int{}}
	l.collect("", nil, l.typ)
	return l
}

// Leaves lists the keys that have a flag and environment form, in the
// order of the fields.
func (l *Loader) Leaves() []Leaf { return l.leaves }

type field struct {
	name   string
	index  []int
	usage  string
	noYAML bool
}

// fields lists t's configuration fields, inline structs flattened.
func fields(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, ok := f.Tag.Lookup("yaml")
		if !ok {
			panic(fmt.Sprintf("configload: %v.%s has no yaml tag", t, f.Name))
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if opts == "inline" {
			for _, sub := range fields(f.Type) {
				sub.index = append([]int{i}, sub.index...)
				out = append(out, sub)
			}
			continue
		}
		out = append(out, field{name: name, index: []int{i}, usage: f.Tag.Get("usage"), noYAML: opts == "noyaml"})
	}
	return out
}

func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(setterType)
}

func (l *Loader) collect(prefix string, index []int, t reflect.Type) {
	for _, f := range fields(t) {
		key, idx := prefix+f.name, append(slices.Clone(index), f.index...)
		ft := t.FieldByIndex(f.index).Type
		if isSection(ft) && ft != durationType {
			l.collect(key+".", idx, ft)
			continue
		}
		if !hasStringForm(ft) {
			continue // YAML only
		}
		usage := f.usage
		if usage == "" {
			usage = key
		}
		l.byKey[key] = len(l.leaves)
		l.leaves = append(l.leaves, Leaf{Key: key, Usage: usage, Bool: ft.Kind() == reflect.Bool, index: idx, typ: ft})
	}
}

func hasStringForm(t reflect.Type) bool {
	if reflect.PointerTo(t).Implements(setterType) {
		return true
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Float64:
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.String
	}
	return false
}

// SetString sets key from its flag or environment form.
func (l *Loader) SetString(cfg any, key, s string) error {
	i, ok := l.byKey[key]
	if !ok {
		return KeyErr(key, "unknown key")
	}
	v := l.root(cfg).FieldByIndex(l.leaves[i].index)
	if st, ok := v.Addr().Interface().(Setter); ok {
		return st.Set(s)
	}
	if v.Type() == durationType {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		var out []string
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
		v.Set(reflect.ValueOf(out).Convert(v.Type()))
	}
	return nil
}

func (l *Loader) root(cfg any) reflect.Value {
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Type() != l.typ {
		panic(fmt.Sprintf("configload: want *%v, got %T", l.typ, cfg))
	}
	return v.Elem()
}

// EnvName is the environment variable for a key: PHXGATE_ + upper snake
// case, with nesting dots as underscores (auth.required →
// PHXGATE_AUTH_REQUIRED).
func EnvName(key string) string {
	return "PHXGATE_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// Flags registers one flag per leaf on fs; a flag given on the command
// line records its value in vals (applied later, with ApplyFlags, so that
// flags win over the file and the environment whatever their order).
func (l *Loader) Flags(fs *flag.FlagSet, vals map[string]string) {
	for _, lf := range l.leaves {
		key := lf.Key
		usage := lf.Usage + " (env " + EnvName(key) + ")"
		set := func(v string) error { vals[key] = v; return nil }
		if lf.Bool {
			fs.BoolFunc(key, usage, set)
		} else {
			fs.Func(key, usage, set)
		}
	}
}

// ApplyEnv sets every key whose environment variable is set and not
// empty; an error names the key and the variable.
func (l *Loader) ApplyEnv(cfg any, getenv func(string) string) error {
	for _, lf := range l.leaves {
		if v := getenv(EnvName(lf.Key)); v != "" {
			if err := l.SetString(cfg, lf.Key, v); err != nil {
				return KeyErr(lf.Key, "%s: %v", EnvName(lf.Key), err)
			}
		}
	}
	return nil
}

// ApplyFlags sets every key recorded by Flags; an error names the key.
func (l *Loader) ApplyFlags(cfg any, vals map[string]string) error {
	for _, lf := range l.leaves {
		if v, ok := vals[lf.Key]; ok {
			if err := l.SetString(cfg, lf.Key, v); err != nil {
				return KeyErr(lf.Key, "flag: %v", err)
			}
		}
	}
	return nil
}

// ApplyYAML walks the document key by key over cfg, so that every error
// (unknown key, wrong type, bad duration) names the key it is about;
// yaml.v3's own decoding names Go types instead. An empty document keeps
// cfg as it is. A second document (after "---") is refused: it would be
// dropped without a word.
func (l *Loader) ApplyYAML(cfg any, data []byte) error {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return fmt.Errorf("%w: a second YAML document at line %d: a config file holds one (remove the \"---\" and merge them)", ErrConfig, next.Line)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%w: the document must be a mapping", ErrConfig)
	}
	return decodeStruct("", l.root(cfg), root)
}

// decodeStruct applies mapping n to the struct v; prefix ends with "." (or
// is empty at the top).
func decodeStruct(prefix string, v reflect.Value, n *yaml.Node) error {
	byName := map[string]field{}
	for _, f := range fields(v.Type()) {
		byName[f.name] = f
	}
	if err := noDuplicates(prefix, n); err != nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := prefix + k.Value
		f, ok := byName[k.Value]
		if !ok {
			return KeyErr(key, "unknown key (line %d)", k.Line)
		}
		if f.noYAML {
			return KeyErr(key, "line %d: not allowed in a file; give the flag --%s or %s at start", k.Line, key, EnvName(key))
		}
		if err := decodeValue(key, v.FieldByIndex(f.index), val); err != nil {
			return err
		}
	}
	return nil
}

// noDuplicates fails on a key given twice in mapping n, naming it and both
// lines: walking the nodes bypasses yaml.v3's own check, and "last one
// wins" would hide a mistake.
func noDuplicates(prefix string, n *yaml.Node) error {
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if first, dup := seen[k.Value]; dup {
			return KeyErr(prefix+k.Value, "duplicate key (lines %d and %d)", first, k.Line)
		}
		seen[k.Value] = k.Line
	}
	return nil
}

func wantMapping(key string, n *yaml.Node, what string) error {
	if n.Kind != yaml.MappingNode {
		return KeyErr(key, "line %d: want %s", n.Line, what)
	}
	return nil
}

func decodeValue(key string, v reflect.Value, n *yaml.Node) error {
	t := v.Type()
	switch {
	case t == durationType:
		var s string
		if err := n.Decode(&s); err != nil {
			return KeyErr(key, "%v", err)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return KeyErr(key, "%v", err)
		}
		v.SetInt(int64(d))
		return nil
	case isSection(t):
		if err := wantMapping(key, n, "a mapping"); err != nil {
			return err
		}
		return decodeStruct(key+".", v, n)
	case t.Kind() == reflect.Slice && isSection(t.Elem()):
		if n.Kind != yaml.SequenceNode {
			return KeyErr(key, "line %d: want a list", n.Line)
		}
		out := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			ik := fmt.Sprintf("%s[%d]", key, i)
			if err := wantMapping(ik, item, "a mapping"); err != nil {
				return err
			}
			if err := decodeStruct(ik+".", out.Index(i), item); err != nil {
				return err
			}
		}
		v.Set(out)
		return nil
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		if err := wantMapping(key, n, "a mapping"); err != nil {
			return err
		}
		if err := noDuplicates(key+".", n); err != nil {
			return err
		}
		merge := isSection(t.Elem())
		// A new map: the default one may be shared with other configs.
		out := reflect.MakeMap(t)
		if merge {
			for it := v.MapRange(); it.Next(); {
				out.SetMapIndex(it.Key(), it.Value())
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			name, body := n.Content[i].Value, n.Content[i+1]
			ek := key + "." + name
			e := reflect.New(t.Elem()).Elem()
			if old := out.MapIndex(reflect.ValueOf(name).Convert(t.Key())); merge && old.IsValid() {
				e.Set(old)
			}
			if err := decodeValue(ek, e, body); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(name).Convert(t.Key()), e)
		}
		v.Set(out)
		return nil
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		return KeyErr(key, "%v", err)
	}
	return nil
}
