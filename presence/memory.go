package presence

import (
	"cmp"
	"context"
	"slices"
	"sync"
)

// Memory is the Store of a single node.
type Memory struct {
	mu     sync.Mutex
	topics map[string]*memTopic
	seq    uint64
}

type memTopic struct {
	byTag  map[string]*memEntry
	perKey map[string]int
}

type memEntry struct {
	p   Presence
	seq uint64 // order of arrival, for lists in join order
}

// NewMemory returns an empty store.
func NewMemory() *Memory { return &Memory{topics: map[string]*memTopic{}} }

// Add implements Store.
func (m *Memory) Add(_ context.Context, topic, tag string, p Presence, lim Limits) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		t = &memTopic{byTag: map[string]*memEntry{}, perKey: map[string]int{}}
		m.topics[topic] = t
	}
	if old := t.byTag[tag]; old != nil {
		t.perKey[old.p.Key]--
	} else if len(t.byTag) >= lim.MaxPerTopic {
		return refused(ReasonTooMany)
	}
	if t.perKey[p.Key] >= lim.MaxMetasPerKey {
		if old := t.byTag[tag]; old != nil {
			t.perKey[old.p.Key]++
		}
		return refused(ReasonTooManyMetas)
	}
	m.seq++
	t.byTag[tag] = &memEntry{p: p, seq: m.seq}
	t.perKey[p.Key]++
	return nil
}

// Remove implements Store.
func (m *Memory) Remove(_ context.Context, topic, tag string) (Presence, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return Presence{}, false, nil
	}
	e := t.byTag[tag]
	if e == nil {
		return Presence{}, false, nil
	}
	delete(t.byTag, tag)
	if t.perKey[e.p.Key]--; t.perKey[e.p.Key] <= 0 {
		delete(t.perKey, e.p.Key)
	}
	if len(t.byTag) == 0 {
		delete(m.topics, topic)
	}
	return e.p, true, nil
}

// RemoveAll implements BatchRemover.
func (m *Memory) RemoveAll(ctx context.Context, topic string, tags []string) ([]Presence, error) {
	var out []Presence
	for _, tag := range tags {
		if p, ok, _ := m.Remove(ctx, topic, tag); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Update implements Store.
func (m *Memory) Update(_ context.Context, topic, key string, body []byte, refs, tags []string) (left, joined []Presence, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return nil, nil, nil
	}
	es := make([]*memEntry, 0, t.perKey[key])
	for tag, e := range t.byTag {
		if e.p.Key == key && (tags == nil || slices.Contains(tags, tag)) {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, bySeq)
	for i, e := range es {
		if i >= len(refs) {
			break
		}
		left = append(left, e.p)
		e.p = Presence{Key: key, Ref: refs[i], Meta: withRefs(refs[i], e.p.Ref, body)}
		joined = append(joined, e.p)
	}
	return left, joined, nil
}

// List implements Store.
func (m *Memory) List(_ context.Context, topic string) ([]Presence, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return nil, nil
	}
	es := make([]*memEntry, 0, len(t.byTag))
	for _, e := range t.byTag {
		es = append(es, e)
	}
	slices.SortFunc(es, bySeq)
	out := make([]Presence, len(es))
	for i, e := range es {
		out[i] = e.p
	}
	return out, nil
}

func bySeq(a, b *memEntry) int { return cmp.Compare(a.seq, b.seq) }

var (
	_ Store        = (*Memory)(nil)
	_ BatchRemover = (*Memory)(nil)
)
