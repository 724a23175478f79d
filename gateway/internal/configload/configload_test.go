package configload

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type class struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

type Inner struct {
	Wait time.Duration `yaml:"wait"`
}

type testConfig struct {
	Name    string           `yaml:"name"`
	List    []string         `yaml:"list"`
	Section Inner            `yaml:"section"`
	Classes map[string]class `yaml:"classes"`
	Items   []Inner          `yaml:"items"`
	Skip    func()           `yaml:"-"`
	Switch  bool             `yaml:"switch,noyaml"`
	Inner   `yaml:",inline"`
}

func TestYAMLErrorsNameTheKey(t *testing.T) {
	l := New[testConfig]()
	for _, tt := range []struct{ yaml, want string }{
		{"nmae: x\n", "config: nmae: unknown key (line 1)"},
		{"section:\n  wiat: 1s\n", "config: section.wiat: unknown key (line 2)"},
		{"section:\n  wait: soon\n", "config: section.wait: time: invalid duration"},
		{"section: 3\n", "config: section: line 1: want a mapping"},
		{"classes:\n  a: {rate: x}\n", "config: classes.a.rate: "},
		{"items:\n  - {wait: 1s}\n  - {wiat: 1s}\n", "config: items[1].wiat: unknown key (line 3)"},
		{"wait: x\n", "config: wait: time: invalid duration"},
		{"name: x\nswitch: true\n", "config: switch: line 2: not allowed in a file; give the flag --switch or PHXGATE_SWITCH"},
	} {
		c := testConfig{}
		err := l.ApplyYAML(&c, []byte(tt.yaml))
		if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want prefix %q", tt.yaml, err, tt.want)
		}
	}
}

// A key given twice is an error naming it and both lines (yaml.v3 checks
// this only when it decodes a mapping itself; the loader walks the nodes).
func TestYAMLDuplicateKeys(t *testing.T) {
	l := New[testConfig]()
	for _, tt := range []struct{ yaml, want string }{
		{"name: a\nname: b\n", "config: name: duplicate key (lines 1 and 2)"},
		{"section:\n  wait: 1s\n  wait: 2s\n", "config: section.wait: duplicate key (lines 2 and 3)"},
		{"wait: 1s\nname: x\nwait: 2s\n", "config: wait: duplicate key (lines 1 and 3)"},
		{"classes:\n  a: {rate: 1}\n  a: {burst: 2}\n", "config: classes.a: duplicate key (lines 2 and 3)"},
		{"classes:\n  a: {rate: 1, rate: 2}\n", "config: classes.a.rate: duplicate key (lines 2 and 2)"},
		{"items:\n  - {wait: 1s}\n  - wait: 1s\n    wait: 2s\n", "config: items[1].wait: duplicate key (lines 3 and 4)"},
	} {
		c := testConfig{}
		err := l.ApplyYAML(&c, []byte(tt.yaml))
		if !errors.Is(err, ErrConfig) || err.Error() != tt.want {
			t.Errorf("%q: err = %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

func TestMapsOfSectionsMerge(t *testing.T) {
	l := New[testConfig]()
	def := map[string]class{"a": {Rate: 1, Burst: 2}}
	c := testConfig{Classes: def}
	if err := l.ApplyYAML(&c, []byte("classes:\n  a: {burst: 5}\n  b: {rate: 3}\n")); err != nil {
		t.Fatal(err)
	}
	if c.Classes["a"] != (class{Rate: 1, Burst: 5}) || c.Classes["b"] != (class{Rate: 3}) || len(def) != 1 || def["a"].Burst != 2 {
		t.Fatalf("classes = %v, default = %v", c.Classes, def)
	}
}

func TestStringForms(t *testing.T) {
	l := New[testConfig]()
	var keys []string
	for _, lf := range l.Leaves() {
		keys = append(keys, lf.Key)
	}
	if got := strings.Join(keys, " "); got != "name list section.wait switch wait" {
		t.Fatalf("leaves = %q", got)
	}
	c := testConfig{}
	env := map[string]string{"PHXGATE_SECTION_WAIT": "3s", "PHXGATE_LIST": " a, ,b"}
	if err := l.ApplyEnv(&c, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Section.Wait != 3*time.Second || strings.Join(c.List, "|") != "a|b" {
		t.Fatalf("cfg = %+v", c)
	}
	if err := l.ApplyFlags(&c, map[string]string{"wait": "x"}); err == nil || !strings.HasPrefix(err.Error(), "config: wait: flag: ") {
		t.Fatalf("flag err = %v", err)
	}
}

func TestUntaggedFieldPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a field without a yaml tag")
		}
	}()
	type bad struct{ Forgot int }
	New[bad]()
}

// A noyaml key is refused in a file but has its flag and environment form.
func TestNoYAMLKeyFromFlagAndEnv(t *testing.T) {
	l := New[testConfig]()
	c := testConfig{}
	if err := l.ApplyEnv(&c, func(k string) string {
		if k == "PHXGATE_SWITCH" {
			return "true"
		}
		return ""
	}); err != nil || !c.Switch {
		t.Fatalf("PHXGATE_SWITCH=true: %v, switch %v", err, c.Switch)
	}
	if err := l.ApplyFlags(&c, map[string]string{"switch": "false"}); err != nil || c.Switch {
		t.Fatalf("--switch=false: %v, switch %v", err, c.Switch)
	}
}

// A file holds one document: a second one (after "---") would be dropped
// without a word, so it is refused, naming the line of its "---".
func TestYAMLSeveralDocumentsRefused(t *testing.T) {
	l := New[testConfig]()
	for _, tt := range []struct{ yaml, want string }{
		{"name: a\n---\nname: b\n", "line 2"},
		{"---\nname: a\n---\nname: b\n", "line 3"},
		{"name: a\n---\n", "line 2"},
	} {
		var c testConfig
		err := l.ApplyYAML(&c, []byte(tt.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "document") {
			t.Errorf("%q: err = %v, want a config error about a second document at %s", tt.yaml, err, tt.want)
		}
	}
	for _, one := range []string{"name: a\n", "---\nname: a\n", "name: a\n...\n", ""} {
		var c testConfig
		if err := l.ApplyYAML(&c, []byte(one)); err != nil {
			t.Errorf("%q: %v", one, err)
		}
	}
}
