package gateway

import "time"

// What a shutdown may take past drain_timeout, once the window has run
// out. A supervisor's grace before SIGKILL (Kubernetes'
// terminationGracePeriodSeconds, after any preStop) must cover
// DrainTimeout + ShutdownOverrun; deploy/check holds the manifests to it.
const (
	// HTTPShutdownTimeout bounds the HTTP server's graceful stop.
	HTTPShutdownTimeout = time.Second
	// APIStopTimeout bounds the Gateway API's graceful stop; then it is cut.
	APIStopTimeout = time.Second
	// CloserFloor is the least time the Closers get (the Leaves queued by
	// the last closes), even when the window has run out.
	CloserFloor = 2 * time.Second
	// TraceFlushTimeout bounds the export of the spans still queued at
	// exit (cmd/phxgate, after Shutdown returns).
	TraceFlushTimeout = 5 * time.Second
	// ShutdownOverrun is the most a shutdown takes past DrainTimeout.
	ShutdownOverrun = HTTPShutdownTimeout + APIStopTimeout + CloserFloor + TraceFlushTimeout
)

// ReadyzLocalPath is the readiness probe for a load balancer: 503 only
// while the node drains, whatever the state of what every node shares
// (Redis, the games), which plain /readyz reports too. See deploy/README.md.
const ReadyzLocalPath = "/readyz?local=1"
