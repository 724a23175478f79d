package game

import (
	"encoding/json"
	"testing"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

func TestParseBetBounds(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		max     int64
		amount  int64
		ok      bool
	}{
		{"at max", `{"amount":1000000,"pick":"low"}`, 1_000_000, 1_000_000, true},
		{"over max", `{"amount":1000001,"pick":"low"}`, 1_000_000, 0, false},
		{"15 digits", `{"amount":999999999999999,"pick":"low"}`, 1 << 62, 999_999_999_999_999, true},
		{"16 digits", `{"amount":1000000000000000,"pick":"low"}`, 1 << 62, 0, false},
		{"leading zero", `{"amount":05,"pick":"low"}`, 10, 0, false},
		{"duplicate member, last wins", `{"amount":"x","amount":5,"pick":"low"}`, 10, 5, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			amount, pick, ok := parseBet(&backendv1.Payload{Data: []byte(tc.payload)}, tc.max)
			if ok != tc.ok || amount != tc.amount || (ok && pick != PickLow) {
				t.Fatalf("parseBet(%s) = %d %q %v, want %d low %v", tc.payload, amount, pick, ok, tc.amount, tc.ok)
			}
		})
	}
	if _, _, ok := parseBet(nil, 10); ok {
		t.Fatal("a nil payload parsed")
	}
}

// FuzzParseBet: a client's payload never panics the parser, and whatever
// it accepts is a valid bet that encoding/json reads the same way.
func FuzzParseBet(f *testing.F) {
	for _, s := range []string{
		`{"amount":100,"pick":"high"}`,
		`{"amount":1,"pick":"low","idempotency_key":"k"}`,
		`{"amount":1e3,"pick":"high"}`,
		`{"amount":"5","pick":"low"}`,
		`{"pick":"\u006cow","amount":7}`,
		`[1,2]`, `null`, ``, `{`, `{"amount":-1}`,
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte(`{"amount":1,"pick":"high"}`), true)
	f.Fuzz(func(t *testing.T, data []byte, binary bool) {
		amount, pick, ok := parseBet(&backendv1.Payload{Data: data, Binary: binary}, DefaultMaxBet)
		if !ok {
			return
		}
		if binary || amount < 1 || amount > DefaultMaxBet || (pick != PickHigh && pick != PickLow) {
			t.Fatalf("accepted %q (binary %v) as %d %q", data, binary, amount, pick)
		}
		var v struct {
			Amount json.Number `json:"amount"`
			Pick   string      `json:"pick"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
	})
}
