package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"
)

// What the broadcast and rooms orchestrators share: starting the groups,
// waiting for them to join, the poll loop that runs while publishing and
// draining, CPU sampling and the latency figures.

// scenario is what startScenario needs of a scenario's configuration.
type scenario interface {
	Validate() error
	// specs splits the subscribers over processes.
	specs() []groupSpec
	shared() PublishConfig
}

// startScenario validates cfg, bounds ctx by its timeout and starts its
// subscriber groups. stop closes the groups and ends ctx; call it whatever
// err is.
func startScenario(ctx context.Context, cfg scenario, stderr io.Writer) (_ context.Context, _ []group, stop func(), err error) {
	if err := cfg.Validate(); err != nil {
		return ctx, nil, func() {}, err
	}
	pc := cfg.shared()
	ctx, cancel := context.WithTimeout(ctx, pc.Timeout)
	groups, restore, err := startGroups(ctx, cfg.specs(), pc.Loops, stderr)
	stop = func() {
		for _, g := range groups {
			g.close()
		}
		restore()
		cancel()
	}
	return ctx, groups, stop, err
}

// report prints a run's summary and, with asJSON, its JSON line res, if
// the run got as far as subscribers or publishes; it returns the run's
// err joined with any error writing the line.
func report(w io.Writer, got, asJSON bool, summary func(io.Writer), res any, err error) error {
	if !got {
		return err
	}
	summary(w)
	if asJSON {
		err = errors.Join(err, writeJSON(w, res))
	}
	return err
}

// startGroups starts one group per spec: in this process when there is
// one, else one worker child each. restore undoes what it changed in this
// process (GOMAXPROCS); call it after closing the groups.
func startGroups(ctx context.Context, specs []groupSpec, loops int, stderr io.Writer) (groups []group, restore func(), err error) {
	restore = func() {}
	if len(specs) == 1 {
		// One P more than the readers, so that the publishers' pacing and
		// the polling are never queued behind busy readers in this
		// process; the kernel then shares the cores.
		if n := loops + 1; runtime.GOMAXPROCS(0) < n {
			prev := runtime.GOMAXPROCS(n)
			restore = func() { runtime.GOMAXPROCS(prev) }
		}
		g, err := startSubGroup(ctx, specs[0])
		if err != nil {
			return nil, restore, err
		}
		return []group{g}, restore, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, restore, err
	}
	for _, s := range specs {
		g, err := startProcGroup(ctx, exe, s, stderr)
		if err != nil {
			return groups, restore, err
		}
		groups = append(groups, g)
	}
	return groups, restore, nil
}

// progressOf sums the groups' progress.
func progressOf(groups []group) groupProgress {
	var p groupProgress
	ready := true
	for _, g := range groups {
		q := g.progress()
		ready = ready && q.Ready
		p.add(q)
	}
	p.Ready = ready
	return p
}

// waitReady waits until every group has dialled all its subscribers and
// returns their summed progress (how many joined, in all and by node and
// topic). A progress line goes to out every progress (negative: none).
func waitReady(ctx context.Context, subs int, progress time.Duration, groups []group, out io.Writer) (groupProgress, error) {
	start := time.Now()
	next := start.Add(progress)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return groupProgress{}, fmt.Errorf("bench: subscribers not ready: %w", ctx.Err())
		case <-tick.C:
		}
		p := progressOf(groups)
		now := time.Now()
		if p.Ready || (progress > 0 && !now.Before(next)) {
			next = next.Add(progress)
			fmt.Fprintf(out, "%6.1fs subscribers joined %d/%d, failed %d\n", now.Sub(start).Seconds(), p.Opened, subs, p.Failed)
		}
		if p.Ready {
			if p.Failed > 0 {
				fmt.Fprintf(out, "first subscriber error: %s\n", p.Err)
			}
			if p.Opened == 0 {
				return p, fmt.Errorf("bench: no subscriber joined (%s)", p.Err)
			}
			return p, nil
		}
	}
}

// cpuMeter reads the CPU time of the measured processes and of this tool
// (this process and its worker children).
type cpuMeter struct {
	pids   []int
	groups []group
}

// cpuSample is CPU seconds used so far, by pid (in cpuMeter order), by
// this tool, and by the whole machine (busy and idle, all CPUs).
type cpuSample struct {
	pids       []float64
	client     float64
	busy, idle float64
}

func (m cpuMeter) sample() cpuSample {
	s := cpuSample{pids: make([]float64, len(m.pids))}
	for i, pid := range m.pids {
		s.pids[i], _ = procCPU(pid)
	}
	s.client, _ = procCPU(os.Getpid())
	for _, g := range m.groups {
		s.client += g.progress().CPU
	}
	s.busy, s.idle, _ = machineCPU()
	return s
}

