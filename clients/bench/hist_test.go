package main

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// histRelErr is the stated bound: half a bucket over its lower bound.
const histRelErr = 1.0 / (2 * histSub)

func TestHistIndexBounds(t *testing.T) {
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 123456789, math.MaxInt64} {
		i := histIndex(v)
		lo, w := histBounds(i)
		if i < 0 || i >= histBuckets || v < lo || v-lo >= w {
			t.Fatalf("v=%d: index %d bounds [%d, +%d)", v, i, lo, w)
		}
	}
	// Buckets tile the line: each starts where the previous ends.
	for i := 1; i < histBuckets; i++ {
		plo, pw := histBounds(i - 1)
		lo, _ := histBounds(i)
		if plo+pw != lo {
			t.Fatalf("bucket %d starts at %d, previous ends at %d", i, lo, plo+pw)
		}
	}
}

func TestHistQuantiles(t *testing.T) {
	tests := []struct {
		name string
		gen  func(i int) int64
		n    int
	}{
		{"small exact", func(i int) int64 { return int64(i % 100) }, 10_000},
		{"uniform µs", func(i int) int64 { return int64(1 + i*37%1_000_000) }, 100_000},
		{"log-spread ns", func(i int) int64 { return int64(math.Exp(float64(i%2000) / 100)) }, 50_000},
		{"random", func(int) int64 { return rand.Int64N(50_000_000) }, 100_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newHistRecorder()
			vals := make([]int64, tc.n)
			for i := range vals {
				vals[i] = tc.gen(i)
				r.Record(vals[i])
			}
			sort.Slice(vals, func(a, b int) bool { return vals[a] < vals[b] })
			h := r.Snapshot()
			if h.N != uint64(tc.n) || h.Min != vals[0] || h.Max != vals[tc.n-1] {
				t.Fatalf("n %d min %d max %d; want %d %d %d", h.N, h.Min, h.Max, tc.n, vals[0], vals[tc.n-1])
			}
			for _, q := range []float64{0.001, 0.5, 0.9, 0.99, 0.999, 1} {
				want := vals[int(math.Ceil(q*float64(tc.n)))-1]
				got := h.Quantile(q)
				if diff := math.Abs(float64(got - want)); diff > histRelErr*float64(want)+0.5 {
					t.Errorf("q%.3f = %d, want %d ± %.2f%%", q, got, want, 100*histRelErr)
				}
			}
		})
	}
}

func TestHistMergeAndJSON(t *testing.T) {
	a, b, all := newHistRecorder(), newHistRecorder(), newHistRecorder()
	for i := range 10_000 {
		v := int64(i * 997 % 3_000_000)
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var m hist
	m.Merge(a.Snapshot())
	// Through JSON, as worker results travel.
	js, err := json.Marshal(b.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var bh hist
	if err := json.Unmarshal(js, &bh); err != nil {
		t.Fatal(err)
	}
	m.Merge(bh)
	m.Merge(hist{}) // empty is a no-op
	want := all.Snapshot()
	if m.N != want.N || m.Sum != want.Sum || m.Min != want.Min || m.Max != want.Max || len(m.Counts) != len(want.Counts) {
		t.Fatalf("merged %+v\nwant %+v", m, want)
	}
	for i := range m.Counts {
		if m.Counts[i] != want.Counts[i] {
			t.Fatalf("bucket %d: %v, want %v", i, m.Counts[i], want.Counts[i])
		}
	}
	if (hist{}).Quantile(0.5) != 0 || (hist{}).Mean() != 0 {
		t.Fatal("empty histogram is not zero")
	}
}

func TestHistNegativeIsZero(t *testing.T) {
	r := newHistRecorder()
	r.Record(-5)
	if h := r.Snapshot(); h.Min != 0 || h.Max != 0 || h.Quantile(1) != 0 {
		t.Fatalf("%+v", h)
	}
}
