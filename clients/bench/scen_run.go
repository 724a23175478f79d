package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// scenResult is the outcome of a churn, actions or resume run: the
// -json line and result.json (durations in µs).
type scenResult struct {
	Scenario   string    `json:"scenario"`
	Command    string    `json:"command"`
	URL        string    `json:"url"`
	Started    time.Time `json:"started"`
	Processes  int       `json:"processes"`
	Target     float64   `json:"target_rate"`
	Rooms      int       `json:"rooms"`
	ClientsCfg int       `json:"clients_configured"`
	// WindowSec spans the first to the last operation; Achieved is the
	// successful operations per second over it.
	WindowSec float64 `json:"window_s"`
	Achieved  float64 `json:"achieved_per_s"`
	shareResult
	latencyUs
	P90us    float64       `json:"p90_us"`
	RejoinUs latencyUs     `json:"rejoin_us"`
	Points   []seriesPoint `json:"latency_over_time"`
	// The resume publisher's counts, and the events accepted by room.
	PubSent    int64            `json:"publisher_sent,omitempty"`
	PubOK      int64            `json:"publisher_ok,omitempty"`
	PubErrors  int64            `json:"publisher_errors,omitempty"`
	PubReasons map[string]int64 `json:"publisher_reasons,omitempty"`
	Accepted   []int64          `json:"accepted,omitempty"`
	// Pass is false when the run found a fault (resume: a client without
	// every event once and in order; all: nothing succeeded); Faults says
	// which.
	Pass   bool     `json:"pass"`
	Faults []string `json:"faults,omitempty"`
}

// seriesPoint is one latency-over-time bucket.
type seriesPoint struct {
	T     float64 `json:"t_s"` // bucket start, seconds from the run's start
	N     uint64  `json:"n"`
	P50us float64 `json:"p50_us"`
	P90us float64 `json:"p90_us"`
	P99us float64 `json:"p99_us"`
	MaxUs float64 `json:"max_us"`
}

// runScen runs a churn, actions or resume scenario. Progress goes to
// stderr; the result is returned (also with err, as far as it got).
func runScen(ctx context.Context, cfg ScenConfig, out, stderr io.Writer) (scenResult, error) {
	cfg.fill()
	res := scenResult{Scenario: cfg.Scenario, Command: cfg.Command, URL: cfg.URL, Target: cfg.Rate, Rooms: cfg.Rooms, ClientsCfg: cfg.Clients}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()
	res.Started = start.UTC()
	// The shares end their load a little before the run's bound, so
	// that their results still come back.
	deadline := start.Add(cfg.Timeout - min(cfg.Timeout/10, 5*time.Second))
	specs := cfg.specs(start, deadline)
	res.Processes = len(specs)
	fmt.Fprintf(out, "%s: %d clients in %d process(es), %d operations at %g/s, %d rooms, %s\n",
		cfg.Scenario, cfg.Clients, len(specs), cfg.ops(), cfg.Rate, cfg.Rooms, cfg.URL)
	shares, err := startShares(ctx, specs, stderr)
	defer func() {
		for _, s := range shares {
			s.close()
		}
	}()
	if err != nil {
		return res, err
	}
	bar := newProgressBar(stderr, cfg.Progress, cfg.Scenario, start)
	var pubStatus atomic.Pointer[func() string]
	stopBar := bar.run(func() (float64, string) {
		p := sharesProgress(shares)
		var pub func() string
		if f := pubStatus.Load(); f != nil {
			pub = *f
		}
		return scenFraction(cfg, p), scenStatus(cfg, p, pub)
	})
	defer stopBar()

	var runErr error
	if cfg.Scenario == scenResume {
		var pub *resumePub
		pub, runErr = publishResume(ctx, cfg, shares, &pubStatus)
		if pub != nil {
			res.PubSent, res.PubOK, res.PubErrors = pub.p.sent.Load(), pub.p.ok.Load(), pub.p.errs.Load()
			res.PubReasons = pub.p.reasonCounts()
			res.Accepted = pub.accepted()
		}
	}
	for _, s := range shares {
		r, err := s.wait(ctx)
		runErr = errors.Join(runErr, err)
		res.merge(r)
	}
	stopBar()
	res.settle(cfg, start)
	if !res.Pass {
		runErr = errors.Join(runErr, fmt.Errorf("bench: %s: %s", cfg.Scenario, strings.Join(res.Faults, "; ")))
	}
	return res, runErr
}

// settle computes the figures from the merged counts.
func (r *scenResult) settle(cfg ScenConfig, start time.Time) {
	if r.First > 0 && r.Last > r.First {
		r.WindowSec = float64(r.Last-r.First) / 1e9
		r.Achieved = float64(r.OK) / r.WindowSec
	}
	r.latencyUs = latencyOf(r.Latency)
	r.P90us = us(r.Latency.Quantile(0.9))
	r.RejoinUs = latencyOf(r.Rejoin)
	for i, h := range r.Series {
		if h.N == 0 {
			continue
		}
		r.Points = append(r.Points, seriesPoint{
			T: float64(i) * cfg.Interval.Seconds(), N: h.N,
			P50us: us(h.Quantile(0.5)), P90us: us(h.Quantile(0.9)), P99us: us(h.Quantile(0.99)), MaxUs: us(h.Max),
		})
	}
	if r.OK == 0 {
		r.Faults = append(r.Faults, "no operation succeeded")
	}
	if cfg.Scenario == scenResume {
		if r.Clients == 0 {
			r.Faults = append(r.Faults, "no client joined")
		}
		if r.Incomplete > 0 || r.Gaps > 0 || r.Dups > 0 || r.EpochChanges > 0 || r.Missing > 0 {
			r.Faults = append(r.Faults, fmt.Sprintf("%d of %d clients without every event once and in order (missing %d, skipped %d, duplicates %d, epoch changes %d, not recovered %d)",
				r.Incomplete, r.Clients, r.Missing, r.Gaps, r.Dups, r.EpochChanges, r.NotRecovered))
		}
	}
	r.Pass = len(r.Faults) == 0
}

