package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A share is one process's part of a churn, actions or resume run: run in
// this process (one share) or in a scenario-worker child each. The
// child protocol is the broadcast worker's (worker.go), with its own
// message types:
//
//	child → parent (stdout): {"progress":{…}} every workerProgressEvery,
//	                         then one {"result":{…}} before exiting
//	parent → child (stdin):  at most one {"finish":{…}} (resume: what was
//	                         published); EOF aborts a child still running

// shareProgress is a share's running count.
type shareProgress struct {
	Ready    bool  `json:"ready"`    // every client dialled (actions, resume)
	Done     bool  `json:"done"`     // the share's work is over
	Joined   int64 `json:"joined"`   // clients joined (actions, resume)
	Attempts int64 `json:"attempts"` // cycles, pushes, or events received
	OK       int64 `json:"ok"`
	Errors   int64 `json:"errors"`
	// Resume: clients with every published event of their room, once and
	// in order (meaningful after the finish), and reconnections so far.
	Complete   int64  `json:"complete"`
	Reconnects int64  `json:"reconnects"`
	Err        string `json:"err,omitempty"`
}

func (p *shareProgress) add(q shareProgress) {
	p.Joined += q.Joined
	p.Attempts += q.Attempts
	p.OK += q.OK
	p.Errors += q.Errors
	p.Complete += q.Complete
	p.Reconnects += q.Reconnects
	if p.Err == "" {
		p.Err = q.Err
	}
}

// shareFinish tells resume shares what was published: Accepted[r] events
// to room r.
type shareFinish struct {
	Accepted []int64 `json:"accepted"`
}

// shareResult is a share's settled outcome; several merge into one.
type shareResult struct {
	Shares int `json:"shares"`
	// Clients joined and failed to join (actions, resume).
	Clients int   `json:"clients"`
	Failed  int   `json:"failed"`
	Planned int64 `json:"planned"`
	// Attempts: churn cycles started, pushes sent, events received.
	Attempts int64 `json:"attempts"`
	OK       int64 `json:"ok"`
	NoReply  int64 `json:"no_reply"`
	// Errors counts failures by kind (dial, http_429, join_<reason>,
	// timeout, …) and refusals by reason.
	Errors map[string]int64 `json:"errors,omitempty"`
	// Latency is the scenario's latency: connect+join (churn), push →
	// reply (actions), publish → receive (resume).
	Latency hist `json:"latency"`
	// Series is Latency by time bucket from the run's start.
	Series []hist `json:"series,omitempty"`
	// Rejoin is a resume client's reconnect → join reply time.
	Rejoin hist `json:"rejoin"`
	// First and Last bound the operations in time (Unix ns).
	First int64 `json:"first"`
	Last  int64 `json:"last"`
	// Resume: clients complete and not, events missed (offsets skipped),
	// duplicated, reconnections, joins that replayed everything missed
	// (recovered) or could not, and epoch changes seen.
	Complete     int64 `json:"complete"`
	Incomplete   int64 `json:"incomplete"`
	Missing      int64 `json:"missing"` // events never received, over all clients
	Gaps         int64 `json:"gaps"`
	Dups         int64 `json:"dups"`
	Reconnects   int64 `json:"reconnects"`
	Recovered    int64 `json:"recovered"`
	NotRecovered int64 `json:"not_recovered"`
	EpochChanges int64 `json:"epoch_changes"`
	Storms       int64 `json:"storms"`
}

func (r *shareResult) merge(o shareResult) {
	r.Shares += o.Shares
	r.Clients += o.Clients
	r.Failed += o.Failed
	r.Planned += o.Planned
	r.Attempts += o.Attempts
	r.OK += o.OK
	r.NoReply += o.NoReply
	for k, v := range o.Errors {
		if r.Errors == nil {
			r.Errors = map[string]int64{}
		}
		r.Errors[k] += v
	}
	r.Latency.Merge(o.Latency)
	r.Rejoin.Merge(o.Rejoin)
	for len(r.Series) < len(o.Series) {
		r.Series = append(r.Series, hist{})
	}
	for i, h := range o.Series {
		r.Series[i].Merge(h)
	}
	if o.First > 0 && (r.First == 0 || o.First < r.First) {
		r.First = o.First
	}
	r.Last = max(r.Last, o.Last)
	r.Complete += o.Complete
	r.Incomplete += o.Incomplete
	r.Missing += o.Missing
	r.Gaps += o.Gaps
	r.Dups += o.Dups
	r.Reconnects += o.Reconnects
	r.Recovered += o.Recovered
	r.NotRecovered += o.NotRecovered
	r.EpochChanges += o.EpochChanges
	r.Storms += o.Storms
}

