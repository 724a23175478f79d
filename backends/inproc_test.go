package backends

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

// panickyGame is unavailable for a breaker's worth of joins, then panics
// once (on the breaker's half-open probe), then answers ok.
type panickyGame struct {
	backendv1.UnimplementedGameBackendServer
	n int
}

func (g *panickyGame) Join(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	g.n++
	switch {
	case g.n <= DefaultGRPCBreakerFailures:
		return nil, status.Error(codes.Unavailable, "restarting")
	case g.n == DefaultGRPCBreakerFailures+1:
		panic("bug in the compiled-in game")
	}
	return &backendv1.JoinResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
}

// A compiled-in game's panic is answered as an error the engine settles:
// a panic on the breaker's half-open probe does not leave the breaker
// waiting for that probe for ever.
func TestInprocPanicIsAnErrorTheBreakerSettles(t *testing.T) {
	g := &panickyGame{}
	b := NewInprocGRPC(g)
	b.r.lim.Retries = 0
	b.r.br.cooldown = time.Millisecond
	call := &Call{Topic: "t", IdempotencyKey: "k"}
	for range DefaultGRPCBreakerFailures {
		_, _ = b.Join(context.Background(), call)
	}
	waitProbe := func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := b.Join(context.Background(), call)
			if !errors.Is(err, ErrCircuitOpen) {
				if err == nil {
					return
				}
				if !errors.Is(err, ErrBackend) {
					t.Fatalf("the probe's panic: %v, want a backend error", err)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the breaker never let a call through: %+v", b.Stats())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	waitProbe() // the panic, then later an ok call
	if g.n < DefaultGRPCBreakerFailures+2 {
		t.Fatalf("%d calls reached the game, want the panicking probe and one after it", g.n)
	}
}
