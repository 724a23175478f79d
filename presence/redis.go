package presence

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Liveness of the Redis store's nodes.
const (
	// RedisDeadAfter is how long a node's liveness key lives without a
	// refresh: a node silent this long is dead, and another node removes
	// its presences (publishing their leaves) within a reaper period more.
	RedisDeadAfter = 5 * time.Second
	// redisBeat is how often a node refreshes its liveness and looks for
	// dead nodes.
	redisBeat = time.Second
	// redisReapLock keeps two nodes from reaping the same dead node at
	// once.
	redisReapLock = 10 * time.Second
	// redisLockPoll is how often a restore waiting for a reaper of its
	// node tries the reap lock again.
	redisLockPoll = 50 * time.Millisecond
	// redisTopicTTL bounds how long a topic's presence hash outlives its
	// last change, should every node of the cluster vanish at once.
	redisTopicTTL = 24 * time.Hour
	// redisUndoMaxTags bounds the tags of failed Adds the node keeps to
	// undo (a tag is a few dozen bytes): past it, a topic where another
	// Add fails is marked as a whole and swept with HSCAN.
	redisUndoMaxTags = 10_000
	// redisScanStep is the COUNT of each HSCAN step of a read of a whole
	// topic (an undo's sweep, a reap, an update without tags), and so the
	// most fields one script of such a read takes: no step holds Redis
	// (or the topic's lock) long.
	redisScanStep = 500
)

// RedisConfig configures the Redis store.
type RedisConfig struct {
	// Client is the Redis client (single server or Cluster); the store
	// does not close it.
	Client redis.UniversalClient
	// Prefix starts every key ("phx" when empty).
	Prefix string
	// NodeID names this node; a node restarted under the same id removes
	// what its earlier life left at once. Required.
	NodeID string
	// Timeout bounds the store's own calls (liveness, reaping). Zero
	// means DefaultTimeout.
	Timeout time.Duration
	// Log receives the reaper's reports; nil discards them.
	Log *slog.Logger
	// OnReap, when set, is called once per node (or earlier life of this
	// one) whose presences were removed.
	OnReap func()
}

// Redis is the Store shared by several nodes: each topic's presences are a
// hash (field: the tracking connection's tag; value: node, boot, key,
// phx_ref and meta) beside a hash of metas per key, under the topic's hash
// tag so that one script changes both. Every node keeps a liveness key
// alive; a node whose key expired is reaped by another.
type Redis struct {
	cfg     RedisConfig
	c       redis.UniversalClient
	boot    string
	onLeave func(topic string, ps []Presence)
	// onRestore receives a topic's presences put back (joins, under
	// fresh refs) and the same presences under the refs they had
	// (leaves).
	onRestore func(topic string, joins, leaves []Presence)
	log       *slog.Logger

	mu   sync.Mutex
	mine map[string]int // topic → presences of this node there
	// held is this node's presences by topic and tag, as stored: what to
	// put back should the node find itself reaped while alive.
	held map[string]map[string]heldPresence
	// undo is the topics where an Add failed and its undo failed too:
	// what it may have stored has no owner. One mark per topic, however
	// many Adds failed (each a new tag: phoenix.js rejoins), holding one
	// count in mine (the topic stays on the node's list for a reaper);
	// the mark records the failed Adds' tags, and the restore loop
	// removes those (if of this life) and clears it. undoTags counts the
	// tags of every mark, at most undoMax; past it a mark covers its
	// whole topic (scan).
	undo     map[string]*undoMark
	undoTags int
	undoMax  int // redisUndoMaxTags (tests lower it)
	// removing is the presences (topic → tag → presence) whose Remove
	// failed: no longer held (a restore never puts them back), still
	// counted in mine (the topic stays listed for a reaper), and removed
	// by the restore loop, which publishes their leaves, for as long as
	// the node runs.
	removing map[string]map[string]Presence
	// undone is what undos removed (presences failed Adds had stored,
	// which a State read may have listed meanwhile), by topic: the
	// restore loop hands them to onLeave, off every lock (an Add's undo
	// runs under the Tracker's topic lock, which onLeave takes), at
	// once (undonec wakes it) or at its next beat.
	undone  map[string][]Presence
	undonec chan struct{}
	// leftover is the topics an earlier life of this node left that
	// Start could not reap: they stay on the node's list (Close keeps
	// it), for the next life's Start.
	leftover map[string]struct{}
	// tlocks, by topic, order this node's changes of a topic with the
	// restore of that topic (lock order: Tracker topic lock, then these,
	// then mu).
	tlocks  [64]topicLock
	lostc   chan struct{} // the liveness loop found the node reaped
	stop    chan struct{}
	done    chan struct{}
	loops   sync.WaitGroup
	once    sync.Once
	started bool

	// Test hooks, set before Start.
	beats            atomic.Int64       // liveness refreshes done
	hookRestore      func()             // restore starts
	hookRestoreTopic func(topic string) // restore is about to put a topic's presences back
	hookReap         func(node string)  // a reaper took node for dead, before removing anything
}

// undoMark is what failed Adds of a topic may have stored.
type undoMark struct {
	// tags are the failed Adds' tags: the undo removes each one's
	// presence if it is of this life.
	tags map[string]struct{}
	// scan: tags were past undoMax; the undo removes every presence of
	// this life on the topic that the node neither holds nor is
	// removing, with HSCAN in bounded steps. scans counts the requests,
	// so that a sweep clears only those made before it began.
	scan  bool
	scans int
}

type heldPresence struct {
	p     Presence
	value string
}

// NewRedis returns the store. Start begins its liveness and reaping.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Client == nil || cfg.NodeID == "" {
		return nil, fmt.Errorf("%w: a Redis client and a node id are required", ErrInvalidConfig)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "phx"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Redis{cfg: cfg, c: cfg.Client, boot: refEncoding.EncodeToString(b[:]), log: log,
		mine: map[string]int{}, held: map[string]map[string]heldPresence{}, undo: map[string]*undoMark{}, undoMax: redisUndoMaxTags,
		removing: map[string]map[string]Presence{}, undone: map[string][]Presence{}, undonec: make(chan struct{}, 1),
		lostc: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	newTopicLocks(r.tlocks[:])
	return r, nil
}

func (r *Redis) hashKey(topic string) string   { return redisTopicKey(r.cfg.Prefix, topic, "p") }
func (r *Redis) countsKey(topic string) string { return redisTopicKey(r.cfg.Prefix, topic, "pk") }
func (r *Redis) liveKey(node string) string    { return r.cfg.Prefix + ":presence:node:" + node }
func (r *Redis) nodesKey() string              { return r.cfg.Prefix + ":presence:nodes" }
func (r *Redis) topicsKey(node string) string  { return r.cfg.Prefix + ":presence:topics:" + node }
func (r *Redis) reapKey(node string) string    { return r.cfg.Prefix + ":presence:reap:" + node }
func (r *Redis) bootKey(node string) string    { return r.cfg.Prefix + ":presence:boot:" + node }

