// Command phxgate runs the gateway: a Phoenix Channels compatible realtime
// edge. Configuration comes from --config FILE (YAML), PHXGATE_* environment
// variables and flags named after the YAML keys (flag > env > file >
// default); run with -h for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/phxgate/phxgate/gateway"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(logger)
	cfg, err := gateway.LoadConfig(args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "phxgate:", err)
		return 2
	}
	logger = cfg.NewLogger(os.Stderr)
	slog.SetDefault(logger)
	opts, flush, err := tracing(cfg, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "phxgate:", err)
		return 2
	}
	defer flush()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first signal drains; a second one kills at once (the
		// default action, no longer caught).
		<-ctx.Done()
		stop()
	}()
	if err := gateway.Run(ctx, cfg, opts...); err != nil {
		logger.Error("phxgate stopped with an error", "err", err)
		return 1
	}
	return 0
}
