package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// child is a worker process: this binary re-executed with a worker
// subcommand (broadcast-worker, scenario-worker), spoken to one JSON
// object a line over its standard streams. Its stderr is the parent's.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.Reader
	once   sync.Once

	// readDone closes when the goroutine reading stdout (read) returns.
	readDone chan struct{}

	// mu guards readErr, and the fields of the types that embed child.
	mu      sync.Mutex
	readErr error
}

// setErr keeps the first error reading the child.
func (c *child) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr == nil {
		c.readErr = err
	}
}

// startChild starts exe's worker subcommand with spec as its -spec JSON,
// marked as a child (childEnv).
func startChild(exe, subcommand string, spec any, stderr io.Writer) (*child, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, subcommand, "-spec", string(b))
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
	return &child{cmd: cmd, stdin: stdin, stdout: stdout, readDone: make(chan struct{})}, nil
}

// read starts the goroutine that scans the child's stdout with line,
// keeping the first error in readErr; readDone closes when it returns.
// Call once, after the embedding type is ready for line.
func (c *child) read(line func([]byte) (last bool, err error)) {
	go func() {
		defer close(c.readDone)
		if err := c.scan(line, c.setErr); err != nil {
			c.setErr(err)
		}
	}()
}

// scan hands each line of the child's stdout to line until it reports
// the last one (then nil) or the stream ends (then an error saying the
// child ended without a result). A line that is not JSON goes to bad.
// One goroutine only.
func (c *child) scan(line func([]byte) (last bool, err error), bad func(error)) error {
	sc := lineScanner(c.stdout)
	for sc.Scan() {
		last, err := line(sc.Bytes())
		if err != nil {
			bad(fmt.Errorf("bench: worker %d: bad line: %w", c.cmd.Process.Pid, err))
			continue
		}
		if last {
			return nil
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("bench: worker %d ended without a result: %w", c.cmd.Process.Pid, err)
}

// send writes v as one line to the child's stdin.
func (c *child) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := c.stdin.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("bench: worker %d: %w", c.cmd.Process.Pid, err)
	}
	return nil
}

// close ends the child: EOF on its stdin, then a kill if it lingers past
// workerExitTimeout. Safe to call more than once.
func (c *child) close() {
	c.once.Do(func() {
		c.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- c.cmd.Wait() }()
		t := time.NewTimer(workerExitTimeout)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			_ = c.cmd.Process.Kill()
			<-done
		}
	})
}

// lineScanner reads one JSON object a line (a worker stream, a results
// file), a line at most maxWorkerLine bytes.
func lineScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxWorkerLine)
	return sc
}

// lineWriter returns a function that writes v as one JSON line to w; it
// may be called from several goroutines.
func lineWriter(w io.Writer) func(v any) error {
	var mu sync.Mutex
	return func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		_, err = w.Write(append(b, '\n'))
		return err
	}
}

// parseWorkerSpec parses a worker subcommand's -spec flag into spec.
func parseWorkerSpec(name, usage string, args []string, stderr io.Writer, spec any) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	specJSON := fs.String("spec", "", usage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(*specJSON), spec); err != nil {
		return fmt.Errorf("%w: -spec: %v", ErrConfig, err)
	}
	return nil
}
