// Package backends holds the game-backend contract (Backend) and its
// engines: in-process ones (echo, bench) here, and later the gRPC hook and
// the HTTP webhook. New builds an engine from a route's backend spec.
//
// Goroutine safety: every Backend is safe for concurrent use. The channels
// layer calls one channel's methods one at a time, in the client's order,
// and different channels concurrently.
//
// What must not block: nothing here runs on a poller goroutine (backend
// calls go through a worker pool), but engines must honour ctx so a slow
// backend cannot pin a worker past its deadline. The in-process engines
// never block.
package backends
