package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
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
	Server       string  `json:"server,omitempty"` // a label for compare
	Processes    int     `json:"processes"`
	Rate         float64 `json:"rate"`
	PayloadBytes int     `json:"payload_bytes"`
	Planned      int     `json:"planned"`
	Sent         int64   `json:"sent"`
	OK           int64   `json:"ok"`
	Errors       int64   `json:"errors"`
	NoReply      int64   `json:"no_reply"`
	// Reasons counts refusals by reason ("overloaded", "rate_limited" …).
	Reasons      map[string]int64 `json:"reasons,omitempty"`
	PubCloseCode int64            `json:"publisher_close_code,omitempty"`
	// PubLagMaxUs is how far behind schedule the publisher fell at worst;
	// beyond a few ms this process was starved and the run offered less
	// than -rate.
	PubLagMaxUs  float64 `json:"publisher_lag_max_us"`
	SelfReceived int64   `json:"publisher_received"`

	groupResult
	// Latency hides groupResult's histogram from the JSON line (the
	// quantiles below carry it); always nil.
	Latency *hist `json:"latency,omitempty"`

	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
	MeanUs    float64 `json:"mean_us"`
	ReplyP50  float64 `json:"reply_p50_us"`
	ReplyP99  float64 `json:"reply_p99_us"`
	WindowSec float64 `json:"window_s"`
	// Complete is true when everything expected arrived (no drain
	// timeout).
	Complete bool `json:"complete"`
	// ServerCPU is the server's CPU seconds over the window, and
	// ServerCPUPerDeliveryUs its cost per delivery; ServerIdlePct is its
	// CPU use with every subscriber connected but nothing published.
	ServerPID              int     `json:"server_pid,omitempty"`
	ServerCPU              float64 `json:"server_cpu_s"`
	ServerCPUPerDeliveryUs float64 `json:"server_cpu_us_per_delivery"`
	ServerIdlePct          float64 `json:"server_idle_cpu_pct"`
	// ClientCPU is this tool's CPU seconds over the window (all its
	// processes), to see whether the client competed for the cores.
	ClientCPU float64 `json:"client_cpu_s"`
}

