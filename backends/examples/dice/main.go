package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/phxgate/phxgate/backends/examples/dice/game"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/backends/telemetry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// stopGrace is how long a graceful stop waits for calls in flight before
// the server is stopped hard.
const stopGrace = 5 * time.Second

// keepaliveMinTime is the fastest client ping rate the server permits:
// phxgate's engine pings no faster than every 10s (its keepalive option's
// lower bound), and gRPC's default policy would reject anything below 5m.
const keepaliveMinTime = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "dice:", err)
		os.Exit(1)
	}
}

// run serves the game until ctx is cancelled, then stops the gRPC server
// (calls in flight get stopGrace to finish), the round loops and the
// Gateway connection, in that order. ready, if not nil, gets the address
// listened on once the server accepts calls.
func run(ctx context.Context, args []string, stderr io.Writer, ready func(net.Addr)) error {
	cfg := game.NewConfig()
	fs := flag.NewFlagSet("dice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:5000", "address to serve GameBackend on (phxgate's route backend grpc://host:port)")
	api := fs.String("api", "127.0.0.1:4002", "address of phxgate's Gateway service (its api_listen), for round results")
	fs.DurationVar(&cfg.Window, "window", cfg.Window, "betting window of each round (10ms..1h)")
	fs.DurationVar(&cfg.KeyTTL, "key-ttl", cfg.KeyTTL, "how long an idempotency key is remembered (1s..24h)")
	fs.IntVar(&cfg.MaxKeys, "max-keys", cfg.MaxKeys, "idempotency keys remembered at most; the oldest go first (1..10000000)")
	verbose := fs.Bool("v", false, "log every join, leave and broadcast (debug level)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	serverOpts := []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime})}
	// Tracing, when the OTEL_* variables turn it on: a span per call,
	// continuing phxgate's trace.
	tp, err := telemetry.Setup(ctx, false, serviceName, os.Getenv)
	if err != nil {
		return err
	}
	if tp != nil {
		defer flushTraces(tp, log)
		log = slog.New(telemetry.LogHandler(log.Handler()))
		serverOpts = append(serverOpts, grpc.UnaryInterceptor(traceCalls(tp.Tracer(tracerName))))
	}

	// NewClient does not dial: an unreachable Gateway costs failed
	// broadcasts (logged), never the game.
	conn, err := grpc.NewClient(*api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("gateway %s: %w", *api, err)
	}
	defer conn.Close()

	g, err := game.New(cfg, game.Options{
		Broadcaster: game.NewGatewayBroadcaster(backendv1.NewGatewayClient(conn)),
		Logger:      log,
	})
	if err != nil {
		return err
	}
	defer g.Close()

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(serverOpts...)
	backendv1.RegisterGameBackendServer(srv, g)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.Info("dice: serving GameBackend", "listen", lis.Addr().String(), "api", *api, "window", cfg.Window)
	if ready != nil {
		ready(lis.Addr())
	}

	select {
	case err := <-served:
		g.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("dice: stopping")
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		srv.Stop()
		<-stopped
	}
	<-served
	g.Close()
	log.Info("dice: stopped", "rounds", g.Stats().Rounds)
	return nil
}