// shareRec is the goroutine-safe recorder of a share in progress.
type shareRec struct {
	spec             shareSpec
	attempts, ok     atomic.Int64
	errs             atomic.Int64
	joined, failed   atomic.Int64
	first, last      atomic.Int64
	reconnects       atomic.Int64
	ready, done      atomic.Bool
	complete         atomic.Int64 // resume: clients caught up
	lat, rejoin      *histRecorder
	mu               sync.Mutex
	errKinds         map[string]int64
	series           []map[int]uint64 // by bucket: hist bucket index → count
	seriesN, seriesS []int64          // by bucket: count, sum
	seriesMin        []int64
	seriesMax        []int64
	firstErr         string
}

func newShareRec(spec shareSpec) *shareRec {
	return &shareRec{spec: spec, lat: newHistRecorder(), rejoin: newHistRecorder(), errKinds: map[string]int64{}}
}

// fail counts one failure of kind; the first one's text is kept.
func (r *shareRec) fail(kind string, err error) {
	r.errs.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errKinds[kind]++
	if r.firstErr == "" && err != nil {
		r.firstErr = kind + ": " + err.Error()
	}
}

// mark notes an operation at t for the run's time bounds.
func (r *shareRec) mark(t int64) {
	for cur := r.first.Load(); cur == 0 || t < cur; cur = r.first.Load() {
		if r.first.CompareAndSwap(cur, t) {
			break
		}
	}
	for cur := r.last.Load(); t > cur; cur = r.last.Load() {
		if r.last.CompareAndSwap(cur, t) {
			break
		}
	}
}

// record counts latency d of an operation that ended at (Unix ns).
func (r *shareRec) record(at int64, d int64) {
	d = max(d, 0)
	r.lat.Record(d)
	r.mark(at)
	b := int((at - r.spec.Start) / int64(r.spec.Interval))
	b = min(max(b, 0), MaxSeriesBuckets-1)
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.series) <= b {
		r.series = append(r.series, nil)
		r.seriesN = append(r.seriesN, 0)
		r.seriesS = append(r.seriesS, 0)
		r.seriesMin = append(r.seriesMin, 0)
		r.seriesMax = append(r.seriesMax, 0)
	}
	if r.series[b] == nil {
		r.series[b] = map[int]uint64{}
	}
	r.series[b][histIndex(d)]++
	if r.seriesN[b] == 0 || d < r.seriesMin[b] {
		r.seriesMin[b] = d
	}
	r.seriesMax[b] = max(r.seriesMax[b], d)
	r.seriesN[b]++
	r.seriesS[b] += d
}

func (r *shareRec) progress() shareProgress {
	r.mu.Lock()
	e := r.firstErr
	r.mu.Unlock()
	return shareProgress{
		Ready: r.ready.Load(), Done: r.done.Load(), Joined: r.joined.Load(),
		Attempts: r.attempts.Load(), OK: r.ok.Load(), Errors: r.errs.Load(),
		Reconnects: r.reconnects.Load(), Complete: r.complete.Load(), Err: e,
	}
}

// result settles the counts into a shareResult.
func (r *shareRec) result() shareResult {
	res := shareResult{
		Shares: 1, Clients: int(r.joined.Load()), Failed: int(r.failed.Load()), Planned: int64(r.spec.Count),
		Attempts: r.attempts.Load(), OK: r.ok.Load(), Latency: r.lat.Snapshot(), Rejoin: r.rejoin.Snapshot(),
		First: r.first.Load(), Last: r.last.Load(), Reconnects: r.reconnects.Load(),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errKinds) > 0 {
		res.Errors = make(map[string]int64, len(r.errKinds))
		for k, v := range r.errKinds {
			res.Errors[k] = v
		}
	}
	res.Series = make([]hist, len(r.series))
	for b, m := range r.series {
		h := hist{N: uint64(r.seriesN[b]), Sum: r.seriesS[b], Min: r.seriesMin[b], Max: r.seriesMax[b]}
		for i := range histBuckets {
			if c := m[i]; c > 0 {
				h.Counts = append(h.Counts, [2]uint64{uint64(i), c})
			}
		}
		res.Series[b] = h
	}
	return res
}

// shareRunner is a share's work: it runs until done or ctx ends, reading
// at most one finish from fin, and returns the settled result.
type shareRunner func(ctx context.Context, rec *shareRec, fin <-chan shareFinish) (shareResult, error)

func runnerOf(scenario string) (shareRunner, error) {
	switch scenario {
	case scenChurn:
		return runChurnShare, nil
	case scenActions:
		return runActionsShare, nil
	case scenResume:
		return runResumeShare, nil
	}
	return nil, fmt.Errorf("%w: unknown scenario %q", ErrConfig, scenario)
}

// share is what the orchestrator sees of a share, in process or not.
type share interface {
	progress() shareProgress
	// finish hands over what was published (resume); at most once.
	finish(f shareFinish) error
	// wait returns the result once the share is done (bounded by the
	// run's context).
	wait(ctx context.Context) (shareResult, error)
	close()
}

// localShare runs in this process.
type localShare struct {
	rec    *shareRec
	fin    chan shareFinish
	cancel context.CancelFunc
	done   chan struct{}
	res    shareResult
	err    error
}

