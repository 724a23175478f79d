package phx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Reserved events of the protocol.
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventClose     = "phx_close"
	EventError     = "phx_error"
	EventHeartbeat = "heartbeat"
	// TopicPhoenix is the topic of heartbeats.
	TopicPhoenix = "phoenix"
)

// Kinds of V2 binary frames (the first byte).
const (
	binaryKindPush      = 0
	binaryKindReply     = 1
	binaryKindBroadcast = 2
)

// MaxBinaryFieldLen is the longest join_ref, ref, topic, event or status a
// V2 binary frame can carry: each length is one byte.
const MaxBinaryFieldLen = 255

// Errors of frame encoding and decoding.
var (
	ErrMalformed     = errors.New("phx: malformed message")
	ErrFieldTooLong  = errors.New("phx: field longer than 255 bytes in a binary frame")
	ErrBinaryNeedsV2 = errors.New("phx: binary pushes need the V2 serializer")
)

// Message is one message received from the server.
type Message struct {
	// JoinRef is the join_ref the message carries; "" when null or absent
	// (V1 servers never send one).
	JoinRef string
	// Ref is the message's ref: nil when null (pushes and broadcasts, unless
	// phxgate positions are enabled, when it holds "p:<epoch>:<offset>").
	Ref   *string
	Topic string
	Event string
	// Payload is the JSON payload; nil for a binary frame.
	Payload json.RawMessage
	// Binary is the payload of a binary frame; nil for a JSON one.
	Binary []byte
}

// RefString returns Ref, or "" when it is null.
func (m *Message) RefString() string {
	if m.Ref == nil {
		return ""
	}
	return *m.Ref
}

// Reply is the server's answer to a push or a join.
type Reply struct {
	// Status is "ok", "error" or a custom status.
	Status string
	// Response is the JSON response; nil for a binary reply.
	Response json.RawMessage
	// Binary is the response of a binary reply (V2 kind 1); nil otherwise.
	Binary []byte
}

// OK reports Status == "ok".
func (r Reply) OK() bool { return r.Status == "ok" }

// serializer encodes outgoing and decodes incoming messages.
type serializer interface {
	encode(joinRef, ref *string, topic, event string, payload []byte) []byte
	decode(data []byte) (Message, error)
}

type v1Serializer struct{}
type v2Serializer struct{}

func appendJSONString(b []byte, s *string) []byte {
	if s == nil {
		return append(b, "null"...)
	}
	enc, _ := json.Marshal(*s) // a string always marshals
	return append(b, enc...)
}

// encode builds a V1 object. join_ref is sent only when set, like
// phoenix.js's V1 path which passes the message object through JSON.
func (v1Serializer) encode(joinRef, ref *string, topic, event string, payload []byte) []byte {
	b := make([]byte, 0, 64+len(topic)+len(event)+len(payload))
	b = append(b, `{"topic":`...)
	b = appendJSONString(b, &topic)
	b = append(b, `,"event":`...)
	b = appendJSONString(b, &event)
	b = append(b, `,"payload":`...)
	b = append(b, payload...)
	b = append(b, `,"ref":`...)
	b = appendJSONString(b, ref)
	if joinRef != nil {
		b = append(b, `,"join_ref":`...)
		b = appendJSONString(b, joinRef)
	}
	return append(b, '}')
}

