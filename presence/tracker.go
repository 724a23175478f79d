package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// untrackRetry is the pause before an Untrack that failed on the store is
// tried again, at most untrackRetries times.
const (
	untrackRetry   = time.Second
	untrackRetries = 30
)

// Publish sends a presence_diff payload to every subscriber of topic on
// every node (an ephemeral event of the room).
type Publish func(ctx context.Context, topic string, payload []byte) error

// Tracker tracks this node's presences in a Store and tells every node's
// subscribers what changed: a topic's changes made here within one Window
// go out as one presence_diff, diffs of one topic leave this node in the
// order the changes were made, and a change and its diff are made under
// the topic's lock, so no client can see a leave before its join. An
// Update is carried out by the node owning each presence (Control), so it
// is ordered with that presence's join and leave too.
//
// Methods are safe for concurrent use. Track, Untrack and Update wait for
// the store (bounded by Config.Timeout), never for a diff to be published.
type Tracker struct {
	cfg   Config
	store Store
	pub   Publish
	log   *slog.Logger
	m     *metrics

	// Control, when set before use, sends control events (ControlEvent)
	// to every node of the topic: with it, Update is carried out by the
	// nodes owning the presences (HandleControl). Nil: this node owns
	// every presence (one node).
	Control Publish

	// OnLost, when set before use, is called (on its own goroutine's
	// time, never under a lock) with a topic whose subscribers on this
	// node must be sent the whole state again: diffs the broker refused
	// were dropped past the bound of held diffs (see heldMaxDiffs), and
	// the node that dropped them asked every node (control event) once
	// the broker answered. It must not block.
	OnLost func(topic string)

	locks [64]topicLock // by topic: a store change and its queueing

	mu     sync.Mutex
	topics map[string]*topicDiff
	local  map[string]map[string]struct{} // topic → tags tracked here
	// adds is the Tracks queued on each topic, in order: the next holder
	// of the topic's lock stores them (trackQueued).
	adds map[string][]*trackReq
	// stored is the refs a Track or an update is writing to the store
	// and has not queued yet, each true once a restore announced its
	// presence under a fresh ref (Restored): that change went out, so
	// the join of the ref written must not (it would follow the
	// restore's leave of it and stay listed on every client).
	stored map[string]bool
	// hookStored, set by tests, runs after a Track's or an update's
	// store write, before its change is queued.
	hookStored func(topic string)
	// retrying counts the failed Untracks of a topic and tag with a retry
	// scheduled.
	retrying map[string]*untrackRetryState
	closed   bool
	stopped  bool // Drain returned: held diffs are dropped, not retried
	// refusals rate-limits the refusal log lines, by reason.
	refusals map[string]*refusalLog
	now      func() time.Time // the clock of the refusal log (tests set it)
	// heldBytes is the bytes of every topic's diffs and changes not yet
	// published; past heldBudget (heldMaxNodeBytes) a topic the broker
	// refuses goes straight to refresh.
	heldBytes  int
	heldBudget int

	// ctrl queues control events to their workers, by topic (so one
	// topic's stay in order); started by the first one, stopped by Drain.
	ctrl     []chan controlJob
	ctrlStop chan struct{}
	ctrlDone sync.WaitGroup
	ctrlOnce sync.Once
}

// Control events are applied off the broker's delivery path, by
// controlWorkers goroutines, each with a queue of controlQueue events:
// a slow store delays the updates, never the topic's deliveries. Past
// the queue an event is dropped (counted and logged).
const (
	controlWorkers = 4
	controlQueue   = 256
)

type controlJob struct {
	topic, key string
	body       []byte
	refresh    bool // send the topic's subscribers here the whole state (OnLost)
}

// topicDiff is a topic's changes not yet published.
type topicDiff struct {
	joins, leaves []Presence
	timer         *time.Timer // armed: the window's flush is due
	gen           uint64      // numbers the timers; the armed one's is current
	flushing      bool        // a flush is publishing; it takes what comes meanwhile

	// out holds the encoded diffs not yet published, oldest first: one the
	// broker refused stays at the head and is sent again (a diff applied
	// twice changes nothing in phoenix.js Presence: joins and leaves go
	// by phx_ref), so no node's clients miss a change or see them out of
	// order.
	out      [][]byte
	outBytes int
	// pendBytes is the bytes of joins and leaves (metas and keys).
	pendBytes int
	// refresh: held diffs went past the bound and were dropped; every
	// node is asked to send the topic's state again (control event)
	// before anything newer goes out.
	refresh bool
	retry   *time.Timer   // armed: the broker refused; the next attempt is due
	backoff time.Duration // the pause before the next attempt
}

// A topic's diffs the broker refuses are held and sent again after a
// pause growing from retryMin to retryMax. Past heldMaxDiffs diffs,
// heldMaxBytes of them, or heldMaxPresences changes waiting behind them,
// they are dropped (phxgate_presence_diffs_lost_total) and every node
// of the topic is asked to send its subscribers the whole state once the
// broker answers again.
const (
	retryMin         = 100 * time.Millisecond
	retryMax         = 5 * time.Second
	heldMaxDiffs     = 64
	heldMaxBytes     = 1 << 20
	heldMaxPresences = 4096
	// heldMaxNodeBytes bounds the bytes held by every topic of the node
	// together: past it, a topic the broker refuses drops what it holds
	// and goes straight to refresh.
	heldMaxNodeBytes = 64 << 20
)

