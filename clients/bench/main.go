package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	cfg := NewConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "gateway WebSocket endpoint")
	fs.StringVar(&cfg.Admin, "admin", cfg.Admin, "gateway admin base URL; empty skips measurements")
	fs.StringVar(&cfg.Topic, "topic", cfg.Topic, "topic every connection joins")
	fs.StringVar(&cfg.JoinPayload, "join-payload", "", "JSON join payload (default {})")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, fmt.Sprintf("connections to open (max %d)", MaxConns))
	fs.IntVar(&cfg.Checkpoint, "checkpoint", cfg.Checkpoint, "measure every this many connections")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "ramp rate, connections per second")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "dials in flight")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "wait before each measurement")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the whole run")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", cfg.Heartbeat, "heartbeat interval for all connections; negative disables")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", cfg.DialTimeout, "bound on one dial plus join")
	ips := fs.String("local-ips", "", "comma-separated source addresses used round-robin (e.g. 127.0.0.1,127.0.0.2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.LocalIPs, err = parseIPs(*ips); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, cfg, stdout)
	summary(stdout, res)
	return err
}

// raiseFileLimit lifts the soft open-file limit to the hard one: every
// connection is a descriptor.
func raiseFileLimit(stderr io.Writer) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			fmt.Fprintf(stderr, "bench: cannot raise open-file limit: %v\n", err)
		}
	}
}
