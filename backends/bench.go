package backends

import (
	"bytes"
	"context"
	"encoding/json"
)

// Events understood by Bench.
const (
	BenchEventEcho      = "echo"
	BenchEventBroadcast = "broadcast"
)

// ReasonInvalidPayload is the reason of the error reply Bench gives to a
// payload that is not a JSON object.
const ReasonInvalidPayload = "invalid payload"

var respInvalidPayload = []byte(`{"reason":"` + ReasonInvalidPayload + `"}`)

// Bench is the built-in load-test backend following the websocket-shootout
// convention (DESIGN.md §8):
//   - join: always ok {} (any payload, JSON null included);
//   - echo {"body":B}: ok {"type":"echo","body":B};
//   - broadcast {"body":B}: broadcasts event "broadcast"
//     {"type":"broadcast","body":B} to the topic and replies ok
//     {"type":"broadcastResult","body":B};
//   - a payload that is not a JSON object: error {"reason":"invalid payload"};
//   - any other event: error {"reason":"unknown event"}.
//
// B is any JSON value and is copied byte for byte, never re-encoded; a
// missing body is null. Bench keeps no state; the zero value is ready.
type Bench struct{}

// Join implements Backend.
func (Bench) Join(context.Context, *Call) (*Reply, error) {
	return &Reply{Status: StatusOK}, nil
}

// HandleIn implements Backend.
func (Bench) HandleIn(_ context.Context, c *Call) (*Reply, error) {
	if c.Event != BenchEventEcho && c.Event != BenchEventBroadcast {
		return &Reply{Status: StatusError, Response: Payload{Data: respUnknownEvent}}, nil
	}
	var p struct {
		Body json.RawMessage `json:"body"`
	}
	if c.Payload.Binary || json.Unmarshal(c.Payload.Data, &p) != nil || isJSONNull(c.Payload.Data) {
		return &Reply{Status: StatusError, Response: Payload{Data: respInvalidPayload}}, nil
	}
	body := []byte(p.Body)
	if len(body) == 0 {
		body = []byte("null")
	}
	if c.Event == BenchEventEcho {
		return &Reply{Status: StatusOK, Response: Payload{Data: typedBody("echo", body)}}, nil
	}
	return &Reply{
		Status:   StatusOK,
		Response: Payload{Data: typedBody("broadcastResult", body)},
		Broadcasts: []Message{{
			Topic:   c.Topic,
			Event:   BenchEventBroadcast,
			Payload: Payload{Data: typedBody("broadcast", body)},
		}},
	}, nil
}

// typedBody builds {"type":T,"body":B} by concatenation so that B keeps its
// exact bytes (key order, spacing, number spelling) as the client sent them.
func typedBody(typ string, body []byte) []byte {
	b := make([]byte, 0, len(`{"type":"","body":}`)+len(typ)+len(body))
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","body":`...)
	b = append(b, body...)
	return append(b, '}')
}

// isJSONNull reports a payload that is the JSON literal null, which
// json.Unmarshal accepts into a struct without error.
func isJSONNull(data []byte) bool {
	return string(bytes.TrimSpace(data)) == "null"
}

// Leave implements Backend.
func (Bench) Leave(context.Context, *Call, LeaveReason) error { return nil }

var _ Backend = Bench{}