// redisTopicKey is the name of a topic's key of a kind: <prefix>:{<fnv64a
// of the topic, hex>}<topic length>:<topic>:<kind>. The hash tag is the
// topic's hash, never its text, so a topic holding braces (or empty)
// keeps its keys in one Redis Cluster slot (one script changes both);
// the length makes the name unambiguous whatever the topic holds.
func redisTopicKey(prefix, topic, kind string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(topic))
	return prefix + ":{" + strconv.FormatUint(h.Sum64(), 16) + "}" + strconv.Itoa(len(topic)) + ":" + topic + ":" + kind
}

func (r *Redis) tlock(topic string) topicLock {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return r.tlocks[h.Sum32()%uint32(len(r.tlocks))]
}

// reapLockTTL is how long a reaper (or this node's restore) holds a
// node's reap lock at most: longer than a reap may take.
func (r *Redis) reapLockTTL() time.Duration { return max(redisReapLock, 5*r.cfg.Timeout) }

func (r *Redis) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.cfg.Timeout)
}

// Start removes what an earlier life of this node id left (publishing
// those leaves through onLeave), makes the node alive, and starts the
// loops that keep it alive and reap dead nodes. Should the node find it
// was taken for dead while alive (its liveness key gone: a partition, a
// pause, a Redis that lost its data), it puts its presences back and
// announces them through onRestore, as one change per topic: each
// presence joins under a fresh ref and leaves under the ref it had.
// Close stops it.
//
// Start takes the node's reap lock (waiting for a reaper of the earlier
// life to finish) around that cleanup and the first liveness refresh, so
// that no reaper of the earlier life runs while this one adds presences.
func (r *Redis) Start(onLeave func(topic string, ps []Presence), onRestore func(topic string, joins, leaves []Presence)) error {
	r.onLeave, r.onRestore = onLeave, onRestore
	unlock, err := r.lockReap(r.cfg.NodeID, "start "+r.boot, true)
	if err != nil {
		return err
	}
	err = r.startLocked()
	unlock()
	if err != nil {
		return err
	}
	r.started = true
	r.loops.Add(3)
	go r.liveLoop()
	go r.reapLoop()
	go r.restoreLoop()
	go func() { r.loops.Wait(); close(r.done) }()
	return nil
}

// startLocked removes the earlier lives' presences, records this boot
// (a reaper removes only the boot it took for dead) and makes the node
// alive. Called under the node's reap lock.
func (r *Redis) startLocked() error {
	if err := r.reap(r.cfg.NodeID, true); err != nil {
		return err
	}
	ctx, cancel := r.ctx()
	err := r.c.Set(ctx, r.bootKey(r.cfg.NodeID), r.boot, redisTopicTTL).Err()
	cancel()
	if err != nil {
		return err
	}
	_, err = r.beat()
	return err
}

// beat refreshes the node's liveness. It reports whether the key was
// found gone (or another life's): the node was taken for dead.
func (r *Redis) beat() (lost bool, err error) {
	ctx, cancel := r.ctx()
	defer cancel()
	var prev *redis.StatusCmd
	_, err = r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		prev = p.SetArgs(ctx, r.liveKey(r.cfg.NodeID), r.boot, redis.SetArgs{TTL: RedisDeadAfter, Get: true})
		p.SAdd(ctx, r.nodesKey(), r.cfg.NodeID)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	old, gerr := prev.Result()
	return errors.Is(gerr, redis.Nil) || old != r.boot, nil
}

// liveLoop keeps the node alive, on its own so that neither a long reap
// nor a long restore ever delays it (a late beat would make the node look
// dead again), and hands the restore to restoreLoop.
func (r *Redis) liveLoop() {
	defer r.loops.Done()
	t := time.NewTicker(redisBeat)
	defer t.Stop()
	beats := 0
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		lost, err := r.beat()
		if err != nil {
			r.log.Warn("presence: liveness not refreshed", "err", err)
			continue
		}
		r.beats.Add(1)
		if lost {
			select {
			case r.lostc <- struct{}{}:
			default: // a restore is due already
			}
		}
		if beats++; beats%60 == 0 {
			r.touchTopics()
		}
	}
}

// restoreLoop puts the node's presences back when the liveness loop finds
// it was reaped (again at every beat until a restore succeeds), removes
// what failed Adds may have left, and publishes the leaves of what undos
// removed.
func (r *Redis) restoreLoop() {
	defer r.loops.Done()
	t := time.NewTicker(redisBeat)
	defer t.Stop()
	due := false
	for {
		select {
		case <-r.stop:
			return
		case <-r.undonec:
			r.publishUndone()
			continue
		case <-r.lostc:
			due = true
		case <-t.C:
		}
		if due {
			if err := r.restore(); err != nil {
				r.log.Warn("presence: restoring this node's presences failed; retrying", "err", err)
			} else {
				due = false
			}
		}
		r.retryUndo()
		r.publishUndone()
		r.retryRemoving()
	}
}

// addUndone records presences an undo removed, for publishUndone. Safe
// under any lock but r.mu.
func (r *Redis) addUndone(topic string, ps []Presence) {
	if len(ps) == 0 {
		return
	}
	r.mu.Lock()
	r.undone[topic] = append(r.undone[topic], ps...)
	r.mu.Unlock()
	select {
	case r.undonec <- struct{}{}:
	default: // the restore loop is due to publish already
	}
}

// publishUndone hands the presences undos removed to onLeave: a failed
// Add may have stored its presence long enough for another joiner's
// State read to list it, and without a leave that joiner's clients would
// list it for good (the failed joiner rejoins under a fresh ref). A
// leave of a ref a client never listed changes nothing in phoenix.js
// Presence. Called off every lock (onLeave takes the Tracker's topic
// lock).
func (r *Redis) publishUndone() {
	r.mu.Lock()
	undone := r.undone
	if len(undone) > 0 {
		r.undone = map[string][]Presence{}
	}
	r.mu.Unlock()
	if r.onLeave == nil {
		return
	}
	for topic, ps := range undone {
		r.onLeave(topic, ps)
	}
}

func (r *Redis) reapLoop() {
	defer r.loops.Done()
	t := time.NewTicker(redisBeat)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		r.reapDead()
	}
}