// since is the CPU used between s0 and s, rounded to clock ticks.
func (s cpuSample) since(s0 cpuSample) cpuSample {
	d := cpuSample{
		pids:   make([]float64, len(s.pids)),
		client: roundTicks(s.client - s0.client),
		busy:   roundTicks(s.busy - s0.busy),
		idle:   roundTicks(s.idle - s0.idle),
	}
	for i := range s.pids {
		d.pids[i] = roundTicks(s.pids[i] - s0.pids[i])
	}
	return d
}

// pubCounts are the publishers' running counts: publishes sent, answered
// ok and with an error, and the deliveries the ok ones are expected to
// make.
type pubCounts struct {
	sent, ok, errs, expected int64
}

// watchSpec is what the poll loop of a run needs.
type watchSpec struct {
	groups []group
	meter  cpuMeter
	// publish sends every event; it must return when its ctx ends.
	publish func(ctx context.Context)
	// counts reads the publishers' counts; goroutine-safe.
	counts          func() pubCounts
	drain, progress time.Duration
	out             io.Writer
}

// watchResult is what the poll loop saw. The window runs from the first
// publish to the last delivery seen (or the last reply, if later); the
// CPU samples are taken at both ends.
type watchResult struct {
	complete   bool
	start, end time.Time
	cpu        cpuSample // used over the window
}

// watch runs w.publish and polls the groups until every expected delivery
// arrived after the last publish, or nothing arrived for w.drain, or ctx
// ended (then err says so).
func watch(ctx context.Context, w watchSpec) (watchResult, error) {
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	s0 := w.meter.sample()
	t0 := time.Now()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		w.publish(pctx)
	}()

	res := watchResult{start: t0, end: t0}
	sEnd := s0
	var lastDistinct, lastAnswered int64
	lastActivity := t0
	nextLine := t0.Add(w.progress)
	publishing := true
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var err error
poll:
	for {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("bench: stopped before the drain ended: %w", ctx.Err())
			break poll
		case <-pubDone:
			pubDone = nil
			publishing = false
			lastActivity = time.Now()
			continue
		case <-tick.C:
		}
		now := time.Now()
		p := progressOf(w.groups)
		c := w.counts()
		answered := c.ok + c.errs
		if p.Distinct != lastDistinct || answered != lastAnswered {
			lastDistinct, lastAnswered = p.Distinct, answered
			lastActivity = now
			sEnd = w.meter.sample()
			res.end = now
		}
		if w.progress > 0 && !now.Before(nextLine) {
			nextLine = nextLine.Add(w.progress)
			fmt.Fprintf(w.out, "%6.1fs sent %d ok %d err %d | delivered %d of %d, dup %d closed %d | p50 %s p99 %s\n",
				now.Sub(t0).Seconds(), c.sent, c.ok, c.errs, p.Distinct, c.expected, p.Dups, p.Closed,
				fmtDur(p.Hist.Quantile(0.5)), fmtDur(p.Hist.Quantile(0.99)))
		}
		if publishing {
			continue
		}
		if answered == c.sent && p.Distinct >= c.expected {
			res.complete = true
			break
		}
		if now.Sub(lastActivity) >= w.drain {
			break
		}
	}
	if pubDone != nil {
		pcancel() // ctx ended the run mid-publish
		<-pubDone
	}
	res.cpu = sEnd.since(s0)
	return res, err
}

// finishGroups settles every group against f and merges their results.
func finishGroups(groups []group, f finishSpec) (groupResult, error) {
	var r groupResult
	var err error
	for _, g := range groups {
		gr, gerr := g.finish(f)
		err = errors.Join(err, gerr)
		r.merge(gr)
	}
	return r, err
}

// waitUntil sleeps until at; false if ctx ended first (or had already).
func waitUntil(ctx context.Context, at time.Time) bool {
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return ctx.Err() == nil
}

// runResult is what the broadcast and rooms results share; their JSON
// lines carry it flat (durations in µs, CPU in seconds).
type runResult struct {
	Processes    int     `json:"processes"`
	Rate         float64 `json:"rate"`
	PayloadBytes int     `json:"payload_bytes"`
	Planned      int     `json:"planned"`
	Sent         int64   `json:"sent"`
	OK           int64   `json:"ok"`
	Errors       int64   `json:"errors"`
	NoReply      int64   `json:"no_reply"`
	// Reasons counts refusals by reason ("overloaded", "rate_limited" …).
	Reasons map[string]int64 `json:"reasons,omitempty"`
	// PubLagMaxUs is how far behind schedule a publish went out at worst;
	// beyond a few ms this process was starved and the run offered less
	// than -rate.
	PubLagMaxUs float64 `json:"publisher_lag_max_us"`

	groupResult
	// Latency hides groupResult's histogram from the JSON line (the
	// quantiles below carry it); always nil.
	Latency *hist `json:"latency,omitempty"`

	latencyUs
	ReplyP50  float64 `json:"reply_p50_us"`
	ReplyP99  float64 `json:"reply_p99_us"`
	WindowSec float64 `json:"window_s"`
	// Complete is true when everything expected arrived (no drain
	// timeout).
	Complete bool `json:"complete"`
	// ClientCPU is this tool's CPU seconds over the window (all its
	// processes), to see whether the client competed for the cores.
	ClientCPU float64 `json:"client_cpu_s"`
	// MachineBusy and MachineIdle are the CPU seconds all CPUs together
	// spent busy and idle over the window, whoever ran: what the measured
	// processes and this tool do not account for is the kernel's own
	// threads (loopback network processing) and anything else running on
	// the machine.
	MachineBusy float64 `json:"machine_busy_s"`
	MachineIdle float64 `json:"machine_idle_s"`
}

