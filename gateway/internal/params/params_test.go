package params

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		query   string
		want    string
		vsn     string
		hasVsn  bool
		vsnBad  bool
		wantErr bool
	}{
		{name: "empty", query: "", want: `{}`},
		{name: "phoenix.js nested", query: "token=abc&user%5Bid%5D=1&vsn=2.0.0", want: `{"token":"abc","user":{"id":"1"}}`, vsn: "2.0.0", hasVsn: true},
		{name: "array indices", query: "a%5B0%5D=x&a%5B1%5D=y", want: `{"a":["x","y"]}`},
		{name: "array append", query: "a[]=x&a[]=y", want: `{"a":["x","y"]}`},
		{name: "sparse indices stay an object", query: "a[1]=x", want: `{"a":{"1":"x"}}`},
		{name: "deep", query: "a[b][c]=1", want: `{"a":{"b":{"c":"1"}}}`},
		{name: "percent and plus", query: "msg=hello%20w%C3%B6rld%2B1+2", want: `{"msg":"hello wörld+1 2"}`},
		{name: "no value", query: "flag", want: `{"flag":""}`},
		{name: "last wins", query: "a=1&a=2", want: `{"a":"2"}`},
		{name: "undefined string", query: "x=undefined", want: `{"x":"undefined"}`},
		{name: "escapes", query: "q=%22%5C%0A%01", want: `{"q":"\"\\\n\u0001"}`},
		{name: "invalid utf8 replaced", query: "q=%FF", want: `{"q":"\ufffd"}`},
		{name: "vsn array", query: "vsn[]=x", want: `{}`, hasVsn: true, vsnBad: true},
		{name: "empty pairs", query: "&&a=1&", want: `{"a":"1"}`},
		{name: "unbalanced bracket is flat", query: "a[b=1", want: `{"a[b":"1"}`},
		{name: "bad escape", query: "a=%zz", wantErr: true},
		{name: "value and container", query: "a=1&a[b]=2", wantErr: true},
		{name: "container and value", query: "a[b]=2&a=1", wantErr: true},
		{name: "empty key", query: "=1", wantErr: true},
		{name: "too deep", query: "a" + strings.Repeat("[x]", DefaultMaxDepth+1) + "=1", wantErr: true},
		{name: "too many", query: strings.Repeat("a=1&", DefaultMaxParams+1), wantErr: true},
		{name: "value too long", query: "a=" + strings.Repeat("v", DefaultMaxValueBytes+1), wantErr: true},
		{name: "key too long", query: strings.Repeat("k", DefaultMaxKeyBytes+1) + "=1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.query, Limits{})
			if tt.wantErr {
				if !errors.Is(err, ErrBadParams) {
					t.Fatalf("err = %v, want ErrBadParams", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if string(got.JSON) != tt.want {
				t.Errorf("JSON = %s, want %s", got.JSON, tt.want)
			}
			if got.Vsn != tt.vsn || got.HasVsn != tt.hasVsn || got.VsnNotString != tt.vsnBad {
				t.Errorf("vsn = %q/%v/%v, want %q/%v/%v", got.Vsn, got.HasVsn, got.VsnNotString, tt.vsn, tt.hasVsn, tt.vsnBad)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "token=abc&user%5Bid%5D=1&vsn=2.0.0", "a[]=1&a[]=2", "a[0]=x&a[1][b]=y",
		"vsn[]=x", "a=%zz", "a[b=1", "=", "&&&", "a[][]=1", "a[b][c][d]=%FF",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		res, err := Decode(q, Limits{})
		if err != nil {
			if !errors.Is(err, ErrBadParams) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		var v map[string]any
		if err := json.Unmarshal(res.JSON, &v); err != nil {
			t.Fatalf("invalid JSON %q for %q: %v", res.JSON, q, err)
		}
	})
}
