package presence

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Presence is one tracked connection of a player on a topic.
type Presence struct {
	// Key is the presence_state/presence_diff key: the player id.
	Key string
	// Ref is the meta's phx_ref, unique across the cluster.
	Ref string
	// Meta is the JSON object sent to clients: the backend's meta keys,
	// then phx_ref (and phx_ref_prev after an update) last, so that ours
	// win over backend keys of the same names.
	Meta []byte
}

// Limits bound what one topic's presence holds; see Config.
type Limits struct {
	MaxMetasPerKey int
	MaxPerTopic    int
}

// Store keeps the presences of every topic: Memory for one node, Redis
// across nodes. A presence is stored under a tag, the tracking
// connection's node-unique name, so that it can be removed after its
// phx_ref changed (an update). Methods are safe for concurrent use and
// honour ctx.
type Store interface {
	// Add stores p under tag, refusing it (ErrRefused) past lim.
	Add(ctx context.Context, topic, tag string, p Presence, lim Limits) error
	// Remove removes tag's presence and returns it (ok false when absent).
	Remove(ctx context.Context, topic, tag string) (p Presence, ok bool, err error)
	// Update gives every presence of key on topic stored under one of
	// tags (every one when tags is nil) the meta body (a JSON object) with
	// a fresh phx_ref (refs[i] for the i-th) and phx_ref_prev, and returns
	// the old presences and the new ones.
	Update(ctx context.Context, topic, key string, body []byte, refs, tags []string) (left, joined []Presence, err error)
	// List returns the topic's presences (cluster-wide), in no set order.
	List(ctx context.Context, topic string) ([]Presence, error)
}

// BatchRemover is a Store that removes many presences of a topic in one
// call (the Redis store: one round trip per 1,000). Tracker.Drain uses it
// when its Store has it, so a node with many presences drains in a few
// round trips per topic instead of one per presence.
type BatchRemover interface {
	// RemoveAll removes tags' presences from topic and returns those it
	// removed; on an error, some may have been removed.
	RemoveAll(ctx context.Context, topic string, tags []string) ([]Presence, error)
}

// Tagged is a presence to store under its tag (BatchAdder).
type Tagged struct {
	Tag      string
	Presence Presence
}

// BatchAdder is a Store that stores many presences of a topic in one
// call (the Redis store: one round trip per 500). Tracker.Track uses it
// when its Store has it: the Tracks of a topic queued while another holds
// the topic are stored together by the next one to hold it (group
// commit), so a herd of joins on one topic costs a few round trips, not
// one per join.
type BatchAdder interface {
	// AddAll stores ps in order, each as Add would (the earlier ones
	// count toward the limits of the later ones), and returns one error
	// per presence: nil (stored), an ErrRefused (a limit), or the
	// store's error.
	AddAll(ctx context.Context, topic string, ps []Tagged, lim Limits) []error
}

// KeyCounter is a Store that counts a key's presences on a topic
// (cluster-wide) without listing the topic (the Redis store: one HGET of
// the topic's counts per key). Tracker.Update uses it, when its Store has
// it, to answer how many presences an update routed to their owners
// changes.
type KeyCounter interface {
	CountKey(ctx context.Context, topic, key string) (int, error)
}

// Errors.
var (
	// ErrRefused wraps a presence refused by a limit; the join it belongs
	// to still succeeds.
	ErrRefused = errors.New("presence: refused")
	// ErrBadMeta is returned for a meta that is not a JSON object.
	ErrBadMeta = errors.New("presence: meta is not a JSON object")
	// ErrClosed is returned after Close or Drain.
	ErrClosed = errors.New("presence: closed")
)

// Refusal reasons (phxgate_presence_refused_total{reason}).
const (
	ReasonMetaTooLarge = "meta_too_large"
	ReasonTooManyMetas = "too_many_metas"
	ReasonTooMany      = "too_many_presences"
	ReasonBadMeta      = "bad_meta"
	// ReasonStateTooLarge: the topic's presence_state is larger than
	// the node's whole budget for states being sent in pieces (channels
	// presence_stream_bytes), so it can never be sent: the join ends
	// with phx_error and is not tracked (tracking then untracking would
	// broadcast a join and a leave at every rejoin attempt).
	ReasonStateTooLarge = "state_too_large"
	// ReasonStreamBudget: the node's budget for states being sent in
	// pieces stayed spent for as long as the join could wait; as
	// ReasonStateTooLarge, the join ends with phx_error untracked, and
	// the client's rejoin (after its backoff) finds the budget free.
	ReasonStreamBudget = "stream_budget"
)