// scenFraction is how far the run is, 0..1, for the progress bar.
func scenFraction(cfg ScenConfig, p shareProgress) float64 {
	ops := float64(cfg.ops())
	switch {
	case cfg.Scenario == scenResume && !p.Ready:
		return 0
	case cfg.Scenario == scenResume:
		return 0.1 + 0.8*min(float64(p.OK)/max(ops*float64(cfg.Clients)/float64(cfg.Rooms), 1), 1) + 0.1*float64(p.Complete)/float64(max(p.Joined, 1))
	case cfg.Scenario == scenActions && !p.Ready:
		return 0.1 * float64(p.Joined) / float64(cfg.Clients)
	case cfg.Scenario == scenActions:
		return 0.1 + 0.9*min(float64(p.Attempts)/ops, 1)
	}
	return min(float64(p.Attempts)/ops, 1)
}

// scenStatus is the progress line's text.
func scenStatus(cfg ScenConfig, p shareProgress, pub func() string) string {
	switch cfg.Scenario {
	case scenChurn:
		return fmt.Sprintf("cycles %d/%d ok %d err %d", p.Attempts, cfg.ops(), p.OK, p.Errors)
	case scenActions:
		if !p.Ready {
			return fmt.Sprintf("joined %d/%d err %d", p.Joined, cfg.Clients, p.Errors)
		}
		return fmt.Sprintf("pushes %d/%d ok %d err %d", p.Attempts, cfg.ops(), p.OK, p.Errors)
	}
	s := fmt.Sprintf("joined %d/%d received %d reconnects %d complete %d err %d", p.Joined, cfg.Clients, p.OK, p.Reconnects, p.Complete, p.Errors)
	if pub != nil {
		s = pub() + " | " + s
	}
	return s
}

// resumePub is the resume run's publisher.
type resumePub struct {
	p     *publisher
	rooms int
}

// accepted counts the publishes answered ok, by room.
func (r *resumePub) accepted() []int64 {
	out := make([]int64, r.rooms)
	for i := range out {
		out[i] = r.p.okByTopic[i].Load()
	}
	return out
}

// publishResume waits for the shares' clients, publishes the run's
// events to the rooms in turn, waits for their replies and hands each
// share what was accepted. status is set to the publisher's progress.
func publishResume(ctx context.Context, cfg ScenConfig, shares []share, status *atomic.Pointer[func() string]) (*resumePub, error) {
	if err := waitShares(ctx, shares, func(p shareProgress) bool { return p.Ready }); err != nil {
		return nil, fmt.Errorf("bench: resume clients not ready: %w", err)
	}
	topics := make([]string, cfg.Rooms)
	for r := range topics {
		topics[r] = cfg.TopicPrefix + fmt.Sprint(r)
	}
	var local net.IP
	if len(cfg.LocalIPs) > 0 {
		local = cfg.LocalIPs[cfg.Clients%len(cfg.LocalIPs)]
	}
	c, err := dialJoined(ctx, cfg.URL, local, cfg.DialTimeout, publisherJoins(topics)...)
	if err != nil {
		return nil, fmt.Errorf("bench: resume publisher: %w", err)
	}
	n := cfg.ops()
	pub := &resumePub{p: startPublisher(c, topics, cfg.Event, cfg.PayloadBytes, n), rooms: cfg.Rooms}
	defer pub.p.close()
	st := func() string { return fmt.Sprintf("published %d/%d", pub.p.sent.Load(), n) }
	status.Store(&st)
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	t0 := time.Now()
	for k := range n {
		at := t0.Add(time.Duration(k) * interval)
		if !waitUntil(ctx, at) || pub.p.send(k%cfg.Rooms, int64(k/cfg.Rooms), at) != nil {
			break
		}
	}
	sent := pub.p.sent.Load()
	waitDrain(ctx, cfg.Drain, func() (int64, bool) {
		a := pub.p.answered()
		return a, a >= sent
	})
	fin := shareFinish{Accepted: pub.accepted()}
	var err2 error
	for _, s := range shares {
		err2 = errors.Join(err2, s.finish(fin))
	}
	if sent < int64(n) {
		err2 = errors.Join(err2, fmt.Errorf("bench: resume publisher sent %d of %d", sent, n))
	}
	return pub, err2
}

// waitShares polls until cond holds for the shares' summed progress.
func waitShares(ctx context.Context, shares []share, cond func(shareProgress) bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond(sharesProgress(shares)) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// scenMain is the churn, actions and resume subcommand.
func scenMain(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	cfg := NewScenConfig(name)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	parsed := cfg.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := parsed(); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrConfig, fs.Arg(0))
	}
	cfg.Command = "phxgate-bench " + name + " " + strings.Join(args, " ")
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	res, err := runScen(ctx, cfg, stdout, stderr)
	if errors.Is(err, ErrConfig) || res.Processes == 0 {
		return err
	}
	printScen(stdout, res)
	if cfg.Out != "" {
		err = errors.Join(err, writeScenOutputs(cfg.Out, res))
	}
	if cfg.JSON {
		// The line carries the figures; result.json has the histograms.
		line := res
		line.Latency, line.Rejoin, line.Series = hist{}, hist{}, nil
		err = errors.Join(err, writeJSON(stdout, line))
	}
	return err
}
