package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.b.String()), "\n") {
		var m map[string]any
		if l == "" {
			continue
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// Refusals are logged, not only counted, and at most once per reason per
// refusalLogEvery, with the number refused since the last line: a flood
// of oversized metas makes one line a minute.
func TestTrackerLogsRefusalsRateLimited(t *testing.T) {
	out := &lockedBuffer{}
	tr := NewTracker(Config{MaxMetaBytes: 8}, NewMemory(), func(context.Context, string, []byte) error { return nil },
		slog.New(slog.NewJSONHandler(out, nil)))
	t.Cleanup(func() { tr.Drain(context.Background()) })
	now := time.Unix(1000, 0)
	tr.now = func() time.Time { return now }
	big := []byte(`{"pad":"xxxxxxxxxxxx"}`)
	ctx := context.Background()
	for i := range 3 {
		if err := tr.Track(ctx, "room:1", "t"+string(rune('a'+i)), "p", big); RefusalReason(err) != ReasonMetaTooLarge {
			t.Fatalf("track %d: %v", i, err)
		}
	}
	_ = tr.Refuse("room:1", ReasonStateTooLarge)
	lines := out.lines(t, "presence refused")
	if len(lines) != 2 || lines[0]["reason"] != ReasonMetaTooLarge || lines[1]["reason"] != ReasonStateTooLarge {
		t.Fatalf("log lines %v, want one per reason", lines)
	}
	if n := counter(t, tr.m.refused.WithLabelValues(ReasonMetaTooLarge)); n != 3 {
		t.Fatalf("refused{meta_too_large} = %v, want 3", n)
	}
	now = now.Add(refusalLogEvery)
	_ = tr.Refuse("room:2", ReasonMetaTooLarge)
	lines = out.lines(t, "presence refused")
	if len(lines) != 3 || lines[2]["refusals"] != 3.0 || lines[2]["topic"] != "room:2" {
		t.Fatalf("log lines %v, want a third with the 3 refusals since the first", lines)
	}
}
