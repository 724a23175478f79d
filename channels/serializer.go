package channels

import (
	"errors"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
)

// errBinaryOnV1 is returned when a binary payload would go to a V1 socket:
// V1 is text only, so the frame is dropped (and counted).
var errBinaryOnV1 = errors.New("channels: binary payload on a V1 socket")

var emptyObject = []byte("{}")

func orEmptyObject(b []byte) []byte {
	if len(b) == 0 {
		return emptyObject
	}
	return b
}

// encodeMessage builds a push, close or error frame. joinRef and ref are raw
// JSON tokens. For V1 only ref is written (V1 never carries a join_ref). A
// binary payload becomes a V2 binary push, which has no ref field.
func encodeMessage(ser Serializer, joinRef, ref, topic, event string, p backends.Payload) ([]byte, error) {
	if p.Binary {
		if ser == V1 {
			return nil, errBinaryOnV1
		}
		return encodeBinaryPush(refString(joinRef), topic, event, p.Data)
	}
	if ser == V1 {
		return encodeV1(ref, nil, topic, event, orEmptyObject(p.Data)), nil
	}
	return encodeV2(joinRef, ref, nil, topic, event, orEmptyObject(p.Data)), nil
}

// encodeReply builds a phx_reply. A binary response becomes a V2 binary
// reply (kind 1); on V1 it cannot be sent and the response is replaced by
// {} so that the client still gets its reply.
func encodeReply(ser Serializer, joinRef, ref, topic, status string, resp backends.Payload) ([]byte, error) {
	if resp.Binary {
		if ser == V2 {
			return encodeBinaryReply(refString(joinRef), refString(ref), topic, status, resp.Data)
		}
		resp = backends.Payload{}
	}
	if ser == V1 {
		return encodeV1Reply(ref, topic, status, resp.Data), nil
	}
	return encodeV2Reply(joinRef, ref, topic, status, resp.Data), nil
}

// Broadcast encodings: at most one per variant per event, shared by every
// subscriber of that variant.
const (
	variantV1 = iota
	variantV2
	variantV1Pos
	variantV2Pos
	variantBinary
	numVariants
)

// broadcastVariant picks the encoding a subscriber needs, or -1 when the
// event cannot be sent to it (binary to V1).
func broadcastVariant(ser Serializer, positions bool, binary bool) int {
	if binary {
		if ser == V1 {
			return -1
		}
		return variantBinary
	}
	v := variantV1
	if ser == V2 {
		v = variantV2
	}
	if positions {
		v += 2
	}
	return v
}

// encodeBroadcast builds a broadcast frame for a variant: null join_ref,
// and a null ref or (opted-in variants) the event's position string.
func encodeBroadcast(variant int, ev *pubsub.Event) ([]byte, error) {
	payload := orEmptyObject(ev.Payload)
	switch variant {
	case variantV1:
		return encodeV1("null", nil, ev.Topic, ev.Event, payload), nil
	case variantV2:
		return encodeV2("null", "null", nil, ev.Topic, ev.Event, payload), nil
	case variantV1Pos:
		return encodeV1("", &ev.Pos, ev.Topic, ev.Event, payload), nil
	case variantV2Pos:
		return encodeV2("null", "", &ev.Pos, ev.Topic, ev.Event, payload), nil
	default:
		return encodeBinaryBroadcast(ev.Topic, ev.Event, ev.Payload)
	}
}