// presenceBytes is what ps weigh in the held bounds.
func presenceBytes(ps []Presence) int {
	n := 0
	for _, p := range ps {
		n += len(p.Meta) + len(p.Key)
	}
	return n
}

// addHeld counts n bytes more (or less) held by the node. Called with
// t.mu held.
func (t *Tracker) addHeld(n int) {
	t.heldBytes += n
	t.m.heldBytes.Set(float64(t.heldBytes))
}

// overHeldLocked reports whether topic's held diffs and changes are past
// a bound: its own (diffs, bytes, changes) or the node's bytes.
func (t *Tracker) overHeldLocked(d *topicDiff) bool {
	return len(d.out) > heldMaxDiffs || d.outBytes+d.pendBytes > heldMaxBytes ||
		len(d.joins)+len(d.leaves) > heldMaxPresences || t.heldBytes > t.heldBudget
}

// NewTracker returns a tracker over store, publishing diffs with pub.
// Zero fields of cfg take their defaults.
func NewTracker(cfg Config, store Store, pub Publish, log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{cfg: cfg.withDefaults(), store: store, pub: pub, log: log, m: newMetrics(),
		topics: map[string]*topicDiff{}, local: map[string]map[string]struct{}{}, adds: map[string][]*trackReq{}, retrying: map[string]*untrackRetryState{}, stored: map[string]bool{},
		refusals: map[string]*refusalLog{}, now: time.Now, heldBudget: heldMaxNodeBytes}
	newTopicLocks(t.locks[:])
	return t
}

func (t *Tracker) lock(topic string) topicLock {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return t.locks[h.Sum32()%uint32(len(t.locks))]
}

// topicLock is a mutex whose wait a ctx can end (make it with room for
// one).
type topicLock chan struct{}

func newTopicLocks(ls []topicLock) {
	for i := range ls {
		ls[i] = make(topicLock, 1)
	}
}

func (l topicLock) Lock()   { l <- struct{}{} }
func (l topicLock) Unlock() { <-l }

// LockCtx takes the lock, or returns ctx's error once ctx ends first
// (then the lock is not held).
func (l topicLock) LockCtx(ctx context.Context) error {
	select {
	case l <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		// Both were ready: do nothing for a caller gone.
		<-l
		return err
	}
	return nil
}

// ErrBusy wraps the caller's ctx error when the ctx ended while a
// Track waited for the topic's earlier changes on this node: nothing was
// tried (nothing stored, nothing to undo).
var ErrBusy = errors.New("presence: topic busy")

func (t *Tracker) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, t.cfg.Timeout)
}

// Track makes key present on topic with meta (a JSON object; empty means
// {}), under tag (the tracking connection's name, unique on this node). A
// refusal (ErrRefused: a limit, or a meta that is not an object) is
// counted and logged; the caller's join stands either way.
func (t *Tracker) Track(ctx context.Context, topic, tag, key string, meta []byte) error {
	_, err := t.TrackPresence(ctx, topic, tag, key, meta)
	return err
}

// TrackPresence is Track, returning the presence tracked (its meta with
// its phx_ref, as a presence_state lists it).
func (t *Tracker) TrackPresence(ctx context.Context, topic, tag, key string, meta []byte) (Presence, error) {
	if len(meta) > t.cfg.MaxMetaBytes {
		return Presence{}, t.refuse(topic, ReasonMetaTooLarge)
	}
	body, ok := objectBody(meta)
	if !ok || (len(body) > 0 && !json.Valid(meta)) {
		return Presence{}, t.refuse(topic, ReasonBadMeta)
	}
	ref := NewRef()
	req := &trackReq{tag: tag, p: Presence{Key: key, Ref: ref, Meta: withRefs(ref, "", body)}, done: make(chan struct{})}
	t.mu.Lock()
	t.adds[topic] = append(t.adds[topic], req)
	t.mu.Unlock()
	// The caller's ctx bounds the wait for the topic's earlier changes
	// on this node (a herd of joins, a slow store): past it, nothing is
	// tried. Whoever holds the topic next stores every Track queued on
	// it (group commit), this one included: a herd of joins on a topic
	// costs a few store calls, not one each. Once the lock is held, the
	// store call gets Config.Timeout of its own (within ctx for a Track
	// stored alone), not what the wait left of it.
	l := t.lock(topic)
	select {
	case <-req.done: // stored by the Track that held the topic
		return req.result()
	case l <- struct{}{}:
	case <-ctx.Done():
		if t.unqueue(topic, req) {
			t.m.busy.Inc()
			return Presence{}, fmt.Errorf("%w: %w", ErrBusy, ctx.Err())
		}
		// Taken by the Track holding the topic: its store call is
		// bounded by Config.Timeout.
		<-req.done
		return req.result()
	}
	defer l.Unlock()
	// The lock is held: this Track's request is stored already or still
	// queued (a holder finishes its requests before it unlocks).
	for {
		select {
		case <-req.done:
			return req.result()
		default:
		}
		if err := ctx.Err(); err != nil && t.unqueue(topic, req) {
			// Both were ready: do nothing for a caller gone (those
			// queued behind wait for the lock themselves).
			t.m.busy.Inc()
			return Presence{}, fmt.Errorf("%w: %w", ErrBusy, err)
		}
		t.trackQueued(ctx, topic, req)
	}
}

