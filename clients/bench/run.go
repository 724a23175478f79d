package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// result summarizes a run.
type result struct {
	Opened  int
	Failed  int
	Samples []sample
	Elapsed time.Duration
}

// holder keeps the open connections; nothing per connection but the conn.
type holder struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (h *holder) add(c net.Conn) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns = append(h.conns, c)
	return len(h.conns)
}

func (h *holder) snapshot() []net.Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]net.Conn(nil), h.conns...)
}

func (h *holder) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		_ = c.Close()
	}
	h.conns = nil
}

// run opens the connections in batches up to each checkpoint, measuring
// the gateway between batches. Progress lines go to out.
func run(ctx context.Context, cfg Config, out io.Writer) (result, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()

	joinFrame, err := buildJoin(cfg)
	if err != nil {
		return result{}, err
	}
	var adm *admin
	if cfg.Admin != "" {
		adm = &admin{base: cfg.Admin, client: &http.Client{}}
	}
	h := &holder{}
	defer h.closeAll()

	var hbWG sync.WaitGroup
	hbCtx, hbStop := context.WithCancel(ctx)
	defer func() { hbStop(); hbWG.Wait() }()
	if cfg.Heartbeat > 0 {
		hbWG.Go(func() { heartbeats(hbCtx, h, cfg.Heartbeat) })
	}

	var res result
	measure := func(n int) error {
		if adm == nil {
			fmt.Fprintf(out, "%8d conns open\n", n)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.Settle):
		}
		s, err := adm.measure(ctx, n)
		if err != nil {
			return err
		}
		res.Samples = append(res.Samples, s)
		printSample(out, res.Samples)
		return nil
	}
	printHeader(out, adm != nil)
	if err := measure(0); err != nil {
		return res, err
	}
	dialer := newDialer(cfg)
	var rr atomic.Uint64
	for target := min(cfg.Checkpoint, cfg.Conns); ; target = min(target+cfg.Checkpoint, cfg.Conns) {
		opened, failed := ramp(ctx, cfg, dialer, &rr, joinFrame, h, target-len(h.snapshot()))
		res.Opened += opened
		res.Failed += failed
		if ctx.Err() != nil {
			res.Elapsed = time.Since(start)
			return res, fmt.Errorf("bench: stopped after %d conns: %w", res.Opened, ctx.Err())
		}
		if err := measure(len(h.snapshot())); err != nil {
			res.Elapsed = time.Since(start)
			return res, err
		}
		if target >= cfg.Conns {
			break
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// buildJoin encodes the V2 join every connection sends (ref and join_ref
// "1": each connection has its own ref space).
func buildJoin(cfg Config) ([]byte, error) {
	payload := cfg.JoinPayload
	if payload == "" {
		payload = "{}"
	}
	if !json.Valid([]byte(payload)) {
		return nil, fmt.Errorf("%w: -join-payload is not JSON", ErrConfig)
	}
	topic, _ := json.Marshal(cfg.Topic)
	return []byte(`["1","1",` + string(topic) + `,"phx_join",` + payload + `]`), nil
}

type dialFunc func(ctx context.Context, idx uint64) (net.Conn, error)

func newDialer(cfg Config) dialFunc {
	u := cfg.URL + "?vsn=2.0.0"
	return func(ctx context.Context, idx uint64) (net.Conn, error) {
		nd := &net.Dialer{Timeout: cfg.DialTimeout}
		if len(cfg.LocalIPs) > 0 {
			nd.LocalAddr = &net.TCPAddr{IP: cfg.LocalIPs[idx%uint64(len(cfg.LocalIPs))]}
		}
		d := ws.Dialer{Timeout: cfg.DialTimeout, NetDial: nd.DialContext}
		conn, br, _, err := d.Dial(ctx, u)
		if err != nil {
			return nil, err
		}
		if br != nil {
			ws.PutReader(br) // a fresh socket has no server frames before our join
		}
		return conn, nil
	}
}

// ramp opens n connections at cfg.Rate with cfg.Concurrency dials in
// flight, each joined to the topic.
func ramp(ctx context.Context, cfg Config, dial dialFunc, rr *atomic.Uint64, join []byte, h *holder, n int) (opened, failed int) {
	if n <= 0 {
		return 0, 0
	}
	var ok, bad atomic.Int64
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range min(cfg.Concurrency, n) {
		wg.Go(func() {
			for range jobs {
				c, err := dialAndJoin(ctx, cfg, dial, rr.Add(1), join)
				if err != nil {
					bad.Add(1)
					continue
				}
				h.add(c)
				ok.Add(1)
			}
		})
	}
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	t := time.NewTicker(max(interval, time.Microsecond))
loop:
	for range n {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
	}
	t.Stop()
	close(jobs)
	wg.Wait()
	return int(ok.Load()), int(bad.Load())
}

func dialAndJoin(ctx context.Context, cfg Config, dial dialFunc, idx uint64, join []byte) (net.Conn, error) {
	c, err := dial(ctx, idx)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(cfg.DialTimeout))
	if err := wsutil.WriteClientMessage(c, ws.OpText, append([]byte(nil), join...)); err != nil {
		c.Close()
		return nil, err
	}
	data, _, err := wsutil.ReadServerData(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	var reply [5]json.RawMessage
	var body struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(data, &reply) != nil || json.Unmarshal(reply[4], &body) != nil || body.Status != "ok" {
		c.Close()
		return nil, fmt.Errorf("bench: join refused: %s", data)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// heartbeats sends a heartbeat on every held connection each interval from
// this one goroutine. Writes are small and the kernel buffer has room, so
// they do not block for long; a short deadline bounds a stuck one.
func heartbeats(ctx context.Context, h *holder, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var n uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range h.snapshot() {
			n++
			frame := []byte(`[null,"` + strconv.FormatUint(n, 10) + `","phoenix","heartbeat",{}]`)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = wsutil.WriteClientMessage(c, ws.OpText, frame)
		}
	}
}

func printHeader(out io.Writer, measured bool) {
	if measured {
		fmt.Fprintf(out, "%8s %12s %14s %12s\n", "conns", "rss_MiB", "bytes/conn", "goroutines")
	}
}

func printSample(out io.Writer, s []sample) {
	last := s[len(s)-1]
	per := "-"
	if last.Conns > 0 {
		per = strconv.FormatFloat((last.RSS-s[0].RSS)/float64(last.Conns), 'f', 0, 64)
	}
	fmt.Fprintf(out, "%8d %12.1f %14s %12.0f\n", last.Conns, last.RSS/(1<<20), per, last.Goroutines)
}

// summary prints the slope and goroutine figures.
func summary(out io.Writer, r result) {
	fmt.Fprintf(out, "opened %d, failed %d, in %v\n", r.Opened, r.Failed, r.Elapsed.Round(time.Millisecond))
	if s, ok := slope(r.Samples); ok {
		fmt.Fprintf(out, "rss slope: %.0f bytes/conn (least squares over %d checkpoints)\n", s, len(r.Samples))
	}
	if n := len(r.Samples); n >= 2 {
		fmt.Fprintf(out, "goroutines: %.0f at 0 conns, %.0f at %d conns\n", r.Samples[0].Goroutines, r.Samples[n-1].Goroutines, r.Samples[n-1].Conns)
	}
}
