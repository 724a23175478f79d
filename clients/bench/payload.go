package main

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
)

// The broadcast payload is a JSON object:
//
//	{"seq":N,"ts":T,"pad":"xxx…"}
//
// N counts publishes from 0, T is the publisher's send time in Unix
// nanoseconds (subscribers run on the same machine, so receive time − T is
// the end-to-end latency), and the padding brings the object to the
// requested size. seq comes first so that a reader finds it at once; the
// reader still finds the keys anywhere in the object, in case a server
// re-encodes the payload with sorted keys. The padding is only 'x', so it
// cannot contain a key.
const (
	// MinPayloadBytes is the smallest -payload: room for both numbers.
	MinPayloadBytes = 64
	// MaxPayloadBytes keeps a push under the gateway's default 64 KiB
	// message limit with the frame's envelope.
	MaxPayloadBytes = 60_000
)

var (
	keySeq = []byte(`"seq":`)
	keyTS  = []byte(`"ts":`)
)

// appendPayload appends the payload of publish seq sent at ts, padded to
// size bytes (or left unpadded when the numbers alone are longer).
func appendPayload(dst []byte, seq, ts int64, size int) []byte {
	start := len(dst)
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"pad":"`...)
	for pad := size - (len(dst) - start) - len(`"}`); pad > 0; pad-- {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// decodePayload reads seq and ts back; ok is false if either is missing.
// It allocates nothing: subscribers call it for every delivery.
func decodePayload(p []byte) (seq, ts int64, ok bool) {
	seq, ok = intAfter(p, keySeq)
	if !ok {
		return 0, 0, false
	}
	ts, ok = intAfter(p, keyTS)
	return seq, ts, ok
}

// intAfter parses the integer following the first occurrence of key.
func intAfter(p, key []byte) (int64, bool) {
	i := bytes.Index(p, key)
	if i < 0 {
		return 0, false
	}
	p = p[i+len(key):]
	for len(p) > 0 && p[0] == ' ' {
		p = p[1:]
	}
	neg := len(p) > 0 && p[0] == '-'
	if neg {
		p = p[1:]
	}
	var v int64
	n := 0
	for ; n < len(p) && p[n] >= '0' && p[n] <= '9'; n++ {
		d := int64(p[n] - '0')
		if v > (math.MaxInt64-d)/10 {
			return 0, false // more than int64 holds
		}
		v = v*10 + d
	}
	if n == 0 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

// bcastMatcher recognizes the broadcasts of one topic and event in V2 text
// messages and returns their payload.
type bcastMatcher struct {
	prefix []byte // [null,null,"topic","event",
	topic  string
	event  string
	quoted []byte // "event", for the slow path's quick rejection
}

func newBcastMatcher(topic, event string) bcastMatcher {
	t, _ := json.Marshal(topic)
	e, _ := json.Marshal(event)
	prefix := append([]byte(`[null,null,`), t...)
	prefix = append(prefix, ',')
	prefix = append(prefix, e...)
	prefix = append(prefix, ',')
	return bcastMatcher{prefix: prefix, topic: topic, event: event, quoted: e}
}

// payload returns the payload of msg if it is a message of the matcher's
// topic and event. The fast path is the compact encoding every Phoenix
// server sends; anything else is decoded properly.
func (m *bcastMatcher) payload(msg []byte) ([]byte, bool) {
	if len(msg) > len(m.prefix) && bytes.HasPrefix(msg, m.prefix) && msg[len(msg)-1] == ']' {
		return msg[len(m.prefix) : len(msg)-1], true
	}
	if !bytes.Contains(msg, m.quoted) {
		return nil, false
	}
	var arr []json.RawMessage
	if json.Unmarshal(msg, &arr) != nil || len(arr) < 5 {
		return nil, false
	}
	var topic, event string
	if json.Unmarshal(arr[2], &topic) != nil || json.Unmarshal(arr[3], &event) != nil {
		return nil, false
	}
	if topic != m.topic || event != m.event {
		return nil, false
	}
	return arr[4], true
}
