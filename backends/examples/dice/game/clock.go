package game

import "time"

// Clock is the game's source of time: round deadlines, the ledger's key
// ages and the broadcast backoff all read it, so a test can drive rounds
// without waiting. It must be safe for concurrent use.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that delivers on C once d has passed (at
	// once when d <= 0).
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer made by a Clock.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// systemClock is the wall clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }
