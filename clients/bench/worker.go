package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Worker processes. When a run needs more subscribers than one process may
// hold, the orchestrator re-executes its own binary as
//
//	phxgate-bench broadcast-worker -spec '<groupSpec JSON>'
//
// and talks to each child over its standard streams, one JSON object per
// line:
//
//	child → parent (stdout): {"progress":{…}} every workerProgressEvery,
//	                         then one {"result":{…}} before exiting
//	parent → child (stdin):  one finishSpec; EOF without it aborts the
//	                         child (the parent died or gave up)
//
// The child's stderr is the parent's.

const (
	// workerProgressEvery is the interval of a child's progress lines.
	workerProgressEvery = 50 * time.Millisecond
	// workerFinishTimeout bounds the wait for a child's result.
	workerFinishTimeout = 60 * time.Second
	// workerExitTimeout bounds the wait for a child to exit before it is
	// killed.
	workerExitTimeout = 5 * time.Second
	// childEnv marks a child process (tests use it to run the test binary
	// as a worker).
	childEnv = "PHXGATE_BENCH_CHILD"
	// maxWorkerLine bounds one line from a child (a histogram is a few
	// KB; the bound is generous).
	maxWorkerLine = 16 << 20
)

// workerMsg is one line from a child.
type workerMsg struct {
	Progress *groupProgress `json:"progress,omitempty"`
	Result   *groupResult   `json:"result,omitempty"`
}

// procGroup is a group held by a child process.
type procGroup struct {
	*child // its mu guards last

	last groupProgress

	results chan groupResult
}

var _ group = (*procGroup)(nil)

// startProcGroup starts a child holding spec's subscribers.
func startProcGroup(ctx context.Context, exe string, spec groupSpec, stderr io.Writer) (*procGroup, error) {
	c, err := startChild(exe, "broadcast-worker", spec, stderr)
	if err != nil {
		return nil, err
	}
	g := &procGroup{child: c, results: make(chan groupResult, 1)}
	g.read(g.line)
	return g, nil
}

// line takes one line from the child; last after its result.
func (g *procGroup) line(b []byte) (bool, error) {
	var m workerMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return false, err
	}
	if m.Progress != nil {
		g.mu.Lock()
		g.last = *m.Progress
		g.mu.Unlock()
	}
	if m.Result != nil {
		g.results <- *m.Result
		return true, nil
	}
	return false, nil
}

func (g *procGroup) progress() groupProgress {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.last
	if g.readErr != nil {
		// A dead child will never report ready; say so.
		p.Ready = true
		if p.Err == "" {
			p.Err = g.readErr.Error()
		}
	}
	return p
}

func (g *procGroup) finish(f finishSpec) (groupResult, error) {
	defer g.close()
	if err := g.send(f); err != nil {
		return groupResult{}, err
	}
	t := time.NewTimer(workerFinishTimeout)
	defer t.Stop()
	select {
	case r := <-g.results:
		return r, nil
	case <-g.readDone:
		select {
		case r := <-g.results:
			return r, nil
		default:
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		return groupResult{}, g.readErr
	case <-t.C:
		return groupResult{}, fmt.Errorf("bench: worker %d: no result within %v", g.cmd.Process.Pid, workerFinishTimeout)
	}
}

// workerMain is the broadcast-worker subcommand.
func workerMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var spec groupSpec
	if err := parseWorkerSpec("broadcast-worker", "group spec (JSON), written by the broadcast orchestrator", args, stderr, &spec); err != nil {
		return err
	}
	if spec.Subs > MaxPerProcess {
		return fmt.Errorf("%w: a worker holds at most %d subscribers", ErrConfig, MaxPerProcess)
	}
	g, err := startSubGroup(ctx, spec)
	if err != nil {
		return err
	}
	defer g.close()

	send := lineWriter(stdout)
	fins := make(chan finishSpec, 1)
	inErr := make(chan error, 1)
	go func() {
		sc := lineScanner(stdin)
		if !sc.Scan() {
			inErr <- errors.Join(errors.New("bench: worker: stdin closed before the finish"), sc.Err())
			return
		}
		var f finishSpec
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			inErr <- fmt.Errorf("bench: worker: bad finish line: %w", err)
			return
		}
		fins <- f
	}()
	tick := time.NewTicker(workerProgressEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-inErr:
			return err
		case f := <-fins:
			r, err := g.finish(f)
			if err != nil {
				return err
			}
			return send(workerMsg{Result: &r})
		case <-tick.C:
			p := g.progress()
			p.CPU, _ = procCPU(os.Getpid())
			if err := send(workerMsg{Progress: &p}); err != nil {
				return err
			}
		}
	}
}
