package channels

// message is one decoded client message. Every slice aliases the frame being
// decoded (or, rarely, a small unescape buffer) and is valid only until the
// Handle call returns.
type message struct {
	// joinRef and ref are raw JSON tokens ("1", 1, null …) for text frames.
	// For binary frames (rawRefs set) they are the plain string bytes, empty
	// meaning nil. joinRef is nil when a V1 object had no join_ref key.
	joinRef []byte
	ref     []byte
	// topic and event are unescaped string contents.
	topic []byte
	event []byte
	// payload is the raw JSON object or null, or raw bytes when binary.
	payload []byte
	binary  bool
	rawRefs bool
}

// joinRefToken returns the raw JSON token of the message's join_ref; null
// when absent.
func (m *message) joinRefToken() string {
	if m.rawRefs {
		return refTokenFromString(m.joinRef)
	}
	if m.joinRef == nil {
		return "null"
	}
	return internToken(m.joinRef)
}

// refToken returns the raw JSON token of the message's ref.
func (m *message) refToken() string {
	if m.rawRefs {
		return refTokenFromString(m.ref)
	}
	return internToken(m.ref)
}

// hasJoinRef reports whether the message carries a non-null join_ref (the
// distinction Phoenix makes with `join_ref || ref` and with its stale check).
func (m *message) hasJoinRef() bool {
	if m.rawRefs {
		return len(m.joinRef) > 0
	}
	return m.joinRef != nil && string(m.joinRef) != "null"
}

// internToken copies a raw token, sharing the constant for the very common
// null so that a null ref costs nothing to keep.
func internToken(b []byte) string {
	if string(b) == "null" {
		return "null"
	}
	return string(b)
}
