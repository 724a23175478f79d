package game

import (
	"bytes"
	"encoding/json"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

// Picks of a bet: high wins on 4..6, low on 1..3.
const (
	PickHigh = "high"
	PickLow  = "low"
)

// maxAmountDigits bounds the amount's text before it is parsed, so a
// thousand-digit number costs nothing.
const maxAmountDigits = 15

// parseBet reads a bet's payload, {"amount":N,"pick":"high"|"low"}, with N
// a positive JSON integer (no sign, fraction or exponent, not a string) of
// at most max. Other members (such as the client's idempotency_key) are
// ignored; member names are matched exactly. ok is false for anything
// else: a binary payload, JSON that is not an object, a missing or
// malformed member.
func parseBet(p *backendv1.Payload, max int64) (amount int64, pick string, ok bool) {
	if p == nil || p.GetBinary() {
		return 0, "", false
	}
	data := bytes.TrimLeft(p.GetData(), " \t\r\n")
	if len(data) == 0 || data[0] != '{' {
		return 0, "", false
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return 0, "", false
	}
	raw := m["amount"]
	if len(raw) == 0 || len(raw) > maxAmountDigits || raw[0] < '1' || raw[0] > '9' {
		return 0, "", false
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, "", false
		}
		amount = amount*10 + int64(c-'0')
	}
	if amount > max {
		return 0, "", false
	}
	rawPick, found := m["pick"]
	if !found || len(rawPick) == 0 || rawPick[0] != '"' {
		return 0, "", false
	}
	if err := json.Unmarshal(rawPick, &pick); err != nil || (pick != PickHigh && pick != PickLow) {
		return 0, "", false
	}
	return amount, pick, true
}

// wins reports whether pick wins on roll.
func wins(pick string, roll int) bool {
	if pick == PickHigh {
		return roll >= 4
	}
	return roll <= 3
}
