package admission

import (
	"net/netip"
	"strings"
)

// parseHost accepts "ip", "ip:port" and "[ipv6]:port", and unmaps
// IPv4-mapped IPv6 so both spellings of one client share a key.
func parseHost(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

func (c *Controller) trusted(a netip.Addr) bool {
	for _, p := range c.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ClientIP returns the client's address. remote is the TCP peer
// ("ip:port" as net.Conn.RemoteAddr().String() gives it, or a bare ip); xff
// is the X-Forwarded-For value (several headers joined with ","), or "".
//
// X-Forwarded-For is believed only when the peer is a trusted proxy, and
// then only from the right: each proxy appends the address it saw, so the
// right-most entry that is not itself a trusted proxy is the client, and
// everything left of it may have been written by the client. An unparsable
// entry stops the walk at the last trusted hop. An unparsable remote gives
// the zero Addr (the caller refuses the connection).
func (c *Controller) ClientIP(remote, xff string) netip.Addr {
	peer, ok := parseHost(remote)
	if !ok {
		return netip.Addr{}
	}
	return c.clientIP(peer, xff)
}

// ClientIPAddrPort is ClientIP for a peer already parsed.
func (c *Controller) ClientIPAddrPort(remote netip.AddrPort, xff string) netip.Addr {
	return c.clientIP(remote.Addr().Unmap().WithZone(""), xff)
}

func (c *Controller) clientIP(peer netip.Addr, xff string) netip.Addr {
	if xff == "" || !c.trusted(peer) {
		return peer
	}
	client := peer
	for hop := 0; hop < maxXFFHops && xff != ""; hop++ {
		var entry string
		if i := strings.LastIndexByte(xff, ','); i >= 0 {
			xff, entry = xff[:i], xff[i+1:]
		} else {
			xff, entry = "", xff
		}
		a, ok := parseHost(entry)
		if !ok {
			return client
		}
		client = a
		if !c.trusted(a) {
			return a
		}
	}
	return client
}

// Key is the unit of per-IP limits: the address itself for IPv4, its
// /IPv6PrefixBits prefix for IPv6.
func (c *Controller) Key(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := a.BitLen()
	if a.Is6() {
		bits = c.v6bits
	}
	p, _ := a.WithZone("").Prefix(bits)
	return p
}