// trackBatch bounds the queued Tracks of a topic one holder of its lock
// stores in one store call (one Config.Timeout).
const trackBatch = 1000

// trackReq is a Track queued on its topic; done is closed once err is
// set (stored, refused or failed).
type trackReq struct {
	tag  string
	p    Presence
	err  error
	done chan struct{}
}

// result is a finished request's answer: its presence, or its error.
func (r *trackReq) result() (Presence, error) {
	if r.err != nil {
		return Presence{}, r.err
	}
	return r.p, nil
}

// unqueue takes req off topic's queued Tracks; false: a holder of the
// topic took it (and finishes it).
func (t *Tracker) unqueue(topic string, req *trackReq) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.adds[topic]
	i := slices.Index(q, req)
	if i < 0 {
		return false
	}
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(t.adds, topic)
	} else {
		t.adds[topic] = q
	}
	return true
}

// trackQueued stores up to trackBatch of topic's queued Tracks with a
// BatchAdder store, else mine alone (mine: the holder's, whose ctx
// bounds a store call of its own alone), and finishes each: tracked and
// its join queued, refused, or failed. Called under the topic's lock.
func (t *Tracker) trackQueued(ctx context.Context, topic string, mine *trackReq) {
	ba, batched := t.store.(BatchAdder)
	var batch []*trackReq
	if !batched {
		// One store call per Track: each stores its own, and those
		// queued behind can still give up with their ctx.
		t.unqueue(topic, mine)
		batch = []*trackReq{mine}
	}
	t.mu.Lock()
	if batched {
		q := t.adds[topic]
		n := min(len(q), trackBatch)
		batch = slices.Clone(q[:n])
		if n == len(q) {
			delete(t.adds, topic)
		} else {
			t.adds[topic] = q[n:]
		}
	}
	closed := t.closed
	t.mu.Unlock()
	finish := func() {
		for _, r := range batch {
			close(r.done)
		}
	}
	if closed {
		for _, r := range batch {
			r.err = ErrClosed
		}
		finish()
		return
	}
	// A store call for others is not cut short by the holder's caller
	// going away: it is theirs too.
	if len(batch) > 1 || batch[0] != mine {
		ctx = context.WithoutCancel(ctx)
	}
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	refs := make([]string, len(batch))
	for i, r := range batch {
		refs[i] = r.p.Ref
	}
	t.storing(refs...)
	lim := Limits{MaxMetasPerKey: t.cfg.MaxMetasPerKey, MaxPerTopic: t.cfg.MaxPerTopic}
	var errs []error
	if batched {
		ps := make([]Tagged, len(batch))
		for i, r := range batch {
			ps[i] = Tagged{Tag: r.tag, Presence: r.p}
		}
		errs = ba.AddAll(ctx, topic, ps, lim)
	} else {
		errs = make([]error, len(batch))
		for i, r := range batch {
			errs[i] = t.store.Add(ctx, topic, r.tag, r.p, lim)
		}
	}
	if t.hookStored != nil && slices.Contains(errs, nil) {
		t.hookStored(topic)
	}
	var joins []Presence
	var failed []error
	t.mu.Lock()
	for i, r := range batch {
		restored := t.stored[r.p.Ref]
		delete(t.stored, r.p.Ref)
		if errs[i] != nil {
			continue
		}
		tags := t.local[topic]
		if tags == nil {
			tags = map[string]struct{}{}
			t.local[topic] = tags
		}
		tags[r.tag] = struct{}{}
		if !restored {
			joins = append(joins, r.p)
		}
	}
	if len(joins) > 0 {
		t.queueLocked(topic, joins, nil)
	}
	t.mu.Unlock()
	tracked := 0
	for i, r := range batch {
		err := errs[i]
		switch reason := RefusalReason(err); {
		case err == nil:
			tracked++
		case reason != "":
			err = t.refuse(topic, reason)
		case errors.Is(err, ErrBusy):
			t.m.busy.Inc() // the store's own wait for the topic: nothing tried
			failed = append(failed, err)
		default:
			t.m.errors.Inc()
			failed = append(failed, err)
		}
		r.err = err
	}
	t.m.tracked.Add(float64(tracked))
	if len(failed) > 0 {
		t.log.Warn("presence: track failed", "topic", topic, "tracks", len(failed), "err", failed[0])
	}
	finish()
}

// Refuse counts and logs a presence refused by the caller for reason (a
// Reason* constant) and returns its ErrRefused error.
func (t *Tracker) Refuse(topic, reason string) error { return t.refuse(topic, reason) }

func (t *Tracker) refuse(topic, reason string) error {
	t.m.refused.WithLabelValues(reason).Inc()
	now := t.now()
	t.mu.Lock()
	r := t.refusals[reason]
	if r == nil {
		r = &refusalLog{}
		t.refusals[reason] = r
	}
	r.since++
	due := r.last.IsZero() || now.Sub(r.last) >= refusalLogEvery
	n := r.since
	if due {
		r.last, r.since = now, 0
	}
	t.mu.Unlock()
	if due {
		t.log.Warn("presence refused", "topic", topic, "reason", reason, "refusals", n, "per", refusalLogEvery)
	}
	return refused(reason)
}

