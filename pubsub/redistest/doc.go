// Package redistest runs real redis-server processes and a fault-injecting
// TCP proxy for tests, the way net/http/httptest runs real HTTP servers.
//
// Start launches one redis-server on a free 127.0.0.1 port in its own
// t.TempDir; Kill, Stop and Restart (same port, same directory) let a test
// lose and recover the broker for real, with or without an append-only file.
// StartCluster launches three or more masters and joins them with
// `redis-cli --cluster create`. NewProxy puts an in-process TCP proxy in
// front of any address; Stall, Heal and DropAll simulate a partition, its
// end, and a cut.
//
// There is no mock and no skip: a missing redis-server fails the test with a
// hint that `make test` installs it. The package imports no Redis client; it
// speaks just enough RESP to wait for PING and CLUSTER INFO.
//
// Everything a helper starts is stopped by t.Cleanup: processes are killed,
// listeners and connections closed, and every goroutine returns. On Linux a
// redis-server also dies with the test binary (Pdeathsig), so a crashed or
// killed `go test` leaves no server behind.
//
// Goroutine safety: Server's Addr, URL, Kill, Stop and Running, and every
// Proxy method, are safe for concurrent use. Start, StartCluster,
// Server.Restart and Cluster.WaitOK report failures with t.Fatalf, so call
// them from the test's own goroutine, and not while another goroutine kills
// or stops the same server.
package redistest