var reasons = []string{ReasonMetaTooLarge, ReasonTooManyMetas, ReasonTooMany, ReasonBadMeta, ReasonStateTooLarge, ReasonStreamBudget}

func refused(reason string) error { return fmt.Errorf("%w: %s", ErrRefused, reason) }

// RefusalReason returns the reason of an ErrRefused error ("" for others).
func RefusalReason(err error) string {
	if !errors.Is(err, ErrRefused) {
		return ""
	}
	msg := err.Error()
	for _, r := range reasons {
		if len(msg) >= len(r) && msg[len(msg)-len(r):] == r {
			return r
		}
	}
	return ""
}

// Config bounds presence tracking. It is the presence section of phxgate's
// configuration: the yaml tags are the keys under presence., and Validate
// names them relative to it.
type Config struct {
	// Window batches a topic's changes made on this node into one
	// presence_diff per window. Zero means DefaultWindow.
	Window time.Duration `yaml:"window" usage:"a topic's presence changes on one node within this window make one presence_diff"`
	// MaxMetaBytes bounds one meta object (as the backend sent it). Zero
	// means DefaultMaxMetaBytes.
	MaxMetaBytes int `yaml:"max_meta_bytes" usage:"largest presence meta in bytes; a bigger one is refused (the join stands)"`
	// MaxMetasPerKey bounds the metas (connections) of one player on one
	// topic. Zero means DefaultMaxMetasPerKey.
	MaxMetasPerKey int `yaml:"max_metas_per_key" usage:"connections of one player present on one topic"`
	// MaxPerTopic bounds the presences of one topic. Zero means
	// DefaultMaxPerTopic.
	MaxPerTopic int `yaml:"max_per_topic" usage:"presences on one topic"`
	// Timeout bounds each store call (from the moment the topic's lock
	// is held: the wait for it is the caller's ctx's) and each diff
	// publish. Zero means DefaultTimeout.
	Timeout time.Duration `yaml:"timeout" usage:"bound of each presence store call and diff publish"`
	// MaxDiffBytes bounds one presence_diff payload: a topic's batch of
	// changes larger than it goes out as several diffs, so that a herd's
	// diff never overflows a subscriber's write queue. Not a key: the
	// gateway sets it from write_queue_max_bytes. Zero means
	// DefaultMaxDiffBytes.
	MaxDiffBytes int `yaml:"-"`
}

// Defaults.
const (
	DefaultWindow         = 50 * time.Millisecond
	DefaultMaxMetaBytes   = 1024
	DefaultMaxMetasPerKey = 16
	DefaultMaxPerTopic    = 10_000
	DefaultTimeout        = 2 * time.Second
	DefaultMaxDiffBytes   = 64 << 10
	// MaxMetasPerKey is the largest MaxMetasPerKey accepted.
	MaxMetasPerKey = 64
)

// NewConfig returns a Config with the defaults.
func NewConfig() Config {
	return Config{Window: DefaultWindow, MaxMetaBytes: DefaultMaxMetaBytes, MaxMetasPerKey: DefaultMaxMetasPerKey,
		MaxPerTopic: DefaultMaxPerTopic, Timeout: DefaultTimeout}
}

// ErrInvalidConfig wraps every Validate failure.
var ErrInvalidConfig = errors.New("presence: invalid config")

// Validate reports a bound out of range.
func (c Config) Validate() error {
	switch {
	case c.Window < 0 || c.Window > 10*time.Second:
		return fmt.Errorf("%w: window: must be between 0s and 10s", ErrInvalidConfig)
	case c.MaxMetaBytes < 0 || c.MaxMetaBytes > 64<<10:
		return fmt.Errorf("%w: max_meta_bytes: must be between 0 and 65536", ErrInvalidConfig)
	case c.MaxMetasPerKey < 0 || c.MaxMetasPerKey > MaxMetasPerKey:
		return fmt.Errorf("%w: max_metas_per_key: must be between 0 and %d", ErrInvalidConfig, MaxMetasPerKey)
	case c.MaxPerTopic < 0 || c.MaxPerTopic > 1_000_000:
		return fmt.Errorf("%w: max_per_topic: must be between 0 and 1000000", ErrInvalidConfig)
	case c.Timeout < 0 || c.Timeout > time.Minute:
		return fmt.Errorf("%w: timeout: must be between 0s and 1m", ErrInvalidConfig)
	}
	return nil
}

// StateOverheadBytes is what one presence adds to a presence_state
// besides its meta: its phx_ref and phx_ref_prev, the framing, and a
// player id of up to about 48 bytes.
const StateOverheadBytes = 128

