package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := mainErr(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

const usage = `usage: phxgate-bench [idle] [flags]     idle joined connections, gateway RSS slope
       phxgate-bench broadcast [flags]  one publisher, N subscribers: latency, loss, server CPU
       phxgate-bench rooms [flags]      clients over several nodes and many rooms: latency, loss, CPU
       phxgate-bench churn [flags]      connect+join+leave cycles at a rate: achieved rate, join latency, errors
       phxgate-bench actions [flags]    pushes through a backend at a rate: pushes/s, reply latency
       phxgate-bench resume [flags]     reconnect storms with positions: every client ends with no gap
       phxgate-bench floor [flags]      the least server for the broadcast (-rooms: rooms) scenario
       phxgate-bench compare A.json B.json   two -json results side by side
Run a subcommand with -h for its flags.
`

// mainErr dispatches on the subcommand; none (or a flag first) is idle,
// the original scenario.
func mainErr(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest := args[0], args[1:]
		switch cmd {
		case "idle":
			return idleMain(ctx, rest, stdout, stderr)
		case "broadcast":
			return broadcastMain(ctx, rest, stdout, stderr)
		case "rooms":
			return roomsMain(ctx, rest, stdout, stderr)
		case scenChurn, scenActions, scenResume:
			return scenMain(ctx, cmd, rest, stdout, stderr)
		case "scenario-worker":
			return scenWorkerMain(ctx, rest, stdin, stdout, stderr)
		case "broadcast-worker":
			return workerMain(ctx, rest, stdin, stdout, stderr)
		case "floor":
			return floorMain(ctx, rest, stdout, stderr)
		case "compare":
			return compareMain(rest, stdout, stderr)
		case "help":
			fmt.Fprint(stdout, usage)
			return nil
		default:
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("bench: unknown subcommand %q", cmd)
		}
	}
	return idleMain(ctx, args, stdout, stderr)
}

func idleMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := NewConfig()
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
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
	res, err := run(ctx, cfg, stdout)
	summary(stdout, res)
	return err
}

func broadcastMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := NewBroadcastConfig()
	fs := flag.NewFlagSet("broadcast", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "server WebSocket endpoint (loopback only)")
	fs.StringVar(&cfg.Topic, "topic", cfg.Topic, "topic every connection joins")
	fs.IntVar(&cfg.Subs, "subs", cfg.Subs, fmt.Sprintf("subscribers (max %d; over -per-process, in worker processes)", MaxBroadcastSubs))
	fs.IntVar(&cfg.ServerPID, "server-pid", 0, "server process whose CPU is measured (0: none)")
	fs.DurationVar(&cfg.Baseline, "baseline", cfg.Baseline, "idle server CPU measurement before publishing; 0 skips")
	label := fs.String("label", "", "name of the server in the JSON line (for compare)")
	parsed := cfg.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := parsed(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	res, err := runBroadcast(ctx, cfg, stdout, stderr)
	res.Server = *label
	return report(stdout, res.Subs > 0 || res.Sent > 0, cfg.JSON, func(w io.Writer) { printBroadcast(w, res) }, res, err)
}

func floorMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := NewFloorConfig()
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "loopback address to listen on (port 0 picks one)")
	fs.StringVar(&cfg.Path, "path", cfg.Path, "WebSocket path")
	fs.StringVar(&cfg.Event, "event", cfg.Event, "push event that is broadcast")
	fs.IntVar(&cfg.Writers, "writers", 0, "writer goroutines (0: GOMAXPROCS)")
	fs.IntVar(&cfg.LogBytes, "log-bytes", cfg.LogBytes, "broadcast log bound in bytes")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "stop after this long")
	fs.BoolVar(&cfg.Rooms, "rooms", false, "a broadcast reaches its topic's subscribers only (the rooms scenario)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	s, err := startFloor(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "floor listening %s\n", s.Addr())
	<-s.Done()
	s.Close()
	st := s.Stats()
	fmt.Fprintf(stdout, "floor stopped: %d conns, %d broadcasts, %d sweeps, %d writes (%d short), %d bytes, %d slow closed\n",
		st.Conns, st.Broadcasts, st.Sweeps, st.Writes, st.Short, st.Bytes, st.Slow)
	return nil
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
