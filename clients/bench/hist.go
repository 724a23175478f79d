package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Histogram layout: values below histSub are counted exactly; from there
// each power of two is split into histSub equal buckets, so a bucket is at
// most 1/histSub of its lower bound wide. Quantiles report the bucket's
// midpoint, so their relative error is at most 1/(2·histSub) ≈ 0.4%.
const (
	histSubBits = 7
	histSub     = 1 << histSubBits // 128
	// histBuckets covers every non-negative int64.
	histBuckets = histSub + (64-histSubBits-1)*histSub
)

// histIndex is the bucket of v (v ≥ 0).
func histIndex(v int64) int {
	if v < histSub {
		return int(max(v, 0))
	}
	u := uint64(v)
	shift := bits.Len64(u) - histSubBits - 1 // top histSubBits+1 bits kept
	top := u >> uint(shift)                  // in [histSub, 2·histSub)
	return histSub + shift*histSub + int(top-histSub)
}

// histBounds is the lower bound and width of bucket i.
func histBounds(i int) (lower, width int64) {
	if i < histSub {
		return int64(i), 1
	}
	shift := (i - histSub) / histSub
	top := int64(histSub + (i-histSub)%histSub)
	return top << uint(shift), 1 << uint(shift)
}

// histRecorder is the goroutine-safe side: Record may be called from any
// number of goroutines at once. It holds ~60 KB of counters, so keep one
// per process, not one per connection.
type histRecorder struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Int64
	min    atomic.Int64 // valid when n > 0; starts at MaxInt64
	max    atomic.Int64
}

func newHistRecorder() *histRecorder {
	r := &histRecorder{}
	r.min.Store(math.MaxInt64)
	return r
}

// Record counts one value; negative values count as 0.
func (r *histRecorder) Record(v int64) {
	v = max(v, 0)
	r.counts[histIndex(v)].Add(1)
	r.n.Add(1)
	r.sum.Add(v)
	for cur := r.max.Load(); v > cur && !r.max.CompareAndSwap(cur, v); cur = r.max.Load() {
	}
	for cur := r.min.Load(); v < cur && !r.min.CompareAndSwap(cur, v); cur = r.min.Load() {
	}
}

// Snapshot copies the counters. Taken while Record runs, it is a
// consistent enough view for progress, not an atomic one.
func (r *histRecorder) Snapshot() hist {
	h := hist{N: r.n.Load(), Sum: r.sum.Load(), Max: r.max.Load()}
	if h.N > 0 {
		h.Min = r.min.Load()
	}
	for i := range r.counts {
		if c := r.counts[i].Load(); c > 0 {
			h.Counts = append(h.Counts, [2]uint64{uint64(i), c})
		}
	}
	return h
}

// hist is a sparse, mergeable, JSON-friendly histogram snapshot. It is a
// plain value: not safe for concurrent use.
type hist struct {
	// Counts are (bucket index, count) pairs in increasing index order.
	Counts [][2]uint64 `json:"counts"`
	N      uint64      `json:"n"`
	Sum    int64       `json:"sum"`
	Min    int64       `json:"min"`
	Max    int64       `json:"max"`
}

// Merge adds o to h.
func (h *hist) Merge(o hist) {
	if o.N == 0 {
		return
	}
	if h.N == 0 || o.Min < h.Min {
		h.Min = o.Min
	}
	h.Max = max(h.Max, o.Max)
	h.N += o.N
	h.Sum += o.Sum
	out := make([][2]uint64, 0, len(h.Counts)+len(o.Counts))
	i, j := 0, 0
	for i < len(h.Counts) || j < len(o.Counts) {
		switch {
		case j == len(o.Counts) || (i < len(h.Counts) && h.Counts[i][0] < o.Counts[j][0]):
			out = append(out, h.Counts[i])
			i++
		case i == len(h.Counts) || o.Counts[j][0] < h.Counts[i][0]:
			out = append(out, o.Counts[j])
			j++
		default:
			out = append(out, [2]uint64{h.Counts[i][0], h.Counts[i][1] + o.Counts[j][1]})
			i++
			j++
		}
	}
	h.Counts = out
}

// Quantile is the nearest-rank q-quantile (0 < q ≤ 1): the value of the
// ceil(q·N)-th smallest sample, within the bucket error. 0 when empty.
func (h hist) Quantile(q float64) int64 {
	if h.N == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.N)))
	rank = min(max(rank, 1), h.N)
	var cum uint64
	for _, c := range h.Counts {
		cum += c[1]
		if cum >= rank {
			lower, width := histBounds(int(c[0]))
			v := lower + width/2
			return min(max(v, h.Min), h.Max)
		}
	}
	return h.Max
}

// Mean is the exact mean; 0 when empty.
func (h hist) Mean() float64 {
	if h.N == 0 {
		return 0
	}
	return float64(h.Sum) / float64(h.N)
}
