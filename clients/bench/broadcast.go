package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sort"
	"strings"
	"time"
)

// pollEvery is how often the orchestrator reads the groups' counts (and
// the server's CPU) while publishing and draining.
const pollEvery = 50 * time.Millisecond

// broadcastResult is the outcome of a broadcast run; it is also the -json
// line (durations in µs, CPU in seconds).
type broadcastResult struct {
	Server       string `json:"server,omitempty"` // a label for compare
	PubCloseCode int64  `json:"publisher_close_code,omitempty"`
	SelfReceived int64  `json:"publisher_received"`
	runResult
	// ServerCPU is the server's CPU seconds over the window, and
	// ServerCPUPerDeliveryUs its cost per delivery; ServerIdlePct is its
	// CPU use with every subscriber connected but nothing published.
	ServerPID              int     `json:"server_pid,omitempty"`
	ServerCPU              float64 `json:"server_cpu_s"`
	ServerCPUPerDeliveryUs float64 `json:"server_cpu_us_per_delivery"`
	ServerIdlePct          float64 `json:"server_idle_cpu_pct"`
}

// runBroadcast runs the broadcast scenario. Progress goes to out; the
// result is returned (also when err is not nil, with what was counted).
func runBroadcast(ctx context.Context, cfg BroadcastConfig, out, stderr io.Writer) (broadcastResult, error) {
	cfg.fill()
	res := broadcastResult{runResult: runResult{Rate: cfg.Rate, PayloadBytes: cfg.PayloadBytes, Planned: cfg.events()}, ServerPID: cfg.ServerPID}
	// Subscribers: in this process, or in workers past PerProcess.
	ctx, groups, stop, err := startScenario(ctx, cfg, stderr)
	defer stop()
	if err != nil {
		return res, err
	}
	res.Processes = len(groups)
	fmt.Fprintf(out, "broadcast: %d subscribers on %s in %d process(es), %d events at %g/s, %d-byte payload\n",
		cfg.Subs, cfg.Topic, len(groups), cfg.events(), cfg.Rate, cfg.PayloadBytes)

	ready, err := waitReady(ctx, cfg.Subs, cfg.Progress, groups, out)
	if err != nil {
		return res, err
	}
	opened := int64(ready.Opened)

	if cfg.ServerPID > 0 && cfg.Baseline > 0 {
		c0, err := procCPU(cfg.ServerPID)
		if err != nil {
			return res, fmt.Errorf("bench: server CPU: %w", err)
		}
		if err := sleepCtx(ctx, cfg.Baseline); err != nil {
			return res, err
		}
		c1, _ := procCPU(cfg.ServerPID)
		res.ServerIdlePct = math.Round(1000*(c1-c0)/cfg.Baseline.Seconds()) / 10
		fmt.Fprintf(out, "server idle with %d subscribers: %.1f%% CPU\n", opened, res.ServerIdlePct)
	}

	// The publisher dials last, from the next source address in turn.
	var local net.IP
	if len(cfg.LocalIPs) > 0 {
		local = cfg.LocalIPs[cfg.Subs%len(cfg.LocalIPs)]
	}
	pc, err := dialJoined(ctx, cfg.URL, local, cfg.DialTimeout, joinFrame(cfg.Topic))
	if err != nil {
		return res, fmt.Errorf("bench: publisher: %w", err)
	}
	pub := startPublisher(pc, []string{cfg.Topic}, cfg.Event, cfg.PayloadBytes, cfg.events())
	defer pub.close()

	meter := cpuMeter{groups: groups}
	if cfg.ServerPID > 0 {
		meter.pids = []int{cfg.ServerPID}
	}
	w, runErr := watch(ctx, watchSpec{
		groups:  groups,
		meter:   meter,
		publish: func(ctx context.Context) { pub.run(ctx, cfg.Rate) },
		counts: func() pubCounts {
			ok := pub.ok.Load()
			return pubCounts{sent: pub.sent.Load(), ok: ok, errs: pub.errs.Load(), expected: opened * ok}
		},
		drain: cfg.Drain, progress: cfg.Progress, out: out,
	})

	fin := finishSpec{Sent: pub.sent.Load(), Refused: pub.refused()[0]}
	gr, err := finishGroups(groups, fin)
	runErr = errors.Join(runErr, err)
	res.Sent, res.OK, res.Errors = fin.Sent, pub.ok.Load(), pub.errs.Load()
	res.Reasons = pub.reasonCounts()
	res.PubCloseCode = pub.closeCode.Load()
	res.SelfReceived = pub.self.Load()
	res.PubLagMaxUs = us(pub.maxLag.Load())
	res.settle(gr, pub.replies.Snapshot(), w)
	if cfg.ServerPID > 0 {
		res.ServerCPU = w.cpu.pids[0]
		if res.Delivered > 0 {
			res.ServerCPUPerDeliveryUs = res.ServerCPU * 1e6 / float64(res.Delivered)
		}
	}
	return res, runErr
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

// roundTicks rounds CPU seconds to the clock tick.
func roundTicks(s float64) float64 { return math.Round(s*clockTicks) / clockTicks }

// fmtDur prints nanoseconds with three significant digits.
func fmtDur(ns int64) string {
	d := time.Duration(ns)
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.3gs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3gms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.3gµs", float64(d)/1e3)
	}
}

// printBroadcast writes the human summary.
func printBroadcast(w io.Writer, r broadcastResult) {
	fmt.Fprintf(w, "subscribers: %d joined, %d failed, %d process(es)\n", r.Subs, r.Failed, r.Processes)
	fmt.Fprint(w, "publisher:   ")
	r.printPublished(w)
	if r.PubCloseCode != 0 {
		fmt.Fprintf(w, "; closed by server (%d)", r.PubCloseCode)
	}
	fmt.Fprintf(w, "; worst lag behind schedule %s\n", fmtUs(r.PubLagMaxUs))
	r.printOutcome(w)
	if r.ServerPID > 0 {
		fmt.Fprintf(w, "server:      pid %d, CPU %.2f s (%.0f%% of a core), %.3f µs/delivery; idle %.1f%%\n",
			r.ServerPID, r.ServerCPU, pct(r.ServerCPU, r.WindowSec), r.ServerCPUPerDeliveryUs, r.ServerIdlePct)
	}
	fmt.Fprintf(w, "client:      CPU %.2f s (%.0f%% of a core) over the window\n", r.ClientCPU, pct(r.ClientCPU, r.WindowSec))
	r.printMachine(w, r.ServerCPU+r.ClientCPU)
}

func fmtUs(v float64) string { return fmtDur(int64(v * 1e3)) }

// fmtCounts prints a map as "a=1 b=2", keys sorted.
func fmtCounts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

// writeJSON prints a result as one line.
func writeJSON(w io.Writer, r any) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
