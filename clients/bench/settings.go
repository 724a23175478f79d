package main

import (
	"fmt"
	"math"
	"net"
	"time"
)

// Settings the bench's configurations share (Config, PublishConfig,
// ScenConfig): filling defaults and the checks of the flags they have in
// common, with one wording for every command.

// orDefault sets *v to d when *v is zero: a setting left out takes its
// default.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// runOps is the number of operations of a run: count when set, else
// ceil(rate × d).
func runOps(count int, rate float64, d time.Duration) int {
	if count > 0 {
		return count
	}
	return int(math.Ceil(rate * d.Seconds()))
}

// validateLocalIPs refuses a source address that is not loopback.
func validateLocalIPs(ips []net.IP) error {
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("%w: -local-ips: %s is not a loopback address", ErrConfig, ip)
		}
	}
	return nil
}

// validateLength checks that -count or -duration is set and neither is
// negative.
func validateLength(count int, d time.Duration) error {
	if count < 0 || d < 0 || (count == 0 && d == 0) {
		return fmt.Errorf("%w: -duration or -count must be > 0", ErrConfig)
	}
	return nil
}

// validateEvent checks -event's length: 1..255 bytes.
func validateEvent(event string) error {
	if event == "" || len(event) > 255 {
		return fmt.Errorf("%w: -event must be 1..255 bytes", ErrConfig)
	}
	return nil
}

// validatePayload checks -payload against MinPayloadBytes..MaxPayloadBytes.
func validatePayload(n int) error {
	if n < MinPayloadBytes || n > MaxPayloadBytes {
		return fmt.Errorf("%w: -payload %d out of %d..%d", ErrConfig, n, MinPayloadBytes, MaxPayloadBytes)
	}
	return nil
}

// validatePerProcess checks -per-process against 0..MaxPerProcess.
func validatePerProcess(n int) error {
	if n < 0 || n > MaxPerProcess {
		return fmt.Errorf("%w: -per-process %d out of 0..%d", ErrConfig, n, MaxPerProcess)
	}
	return nil
}
