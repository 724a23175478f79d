// Package testport picks loopback TCP ports for tests and tools that must
// name a port before the process that listens on it starts (a child
// process, Redis, Prometheus).
//
// A port taken by listening on port 0 and closing again comes from the
// kernel's ephemeral range, where any outgoing connection of any process
// can take it before the child binds it: under a load test that opens
// thousands of connections this happens often enough to fail test runs.
// Free picks below that range instead, where the kernel never allocates
// source ports on its own, so only another explicit pick can collide.
//
// Everything here is safe for concurrent use.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// low is the lowest port Free picks.
const low = 10000

var (
	mu    sync.Mutex
	given = map[int]bool{} // ports this process handed out
)

// Free returns a port of 127.0.0.1 that nothing listens on now, outside
// the ephemeral range and never handed out before by this process.
func Free() (int, error) {
	hi := ephemeralLow() - 1
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		p := low + rand.IntN(hi-low+1)
		if given[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		given[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("testport: no free port in %d-%d", low, hi)
}

// Addr is Free as "127.0.0.1:port".
func Addr() (string, error) {
	p, err := Free()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux:
// net.ipv4.ip_local_port_range; elsewhere the IANA range's 49152).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > low+1000 {
				return n
			}
		}
	}
	return 49152
}
