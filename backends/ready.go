package backends

import (
	"context"
	"fmt"

	"google.golang.org/grpc/connectivity"
)

// Readier is an engine that can tell whether its game is reachable now.
// The gateway's /readyz is false while any configured engine's Ready
// fails, and true again by itself when it succeeds; sockets stay connected
// meanwhile. Engines that cannot be unreachable (echo, in process) do not
// implement it. Ready must return by ctx's deadline and be safe for
// concurrent use.
type Readier interface {
	Ready(ctx context.Context) error
}

// Ready implements Readier from the connection's state: ready when the
// connection to the game is up. An idle connection (none made yet, or
// the last one dropped with no call since) is asked to connect and
// waited for within ctx; a connection in TRANSIENT_FAILURE (the last
// attempt failed, the next one waits for its backoff) is not ready at
// once. An engine in process is always ready.
func (g *GRPC) Ready(ctx context.Context) error {
	if g.conn == nil {
		return nil
	}
	if g.r.closed.Load() {
		return fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed)
	}
	for {
		st := g.conn.GetState()
		switch st {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			g.conn.Connect()
		case connectivity.TransientFailure, connectivity.Shutdown:
			return fmt.Errorf("%w: %s: connection %s", ErrUnavailable, g.cfg.Target, st)
		}
		if !g.conn.WaitForStateChange(ctx, st) {
			return fmt.Errorf("%w: %s: connection %s: %w", ErrUnavailable, g.cfg.Target, st, ctx.Err())
		}
	}
}

// Ready implements Readier from the circuit breaker: a webhook is not
// ready while its breaker is open, that is for breaker_cooldown after
// breaker_failures calls in a row failed. When the cool-down has passed
// it is ready again and the next call probes the game (a webhook has no
// connection to watch, and a probe request of our own would need an
// endpoint games do not have).
func (w *Webhook) Ready(context.Context) error {
	if w.r.closed.Load() {
		return fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed)
	}
	if w.r.br.openNow() {
		return fmt.Errorf("%w: circuit breaker open", ErrUnavailable)
	}
	return nil
}

// openNow reports whether the breaker fails calls fast at this moment.
func (b *breaker) openNow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == BreakerOpen && b.now().Before(b.until)
}
