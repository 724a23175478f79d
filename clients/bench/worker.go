package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
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
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu      sync.Mutex
	last    groupProgress
	readErr error

	results  chan groupResult
	readDone chan struct{}
	waitOnce sync.Once
	waitErr  error
}

var _ group = (*procGroup)(nil)

// startProcGroup starts a child holding spec's subscribers.
func startProcGroup(ctx context.Context, exe string, spec groupSpec, stderr io.Writer) (*procGroup, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "broadcast-worker", "-spec", string(b))
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: starting worker: %w", err)
	}
	g := &procGroup{cmd: cmd, stdin: stdin, results: make(chan groupResult, 1), readDone: make(chan struct{})}
	go func() {
		defer close(g.readDone)
		g.read(stdout)
	}()
	return g, nil
}

func (g *procGroup) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxWorkerLine)
	for sc.Scan() {
		var m workerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			g.setErr(fmt.Errorf("bench: worker %d: bad line: %w", g.cmd.Process.Pid, err))
			continue
		}
		if m.Progress != nil {
			g.mu.Lock()
			g.last = *m.Progress
			g.mu.Unlock()
		}
		if m.Result != nil {
			g.results <- *m.Result
			return
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	g.setErr(fmt.Errorf("bench: worker %d ended without a result: %w", g.cmd.Process.Pid, err))
}

func (g *procGroup) setErr(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readErr == nil {
		g.readErr = err
	}
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
	b, err := json.Marshal(f)
	if err != nil {
		return groupResult{}, err
	}
	if _, err := g.stdin.Write(append(b, '\n')); err != nil {
		return groupResult{}, fmt.Errorf("bench: worker %d: %w", g.cmd.Process.Pid, err)
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

// close ends the child: EOF on its stdin, then a kill if it lingers.
func (g *procGroup) close() {
	g.waitOnce.Do(func() {
		g.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- g.cmd.Wait() }()
		t := time.NewTimer(workerExitTimeout)
		defer t.Stop()
		select {
		case g.waitErr = <-done:
		case <-t.C:
			_ = g.cmd.Process.Kill()
			g.waitErr = <-done
		}
	})
}

// workerMain is the broadcast-worker subcommand.
func workerMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("broadcast-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specJSON := fs.String("spec", "", "group spec (JSON), written by the broadcast orchestrator")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var spec groupSpec
	if err := json.Unmarshal([]byte(*specJSON), &spec); err != nil {
		return fmt.Errorf("%w: -spec: %v", ErrConfig, err)
	}
	if spec.Subs > MaxPerProcess {
		return fmt.Errorf("%w: a worker holds at most %d subscribers", ErrConfig, MaxPerProcess)
	}
	g, err := startSubGroup(ctx, spec)
	if err != nil {
		return err
	}
	defer g.close()

	var outMu sync.Mutex
	send := func(m workerMsg) error {
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		outMu.Lock()
		defer outMu.Unlock()
		_, err = stdout.Write(append(b, '\n'))
		return err
	}
	fins := make(chan finishSpec, 1)
	inErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), maxWorkerLine)
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