func startLocalShare(ctx context.Context, spec shareSpec) (*localShare, error) {
	run, err := runnerOf(spec.Scenario)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &localShare{rec: newShareRec(spec), fin: make(chan shareFinish, 1), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.res, s.err = run(ctx, s.rec, s.fin)
		s.rec.done.Store(true)
	}()
	return s, nil
}

func (s *localShare) progress() shareProgress { return s.rec.progress() }

func (s *localShare) finish(f shareFinish) error {
	select {
	case s.fin <- f:
		return nil
	default:
		return errors.New("bench: share finished twice")
	}
}

func (s *localShare) wait(ctx context.Context) (shareResult, error) {
	select {
	case <-s.done:
		return s.res, s.err
	case <-ctx.Done():
		s.cancel()
		<-s.done
		return s.res, errors.Join(s.err, ctx.Err())
	}
}

func (s *localShare) close() { s.cancel(); <-s.done }

// shareMsg is one line between a scenario-worker child and its parent.
type shareMsg struct {
	Progress *shareProgress `json:"progress,omitempty"`
	Result   *shareResult   `json:"result,omitempty"`
	Error    string         `json:"error,omitempty"`
	Finish   *shareFinish   `json:"finish,omitempty"`
}

// procShare runs in a scenario-worker child.
type procShare struct {
	*child // its mu guards last, res and resErr
	last   shareProgress
	res    *shareResult
	resErr string
}

func startProcShare(exe string, spec shareSpec, stderr io.Writer) (*procShare, error) {
	c, err := startChild(exe, "scenario-worker", spec, stderr)
	if err != nil {
		return nil, err
	}
	s := &procShare{child: c}
	s.read(s.line)
	return s, nil
}

// line takes one line from the child; last after its result.
func (s *procShare) line(b []byte) (bool, error) {
	var m shareMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Progress != nil {
		s.last = *m.Progress
	}
	if m.Result != nil {
		s.res, s.resErr = m.Result, m.Error
		s.last.Done = true
		return true, nil
	}
	return false, nil
}

func (s *procShare) progress() shareProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.last
	if s.readErr != nil {
		p.Ready, p.Done = true, true // a dead child will never say so
		if p.Err == "" {
			p.Err = s.readErr.Error()
		}
	}
	return p
}

func (s *procShare) finish(f shareFinish) error { return s.send(shareMsg{Finish: &f}) }

func (s *procShare) wait(ctx context.Context) (shareResult, error) {
	select {
	case <-s.readDone:
	case <-ctx.Done():
		s.close()
		<-s.readDone
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.res == nil {
		return shareResult{}, errors.Join(s.readErr, ctx.Err())
	}
	var err error
	if s.resErr != "" {
		err = errors.New(s.resErr)
	}
	return *s.res, err
}

// scenWorkerMain is the scenario-worker subcommand: one share, reported
// over stdout.
func scenWorkerMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var spec shareSpec
	if err := parseWorkerSpec("scenario-worker", "share spec (JSON), written by the orchestrator", args, stderr, &spec); err != nil {
		return err
	}
	if spec.Clients > MaxPerProcess {
		return fmt.Errorf("%w: a worker holds at most %d clients", ErrConfig, MaxPerProcess)
	}
	if err := validateWSURL("-url", spec.URL); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := startLocalShare(ctx, spec)
	if err != nil {
		return err
	}
	defer s.close()
	// stdin: one finish line, then EOF; EOF before the share is done
	// means the parent is gone.
	go func() {
		sc := lineScanner(stdin)
		for sc.Scan() {
			var m shareMsg
			if json.Unmarshal(sc.Bytes(), &m) == nil && m.Finish != nil {
				_ = s.finish(*m.Finish)
			}
		}
		cancel()
	}()
	send := lineWriter(stdout)
	tick := time.NewTicker(workerProgressEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			m := shareMsg{Result: &s.res}
			if s.err != nil {
				m.Error = s.err.Error()
			}
			return send(m)
		case <-tick.C:
			p := s.progress()
			if err := send(shareMsg{Progress: &p}); err != nil {
				return err
			}
		}
	}
}

// startShares starts one share per spec: in this process when there is
// one, else one scenario-worker child each.
func startShares(ctx context.Context, specs []shareSpec, stderr io.Writer) ([]share, error) {
	if len(specs) == 1 {
		s, err := startLocalShare(ctx, specs[0])
		if err != nil {
			return nil, err
		}
		return []share{s}, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var out []share
	for _, sp := range specs {
		s, err := startProcShare(exe, sp, stderr)
		if err != nil {
			return out, err
		}
		out = append(out, s)
	}
	return out, nil
}

// sharesProgress sums the shares' progress; Ready and Done hold when they
// hold for every share.
func sharesProgress(shares []share) shareProgress {
	p := shareProgress{Ready: true, Done: true}
	for _, s := range shares {
		q := s.progress()
		p.Ready = p.Ready && q.Ready
		p.Done = p.Done && q.Done
		p.add(q)
	}
	return p
}
