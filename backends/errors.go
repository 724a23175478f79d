package backends

import "errors"

// CallError is the error of a failed backend call. Kind is the class that
// decides the error reply (ErrUnavailable, ErrTimeout, ErrOverloaded or
// ErrBackend); Err is the cause, for logs only: it may quote the backend
// and is never sent to a client. errors.Is matches both.
type CallError struct {
	// Op is the call: "join", "handle_in" or "leave".
	Op   string
	Kind error
	Err  error
}

func (e *CallError) Error() string {
	if e.Err == nil {
		return e.Op + ": " + e.Kind.Error()
	}
	return e.Op + ": " + e.Kind.Error() + ": " + e.Err.Error()
}

// Unwrap returns Kind and, when set, Err.
func (e *CallError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// ReplyReason returns the reason of the error reply a failed call earns:
// ReasonOverloaded, ReasonUnavailable or ReasonTimeout for those classes
// (checked in that order, so a call refused before it was sent says so
// even once its deadline has passed), ReasonError for anything else, and
// "" for nil.
func ReplyReason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrOverloaded):
		return ReasonOverloaded
	case errors.Is(err, ErrUnavailable):
		return ReasonUnavailable
	case errors.Is(err, ErrTimeout):
		return ReasonTimeout
	default:
		return ReasonError
	}
}
