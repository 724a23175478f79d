// Package auth verifies the JWTs that players present when they connect or
// join (DESIGN.md §5) and turns them into an Identity: the player id (`sub`),
// the expiry and the topics the player may join.
//
// Keys come from configuration only: HMAC secrets, PEM public key files
// (RSA, ECDSA, Ed25519) and a JWKS URL. The set of accepted algorithms is
// derived from the configured keys, so a token can never pick its own key type
// (no `alg: none`, no HS256 signed with an RSA public key).
//
// The JWKS is fetched lazily and cached by `kid`. A token with an unknown
// `kid` may trigger a refresh, but refreshes are serialised and spaced at
// least Config.JWKSRefreshInterval apart, so a flood of forged kids costs the
// identity provider at most one request per interval. A `kid` is only ever a
// map key: it is never placed in a URL, a path or a log line.
//
// Concurrency: a *Verifier is safe for concurrent use by any number of
// goroutines. Verify may block for at most Config.JWKSTimeout while a JWKS
// refresh is in flight (or until ctx is done), so it must not be called on a
// poller goroutine when a JWKS URL is configured. *Identity is immutable
// after Verify returns. Tokens are never logged, and errors never contain
// token text.
package auth
