package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric names read from the gateway's /metrics.
const (
	metricRSS        = "process_resident_memory_bytes"
	metricGoroutines = "go_goroutines"
	// maxMetricsBytes bounds a /metrics body we are willing to read.
	maxMetricsBytes = 16 << 20
	// adminTimeout bounds one admin request (a forced GC of a big heap
	// takes a while).
	adminTimeout = 30 * time.Second
)

// ErrMetricMissing is returned when /metrics lacks a needed sample.
var ErrMetricMissing = errors.New("bench: metric missing")

// sample is one checkpoint measurement.
type sample struct {
	Conns      int
	RSS        float64 // bytes
	Goroutines float64
}

// parseMetrics returns the values of the unlabelled samples named in want
// from Prometheus text exposition.
func parseMetrics(r io.Reader, want ...string) (map[string]float64, error) {
	out := make(map[string]float64, len(want))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		for _, w := range want {
			if name == w {
				// A timestamp may follow the value.
				val, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
				f, err := strconv.ParseFloat(val, 64)
				if err != nil {
					return nil, fmt.Errorf("bench: %s value %q: %w", name, val, err)
				}
				out[name] = f
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, w := range want {
		if _, ok := out[w]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrMetricMissing, w)
		}
	}
	return out, nil
}

// admin talks to the gateway's admin listener.
type admin struct {
	base   string
	client *http.Client
}

func (a admin) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetricsBytes))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// measure forces a GC in the gateway (the heap profile endpoint with gc=1)
// and reads RSS and goroutines.
func (a admin) measure(ctx context.Context, conns int) (sample, error) {
	if _, err := a.get(ctx, "/debug/pprof/heap?gc=1"); err != nil {
		return sample{}, fmt.Errorf("forcing GC: %w", err)
	}
	body, err := a.get(ctx, "/metrics")
	if err != nil {
		return sample{}, err
	}
	m, err := parseMetrics(strings.NewReader(string(body)), metricRSS, metricGoroutines)
	if err != nil {
		return sample{}, err
	}
	return sample{Conns: conns, RSS: m[metricRSS], Goroutines: m[metricGoroutines]}, nil
}

// slope is the least-squares slope of RSS over connections, in bytes per
// connection; ok is false with fewer than two distinct x values.
func slope(s []sample) (float64, bool) {
	n := float64(len(s))
	if len(s) < 2 {
		return 0, false
	}
	var sx, sy, sxx, sxy float64
	for _, p := range s {
		x := float64(p.Conns)
		sx += x
		sy += p.RSS
		sxx += x * x
		sxy += x * p.RSS
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0, false
	}
	return (n*sxy - sx*sy) / den, true
}
