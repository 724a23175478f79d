package auth

import "errors"

// Verification errors. Verify wraps exactly one of these (with %w), so
// callers use errors.Is; Reason maps each to a metric/log label. None of them
// carries token text.
var (
	// ErrTokenMissing: an empty token.
	ErrTokenMissing = errors.New("auth: token missing")
	// ErrTokenTooLarge: over Config.MaxTokenBytes; refused before parsing.
	ErrTokenTooLarge = errors.New("auth: token too large")
	// ErrTokenMalformed: not three base64url segments of JSON, or a claim of
	// the wrong type.
	ErrTokenMalformed = errors.New("auth: token malformed")
	// ErrTokenInvalid: bad signature, or an algorithm no configured key
	// allows (including "none").
	ErrTokenInvalid = errors.New("auth: token invalid")
	// ErrTokenExpired: no exp, or exp passed by more than the leeway.
	ErrTokenExpired = errors.New("auth: token expired")
	// ErrTokenNotYetValid: nbf further in the future than the leeway.
	ErrTokenNotYetValid = errors.New("auth: token not yet valid")
	// ErrTokenAudience: aud does not contain Config.Audience.
	ErrTokenAudience = errors.New("auth: token audience mismatch")
	// ErrTokenIssuer: iss differs from Config.Issuer.
	ErrTokenIssuer = errors.New("auth: token issuer mismatch")
	// ErrUnknownKID: the kid is not in the JWKS, even after a refresh (or a
	// refresh was not allowed yet).
	ErrUnknownKID = errors.New("auth: unknown kid")
	// ErrJWKSUnavailable: the JWKS could not be fetched or parsed.
	ErrJWKSUnavailable = errors.New("auth: jwks unavailable")
	// ErrNoSubject: sub missing or empty.
	ErrNoSubject = errors.New("auth: token has no subject")
	// ErrSubjectTooLong: sub over MaxSubjectBytes.
	ErrSubjectTooLong = errors.New("auth: token subject too long")
)

// Reason returns the metric label for an error returned by Verify: "ok" for
// nil, "internal" for anything unexpected.
func Reason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTokenMissing):
		return "missing"
	case errors.Is(err, ErrTokenTooLarge):
		return "too_large"
	case errors.Is(err, ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, ErrUnknownKID):
		return "unknown_kid"
	case errors.Is(err, ErrJWKSUnavailable):
		return "jwks_unavailable"
	case errors.Is(err, ErrTokenExpired):
		return "expired"
	case errors.Is(err, ErrTokenNotYetValid):
		return "not_yet_valid"
	case errors.Is(err, ErrTokenAudience):
		return "audience"
	case errors.Is(err, ErrTokenIssuer):
		return "issuer"
	case errors.Is(err, ErrNoSubject):
		return "no_subject"
	case errors.Is(err, ErrSubjectTooLong):
		return "subject_too_long"
	case errors.Is(err, ErrTokenInvalid):
		return "invalid"
	default:
		return "internal"
	}
}
