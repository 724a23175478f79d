package game

import (
	"context"
	"errors"
	"fmt"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Broadcaster publishes an event to a topic's subscribers; the game sends
// round results through it. It must honour ctx and be safe for concurrent
// use. payload is JSON and must not be kept after Broadcast returns.
type Broadcaster interface {
	Broadcast(ctx context.Context, topic, event string, payload []byte) error
}

// ErrPermanent marks a broadcast failure that retrying cannot fix (the
// Gateway refused the request); the game gives such a result up at once.
var ErrPermanent = errors.New("dice: permanent broadcast failure")

// GatewayBroadcaster broadcasts through phxgate's Gateway service.
type GatewayBroadcaster struct {
	client backendv1.GatewayClient
}

// NewGatewayBroadcaster returns a Broadcaster calling client.Broadcast.
func NewGatewayBroadcaster(client backendv1.GatewayClient) *GatewayBroadcaster {
	return &GatewayBroadcaster{client: client}
}

// Broadcast calls Gateway.Broadcast. UNAVAILABLE, DEADLINE_EXCEEDED,
// RESOURCE_EXHAUSTED and ABORTED are worth a retry; any other status is
// wrapped in ErrPermanent.
func (b *GatewayBroadcaster) Broadcast(ctx context.Context, topic, event string, payload []byte) error {
	_, err := b.client.Broadcast(ctx, &backendv1.BroadcastRequest{
		Topic:   topic,
		Event:   event,
		Payload: &backendv1.Payload{Data: payload},
	})
	if err == nil {
		return nil
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return err
	}
	return fmt.Errorf("%w: %w", ErrPermanent, err)
}