// runBroadcast runs the broadcast scenario. Progress goes to out; the
// result is returned (also when err is not nil, with what was counted).
func runBroadcast(ctx context.Context, cfg BroadcastConfig, out, stderr io.Writer) (broadcastResult, error) {
	cfg.fill()
	res := broadcastResult{Rate: cfg.Rate, PayloadBytes: cfg.PayloadBytes, Planned: cfg.events(), ServerPID: cfg.ServerPID}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	// Subscribers: in this process, or in workers past PerProcess.
	specs := cfg.specs()
	res.Processes = len(specs)
	var groups []group
	defer func() {
		for _, g := range groups {
			g.close()
		}
	}()
	if len(specs) == 1 {
		// One P more than the readers, so that the publisher's pacing and
		// the polling are never queued behind busy readers in this
		// process; the kernel then shares the cores.
		if n := cfg.Loops + 1; runtime.GOMAXPROCS(0) < n {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
		}
		g, err := startSubGroup(ctx, specs[0])
		if err != nil {
			return res, err
		}
		groups = append(groups, g)
	} else {
		exe, err := os.Executable()
		if err != nil {
			return res, err
		}
		for _, s := range specs {
			g, err := startProcGroup(ctx, exe, s, stderr)
			if err != nil {
				return res, err
			}
			groups = append(groups, g)
		}
	}
	fmt.Fprintf(out, "broadcast: %d subscribers on %s in %d process(es), %d events at %g/s, %d-byte payload\n",
		cfg.Subs, cfg.Topic, len(specs), cfg.events(), cfg.Rate, cfg.PayloadBytes)

	opened, err := waitReady(ctx, cfg, groups, out)
	if err != nil {
		return res, err
	}

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
	pub := startPublisher(pc, cfg.Topic, cfg.Event, cfg.PayloadBytes, cfg.events())
	defer pub.close()

	// The window starts with the first publish and ends at the last
	// delivery seen (or the last reply, if later).
	cpuAt := func() (server, client float64) {
		if cfg.ServerPID > 0 {
			server, _ = procCPU(cfg.ServerPID)
		}
		client, _ = procCPU(os.Getpid())
		for _, g := range groups {
			client += g.progress().CPU
		}
		return server, client
	}
	s0, c0 := cpuAt()
	t0 := time.Now()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		pub.run(ctx, cfg.Rate)
	}()

	sEnd, cEnd, tEnd := s0, c0, t0
	var lastDistinct, lastAnswered int64
	lastActivity := t0
	nextLine := t0.Add(cfg.Progress)
	publishing := true
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var runErr error
poll:
	for {
		select {
		case <-ctx.Done():
			runErr = fmt.Errorf("bench: stopped before the drain ended: %w", ctx.Err())
			break poll
		case <-pubDone:
			pubDone = nil
			publishing = false
			lastActivity = time.Now()
			continue
		case <-tick.C:
		}
		now := time.Now()
		var p groupProgress
		for _, g := range groups {
			q := g.progress()
			p.Distinct += q.Distinct
			p.Dups += q.Dups
			p.Closed += q.Closed
			p.Hist.Merge(q.Hist)
		}
		answered := pub.answered()
		if p.Distinct != lastDistinct || answered != lastAnswered {
			lastDistinct, lastAnswered = p.Distinct, answered
			lastActivity = now
			sEnd, cEnd = cpuAt()
			tEnd = now
		}
		expected := int64(opened) * pub.ok.Load()
		if cfg.Progress > 0 && !now.Before(nextLine) {
			nextLine = nextLine.Add(cfg.Progress)
			fmt.Fprintf(out, "%6.1fs sent %d ok %d err %d | delivered %d (subs×ok %d) dup %d closed %d | p50 %s p99 %s\n",
				now.Sub(t0).Seconds(), pub.sent.Load(), pub.ok.Load(), pub.errs.Load(),
				p.Distinct, expected, p.Dups, p.Closed,
				fmtDur(p.Hist.Quantile(0.5)), fmtDur(p.Hist.Quantile(0.99)))
		}
		if publishing {
			continue
		}
		if answered == pub.sent.Load() && p.Distinct >= expected {
			res.Complete = true
			break
		}
		if now.Sub(lastActivity) >= cfg.Drain {
			break
		}
	}
	if pubDone != nil {
		cancel() // the timeout ended the run mid-publish
		<-pubDone
	}

	fin := finishSpec{Sent: pub.sent.Load(), Refused: pub.refused()}
	for _, g := range groups {
		r, err := g.finish(fin)
		if err != nil {
			runErr = errors.Join(runErr, err)
		}
		res.groupResult.merge(r)
	}
	res.Sent, res.OK, res.Errors = fin.Sent, pub.ok.Load(), pub.errs.Load()
	res.NoReply = res.Sent - res.OK - res.Errors
	res.Reasons = pub.reasonCounts()
	res.PubCloseCode = pub.closeCode.Load()
	res.SelfReceived = pub.self.Load()
	res.PubLagMaxUs = us(pub.maxLag.Load())
	lat := res.groupResult.Latency
	res.P50us, res.P99us, res.P999us = us(lat.Quantile(0.5)), us(lat.Quantile(0.99)), us(lat.Quantile(0.999))
	res.MaxUs, res.MeanUs = us(lat.Max), lat.Mean()/1e3
	rh := pub.replies.Snapshot()
	res.ReplyP50, res.ReplyP99 = us(rh.Quantile(0.5)), us(rh.Quantile(0.99))
	res.WindowSec = tEnd.Sub(t0).Seconds()
	// CPU figures are whole clock ticks; round off the float noise.
	res.ClientCPU = roundTicks(cEnd - c0)
	if cfg.ServerPID > 0 {
		res.ServerCPU = roundTicks(sEnd - s0)
		if res.Delivered > 0 {
			res.ServerCPUPerDeliveryUs = res.ServerCPU * 1e6 / float64(res.Delivered)
		}
	}
	return res, runErr
}