func (v1Serializer) decode(data []byte) (Message, error) {
	var raw struct {
		Topic   *string         `json:"topic"`
		Event   *string         `json:"event"`
		Payload json.RawMessage `json:"payload"`
		Ref     *string         `json:"ref"`
		JoinRef *string         `json:"join_ref"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if raw.Topic == nil || raw.Event == nil {
		return Message{}, fmt.Errorf("%w: missing topic or event", ErrMalformed)
	}
	m := Message{Topic: *raw.Topic, Event: *raw.Event, Payload: raw.Payload, Ref: raw.Ref}
	if raw.JoinRef != nil {
		m.JoinRef = *raw.JoinRef
	}
	return m, nil
}

func (v2Serializer) encode(joinRef, ref *string, topic, event string, payload []byte) []byte {
	b := make([]byte, 0, 32+len(topic)+len(event)+len(payload))
	b = append(b, '[')
	b = appendJSONString(b, joinRef)
	b = append(b, ',')
	b = appendJSONString(b, ref)
	b = append(b, ',')
	b = appendJSONString(b, &topic)
	b = append(b, ',')
	b = appendJSONString(b, &event)
	b = append(b, ',')
	b = append(b, payload...)
	return append(b, ']')
}

func (v2Serializer) decode(data []byte) (Message, error) {
	var arr []json.RawMessage
	if err := json.Unmarshal(data, &arr); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(arr) < 5 {
		return Message{}, fmt.Errorf("%w: array of %d elements", ErrMalformed, len(arr))
	}
	var jr, ref, topic, event *string
	for i, dst := range []**string{&jr, &ref, &topic, &event} {
		if err := json.Unmarshal(arr[i], dst); err != nil {
			return Message{}, fmt.Errorf("%w: element %d: %v", ErrMalformed, i, err)
		}
	}
	if topic == nil || event == nil {
		return Message{}, fmt.Errorf("%w: null topic or event", ErrMalformed)
	}
	m := Message{Ref: ref, Topic: *topic, Event: *event, Payload: arr[4]}
	if jr != nil {
		m.JoinRef = *jr
	}
	return m, nil
}

// encodeBinaryPush builds a V2 client push (kind 0):
// 00 | jrLen | refLen | topicLen | eventLen | join_ref | ref | topic | event | payload.
func encodeBinaryPush(joinRef, ref, topic, event string, payload []byte) ([]byte, error) {
	for _, f := range []string{joinRef, ref, topic, event} {
		if len(f) > MaxBinaryFieldLen {
			return nil, fmt.Errorf("%w: %q", ErrFieldTooLong, f)
		}
	}
	b := make([]byte, 0, 5+len(joinRef)+len(ref)+len(topic)+len(event)+len(payload))
	b = append(b, binaryKindPush, byte(len(joinRef)), byte(len(ref)), byte(len(topic)), byte(len(event)))
	b = append(b, joinRef...)
	b = append(b, ref...)
	b = append(b, topic...)
	b = append(b, event...)
	return append(b, payload...), nil
}

// decodeBinary decodes a server binary frame: push (kind 0, no ref), reply
// (kind 1, event phx_reply, Binary holding the response and Payload the
// status as {"status":S}) or broadcast (kind 2). The returned slices alias
// data.
func decodeBinary(data []byte) (Message, string, error) {
	fields := func(n, hdr int) ([]string, []byte, error) {
		if len(data) < hdr {
			return nil, nil, fmt.Errorf("%w: short binary header", ErrMalformed)
		}
		out := make([]string, n)
		pos := hdr
		for i := range n {
			l := int(data[1+i])
			if pos+l > len(data) {
				return nil, nil, fmt.Errorf("%w: binary field %d overruns the frame", ErrMalformed, i)
			}
			out[i] = string(data[pos : pos+l])
			pos += l
		}
		return out, data[pos:], nil
	}
	if len(data) == 0 {
		return Message{}, "", fmt.Errorf("%w: empty binary frame", ErrMalformed)
	}
	switch data[0] {
	case binaryKindPush:
		f, rest, err := fields(3, 4)
		if err != nil {
			return Message{}, "", err
		}
		return Message{JoinRef: f[0], Topic: f[1], Event: f[2], Binary: rest}, "", nil
	case binaryKindReply:
		f, rest, err := fields(4, 5)
		if err != nil {
			return Message{}, "", err
		}
		ref := f[1]
		return Message{JoinRef: f[0], Ref: &ref, Topic: f[2], Event: EventReply, Binary: rest}, f[3], nil
	case binaryKindBroadcast:
		f, rest, err := fields(2, 3)
		if err != nil {
			return Message{}, "", err
		}
		return Message{Topic: f[0], Event: f[1], Binary: rest}, "", nil
	}
	return Message{}, "", fmt.Errorf("%w: binary kind %d", ErrMalformed, data[0])
}

// decodeReply splits a JSON phx_reply payload.
func decodeReply(payload json.RawMessage) (Reply, error) {
	var r struct {
		Status   string          `json:"status"`
		Response json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return Reply{}, fmt.Errorf("%w: reply payload: %v", ErrMalformed, err)
	}
	return Reply{Status: r.Status, Response: r.Response}, nil
}

// marshalPayload encodes a push payload; nil becomes {} as in phoenix.js.
func marshalPayload(p any) ([]byte, error) {
	switch v := p.(type) {
	case nil:
		return []byte("{}"), nil
	case json.RawMessage:
		if len(bytes.TrimSpace(v)) == 0 {
			return []byte("{}"), nil
		}
		if !json.Valid(v) {
			return nil, fmt.Errorf("phx: payload is not valid JSON")
		}
		return v, nil
	}
	return json.Marshal(p)
}
