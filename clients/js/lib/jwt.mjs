// HS256 JSON Web Tokens for the auth phase (auth/), signed with node:crypto
// only: header and claims as base64url JSON, HMAC-SHA256 over
// "<header>.<claims>" (RFC 7515 §3, RFC 7518 §3.2).

import {createHmac, randomBytes} from "node:crypto"

function b64url(data) {
  return Buffer.from(data).toString("base64url")
}

// signHS256 returns a compact JWS for claims (an object, serialized as is).
export function signHS256(claims, secret, header = {alg: "HS256", typ: "JWT"}) {
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
  const sig = createHmac("sha256", secret).update(signingInput).digest("base64url")
  return `${signingInput}.${sig}`
}

// authSecret is the gateway's auth.hs256_secret, passed by
// conformance_test.go (never a literal in the tests, so the Go side owns it).
export function authSecret() {
  const s = process.env.PHXGATE_AUTH_SECRET
  if (!s) throw new Error("PHXGATE_AUTH_SECRET is not set; run the auth phase through `go test ./clients/js`")
  return s
}

export function nowSeconds() {
  return Math.floor(Date.now() / 1000)
}

// uniquePlayer: rate limits are per player (sub), so every test gets its
// own player and never drains another test's buckets.
export function uniquePlayer(prefix = "player") {
  return `${prefix}-${randomBytes(6).toString("hex")}`
}

// token signs claims for player with a 10-minute expiry unless overridden;
// extra claims (e.g. topics) are merged in, `undefined` values dropped.
export function token(player, extra = {}, secret = authSecret()) {
  return signHS256({sub: player, exp: nowSeconds() + 600, ...extra}, secret)
}
