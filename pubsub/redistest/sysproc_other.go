//go:build !linux

package redistest

import "syscall"

// sysProcAttr has no death signal outside Linux; t.Cleanup still kills every
// server a test started, but a test binary killed outright can leak one.
func sysProcAttr() *syscall.SysProcAttr { return nil }
