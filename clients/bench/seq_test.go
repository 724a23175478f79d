package main

import "testing"

func TestSeqTracker(t *testing.T) {
	tests := []struct {
		name      string
		in        []int64
		published int64
		distinct  int64
		dups      int64
		late      int64
		missing   int64
		has       []int64
		hasNot    []int64
	}{
		{"in order", seqRange(0, 200), 200, 200, 0, 0, 0, []int64{0, 63, 64, 199}, []int64{200, -1}},
		{"gap", append(seqRange(0, 10), seqRange(11, 100)...), 100, 99, 0, 0, 1, []int64{9, 11}, []int64{10}},
		{"tail missing", seqRange(0, 50), 60, 50, 0, 0, 10, nil, []int64{50, 59}},
		{"duplicates", []int64{0, 1, 1, 2, 0, 2, 2}, 3, 3, 4, 0, 0, nil, nil},
		{"reordered", []int64{1, 0, 3, 2, 5, 4}, 6, 6, 0, 3, 0, []int64{0, 5}, nil},
		{"reordered across words", []int64{100, 5, 64, 0, 63}, 101, 5, 0, 4, 96, []int64{5, 64, 100}, []int64{1, 99}},
		{"late duplicate after settle", append(seqRange(0, 130), 3, 128), 130, 130, 2, 0, 0, nil, nil},
		{"negative", []int64{-1, 0}, 1, 1, 0, 0, 0, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s seqTracker
			for _, n := range tc.in {
				s.Observe(n)
			}
			if s.Distinct() != tc.distinct || s.Dups() != tc.dups || s.Late() != tc.late || s.Missing(tc.published) != tc.missing {
				t.Fatalf("distinct %d dups %d late %d missing %d; want %d %d %d %d",
					s.Distinct(), s.Dups(), s.Late(), s.Missing(tc.published), tc.distinct, tc.dups, tc.late, tc.missing)
			}
			for _, n := range tc.has {
				if !s.Has(n) {
					t.Errorf("Has(%d) = false", n)
				}
			}
			for _, n := range tc.hasNot {
				if s.Has(n) {
					t.Errorf("Has(%d) = true", n)
				}
			}
		})
	}
}

// TestSeqTrackerBounded: a number missing forever does not grow the window
// past seqWindowMax; it stays missing.
func TestSeqTrackerBounded(t *testing.T) {
	var s seqTracker
	const n = 3 * seqWindowMax
	for i := int64(1); i < n; i++ {
		s.Observe(i)
	}
	if len(s.bits) > seqWindowMax/64+1 {
		t.Fatalf("window grew to %d words", len(s.bits))
	}
	if s.Missing(n) != 1 || s.Distinct() != n-1 {
		t.Fatalf("missing %d distinct %d", s.Missing(n), s.Distinct())
	}
	// Given up: a very late arrival counts as a duplicate.
	if s.Observe(0) || s.Dups() != 1 {
		t.Fatalf("late 0 accepted; dups %d", s.Dups())
	}
}

func seqRange(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
