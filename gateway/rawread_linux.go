//go:build linux && !race

package gateway

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead reads a non-blocking socket. It never blocks, so it skips the
// runtime's bookkeeping for a system call that may (entering it lets the
// runtime's monitor hand the poller's P to another thread when the call
// is slow to return on a busy machine, which then costs a thread switch
// on the way out). Race builds use rawread_race_linux.go.
func rawRead(fd int, p []byte) (int, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}
