package main

// seqWindowMax bounds the out-of-order window one subscriber's tracker
// keeps, in sequence numbers (8 KiB of bits). A number this far behind the
// newest one is given up on: it stays missing, and if it still arrives it
// is counted as a duplicate. At bench rates (tens to thousands of events
// per second) a run never gets there.
const seqWindowMax = 1 << 16

// seqTracker counts the distinct and duplicate sequence numbers (0, 1, 2,
// …) one subscriber receives. In-order delivery keeps it at one word; a gap
// grows a bit window above the lowest missing number, bounded by
// seqWindowMax. Not safe for concurrent use: one reader goroutine owns it.
type seqTracker struct {
	// base: every number below it is settled (received, or given up).
	base int64
	// bits[i] bit j is number base+64i+j.
	bits     []uint64
	next     int64 // one past the highest number seen
	distinct int64
	dups     int64
	late     int64 // new numbers that arrived after a higher one
	invalid  int64 // negative numbers
	// order is a digest (FNV-1a over the numbers) of the order in which
	// new numbers arrived: subscribers that got the same numbers in the
	// same order have the same digest.
	order uint64
}

// FNV-1a 64-bit parameters, for the order digest.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// Observe records n and reports whether it was new.
func (t *seqTracker) Observe(n int64) bool {
	if n < 0 {
		t.invalid++
		return false
	}
	if n < t.base {
		t.dups++
		return false
	}
	if n-t.base >= seqWindowMax {
		t.drop(int((n-t.base-seqWindowMax)/64) + 1)
	}
	off := n - t.base
	w, b := int(off/64), uint(off%64)
	for len(t.bits) <= w {
		t.bits = append(t.bits, 0)
	}
	if t.bits[w]&(1<<b) != 0 {
		t.dups++
		return false
	}
	t.bits[w] |= 1 << b
	t.distinct++
	if t.distinct == 1 {
		t.order = fnvOffset64
	}
	t.order = (t.order ^ uint64(n)) * fnvPrime64
	if n < t.next {
		t.late++
	} else {
		t.next = n + 1
	}
	k := 0
	for k < len(t.bits) && t.bits[k] == ^uint64(0) {
		k++
	}
	if k > 0 {
		t.drop(k)
	}
	return true
}

// drop settles the first k words of the window (k may exceed it).
func (t *seqTracker) drop(k int) {
	n := 0
	if k < len(t.bits) {
		n = copy(t.bits, t.bits[k:])
	}
	t.bits = t.bits[:n]
	t.base += int64(k) * 64
}

// Has reports whether n was received. A number given up on (see
// seqWindowMax) reads as received.
func (t *seqTracker) Has(n int64) bool {
	if n < 0 {
		return false
	}
	if n < t.base {
		return true
	}
	off := n - t.base
	w := int(off / 64)
	return w < len(t.bits) && t.bits[w]&(1<<uint(off%64)) != 0
}

// Distinct is the count of distinct numbers received.
func (t *seqTracker) Distinct() int64 { return t.distinct }

// Dups is the count of numbers received more than once (each extra copy
// counts).
func (t *seqTracker) Dups() int64 { return t.dups }

// Order is the digest of the order in which new numbers arrived (0 when
// none did).
func (t *seqTracker) Order() uint64 { return t.order }

// Late is the count of numbers that arrived after a higher one.
func (t *seqTracker) Late() int64 { return t.late }

// Missing is how many of 0..published-1 never arrived, assuming only those
// were published.
func (t *seqTracker) Missing(published int64) int64 {
	return max(published-t.distinct, 0)
}
