package channels

import (
	"errors"
	"fmt"
)

// ErrMalformed is wrapped by every decode error: the frame was well-formed
// WebSocket but did not carry a valid Phoenix message. Phoenix drops the
// connection in that case; the gateway closes with 1011.
var ErrMalformed = errors.New("channels: malformed message")

// ErrStringTooLong is returned when a V2 binary frame cannot be encoded
// because a string field exceeds maxBinaryString bytes.
var ErrStringTooLong = errors.New("channels: string too long for a binary frame")

// ErrOverloaded is returned by Server.Publish while the node's output
// budget is spent (Config.Overloaded): the event was not published.
var ErrOverloaded = errors.New("channels: node overloaded: output budget spent")

// CloseError is returned by Socket.HandleText and HandleBinary when the
// socket must be closed; the gateway closes it with Code and an empty
// reason, and labels its disconnect metric with Reason.
type CloseError struct {
	Code   CloseCode
	Reason DisconnectReason
	Err    error
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("channels: close %d (%s): %v", e.Code, e.Reason, e.Err)
}

func (e *CloseError) Unwrap() error { return e.Err }

func malformed(format string, args ...any) error {
	return &CloseError{
		Code:   CloseInternalError,
		Reason: ReasonMalformed,
		Err:    fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...),
	}
}