// restore puts back every presence of this node that is no longer stored
// (a reaper removed them while the node was alive, or Redis lost them)
// and announces those as joins. It first takes the node's reap lock, so
// that a reaper that took the node for dead and is still removing its
// presences finishes first (a restore before the end of a reap would be
// undone by it), and no reaper starts while it runs (a reaper that gets
// the lock later finds the node alive). Each topic is restored under its
// topic lock, from what the node holds then: a presence removed or
// updated meanwhile comes back as it is now, or not at all.
func (r *Redis) restore() error {
	if r.hookRestore != nil {
		r.hookRestore()
	}
	unlock, err := r.lockReap(r.cfg.NodeID, "restore "+r.boot, true)
	if err != nil {
		return err
	}
	defer unlock()
	r.mu.Lock()
	topics := make([]string, 0, len(r.held))
	for topic := range r.held {
		topics = append(topics, topic)
	}
	r.mu.Unlock()
	restored := 0
	var firstErr error
	for _, topic := range topics {
		if r.hookRestoreTopic != nil {
			r.hookRestoreTopic(topic)
		}
		n, err := r.restoreTopic(topic)
		restored += n
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if restored > 0 {
		r.log.Warn("presence: this node was taken for dead while alive; its presences are back", "presences", restored)
	}
	return firstErr
}

// restoreScript stores the presences given that are not stored. KEYS:
// hash, counts. ARGV: TTL ms, then tag, key, value of each. It returns
// the tags it stored.
var restoreScript = redis.NewScript(`
local out = {}
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    out[#out + 1] = ARGV[i]
  end
end
if #out > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return out
`)

// restoreTopic puts back the topic's presences held now and announces
// them, under the topic's lock: a Remove or Update of one of them waits,
// so its leave comes after the join announced here. Each is announced as
// the join of its fresh ref and the leave of the ref it had, in one
// change queued behind anything this node has not published yet: a join
// of the old ref held until after the reaper's leave of it is undone by
// this change, whenever the reaper's leave arrives.
func (r *Redis) restoreTopic(topic string) (int, error) {
	l := r.tlock(topic)
	l.Lock()
	defer l.Unlock()
	r.mu.Lock()
	hs := r.held[topic]
	args := make([]any, 0, 1+3*len(hs))
	args = append(args, redisTopicTTL.Milliseconds())
	// Each comes back under a fresh phx_ref: the reaper's leave names
	// the old one, so clients drop the old and add the new whichever
	// diff reaches them first.
	byTag := make(map[string]heldPresence, len(hs))
	was := make(map[string]Presence, len(hs))
	for tag, h := range hs {
		was[tag] = h.p
		nh := h
		if _, seq, ok := decodeValue(h.value); ok {
			ref := NewRef()
			nh.p = Presence{Key: h.p.Key, Ref: ref, Meta: withRefs(ref, "", stripRefs(h.p.Meta))}
			nh.value = r.encodeValue(seq, nh.p)
		}
		args = append(args, tag, nh.p.Key, nh.value)
		byTag[tag] = nh
	}
	r.mu.Unlock()
	if len(byTag) == 0 {
		return 0, nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	// Listed first, so that a reaper always finds what is put back.
	if err := r.c.SAdd(ctx, r.topicsKey(r.cfg.NodeID), topic).Err(); err != nil {
		return 0, err
	}
	tags, err := restoreScript.Run(ctx, r.c, []string{r.hashKey(topic), r.countsKey(topic)}, args...).StringSlice()
	if err != nil {
		return 0, err
	}
	back := make([]Presence, 0, len(tags))
	gone := make([]Presence, 0, len(tags))
	r.mu.Lock()
	for _, tag := range tags {
		back = append(back, byTag[tag].p)
		gone = append(gone, was[tag])
		if _, ok := r.held[topic][tag]; ok {
			r.held[topic][tag] = byTag[tag]
		}
	}
	r.mu.Unlock()
	if len(back) > 0 && r.onRestore != nil {
		r.onRestore(topic, back, gone)
	}
	return len(back), nil
}

// unlockScript deletes a lock still held with the value given. KEYS:
// lock. ARGV: value.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// lockReap takes node's reap lock with value; wait: until it is free
// (this node's restore), else at once or not at all (ok false: another
// reaper has it). The release deletes it if still ours.
func (r *Redis) lockReap(node, value string, wait bool) (release func(), err error) {
	for {
		ctx, cancel := r.ctx()
		ok, err := r.c.SetNX(ctx, r.reapKey(node), value, r.reapLockTTL()).Result()
		cancel()
		if err != nil {
			return nil, err
		}
		if ok {
			return func() {
				ctx, cancel := r.ctx()
				defer cancel()
				_ = unlockScript.Run(ctx, r.c, []string{r.reapKey(node)}, value).Err()
			}, nil
		}
		if !wait {
			return nil, nil
		}
		select {
		case <-r.stop:
			return nil, ErrClosed
		case <-time.After(redisLockPoll):
		}
	}
}

// retryUndo sweeps the topics where a failed Add could not be undone.
func (r *Redis) retryUndo() {
	r.mu.Lock()
	topics := make([]string, 0, len(r.undo))
	for topic := range r.undo {
		topics = append(topics, topic)
	}
	r.mu.Unlock()
	for _, topic := range topics {
		if err := r.sweepUndo(topic); err != nil {
			r.log.Warn("presence: undoing failed adds failed; retrying", "topic", topic, "err", err)
			return // Redis is still failing: next beat
		}
	}
}

// undoScript removes the presences of tags that are of one life of a
// node (what failed Adds of that life may have stored). KEYS: hash,
// counts. ARGV: node, boot, then the tags. It returns the removed
// values (their leaves are due). It reads only those fields: never the
// whole hash.
var undoScript = redis.NewScript(`
local out = {}
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local seq, nl, bl, kl = string.match(v, '^(%d+) (%d+) (%d+) (%d+) %d+\n')
    if seq then
      local rest = string.sub(v, string.find(v, '\n', 1, true) + 1)
      local node = string.sub(rest, 1, tonumber(nl))
      local boot = string.sub(rest, tonumber(nl) + 1, tonumber(nl) + tonumber(bl))
      local key = string.sub(rest, tonumber(nl) + tonumber(bl) + 1, tonumber(nl) + tonumber(bl) + tonumber(kl))
      if node == ARGV[1] and boot == ARGV[2] then
        redis.call('HDEL', KEYS[1], ARGV[i])
        if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then redis.call('HDEL', KEYS[2], key) end
        out[#out + 1] = v
      end
    end
  end
end
return out
`)

// undoLocked removes tags' presences of this life from topic, in
// batches of redisRemoveBatch, and records those removed for
// publishUndone (those of the batches done, on an error too). Called
// under the topic's lock, with tags the node neither holds nor is
// removing.
func (r *Redis) undoLocked(ctx context.Context, topic string, tags []string) error {
	for len(tags) > 0 {
		batch := tags[:min(len(tags), redisRemoveBatch)]
		args := make([]any, 0, 2+len(batch))
		args = append(args, r.cfg.NodeID, r.boot)
		for _, tag := range batch {
			args = append(args, tag)
		}
		vals, err := undoScript.Run(ctx, r.c, []string{r.hashKey(topic), r.countsKey(topic)}, args...).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		ps := make([]Presence, 0, len(vals))
		for _, v := range vals {
			if p, _, ok := decodeValue(v); ok {
				ps = append(ps, p)
			}
		}
		r.addUndone(topic, ps)
		tags = tags[len(batch):]
	}
	return nil
}

// markUndo records that tag's failed Add on topic could not be undone.
// The topic's first mark takes a count in mine (the topic stays listed
// for a reaper until the undo is done). Called under the topic's lock.
func (r *Redis) markUndo(topic, tag string, err error) {
	r.mu.Lock()
	m := r.undo[topic]
	first := m == nil
	if first {
		m = &undoMark{tags: map[string]struct{}{}}
		r.undo[topic] = m
		r.mine[topic]++
	}
	if _, ok := m.tags[tag]; !ok {
		if r.undoTags < r.undoMax {
			m.tags[tag] = struct{}{}
			r.undoTags++
		} else {
			m.scan = true
			m.scans++
		}
	}
	r.mu.Unlock()
	if first {
		r.log.Warn("presence: undoing a failed add failed; retrying", "topic", topic, "err", err)
	}
}

// undoPending reports whether a failed Add of tag on topic may still be
// stored (its undo failed).
func (r *Redis) undoPending(topic, tag string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.undo[topic]
	if m == nil {
		return false
	}
	_, ok := m.tags[tag]
	return ok || m.scan
}

// unmarkLocked takes tags off topic's undo mark (undone, or owned
// again). Called with r.mu held; it reports whether the mark is gone
// (then its count in mine is the caller's to forget).
func (r *Redis) unmarkLocked(topic string, tags []string) (gone bool) {
	m := r.undo[topic]
	if m == nil {
		return false
	}
	for _, tag := range tags {
		if _, ok := m.tags[tag]; ok {
			delete(m.tags, tag)
			r.undoTags--
		}
	}
	if len(m.tags) == 0 && !m.scan {
		delete(r.undo, topic)
		return true
	}
	return false
}

// sweepUndo does topic's pending undo: the marked tags' presences of
// this life go (one call per redisRemoveBatch), then, when the mark
// covers the whole topic, every presence of this life there that the
// node neither holds nor is removing (HSCAN, redisScanStep a step, the
// topic's lock held only for a step). The mark goes once done.
func (r *Redis) sweepUndo(topic string) error {
	l := r.tlock(topic)
	l.Lock()
	r.mu.Lock()
	m := r.undo[topic]
	if m == nil {
		r.mu.Unlock()
		l.Unlock()
		return nil
	}
	tags := make([]string, 0, len(m.tags))
	var owned []string
	for tag := range m.tags {
		if r.owns(topic, tag) {
			owned = append(owned, tag) // added again since: not an orphan
			continue
		}
		tags = append(tags, tag)
	}
	scan, scans := m.scan, m.scans
	r.mu.Unlock()
	ctx, cancel := r.ctx()
	err := r.undoLocked(ctx, topic, tags)
	cancel()
	if err == nil {
		r.mu.Lock()
		gone := r.unmarkLocked(topic, append(tags, owned...))
		r.mu.Unlock()
		if gone {
			r.forget(topic) // the mark's count
		}
	}
	l.Unlock()
	if err != nil || !scan {
		return err
	}
	if err := r.scanUndo(topic); err != nil {
		return err
	}
	r.mu.Lock()
	gone := false
	if m := r.undo[topic]; m != nil && m.scans == scans {
		m.scan = false
		gone = r.unmarkLocked(topic, nil)
	}
	r.mu.Unlock()
	if gone {
		r.forget(topic)
	}
	return nil
}

// owns reports whether the node holds or is removing tag's presence on
// topic. Called with r.mu held.
func (r *Redis) owns(topic, tag string) bool {
	_, held := r.held[topic][tag]
	_, removing := r.removing[topic][tag]
	return held || removing
}

// scanUndo removes every presence of this life on topic that the node
// neither holds nor is removing, reading the hash with HSCAN in steps of
// redisScanStep under the topic's lock (released between steps: an Add
// in between is held, so kept, or its tag marked).
func (r *Redis) scanUndo(topic string) error {
	l := r.tlock(topic)
	var cursor uint64
	for {
		l.Lock()
		ctx, cancel := r.ctx()
		kv, next, err := r.c.HScan(ctx, r.hashKey(topic), cursor, "", redisScanStep).Result()
		if err == nil {
			var tags []string
			r.mu.Lock()
			for i := 0; i+1 < len(kv); i += 2 {
				if node, boot, ok := valueOwner(kv[i+1]); ok && node == r.cfg.NodeID && boot == r.boot && !r.owns(topic, kv[i]) {
					tags = append(tags, kv[i])
				}
			}
			r.mu.Unlock()
			err = r.undoLocked(ctx, topic, tags)
		}
		cancel()
		l.Unlock()
		if err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// touchTopics keeps the presence hashes of the topics this node has
// presences on from expiring while nobody joins them.
func (r *Redis) touchTopics() {
	r.mu.Lock()
	topics := make([]string, 0, len(r.mine))
	for topic := range r.mine {
		topics = append(topics, topic)
	}
	r.mu.Unlock()
	ctx, cancel := r.ctx()
	defer cancel()
	_, _ = r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Expire(ctx, r.bootKey(r.cfg.NodeID), redisTopicTTL)
		for _, topic := range topics {
			p.PExpire(ctx, r.hashKey(topic), redisTopicTTL)
			p.PExpire(ctx, r.countsKey(topic), redisTopicTTL)
		}
		return nil
	})
}

// reapDead reaps every node whose liveness key is gone.
func (r *Redis) reapDead() {
	ctx, cancel := r.ctx()
	nodes, err := r.c.SMembers(ctx, r.nodesKey()).Result()
	cancel()
	if err != nil {
		return
	}
	for _, n := range nodes {
		if n == r.cfg.NodeID {
			continue
		}
		ctx, cancel := r.ctx()
		alive, err := r.c.Exists(ctx, r.liveKey(n)).Result()
		cancel()
		if err != nil || alive > 0 {
			continue
		}
		if err := r.reap(n, false); err != nil {
			r.log.Warn("presence: reaping a dead node failed", "node", n, "err", err)
		}
	}
}

// reapScript removes the presences of tags that are a node's, but not
// of its current life (ARGV[2], "" when it is dead), and only those of
// boot ARGV[3] when it is not "" (the life a reaper took for dead).
// KEYS: hash, counts. ARGV: node, current boot, boot to reap, then the
// tags (a step of reapTopic's HSCAN). It reads those fields only and
// returns the removed values.
var reapScript = redis.NewScript(`
local out = {}
for i = 4, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local seq, nl, bl, kl
  if v then seq, nl, bl, kl = string.match(v, '^(%d+) (%d+) (%d+) (%d+) %d+\n') end
  if seq then
    local rest = string.sub(v, string.find(v, '\n', 1, true) + 1)
    local node = string.sub(rest, 1, tonumber(nl))
    local boot = string.sub(rest, tonumber(nl) + 1, tonumber(nl) + tonumber(bl))
    local key = string.sub(rest, tonumber(nl) + tonumber(bl) + 1, tonumber(nl) + tonumber(bl) + tonumber(kl))
    if node == ARGV[1] and boot ~= ARGV[2] and (ARGV[3] == '' or boot == ARGV[3]) then
      redis.call('HDEL', KEYS[1], ARGV[i])
      if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then redis.call('HDEL', KEYS[2], key) end
      out[#out + 1] = v
    end
  end
end
return out
`)

// reapTopic removes topic's presences of node (not of boot keep; of boot
// only alone unless only is "") in steps, handing each step's leaves to
// onLeave as it ends: HSCAN reads redisScanStep fields, and reapScript
// removes those of them that are the node's, checking each again. No
// step holds Redis long, however large the topic. HSCAN returns every
// field stored from the reap's start to its end (a presence the node
// adds meanwhile, alive again, may be left: it is the new life's, or
// this node's own to restore), and one twice at most, which the script
// then finds gone. It returns how many presences it removed; on an
// error, those of the steps done are removed (and their leaves handed
// over).
func (r *Redis) reapTopic(ctx context.Context, topic, node, keep, only string) (int, error) {
	keys := []string{r.hashKey(topic), r.countsKey(topic)}
	removed := 0
	var cursor uint64
	for {
		kv, next, err := r.c.HScan(ctx, keys[0], cursor, "", redisScanStep).Result()
		if err != nil {
			return removed, err
		}
		args := []any{node, keep, only}
		for i := 0; i+1 < len(kv); i += 2 {
			if n, b, ok := valueOwner(kv[i+1]); ok && n == node && b != keep && (only == "" || b == only) {
				args = append(args, kv[i])
			}
		}
		if len(args) > 3 {
			vals, err := reapScript.Run(ctx, r.c, keys, args...).StringSlice()
			if err != nil {
				return removed, err
			}
			ps := make([]Presence, 0, len(vals))
			for _, v := range vals {
				if p, _, ok := decodeValue(v); ok {
					ps = append(ps, p)
				}
			}
			removed += len(ps)
			if len(ps) > 0 && r.onLeave != nil {
				r.onLeave(topic, ps)
			}
		}
		if next == 0 {
			return removed, nil
		}
		cursor = next
	}
}

// reap removes node's presences from every topic it had some on and hands
// them to onLeave. self: this node's earlier lives (its current one is
// kept).
func (r *Redis) reap(node string, self bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 4*r.cfg.Timeout)
	defer cancel()
	only := ""
	if !self {
		// The lock keeps other reapers out, and the node itself: back
		// from a pause, it restores only after this reap ends.
		unlock, err := r.lockReap(node, "reap "+r.cfg.NodeID+" "+r.boot, false)
		if err != nil || unlock == nil {
			return err // another node reaps it, or the node restores
		}
		defer unlock()
		// The boot to reap, read before the liveness: a life that
		// starts after this read has its own boot, kept below.
		b, err := r.c.Get(ctx, r.bootKey(node)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		only = b // "" (not recorded): every boot of the node
		// Alive again (restarted under the same id, or back from a
		// pause): its new life cleans up after its old one itself.
		if n, err := r.c.Exists(ctx, r.liveKey(node)).Result(); err != nil || n > 0 {
			return err
		}
		if r.hookReap != nil {
			r.hookReap(node)
		}
	}
	keep := ""
	if self {
		keep = r.boot
	}
	topics, err := r.c.SMembers(ctx, r.topicsKey(node)).Result()
	if err != nil {
		return err
	}
	removed := 0
	// A topic that fails is logged and skipped (it stays listed, for the
	// next reap): one bad topic must not keep a node from starting, nor
	// the others' presences from leaving.
	var failed []string
	for _, topic := range topics {
		n, err := r.reapTopic(ctx, topic, node, keep, only)
		removed += n
		if err != nil {
			r.log.Warn("presence: removing a gone node's presences of a topic failed; skipped", "node", node, "earlier_life", self, "topic", topic, "err", err)
			failed = append(failed, topic)
			if ctx.Err() != nil {
				break
			}
			continue
		}
	}
	if len(failed) > 0 {
		// The topics done leave the list; those failed stay on it for the
		// next reap (a restart of this node; another node's next pass).
		done := make([]any, 0, len(topics))
		for _, topic := range topics {
			if !slices.Contains(failed, topic) {
				done = append(done, topic)
			}
		}
		if len(done) > 0 {
			_ = r.c.SRem(ctx, r.topicsKey(node), done...).Err()
		}
		if !self {
			return fmt.Errorf("presence: %d of %d topics of node %s not reaped", len(failed), len(topics), node)
		}
		r.mu.Lock()
		r.leftover = map[string]struct{}{}
		for _, topic := range failed {
			r.leftover[topic] = struct{}{}
		}
		r.mu.Unlock()
	} else if self {
		// Our earlier life's topics; this life adds its own as it goes.
		_ = r.c.Del(ctx, r.topicsKey(node)).Err()
	} else {
		// A node alive again (its lock wait ended: a reap longer than
		// the lock) keeps its lists: its new presences are on them.
		n, err := r.c.Exists(ctx, r.liveKey(node)).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			_, err = r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Del(ctx, r.topicsKey(node))
				p.SRem(ctx, r.nodesKey(), node)
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	if (removed > 0 || !self) && r.cfg.OnReap != nil {
		r.cfg.OnReap()
	}
	if removed > 0 || !self {
		r.log.Info("presence: removed the presences of a node gone", "node", node, "earlier_life", self, "presences", removed, "topics", len(topics))
	}
	return nil
}

// encodeValue is a hash value: "<seq> <node len> <boot len> <key len> <ref
// len>\n<node><boot><key><ref><meta>".
func (r *Redis) encodeValue(seq int64, p Presence) string {
	var b strings.Builder
	b.Grow(len(r.cfg.NodeID) + len(r.boot) + len(p.Key) + len(p.Ref) + len(p.Meta) + 40)
	fmt.Fprintf(&b, "%d %d %d %d %d\n", seq, len(r.cfg.NodeID), len(r.boot), len(p.Key), len(p.Ref))
	b.WriteString(r.cfg.NodeID)
	b.WriteString(r.boot)
	b.WriteString(p.Key)
	b.WriteString(p.Ref)
	b.Write(p.Meta)
	return b.String()
}

// valueOwner reads the node and boot of a hash value.
func valueOwner(v string) (node, boot string, ok bool) {
	head, rest, found := strings.Cut(v, "\n")
	if !found {
		return "", "", false
	}
	f := strings.Fields(head)
	if len(f) != 5 {
		return "", "", false
	}
	nl, err1 := strconv.Atoi(f[1])
	bl, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || nl < 0 || bl < 0 || nl+bl > len(rest) {
		return "", "", false
	}
	return rest[:nl], rest[nl : nl+bl], true
}

// valueKey reads the key of a hash value.
func valueKey(v string) (string, bool) {
	p, _, ok := decodeValue(v)
	return p.Key, ok
}

// decodeValue reads a hash value back (seq for ordering).
func decodeValue(v string) (p Presence, seq int64, ok bool) {
	head, rest, found := strings.Cut(v, "\n")
	if !found {
		return Presence{}, 0, false
	}
	f := strings.Fields(head)
	if len(f) != 5 {
		return Presence{}, 0, false
	}
	var n [5]int64
	for i, s := range f {
		x, err := strconv.ParseInt(s, 10, 64)
		if err != nil || x < 0 {
			return Presence{}, 0, false
		}
		n[i] = x
	}
	nl, bl, kl, rl := int(n[1]), int(n[2]), int(n[3]), int(n[4])
	if nl+bl+kl+rl > len(rest) {
		return Presence{}, 0, false
	}
	off := nl + bl
	p.Key = rest[off : off+kl]
	p.Ref = rest[off+kl : off+kl+rl]
	p.Meta = []byte(rest[off+kl+rl:])
	return p, n[0], true
}

// addScript stores presences, in order, each unless a limit refuses it
// (the earlier ones of the call count toward the limits of the later
// ones, as consecutive Adds). KEYS: hash, counts. ARGV: max metas per
// key, max per topic, TTL ms, then tag, key and value of each. It
// returns one answer per presence: "ok" (stored, or stored already: a
// restore racing, nothing lost) or the refusal's reason.
var addScript = redis.NewScript(`
local out = {}
local stored = false
local metas, most = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = 'ok'
  elseif redis.call('HLEN', KEYS[1]) >= most then
    out[#out + 1] = 'too_many_presences'
  elseif tonumber(redis.call('HGET', KEYS[2], ARGV[i + 1]) or '0') >= metas then
    out[#out + 1] = 'too_many_metas'
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    stored = true
    out[#out + 1] = 'ok'
  end
end
if stored then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return out
`)

// redisAddBatch bounds the presences one addScript call stores: a herd
// of joins queued on one topic is a few calls, none of which holds Redis
// long.
const redisAddBatch = 500

// Add implements Store.
func (r *Redis) Add(ctx context.Context, topic, tag string, p Presence, lim Limits) error {
	return r.AddAll(ctx, topic, []Tagged{{Tag: tag, Presence: p}}, lim)[0]
}

// AddAll implements BatchAdder: one addScript call per redisAddBatch
// presences, under the store's lock of the topic.
func (r *Redis) AddAll(ctx context.Context, topic string, ps []Tagged, lim Limits) []error {
	errs := make([]error, len(ps))
	fail := func(from int, err error) []error {
		for i := from; i < len(errs); i++ {
			errs[i] = err
		}
		return errs
	}
	if len(ps) == 0 {
		return errs
	}
	// A restore or an undo of the topic may hold its lock: past ctx,
	// nothing is tried (nothing to undo).
	l := r.tlock(topic)
	if err := l.LockCtx(ctx); err != nil {
		return fail(0, fmt.Errorf("%w: %w", ErrBusy, err))
	}
	defer l.Unlock()
	var pending []string
	for _, a := range ps {
		if r.undoPending(topic, a.Tag) {
			pending = append(pending, a.Tag)
		}
	}
	if len(pending) > 0 {
		// An earlier Add of these tags may still be stored: out first, or
		// the script would take it for this one.
		if err := r.undoLocked(ctx, topic, pending); err != nil {
			return fail(0, err)
		}
		r.mu.Lock()
		gone := r.unmarkLocked(topic, pending)
		r.mu.Unlock()
		if gone {
			r.forget(topic) // the mark's count
		}
	}
	r.mu.Lock()
	first := r.mine[topic] == 0
	r.mine[topic] += len(ps)
	r.mu.Unlock()
	if first {
		// Listed before the presences exist, so a reaper always finds
		// them.
		if err := r.c.SAdd(ctx, r.topicsKey(r.cfg.NodeID), topic).Err(); err != nil {
			r.forgetN(topic, len(ps))
			return fail(0, err)
		}
	}
	keys := []string{r.hashKey(topic), r.countsKey(topic)}
	for from := 0; from < len(ps); from += redisAddBatch {
		batch := ps[from:min(len(ps), from+redisAddBatch)]
		args := make([]any, 0, 3+3*len(batch))
		args = append(args, lim.MaxMetasPerKey, lim.MaxPerTopic, redisTopicTTL.Milliseconds())
		values := make([]string, len(batch))
		for i, a := range batch {
			values[i] = r.encodeValue(time.Now().UnixNano(), a.Presence)
			args = append(args, a.Tag, a.Presence.Key, values[i])
		}
		res, err := addScript.Run(ctx, r.c, keys, args...).StringSlice()
		if err == nil && len(res) != len(batch) {
			err = fmt.Errorf("presence: %d answers to the add of %d presences", len(res), len(batch))
		}
		if err != nil {
			// The script may have run and only its answer been lost:
			// undo it (its tags only), so that no presence stays that
			// nobody owns. What the undo removes leaves (the restore
			// loop publishes it, off the Tracker's topic lock held
			// here): a State read meanwhile may have listed it. Should
			// the undo fail too, the tags are
			// marked and the restore loop undoes them; the topic stays
			// listed for a reaper meanwhile, by the mark's count in
			// mine. The batches after this one are not tried.
			tags := make([]string, len(batch))
			for i, a := range batch {
				tags[i] = a.Tag
			}
			uctx, cancel := r.ctx() // the caller's ctx may be what ended
			if uerr := r.undoLocked(uctx, topic, tags); uerr != nil {
				for _, tag := range tags {
					r.markUndo(topic, tag, uerr)
				}
			}
			cancel()
			r.forgetN(topic, len(ps)-from) // these attempts' counts
			return fail(from, err)
		}
		refusedN := 0
		r.mu.Lock()
		for i, a := range batch {
			if res[i] != "ok" {
				errs[from+i] = refused(res[i])
				refusedN++
				continue
			}
			if r.held[topic] == nil {
				r.held[topic] = map[string]heldPresence{}
			}
			r.held[topic][a.Tag] = heldPresence{p: a.Presence, value: values[i]}
		}
		r.mu.Unlock()
		if refusedN > 0 {
			r.forgetN(topic, refusedN)
		}
	}
	return errs
}

// forget counts one presence of this node on topic less; the last one
// takes the topic off the node's list.
func (r *Redis) forget(topic string) { r.forgetN(topic, 1) }

// forgetN counts n presences of this node on topic less.
func (r *Redis) forgetN(topic string, n int) {
	r.mu.Lock()
	r.mine[topic] -= n
	last := r.mine[topic] <= 0
	if last {
		delete(r.mine, topic)
	}
	if _, ok := r.leftover[topic]; ok {
		last = false // listed for the next life's reap
	}
	r.mu.Unlock()
	if last {
		ctx, cancel := r.ctx()
		defer cancel()
		_ = r.c.SRem(ctx, r.topicsKey(r.cfg.NodeID), topic).Err()
	}
}

// removeScript removes one presence. KEYS: hash, counts. ARGV: tag.
var removeScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local seq, nl, bl, kl = string.match(v, '^(%d+) (%d+) (%d+) (%d+) %d+\n')
local rest = string.sub(v, string.find(v, '\n', 1, true) + 1)
local key = string.sub(rest, tonumber(nl) + tonumber(bl) + 1, tonumber(nl) + tonumber(bl) + tonumber(kl))
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then redis.call('HDEL', KEYS[2], key) end
return v
`)

// Remove implements Store. A presence this node holds that is no longer
// stored is still returned (ok): an earlier Remove of it was applied but
// its answer lost (then nobody has published its leave yet), or a reaper
// removed it (then this leave is a second one, which clients ignore).
func (r *Redis) Remove(ctx context.Context, topic, tag string) (Presence, bool, error) {
	ps, err := r.RemoveAll(ctx, topic, []string{tag})
	if err != nil || len(ps) == 0 {
		return Presence{}, false, err
	}
	return ps[0], true, nil
}

// removeAllScript removes presences. KEYS: hash, counts. ARGV: tags. It
// returns the removed values ("" for a tag not stored), one per tag.
var removeAllScript = redis.NewScript(`
local out = {}
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local seq, nl, bl, kl = string.match(v, '^(%d+) (%d+) (%d+) (%d+) %d+\n')
    local rest = string.sub(v, string.find(v, '\n', 1, true) + 1)
    local key = string.sub(rest, tonumber(nl) + tonumber(bl) + 1, tonumber(nl) + tonumber(bl) + tonumber(kl))
    redis.call('HDEL', KEYS[1], ARGV[i])
    if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then redis.call('HDEL', KEYS[2], key) end
    out[#out + 1] = v
  else
    out[#out + 1] = ''
  end
end
return out
`)

// redisRemoveBatch bounds the tags one removeAllScript call takes: a
// drain of a topic with many presences is a few calls, none of which
// holds Redis long.
const redisRemoveBatch = 1000

// RemoveAll removes tags' presences from topic in one script call per
// redisRemoveBatch tags, and returns those it removed (or that this node
// held: see Remove). A drain removes a node's presences with it. On an
// error, the tags not known removed are no longer held (a restore never
// puts them back) but pending removal: the restore loop removes them and
// publishes their leaves, retrying while the node runs.
func (r *Redis) RemoveAll(ctx context.Context, topic string, tags []string) ([]Presence, error) {
	l := r.tlock(topic)
	l.Lock()
	defer l.Unlock()
	return r.removeAllLocked(ctx, topic, tags)
}

func (r *Redis) removeAllLocked(ctx context.Context, topic string, tags []string) ([]Presence, error) {
	var out []Presence
	for len(tags) > 0 {
		batch := tags[:min(len(tags), redisRemoveBatch)]
		args := make([]any, len(batch))
		for i, tag := range batch {
			args[i] = tag
		}
		vals, err := removeAllScript.Run(ctx, r.c, []string{r.hashKey(topic), r.countsKey(topic)}, args...).StringSlice()
		if err == nil && len(vals) != len(batch) {
			err = fmt.Errorf("presence: %d answers to the removal of %d presences", len(vals), len(batch))
		}
		if err != nil {
			r.pendRemoval(topic, tags)
			return out, err
		}
		tags = tags[len(batch):]
		r.mu.Lock()
		hs, rs := r.held[topic], r.removing[topic]
		mine := 0
		for i, tag := range batch {
			h, held := hs[tag]
			pp, pending := rs[tag]
			if p, _, ok := decodeValue(vals[i]); ok {
				out = append(out, p)
			} else if held {
				out = append(out, h.p)
			} else if pending {
				out = append(out, pp)
			}
			if held || pending {
				mine++
			}
			delete(hs, tag)
			delete(rs, tag)
		}
		if len(hs) == 0 {
			delete(r.held, topic)
		}
		if len(rs) == 0 {
			delete(r.removing, topic)
		}
		r.mu.Unlock()
		if mine > 0 {
			r.forgetN(topic, mine)
		}
	}
	return out, nil
}

// pendRemoval moves tags of topic this node holds to its pending
// removals (a Remove of them failed).
func (r *Redis) pendRemoval(topic string, tags []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs := r.held[topic]
	for _, tag := range tags {
		h, ok := hs[tag]
		if !ok {
			continue
		}
		if r.removing[topic] == nil {
			r.removing[topic] = map[string]Presence{}
		}
		r.removing[topic][tag] = h.p
		delete(hs, tag)
	}
	if len(hs) == 0 {
		delete(r.held, topic)
	}
}

// retryRemoving removes the presences whose Remove failed and publishes
// their leaves (onLeave, off the topic lock: the tracker queues them
// under its own topic lock, taken before this store's).
func (r *Redis) retryRemoving() {
	r.mu.Lock()
	byTopic := make(map[string][]string, len(r.removing))
	for topic, rs := range r.removing {
		for tag := range rs {
			byTopic[topic] = append(byTopic[topic], tag)
		}
	}
	r.mu.Unlock()
	for topic, tags := range byTopic {
		ctx, cancel := r.ctx()
		ps, err := r.RemoveAll(ctx, topic, tags)
		cancel()
		if len(ps) > 0 && r.onLeave != nil {
			r.onLeave(topic, ps)
		}
		if err != nil {
			return // Redis is still failing: next beat
		}
	}
}

// updateScript gives the presences of a key stored under tags a new
// meta. KEYS: hash. ARGV: key, meta body, the number of refs, the new
// refs, then the tags. It reads those fields only (HGET each), never the
// whole hash, and returns tag, old value and new value of each presence
// changed.
var updateScript = redis.NewScript(`
local out = {}
local nrefs = tonumber(ARGV[3])
local n = 0
for j = 4 + nrefs, #ARGV do
  if n >= nrefs then break end
  local v = redis.call('HGET', KEYS[1], ARGV[j])
  local seq, nl, bl, kl, rl
  if v then seq, nl, bl, kl, rl = string.match(v, '^(%d+) (%d+) (%d+) (%d+) (%d+)\n') end
  if seq then
    local rest = string.sub(v, string.find(v, '\n', 1, true) + 1)
    nl, bl, kl, rl = tonumber(nl), tonumber(bl), tonumber(kl), tonumber(rl)
    local key = string.sub(rest, nl + bl + 1, nl + bl + kl)
    if key == ARGV[1] then
      n = n + 1
      local oldref = string.sub(rest, nl + bl + kl + 1, nl + bl + kl + rl)
      local ref = ARGV[3 + n]
      local meta = '{' .. ARGV[2]
      if ARGV[2] ~= '' then meta = meta .. ',' end
      meta = meta .. '"phx_ref":"' .. ref .. '","phx_ref_prev":"' .. oldref .. '"}'
      local nv = seq .. ' ' .. nl .. ' ' .. bl .. ' ' .. kl .. ' ' .. #ref .. '\n' ..
        string.sub(rest, 1, nl + bl + kl) .. ref .. meta
      redis.call('HSET', KEYS[1], ARGV[j], nv)
      out[#out + 1] = ARGV[j]
      out[#out + 1] = v
      out[#out + 1] = nv
    end
  end
end
return out
`)

// Update implements Store. With tags (the owner node's: Tracker routes an
// update to the nodes owning the presences), the tags this node holds
// under another key are left out and the script reads the others' fields
// only. Without tags (every node's presences of key: a Tracker without
// Control), the hash is first read with HSCAN in steps of redisScanStep
// for key's tags, so that no step holds Redis long; a presence of key
// another node adds meanwhile is not updated (as if the update came
// first).
func (r *Redis) Update(ctx context.Context, topic, key string, body []byte, refs, tags []string) (left, joined []Presence, err error) {
	if tags != nil && len(tags) == 0 {
		return nil, nil, nil
	}
	l := r.tlock(topic)
	l.Lock()
	defer l.Unlock()
	all := tags == nil
	if all {
		if tags, err = r.scanKeyTags(ctx, topic, key); err != nil {
			return nil, nil, err
		}
	} else {
		tags = r.keyTags(topic, key, tags)
	}
	var vals []string
	if len(tags) > 0 {
		args := make([]any, 0, 3+len(refs)+len(tags))
		args = append(args, key, body, len(refs))
		for _, ref := range refs {
			args = append(args, ref)
		}
		for _, tag := range tags {
			args = append(args, tag)
		}
		vals, err = updateScript.Run(ctx, r.c, []string{r.hashKey(topic)}, args...).StringSlice()
		if err != nil {
			return nil, nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := make(map[string]struct{}, len(vals)/3)
	for i := 0; i+2 < len(vals); i += 3 {
		o, _, ok1 := decodeValue(vals[i+1])
		n, _, ok2 := decodeValue(vals[i+2])
		if !ok1 || !ok2 {
			continue
		}
		left, joined = append(left, o), append(joined, n)
		// What a restore puts back is the latest meta.
		if h, ok := r.held[topic][vals[i]]; ok {
			h.p, h.value = n, vals[i+2]
			r.held[topic][vals[i]] = h
		}
		changed[vals[i]] = struct{}{}
	}
	// A presence of key held here but not stored (a reaper took the node
	// for dead, and the restore has not put it back yet) takes the meta
	// too: the restore puts it back with it, instead of losing the
	// update.
	hs := r.held[topic]
	for _, tag := range tags {
		h, ok := hs[tag]
		if _, done := changed[tag]; !ok || done || h.p.Key != key {
			continue
		}
		h.p.Meta = withRefs(h.p.Ref, "", body)
		hs[tag] = h
	}
	return left, joined, nil
}

// keyTags returns tags without duplicates and without those this node
// holds under a key other than key (a tag's key never changes); a tag it
// does not hold is kept, for the script to check. Called under the
// topic's lock.
func (r *Redis) keyTags(topic, key string, tags []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs := r.held[topic]
	out := make([]string, 0, min(len(tags), MaxMetasPerKey))
	seen := make(map[string]struct{}, min(len(tags), MaxMetasPerKey))
	for _, tag := range tags {
		if h, ok := hs[tag]; ok && h.p.Key != key {
			continue
		}
		if _, dup := seen[tag]; dup {
			continue
		}
		seen[tag] = struct{}{}
		out = append(out, tag)
	}
	return out
}

// scanKeyTags returns the tags of key's presences on topic, stored (read
// with HSCAN, redisScanStep fields a step) or held by this node. Called
// under the topic's lock.
func (r *Redis) scanKeyTags(ctx context.Context, topic, key string) ([]string, error) {
	seen := map[string]struct{}{}
	var out []string
	add := func(tag string) {
		if _, dup := seen[tag]; !dup {
			seen[tag] = struct{}{}
			out = append(out, tag)
		}
	}
	var cursor uint64
	for {
		kv, next, err := r.c.HScan(ctx, r.hashKey(topic), cursor, "", redisScanStep).Result()
		if err != nil {
			return nil, err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if k, ok := valueKey(kv[i+1]); ok && k == key {
				add(kv[i])
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	r.mu.Lock()
	for tag, h := range r.held[topic] {
		if h.p.Key == key {
			add(tag)
		}
	}
	r.mu.Unlock()
	return out, nil
}

// CountKey implements KeyCounter: key's entry in the topic's counts.
func (r *Redis) CountKey(ctx context.Context, topic, key string) (int, error) {
	n, err := r.c.HGet(ctx, r.countsKey(topic), key).Int()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return max(n, 0), err
}

// List implements Store: every node's presences, in join order.
func (r *Redis) List(ctx context.Context, topic string) ([]Presence, error) {
	vals, err := r.c.HVals(ctx, r.hashKey(topic)).Result()
	if err != nil {
		return nil, err
	}
	type entry struct {
		p   Presence
		seq int64
	}
	es := make([]entry, 0, len(vals))
	for _, v := range vals {
		if p, seq, ok := decodeValue(v); ok {
			es = append(es, entry{p, seq})
		}
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Presence, len(es))
	for i, e := range es {
		out[i] = e.p
	}
	return out, nil
}

// Close stops the liveness loop and takes the node off the cluster (its
// presences should be gone already: Tracker.Drain). Idempotent.
func (r *Redis) Close() error {
	r.once.Do(func() {
		close(r.stop)
		if r.started {
			<-r.done
			// The leaves of what undos removed since the restore
			// loop's last pass.
			r.publishUndone()
		}
		ctx, cancel := r.ctx()
		defer cancel()
		r.mu.Lock()
		drained := len(r.mine) == 0 && len(r.leftover) == 0
		r.mu.Unlock()
		_, _ = r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, r.liveKey(r.cfg.NodeID))
			if drained {
				p.SRem(ctx, r.nodesKey(), r.cfg.NodeID)
				p.Del(ctx, r.topicsKey(r.cfg.NodeID))
			}
			// Otherwise presences are left (a drain cut short): the
			// lists stay, and another node reaps them once the
			// liveness key is gone (now).
			return nil
		})
	})
	return nil
}

var (
	_ Store        = (*Redis)(nil)
	_ BatchRemover = (*Redis)(nil)
	_ KeyCounter   = (*Redis)(nil)
	_ BatchAdder   = (*Redis)(nil)
)