// waitReady waits until every group has dialled all its subscribers and
// returns how many joined.
func waitReady(ctx context.Context, cfg BroadcastConfig, groups []group, out io.Writer) (int, error) {
	start := time.Now()
	next := start.Add(cfg.Progress)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("bench: subscribers not ready: %w", ctx.Err())
		case <-tick.C:
		}
		ready, opened, failed := true, 0, 0
		var firstErr string
		for _, g := range groups {
			p := g.progress()
			ready = ready && p.Ready
			opened += p.Opened
			failed += p.Failed
			if firstErr == "" {
				firstErr = p.Err
			}
		}
		now := time.Now()
		if ready || (cfg.Progress > 0 && !now.Before(next)) {
			next = next.Add(cfg.Progress)
			fmt.Fprintf(out, "%6.1fs subscribers joined %d/%d, failed %d\n", now.Sub(start).Seconds(), opened, cfg.Subs, failed)
		}
		if ready {
			if failed > 0 {
				fmt.Fprintf(out, "first subscriber error: %s\n", firstErr)
			}
			if opened == 0 {
				return 0, fmt.Errorf("bench: no subscriber joined (%s)", firstErr)
			}
			return opened, nil
		}
	}
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
	fmt.Fprintf(w, "publisher:   sent %d of %d, ok %d, error %d, no reply %d", r.Sent, r.Planned, r.OK, r.Errors, r.NoReply)
	if len(r.Reasons) > 0 {
		fmt.Fprintf(w, " (%s)", fmtCounts(r.Reasons))
	}
	if r.PubCloseCode != 0 {
		fmt.Fprintf(w, "; closed by server (%d)", r.PubCloseCode)
	}
	fmt.Fprintf(w, "; worst lag behind schedule %s\n", fmtUs(r.PubLagMaxUs))
	fmt.Fprintf(w, "deliveries:  expected %d, delivered %d, missing %d (%d subscribers, worst %d), duplicates %d (%d subscribers), late %d",
		r.Expected, r.Delivered, r.Missing, r.SubsMissing, r.MaxMissing, r.Dups, r.SubsDup, r.Late)
	if r.Extra > 0 || r.Bad > 0 {
		fmt.Fprintf(w, ", of refused %d, unreadable %d", r.Extra, r.Bad)
	}
	fmt.Fprintln(w)
	if r.Closed > 0 {
		fmt.Fprintf(w, "closed:      %d subscribers ended by the server (%s)\n", r.Closed, fmtCounts(r.CloseCodes))
	}
	fmt.Fprintf(w, "latency:     p50 %s  p99 %s  p999 %s  max %s  mean %s  (n=%d)\n",
		fmtUs(r.P50us), fmtUs(r.P99us), fmtUs(r.P999us), fmtUs(r.MaxUs), fmtUs(r.MeanUs), r.groupResult.Latency.N)
	fmt.Fprintf(w, "push reply:  p50 %s  p99 %s\n", fmtUs(r.ReplyP50), fmtUs(r.ReplyP99))
	state := "complete"
	if !r.Complete {
		state = "incomplete: drain ended without every delivery"
	}
	fmt.Fprintf(w, "window:      %.2f s (%s)\n", r.WindowSec, state)
	if r.ServerPID > 0 {
		pct := 0.0
		if r.WindowSec > 0 {
			pct = 100 * r.ServerCPU / r.WindowSec
		}
		fmt.Fprintf(w, "server:      pid %d, CPU %.2f s (%.0f%% of a core), %.3f µs/delivery; idle %.1f%%\n",
			r.ServerPID, r.ServerCPU, pct, r.ServerCPUPerDeliveryUs, r.ServerIdlePct)
	}
	cpct := 0.0
	if r.WindowSec > 0 {
		cpct = 100 * r.ClientCPU / r.WindowSec
	}
	fmt.Fprintf(w, "client:      CPU %.2f s (%.0f%% of a core) over the window\n", r.ClientCPU, cpct)
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

// writeJSON prints r as one line.
func writeJSON(w io.Writer, r broadcastResult) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
