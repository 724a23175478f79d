//go:build linux && race

package gateway

import "golang.org/x/sys/unix"

// rawRead is unix.Read in race builds: it tells the race detector that
// the kernel wrote the buffer, so a handler keeping a slice of the
// poller's shared read buffer past its call is still reported by -race
// tests (a raw system call would hide that write).
func rawRead(fd int, p []byte) (int, error) { return unix.Read(fd, p) }