// refusalLogEvery is how often refusals of one reason are logged at
// most: the first at once, then one line per period with the number
// refused since the last line (every one is counted in
// phxgate_presence_refused_total).
const refusalLogEvery = time.Minute

// refusalLog is the log state of one refusal reason.
type refusalLog struct {
	last  time.Time // when the last line was logged
	since int       // refusals since (included in the next line)
}

// Untrack removes tag's presence from topic (nothing when there is none).
func (t *Tracker) Untrack(ctx context.Context, topic, tag string) {
	l := t.lock(topic)
	l.Lock()
	defer l.Unlock()
	t.untrackLocked(ctx, topic, tag)
}

func (t *Tracker) untrackLocked(ctx context.Context, topic, tag string) {
	t.mu.Lock()
	_, mine := t.local[topic][tag]
	t.mu.Unlock()
	if !mine {
		return
	}
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	p, ok, err := t.store.Remove(ctx, topic, tag)
	if err != nil {
		t.m.errors.Inc()
		t.retryUntrack(topic, tag)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tags := t.local[topic]; tags != nil {
		delete(tags, tag)
		if len(tags) == 0 {
			delete(t.local, topic)
		}
	}
	t.m.tracked.Dec()
	if ok {
		t.queueLocked(topic, nil, []Presence{p})
	}
}

// retryUntrack tries a failed Untrack again shortly, one retry per tag at
// a time, at most untrackRetries times, and not after the tracker closed
// (Drain then tries once more itself).
func (t *Tracker) retryUntrack(topic, tag string) {
	k := topic + "\x00" + tag
	t.mu.Lock()
	r := t.retrying[k]
	if r == nil {
		r = &untrackRetryState{}
		t.retrying[k] = r
	}
	if t.closed || r.attempts >= untrackRetries {
		delete(t.retrying, k)
		if !t.closed {
			// The store keeps what it could not remove out of any
			// restore (the Redis store retries the removal itself, and
			// publishes the leave): this node no longer tracks it.
			if tags := t.local[topic]; tags != nil {
				if _, ok := tags[tag]; ok {
					delete(tags, tag)
					t.m.tracked.Dec()
				}
				if len(tags) == 0 {
					delete(t.local, topic)
				}
			}
		}
		t.mu.Unlock()
		t.log.Warn("presence: untrack failed; giving up", "topic", topic)
		return
	}
	if r.scheduled {
		t.mu.Unlock()
		return
	}
	r.attempts++
	r.scheduled = true
	t.mu.Unlock()
	t.log.Warn("presence: untrack failed; retrying", "topic", topic, "attempt", r.attempts)
	time.AfterFunc(untrackRetry, func() {
		t.mu.Lock()
		r.scheduled = false
		stop := t.closed
		if stop {
			delete(t.retrying, k)
		}
		t.mu.Unlock()
		if stop {
			return
		}
		t.Untrack(context.Background(), topic, tag) // fails again: retryUntrack
		t.mu.Lock()
		if _, still := t.local[topic][tag]; !still {
			delete(t.retrying, k)
		}
		t.mu.Unlock()
	})
}

type untrackRetryState struct {
	attempts  int
	scheduled bool
}

// Update replaces the meta of every presence of key on topic, on every
// node, as one diff (old metas in leaves, new ones with phx_ref_prev in
// joins). It returns how many presences changed.
func (t *Tracker) Update(ctx context.Context, topic, key string, meta []byte) (int, error) {
	if len(meta) > t.cfg.MaxMetaBytes {
		return 0, t.refuse(topic, ReasonMetaTooLarge)
	}
	body, ok := objectBody(meta)
	if !ok || (len(body) > 0 && !json.Valid(meta)) {
		return 0, t.refuse(topic, ReasonBadMeta)
	}
	if t.Control != nil {
		// Several nodes: each presence is updated by the node that owns
		// it, in order with that node's joins and leaves of it.
		n, err := t.countKey(ctx, topic, key)
		if err != nil {
			t.m.errors.Inc()
			return 0, err
		}
		if n == 0 {
			return 0, nil
		}
		payload, _ := json.Marshal(controlUpdate{Key: key, Meta: json.RawMessage(meta)})
		cctx, cancel := t.ctx(ctx)
		defer cancel()
		if err := t.Control(cctx, topic, payload); err != nil {
			t.m.errors.Inc()
			return 0, err
		}
		return n, nil
	}
	return t.updateLocal(ctx, topic, key, body, nil)
}

// countKey counts key's presences on topic, cluster-wide: from the
// store's counts when it keeps them (never a read of the whole topic),
// else from its list.
func (t *Tracker) countKey(ctx context.Context, topic, key string) (int, error) {
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	if kc, ok := t.store.(KeyCounter); ok {
		return kc.CountKey(ctx, topic, key)
	}
	ps, err := t.store.List(ctx, topic)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range ps {
		if p.Key == key {
			n++
		}
	}
	return n, nil
}

// controlUpdate is the control event that routes an update to the nodes
// owning the presences.
type controlUpdate struct {
	Key  string          `json:"key,omitempty"`
	Meta json.RawMessage `json:"meta,omitempty"`
	// Refresh asks every node to send the topic's subscribers the whole
	// state (its sender dropped diffs the broker refused). Nodes that do
	// not know it ignore the event (no key).
	Refresh bool `json:"refresh,omitempty"`
}

// ControlEvent is the name of the ephemeral events tracker nodes send each
// other (never delivered to clients).
const ControlEvent = "phx_presence_control"

// ControlEvent returns the name of the tracker's control events.
func (t *Tracker) ControlEvent() string { return ControlEvent }

// HandleControl applies a control event of topic received from the
// broker: an update of the presences this node owns. It does not block:
// the update is queued to a worker (the store may be slow), in order with
// the topic's earlier control events; a full queue drops it
// (phxgate_presence_control_dropped_total).
func (t *Tracker) HandleControl(topic string, payload []byte) {
	var u controlUpdate
	if json.Unmarshal(payload, &u) != nil || (u.Key == "" && !u.Refresh) {
		return
	}
	body, ok := objectBody(u.Meta)
	if !ok && !u.Refresh {
		return
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	if t.ctrl == nil {
		t.ctrl = make([]chan controlJob, controlWorkers)
		t.ctrlStop = make(chan struct{})
		for i := range t.ctrl {
			t.ctrl[i] = make(chan controlJob, controlQueue)
			t.ctrlDone.Add(1)
			go t.controlWorker(t.ctrl[i])
		}
	}
	q := t.ctrl[h.Sum32()%controlWorkers]
	t.mu.Unlock()
	select {
	case q <- controlJob{topic: topic, key: u.Key, body: body, refresh: u.Refresh}:
	default:
		t.m.controlDropped.Inc()
		t.log.Warn("presence: control queue full; update dropped", "topic", topic)
	}
}

func (t *Tracker) controlWorker(q chan controlJob) {
	defer t.ctrlDone.Done()
	for {
		select {
		case <-t.ctrlStop:
			return
		case j := <-q:
			if j.refresh {
				if f := t.OnLost; f != nil {
					f(j.topic)
				}
				continue
			}
			_, _ = t.updateLocal(context.Background(), j.topic, j.key, j.body, ownTags)
		}
	}
}

// stopControl stops the control workers (Drain). Idempotent.
func (t *Tracker) stopControl() {
	t.ctrlOnce.Do(func() {
		t.mu.Lock()
		started := t.ctrl != nil
		t.mu.Unlock()
		if started {
			close(t.ctrlStop)
			t.ctrlDone.Wait()
		}
	})
}

// ownTags, passed to updateLocal, limits an update to the presences this
// node owns, listed under the topic's lock (a Track in progress finishes
// first and is included).
var ownTags = []string{}

// updateLocal updates key's presences on topic (under tags when set) and
// queues the diff, under the topic's lock.
func (t *Tracker) updateLocal(ctx context.Context, topic, key string, body []byte, tags []string) (int, error) {
	refs := make([]string, t.cfg.MaxMetasPerKey)
	for i := range refs {
		refs[i] = NewRef()
	}
	l := t.lock(topic)
	l.Lock()
	defer l.Unlock()
	if tags != nil {
		t.mu.Lock()
		tags = make([]string, 0, len(t.local[topic]))
		for tag := range t.local[topic] {
			tags = append(tags, tag)
		}
		t.mu.Unlock()
		if len(tags) == 0 {
			return 0, nil
		}
	}
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	t.storing(refs...)
	left, joined, err := t.store.Update(ctx, topic, key, body, refs, tags)
	if err == nil && t.hookStored != nil {
		t.hookStored(topic)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(joined)
	// A presence a restore announced since (under a fresh ref) is not
	// joined again under the ref written here; its old meta still
	// leaves.
	joined = slices.DeleteFunc(joined, func(p Presence) bool { return t.stored[p.Ref] })
	for _, ref := range refs {
		delete(t.stored, ref)
	}
	if err != nil {
		t.m.errors.Inc()
		return 0, err
	}
	if len(joined)+len(left) > 0 {
		t.queueLocked(topic, joined, left)
	}
	return n, nil
}

// List returns topic's presences across the cluster.
func (t *Tracker) List(ctx context.Context, topic string) ([]Presence, error) {
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	return t.store.List(ctx, topic)
}

// State returns topic's presence_state payload.
func (t *Tracker) State(ctx context.Context, topic string) ([]byte, error) {
	ps, err := t.List(ctx, topic)
	if err != nil {
		t.m.errors.Inc()
		return nil, err
	}
	return EncodeState(ps), nil
}

// Restored queues what the store put back after this node was taken for
// dead: each presence joins under its fresh ref and leaves under the ref
// it had, in one change behind everything of the topic this node has not
// published yet (held diffs included), so that clients end with the new
// ref only, whether the reaper's leave of the old one reaches them
// before or after this node's own join of it. The store calls it under
// its own lock of the topic, which this node's changes of the topic take
// too (inside the tracker's topic lock), so it does not take the
// tracker's topic lock: a leave of a presence put back is queued after
// its join.
//
// A presence whose Track (or update) has written it to the store but not
// queued its change yet is announced here too: that Track skips its join
// (the leave here would otherwise precede it, and the old ref stay
// listed on clients).
func (t *Tracker) Restored(topic string, joins, leaves []Presence) {
	if len(joins)+len(leaves) == 0 {
		return
	}
	t.mu.Lock()
	for _, p := range leaves {
		if _, ok := t.stored[p.Ref]; ok {
			t.stored[p.Ref] = true
		}
	}
	t.queueLocked(topic, joins, leaves)
	t.mu.Unlock()
}

// storing records refs as being written to the store (see stored).
func (t *Tracker) storing(refs ...string) {
	t.mu.Lock()
	for _, ref := range refs {
		t.stored[ref] = false
	}
	t.mu.Unlock()
}

// Leaves queues leaves found by someone else (a store that reaped a dead
// node's presences): they go out in this node's next diff of the topic.
func (t *Tracker) Leaves(topic string, ps []Presence) { t.queue(topic, nil, ps) }

// queue adds changes made elsewhere to topic's next diff, in order with
// this node's own changes of the topic.
func (t *Tracker) queue(topic string, joins, leaves []Presence) {
	if len(joins)+len(leaves) == 0 {
		return
	}
	l := t.lock(topic)
	l.Lock()
	defer l.Unlock()
	t.mu.Lock()
	t.queueLocked(topic, joins, leaves)
	t.mu.Unlock()
}

// CountCleanup counts a dead node (or an earlier life of this one) whose
// presences were removed (phxgate_presence_node_cleanups_total).
func (t *Tracker) CountCleanup() { t.m.cleanups.Inc() }

// queueLocked adds changes to topic's next diff, arming its window timer.
// Called with t.mu held.
func (t *Tracker) queueLocked(topic string, joins, leaves []Presence) {
	d := t.topics[topic]
	if d == nil {
		d = &topicDiff{}
		t.topics[topic] = d
	}
	d.joins = append(d.joins, joins...)
	d.leaves = append(d.leaves, leaves...)
	n := presenceBytes(joins) + presenceBytes(leaves)
	d.pendBytes += n
	t.addHeld(n)
	if d.retry != nil {
		// The broker refuses: changes wait behind the held diffs, up to
		// the bounds (the topic's, and the node's bytes).
		if t.overHeldLocked(d) {
			t.dropHeldLocked(topic, d)
		}
		return
	}
	if d.timer != nil || d.flushing {
		return
	}
	d.gen++
	gen := d.gen
	d.timer = time.AfterFunc(t.cfg.Window, func() { t.flush(context.Background(), topic, gen) })
}

// flush publishes topic's pending changes, and whatever is queued while it
// publishes, in order. gen is the window timer's that called it (0: a
// drain or a retry). While a retry is due it does nothing: the retry
// sends.
func (t *Tracker) flush(ctx context.Context, topic string, gen uint64) {
	t.mu.Lock()
	d := t.topics[topic]
	if d == nil {
		t.mu.Unlock()
		return
	}
	if gen == 0 || d.gen == gen {
		if d.timer != nil {
			d.timer.Stop()
		}
		d.timer = nil
	}
	if d.flushing || d.retry != nil {
		t.mu.Unlock()
		return // the running flush, or the due retry, takes these too
	}
	d.flushing = true
	var err error
	for err == nil {
		switch {
		case d.refresh:
			t.mu.Unlock()
			err = t.sendRefresh(ctx, topic)
			t.mu.Lock()
			if err == nil {
				d.refresh = false
			}
		case len(d.out) > 0:
			payload := d.out[0]
			t.mu.Unlock()
			err = t.send(ctx, topic, payload)
			t.mu.Lock()
			if err == nil {
				d.out[0] = nil
				d.out = d.out[1:]
				d.outBytes -= len(payload)
				t.addHeld(-len(payload))
				d.backoff = 0
			}
		case len(d.joins)+len(d.leaves) > 0:
			joins, leaves := d.joins, d.leaves
			d.joins, d.leaves = nil, nil
			t.addHeld(-d.pendBytes)
			d.pendBytes = 0
			t.mu.Unlock()
			out := splitDiff(joins, leaves, t.cfg.MaxDiffBytes)
			t.mu.Lock()
			for _, p := range out {
				d.outBytes += len(p)
				t.addHeld(len(p))
			}
			d.out = append(d.out, out...) // empty: only the flush takes from it
		default:
			d.flushing = false
			if d.timer == nil {
				delete(t.topics, topic)
			}
			t.mu.Unlock()
			return
		}
	}
	d.flushing = false
	t.heldLocked(topic, d, err)
	t.mu.Unlock()
}

// heldLocked holds topic's unpublished diffs after the broker refused
// one (err), dropping them past the bound, and arms the retry. Called
// with t.mu held.
func (t *Tracker) heldLocked(topic string, d *topicDiff, err error) {
	t.m.diffRetries.Inc()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if t.overHeldLocked(d) {
		t.dropHeldLocked(topic, d)
	}
	d.backoff = min(max(2*d.backoff, retryMin), retryMax)
	t.log.Warn("presence: diff not published; retrying", "topic", topic, "held", len(d.out), "refresh", d.refresh, "in", d.backoff, "err", err)
	if t.stopped {
		t.dropAllLocked(topic, d)
		return
	}
	d.retry = time.AfterFunc(d.backoff, func() { t.retryFlush(topic) })
}

// dropHeldLocked drops topic's held diffs and changes: every node sends
// its subscribers the whole state instead, once the broker answers.
func (t *Tracker) dropHeldLocked(topic string, d *topicDiff) {
	n := len(d.out)
	if len(d.joins)+len(d.leaves) > 0 {
		n++
	}
	t.m.diffsLost.Add(float64(n))
	t.log.Warn("presence: too many diffs held; every node will send the state again", "topic", topic, "diffs", n, "node_held_bytes", t.heldBytes)
	t.addHeld(-d.outBytes - d.pendBytes)
	d.out, d.outBytes, d.joins, d.leaves, d.pendBytes = nil, 0, nil, nil, 0
	d.refresh = true
}

// dropAllLocked forgets topic's held diffs for good (the tracker stopped
// after a drain: its node is leaving).
func (t *Tracker) dropAllLocked(topic string, d *topicDiff) {
	if n := len(d.out); n > 0 {
		t.m.diffsLost.Add(float64(n))
	}
	if d.retry != nil {
		d.retry.Stop()
		d.retry = nil
	}
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if !d.flushing {
		t.addHeld(-d.outBytes - d.pendBytes)
		d.out, d.outBytes, d.joins, d.leaves, d.pendBytes = nil, 0, nil, nil, 0
		delete(t.topics, topic)
	}
}

// retryFlush is a held topic's retry: it sends the held diffs again.
func (t *Tracker) retryFlush(topic string) {
	t.mu.Lock()
	d := t.topics[topic]
	if d == nil || d.retry == nil {
		t.mu.Unlock()
		return
	}
	d.retry = nil
	if t.stopped {
		t.dropAllLocked(topic, d)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	t.flush(context.Background(), topic, 0)
}

// send publishes one diff, retrying within Config.Timeout and ctx.
func (t *Tracker) send(ctx context.Context, topic string, payload []byte) error {
	if err := t.publish(ctx, t.pub, topic, payload); err != nil {
		return err
	}
	t.m.diffs.Inc()
	t.m.diffBytes.Add(float64(len(payload)))
	return nil
}

// sendRefresh asks every node of topic to send its subscribers the whole
// state (a control event; on one node, OnLost at once).
func (t *Tracker) sendRefresh(ctx context.Context, topic string) error {
	if t.Control == nil {
		if f := t.OnLost; f != nil {
			f(topic)
		}
		t.m.refreshes.Inc()
		return nil
	}
	if err := t.publish(ctx, t.Control, topic, refreshControl); err != nil {
		return err
	}
	t.m.refreshes.Inc()
	return nil
}

// refreshControl is the control event asking every node to send a
// topic's subscribers the whole state.
var refreshControl = []byte(`{"refresh":true}`)

func (t *Tracker) publish(ctx context.Context, pub Publish, topic string, payload []byte) error {
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	var err error
	for pause := 20 * time.Millisecond; ; pause *= 2 {
		if err = pub(ctx, topic, payload); err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

// splitDiff encodes joins and leaves as one presence_diff, or, when that
// is larger than maxBytes, as several: the joins first, then the leaves,
// each diff holding as many as fit (a single larger presence goes alone).
// phoenix.js applies a diff's joins before its leaves, so the list it
// ends with is the same.
func splitDiff(joins, leaves []Presence, maxBytes int) [][]byte {
	whole := EncodeDiff(joins, leaves)
	if len(whole) <= maxBytes {
		return [][]byte{whole}
	}
	var out [][]byte
	chunk := func(ps []Presence, enc func([]Presence) []byte) {
		start, size := 0, 0
		for i, p := range ps {
			n := len(p.Meta) + len(p.Key) + 24 // quotes, {"metas":[…]}, commas
			if i > start && size+n > maxBytes-32 {
				out = append(out, enc(ps[start:i]))
				start, size = i, 0
			}
			size += n
		}
		if start < len(ps) {
			out = append(out, enc(ps[start:]))
		}
	}
	chunk(joins, func(ps []Presence) []byte { return EncodeDiff(ps, nil) })
	chunk(leaves, func(ps []Presence) []byte { return EncodeDiff(nil, ps) })
	return out
}

// Drain removes every presence tracked here and publishes the leaves now
// (a node going away: others see its players leave at once), then refuses
// new ones. It returns when the leaves are published, or ctx ends. With a
// BatchRemover store each topic's presences go in one call.
func (t *Tracker) Drain(ctx context.Context) {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.stopControl()
	// A Track that passed its closed check holds its topic's lock until
	// its tag is in t.local: taking every topic lock once lets those
	// finish, and every later Track sees closed.
	for i := range t.locks {
		t.locks[i].Lock()
		t.locks[i].Unlock()
	}
	br, batch := t.store.(BatchRemover)
	// Passes until nothing is left, or a pass removes nothing (the store
	// fails: the node's liveness ends soon, and another node reaps).
	for left := -1; ctx.Err() == nil; {
		t.mu.Lock()
		byTopic := make(map[string][]string, len(t.local))
		n := 0
		for topic, tags := range t.local {
			for tag := range tags {
				byTopic[topic] = append(byTopic[topic], tag)
				n++
			}
		}
		t.mu.Unlock()
		if n == 0 || n == left {
			break
		}
		left = n
		for topic, tags := range byTopic {
			if ctx.Err() != nil {
				break
			}
			if !batch {
				for _, tag := range tags {
					t.Untrack(ctx, topic, tag)
				}
				continue
			}
			t.drainTopic(ctx, br, topic, tags)
		}
	}
	// Flush every topic now; a flush already publishing elsewhere takes
	// what is left, so wait for the map to empty. Diffs still held when
	// ctx ends are dropped: the node is leaving.
	defer func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.stopped = true
		for topic, d := range t.topics {
			if d.retry != nil {
				t.dropAllLocked(topic, d)
			}
		}
	}()
	for ctx.Err() == nil {
		t.mu.Lock()
		var topics []string
		for topic := range t.topics {
			topics = append(topics, topic)
		}
		t.mu.Unlock()
		if len(topics) == 0 {
			return
		}
		// Each flush is bounded by ctx too: a broker that holds every
		// publish must not keep the drain past its share of the window.
		for _, topic := range topics {
			if ctx.Err() != nil {
				return
			}
			t.flush(ctx, topic, 0)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Millisecond):
		}
	}
}

// drainBatch is the presences one Config.Timeout is allowed for in a
// drain's removal of a topic.
const drainBatch = 1000

// drainTopic removes tags' presences of topic in one call and queues
// their leaves. A failure is counted and logged: the node is going away,
// and once its liveness ends another node removes what is left.
func (t *Tracker) drainTopic(ctx context.Context, br BatchRemover, topic string, tags []string) {
	l := t.lock(topic)
	l.Lock()
	defer l.Unlock()
	ctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout*time.Duration(1+len(tags)/drainBatch))
	defer cancel()
	ps, err := br.RemoveAll(ctx, topic, tags)
	if err != nil {
		t.m.errors.Inc()
		t.log.Warn("presence: drain could not remove every presence", "topic", topic, "presences", len(tags), "err", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		// tags was listed before the topic's lock was taken: a paced close
		// may have untracked (and counted out) some since.
		removed := 0
		if local := t.local[topic]; local != nil {
			for _, tag := range tags {
				if _, ok := local[tag]; ok {
					delete(local, tag)
					removed++
				}
			}
			if len(local) == 0 {
				delete(t.local, topic)
			}
		}
		t.m.tracked.Sub(float64(removed))
	}
	if len(ps) > 0 {
		t.queueLocked(topic, nil, ps)
	}
}

// Collector returns the tracker's metrics for registration.
func (t *Tracker) Collector() prometheus.Collector { return t.m }

type metrics struct {
	tracked     prometheus.Gauge
	diffs       prometheus.Counter
	diffRetries prometheus.Counter
	refreshes   prometheus.Counter
	diffBytes   prometheus.Counter
	diffsLost   prometheus.Counter
	refused     *prometheus.CounterVec
	errors      prometheus.Counter
	cleanups    prometheus.Counter

	controlDropped prometheus.Counter
	heldBytes      prometheus.Gauge
	busy           prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_presence_tracked", Help: "Presences tracked by this node's connections.",
		}),
		diffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_diffs_total", Help: "presence_diff events published by this node (one per topic per window with changes).",
		}),
		diffBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_diff_bytes_total", Help: "Payload bytes of the presence_diff events published by this node.",
		}),
		diffsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_diffs_lost_total", Help: "presence_diff events dropped after the broker refused them, past the bound of diffs held per topic (every node then sends the topic's subscribers the whole state).",
		}),
		diffRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_diff_retries_total", Help: "Times a topic's presence_diff was refused by the broker and held to be sent again.",
		}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_refresh_requests_total", Help: "Requests sent to every node to send a topic's subscribers the whole presence_state (after held diffs were dropped).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_presence_refused_total", Help: "Presences refused, by reason: meta_too_large, too_many_metas, too_many_presences, bad_meta (the join stands), state_too_large, stream_budget (the channel ends with phx_error).",
		}, []string{"reason"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_errors_total", Help: "Presence store calls that failed.",
		}),
		cleanups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_node_cleanups_total", Help: "Dead nodes (or an earlier life of this node) whose presences this node removed.",
		}),
		heldBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_presence_held_bytes", Help: "Bytes of presence diffs and changes this node has not published yet (held while the broker refuses them; past 64 MiB a refused topic's are dropped and its state sent again).",
		}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_busy_total", Help: "Tracks whose caller's deadline passed while they waited for the topic's earlier presence changes on this node (nothing was stored; the join ends with phx_error).",
		}),
		controlDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_presence_control_dropped_total", Help: "Presence updates from other nodes dropped because this node's control queue was full.",
		}),
	}
	for _, r := range reasons {
		m.refused.WithLabelValues(r)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.tracked, m.diffs, m.diffRetries, m.refreshes, m.diffBytes, m.diffsLost, m.refused, m.errors, m.cleanups, m.controlDropped, m.heldBytes, m.busy}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}