// settle takes the groups' settled result, the push→reply times and what
// the poll loop saw.
func (r *runResult) settle(gr groupResult, replies hist, w watchResult) {
	r.groupResult = gr
	r.NoReply = r.Sent - r.OK - r.Errors
	r.latencyUs = latencyOf(gr.Latency)
	r.ReplyP50, r.ReplyP99 = us(replies.Quantile(0.5)), us(replies.Quantile(0.99))
	r.WindowSec = w.end.Sub(w.start).Seconds()
	r.Complete = w.complete
	r.ClientCPU = w.cpu.client
	r.MachineBusy, r.MachineIdle = w.cpu.busy, w.cpu.idle
}

// printMachine writes the machine line of a summary; measured is the CPU
// of the measured processes, this tool's included.
func (r runResult) printMachine(w io.Writer, measured float64) {
	total := r.MachineBusy + r.MachineIdle
	if total <= 0 {
		return
	}
	fmt.Fprintf(w, "machine:     CPUs busy %.2f s of %.2f s (%.0f%%); outside the measured processes and this tool %.2f s\n",
		r.MachineBusy, total, 100*r.MachineBusy/total, max(r.MachineBusy-measured, 0))
}

// printPublished writes the publish counts of a summary line.
func (r runResult) printPublished(w io.Writer) {
	fmt.Fprintf(w, "sent %d of %d, ok %d, error %d, no reply %d", r.Sent, r.Planned, r.OK, r.Errors, r.NoReply)
	if len(r.Reasons) > 0 {
		fmt.Fprintf(w, " (%s)", fmtCounts(r.Reasons))
	}
}

// printOutcome writes the deliveries, latency, reply and window lines of a
// summary.
func (r runResult) printOutcome(w io.Writer) {
	printDeliveries(w, r.groupResult)
	fmt.Fprintf(w, "latency:     p50 %s  p99 %s  p999 %s  max %s  mean %s  (n=%d)\n",
		fmtUs(r.P50us), fmtUs(r.P99us), fmtUs(r.P999us), fmtUs(r.MaxUs), fmtUs(r.MeanUs), r.groupResult.Latency.N)
	fmt.Fprintf(w, "push reply:  p50 %s  p99 %s\n", fmtUs(r.ReplyP50), fmtUs(r.ReplyP99))
	state := "complete"
	if !r.Complete {
		state = "incomplete: drain ended without every delivery"
	}
	fmt.Fprintf(w, "window:      %.2f s (%s)\n", r.WindowSec, state)
}

// latencyUs are a latency histogram's figures in µs, as result lines
// carry them.
type latencyUs struct {
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	P999us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
	MeanUs float64 `json:"mean_us"`
}

func latencyOf(h hist) latencyUs {
	return latencyUs{
		P50us: us(h.Quantile(0.5)), P99us: us(h.Quantile(0.99)), P999us: us(h.Quantile(0.999)),
		MaxUs: us(h.Max), MeanUs: h.Mean() / 1e3,
	}
}

// printDeliveries writes the deliveries and closed lines of a summary.
func printDeliveries(w io.Writer, r groupResult) {
	fmt.Fprintf(w, "deliveries:  expected %d, delivered %d, missing %d (%d subscribers, worst %d), duplicates %d (%d subscribers), late %d",
		r.Expected, r.Delivered, r.Missing, r.SubsMissing, r.MaxMissing, r.Dups, r.SubsDup, r.Late)
	if r.Extra > 0 || r.Bad > 0 {
		fmt.Fprintf(w, ", of refused %d, unreadable %d", r.Extra, r.Bad)
	}
	fmt.Fprintln(w)
	if complete, differ := r.orderSplit(); differ > 0 || len(r.Orders) > 1 {
		fmt.Fprintf(w, "order:       %d of the %d subscribers that got every event of their topic got them in another order than most of its subscribers\n", differ, complete)
	}
	if r.Closed > 0 {
		fmt.Fprintf(w, "closed:      %d subscribers ended by the server (%s)\n", r.Closed, fmtCounts(r.CloseCodes))
	}
}

// pct is part as a percentage of a core over window seconds.
func pct(part, window float64) float64 {
	if window <= 0 {
		return 0
	}
	return 100 * part / window
}
