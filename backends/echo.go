package backends

import (
	"context"
	"encoding/json"
)

// Events understood by Echo.
const (
	EchoEventEcho    = "echo"
	EchoEventShout   = "shout"
	EchoEventNoReply = "noreply"
	EchoEventCrash   = "crash"
)

// ReasonUnknownEvent is the reason of the error reply an in-process backend
// gives to an event it does not know. It is an error reply, not a crash, so
// a client typo does not cost the channel.
const ReasonUnknownEvent = "unknown event"

// Status values of replies.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

var (
	respDenied       = []byte(`{"reason":"denied"}`)
	respUnknownEvent = []byte(`{"reason":"` + ReasonUnknownEvent + `"}`)
)

// Echo is the built-in test backend (DESIGN.md §8):
//   - join: ok {} unless the join payload is an object with "deny": true,
//     then error {"reason":"denied"};
//   - echo: ok with the payload as the response (binary stays binary);
//   - shout: broadcasts the payload as event "shout" to the channel's topic
//     and replies ok {};
//   - noreply: no reply at all (the client's push times out);
//   - crash: ends the channel with phx_error, no reply;
//   - anything else: error {"reason":"unknown event"}.
//
// Echo keeps no state; the zero value is ready to use.
type Echo struct{}

// Join implements Backend.
func (Echo) Join(_ context.Context, c *Call) (*Reply, error) {
	if !c.Payload.Binary && joinDenied(c.Payload.Data) {
		return &Reply{Status: StatusError, Response: Payload{Data: respDenied}}, nil
	}
	return &Reply{Status: StatusOK}, nil
}

// joinDenied reports "deny": true in a JSON object; anything that is not
// such an object (null, an array, bad JSON) is simply not a denial.
func joinDenied(data []byte) bool {
	var p struct {
		Deny bool `json:"deny"`
	}
	return json.Unmarshal(data, &p) == nil && p.Deny
}

// HandleIn implements Backend.
func (Echo) HandleIn(_ context.Context, c *Call) (*Reply, error) {
	switch c.Event {
	case EchoEventEcho:
		// The Call is ours to keep, so the payload is passed on uncopied.
		return &Reply{Status: StatusOK, Response: c.Payload}, nil
	case EchoEventShout:
		return &Reply{
			Status:     StatusOK,
			Broadcasts: []Message{{Topic: c.Topic, Event: EchoEventShout, Payload: c.Payload}},
		}, nil
	case EchoEventNoReply:
		return &Reply{}, nil
	case EchoEventCrash:
		return &Reply{Stop: StopCrash}, nil
	default:
		return &Reply{Status: StatusError, Response: Payload{Data: respUnknownEvent}}, nil
	}
}

// Leave implements Backend.
func (Echo) Leave(context.Context, *Call, LeaveReason) error { return nil }

var _ Backend = Echo{}
