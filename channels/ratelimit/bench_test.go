package ratelimit

import (
	"fmt"
	"testing"
)

func BenchmarkAllowEvent(b *testing.B) {
	l, _, _ := newTestLimiter(b, NewConfig())
	players := make([]string, 1024)
	for i := range players {
		players[i] = fmt.Sprintf("player-%d", i)
		l.AllowEvent(players[i], DefaultClass)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.AllowEvent(players[i&1023], DefaultClass)
			i++
		}
	})
}
