package redistest

import "syscall"

// sysProcAttr makes the kernel SIGKILL a redis-server when the test binary
// dies, so an interrupted or crashed `go test` leaks no server. Pdeathsig
// fires when the forking OS thread exits, not the process; Go only retires
// threads of goroutines that exit while locked to one, which Start never
// does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