// MaxStateBytes is the presence_state of a topic full to MaxPerTopic with
// metas of MaxMetaBytes (zero fields taking their defaults).
func (c Config) MaxStateBytes() int {
	c = c.withDefaults()
	return c.MaxPerTopic * (c.MaxMetaBytes + StateOverheadBytes)
}

// WithDefaults returns c with its zero fields set to the defaults.
func (c Config) WithDefaults() Config { return c.withDefaults() }

func (c Config) withDefaults() Config {
	d := NewConfig()
	if c.Window <= 0 {
		c.Window = d.Window
	}
	if c.MaxMetaBytes <= 0 {
		c.MaxMetaBytes = d.MaxMetaBytes
	}
	if c.MaxMetasPerKey <= 0 {
		c.MaxMetasPerKey = d.MaxMetasPerKey
	}
	if c.MaxPerTopic <= 0 {
		c.MaxPerTopic = d.MaxPerTopic
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	if c.MaxDiffBytes <= 0 {
		c.MaxDiffBytes = DefaultMaxDiffBytes
	}
	return c
}

var refEncoding = base64.RawURLEncoding

// NewRef returns a fresh phx_ref: 12 random bytes, url-safe base64 (16
// characters, the length of Phoenix's).
func NewRef() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return refEncoding.EncodeToString(b[:])
}

// objectBody returns the inside of a JSON object (between the braces,
// trimmed), or ok false when meta is not an object. Empty meta is {}.
func objectBody(meta []byte) (body []byte, ok bool) {
	i, j := 0, len(meta)
	for i < j && isSpace(meta[i]) {
		i++
	}
	for j > i && isSpace(meta[j-1]) {
		j--
	}
	if i == j {
		return nil, true
	}
	if meta[i] != '{' || meta[j-1] != '}' || j-i < 2 {
		return nil, false
	}
	body = meta[i+1 : j-1]
	k, l := 0, len(body)
	for k < l && isSpace(body[k]) {
		k++
	}
	for l > k && isSpace(body[l-1]) {
		l--
	}
	return body[k:l], true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// withRefs builds a meta object: body's keys, then phx_ref (and
// phx_ref_prev when prev is set) last, so that ours win should body hold
// keys of the same names (JSON decoders keep the last one).
func withRefs(ref, prev string, body []byte) []byte {
	out := make([]byte, 0, len(body)+48)
	out = append(out, '{')
	if len(body) > 0 {
		out = append(out, body...)
		out = append(out, ',')
	}
	out = append(out, `"phx_ref":"`...)
	out = append(out, ref...) // url-safe base64: nothing to escape
	out = append(out, '"')
	if prev != "" {
		out = append(out, `,"phx_ref_prev":"`...)
		out = append(out, prev...)
		out = append(out, '"')
	}
	return append(out, '}')
}

// stripRefs returns the backend's part of a meta built by withRefs (or
// the update script): the body before our phx_ref, which comes last.
func stripRefs(meta []byte) []byte {
	i := bytes.LastIndex(meta, []byte(`"phx_ref":"`))
	if i < 1 {
		return nil
	}
	return bytes.TrimRight(meta[1:i], ", \t\r\n")
}

// appendGroups appends {"<key>":{"metas":[…]},…} for ps, grouping by key
// in first-seen order and keeping each key's metas in order.
func appendGroups(out []byte, ps []Presence) []byte {
	order := make([]string, 0, len(ps))
	groups := make(map[string][]int, len(ps))
	for i, p := range ps {
		if _, ok := groups[p.Key]; !ok {
			order = append(order, p.Key)
		}
		groups[p.Key] = append(groups[p.Key], i)
	}
	out = append(out, '{')
	for n, k := range order {
		if n > 0 {
			out = append(out, ',')
		}
		kj, _ := json.Marshal(k) // a string always marshals
		out = append(out, kj...)
		out = append(out, `:{"metas":[`...)
		for m, i := range groups[k] {
			if m > 0 {
				out = append(out, ',')
			}
			out = append(out, ps[i].Meta...)
		}
		out = append(out, "]}"...)
	}
	return append(out, '}')
}

// EncodeState returns a presence_state payload for ps.
func EncodeState(ps []Presence) []byte {
	return appendGroups(make([]byte, 0, 64*len(ps)+2), ps)
}

// EncodeDiff returns a presence_diff payload: both keys always present.
func EncodeDiff(joins, leaves []Presence) []byte {
	out := make([]byte, 0, 64*(len(joins)+len(leaves))+32)
	out = append(out, `{"joins":`...)
	out = appendGroups(out, joins)
	out = append(out, `,"leaves":`...)
	out = appendGroups(out, leaves)
	return append(out, '}')
}
