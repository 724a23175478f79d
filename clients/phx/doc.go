// Package phx is a Go client for the Phoenix Channels protocol that behaves
// like phoenix.js (the npm "phoenix" package): V1 and V2 serializers, V2
// binary pushes and replies, socket-wide string refs, heartbeats with a
// timeout, reconnection with phoenix.js backoff, channel rejoin with params
// re-evaluated on every join, and the isMember rule that drops messages of
// an outdated join. It is used by phxgate's tests and load tool, and works
// against any Phoenix server.
//
// Goroutine safety: Socket, Channel and Push methods are safe for
// concurrent use.
//
// Goroutines: each live connection has one reader goroutine and one
// heartbeat goroutine; a reconnect loop runs while the socket is down.
// Socket.Close stops them all and waits for them.
//
// What must not block: handlers registered with Channel.On, Socket.OnOpen
// and Socket.OnClose run on the reader goroutine; a slow handler delays
// every later frame of the socket. Handlers may call Push, Join and Leave,
// but must not wait on a reply (Call, Push.Wait, Join) nor call
// Socket.Close: the reply could only be read by the goroutine they block.
package phx
