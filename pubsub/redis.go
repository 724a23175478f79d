package pubsub

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of the Redis engine.
const (
	// DefaultRedisTimeout bounds every Redis call the engine makes.
	DefaultRedisTimeout = 2 * time.Second
	// DefaultRedisShards is how many pub/sub connections a node opens (per
	// Cluster master): a topic whose handler is slow holds up only the
	// topics that share its connection.
	DefaultRedisShards = 4
	// DefaultRedisPrefix starts every key and channel name.
	DefaultRedisPrefix = "phx"
	// redisMetaTTLFactor: a topic's epoch and top offset outlive its
	// history, so that a client whose position has expired from history is
	// told recovered=false rather than seeing the topic start over.
	redisMetaTTLFactor = 6
	// redisIdempotencyWindow is how long a publish idempotency key is kept
	// (one small key per keyed publish: 1,000 keyed publishes a second
	// hold about 120,000 keys).
	redisIdempotencyWindow = MinIdempotencyWindow
	// redisPingEvery is how often an idle pub/sub connection is pinged;
	// redisDeadAfter without any answer and it is replaced.
	redisPingEvery = time.Second
	redisDeadAfter = 10 * time.Second
	// redisRetryPause bounds the pause between reconnect attempts.
	redisRetryPause = time.Second
)

// ErrRedis wraps every error of a Redis call.
var ErrRedis = errors.New("pubsub: redis")

// RedisConfig configures the Redis Streams engine.
type RedisConfig struct {
	// URL is a single Redis server: redis://[user:pass@]host:port[/db] or
	// rediss:// for TLS. Ignored when ClusterAddrs is set, except for its
	// credentials and TLS.
	URL string
	// ClusterAddrs, when set, selects Redis Cluster: the seed addresses
	// (host:port) of its masters.
	ClusterAddrs []string
	// Prefix starts every key and pub/sub channel name, so that several
	// deployments can share a Redis. Empty means DefaultRedisPrefix.
	Prefix string
	// HistorySize returns how many events are kept for a topic (see
	// MemoryConfig.HistorySize); asked on every publish, so it must be
	// quick. Nil means 0; values above MaxHistorySize are capped.
	HistorySize func(topic string) int
	// HistoryBytes bounds the payload bytes kept per topic (the oldest go
	// first; the newest is always kept). Zero means DefaultHistoryBytes.
	HistoryBytes int
	// HistoryTTL is how long a topic's history outlives its last publish;
	// its epoch lives six times longer. Zero means DefaultHistoryTTL.
	HistoryTTL time.Duration
	// Timeout bounds every Redis call (publish, history, subscribe, ping).
	// Zero means DefaultRedisTimeout.
	Timeout time.Duration
	// Shards is the number of pub/sub connections per node (per master in
	// a Cluster). Zero means DefaultRedisShards.
	Shards int
}

// NewRedisConfig returns a RedisConfig with the defaults filled in.
func NewRedisConfig() RedisConfig {
	return RedisConfig{Prefix: DefaultRedisPrefix, HistoryBytes: DefaultHistoryBytes,
		HistoryTTL: DefaultHistoryTTL, Timeout: DefaultRedisTimeout, Shards: DefaultRedisShards}
}

// Validate reports a missing address, a bad URL or a negative bound.
func (c RedisConfig) Validate() error {
	if c.URL == "" && len(c.ClusterAddrs) == 0 {
		return fmt.Errorf("%w: no Redis URL or cluster address", ErrInvalidConfig)
	}
	if c.URL != "" {
		if _, err := redis.ParseURL(c.URL); err != nil {
			return fmt.Errorf("%w: Redis URL: %v", ErrInvalidConfig, err)
		}
	}
	for _, a := range c.ClusterAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%w: cluster address %q: %v", ErrInvalidConfig, a, err)
		}
	}
	switch {
	case c.HistoryBytes < 0:
		return fmt.Errorf("%w: HistoryBytes %d is negative", ErrInvalidConfig, c.HistoryBytes)
	case c.HistoryTTL < 0:
		return fmt.Errorf("%w: HistoryTTL %v is negative", ErrInvalidConfig, c.HistoryTTL)
	case c.Timeout < 0:
		return fmt.Errorf("%w: Timeout %v is negative", ErrInvalidConfig, c.Timeout)
	case c.Shards < 0 || c.Shards > 256:
		return fmt.Errorf("%w: Shards %d outside 0..256", ErrInvalidConfig, c.Shards)
	}
	return nil
}

// Redis is the Broker for several nodes: each topic is a Redis Stream
// (history, offsets = entry IDs) plus a hash holding its epoch and top
// offset, written together by one Lua script per publish, which also
// publishes the event on the topic's shard channel for live delivery. All
// of a topic's keys share a hash tag, so it works on Redis Cluster, where
// the live channel is a sharded pub/sub channel (SPUBLISH) served by the
// topic's master.
//
// A node subscribes only to topics it has handlers for, over a few pub/sub
// connections. Whenever a connection was lost (or looked dead and was
// replaced), every topic on it gets Resync once it is back: the handler
// catches up from history. Publish, History and Subscribe fail within
// Timeout while Redis is unreachable; the handlers stay installed and the
// engine recovers by itself.
type Redis struct {
	cfg     RedisConfig
	client  redis.UniversalClient
	cluster *redis.ClusterClient // nil for a single server
	pubCmd  string               // PUBLISH or SPUBLISH
	m       *redisMetrics

	mu     sync.Mutex
	subs   map[string]*redisSub   // by channel name
	shards map[string]*redisShard // by node address and index
	closed bool

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type redisSub struct {
	topic string
	h     Handler
	shard *redisShard
}

// redisShard is one pub/sub connection and the goroutine reading it.
type redisShard struct {
	r      *Redis
	node   *redis.Client // the server (Cluster master) it talks to
	mu     sync.Mutex    // guards ps and waiting
	ps     *redis.PubSub
	waits  map[string][]chan struct{} // subscriptions awaiting confirmation
	unsubs map[string]int             // unsubscriptions awaiting confirmation
}

// NewRedis connects to Redis (checking it answers within Timeout) and
// returns the engine. Close releases it.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultRedisPrefix
	}
	if cfg.HistoryBytes <= 0 {
		cfg.HistoryBytes = DefaultHistoryBytes
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = DefaultHistoryTTL
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultRedisTimeout
	}
	if cfg.Shards <= 0 {
		cfg.Shards = DefaultRedisShards
	}
	r := &Redis{cfg: cfg, m: newRedisMetrics(), subs: map[string]*redisSub{}, shards: map[string]*redisShard{}}
	var base *redis.Options
	if cfg.URL != "" {
		base, _ = redis.ParseURL(cfg.URL) // checked by Validate
	} else {
		base = &redis.Options{}
	}
	// No retries inside the client: a publish whose answer was lost must
	// not run again behind the caller's back (callers retry with an
	// idempotency key), and every call is bounded by Timeout anyway.
	base.MaxRetries = -1
	base.DialTimeout = cfg.Timeout
	base.ReadTimeout = cfg.Timeout
	base.WriteTimeout = cfg.Timeout
	base.PoolTimeout = cfg.Timeout
	base.ContextTimeoutEnabled = true
	if len(cfg.ClusterAddrs) > 0 {
		r.cluster = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cfg.ClusterAddrs, Username: base.Username, Password: base.Password, TLSConfig: base.TLSConfig,
			MaxRetries: -1, MaxRedirects: 3, DialTimeout: cfg.Timeout, ReadTimeout: cfg.Timeout,
			WriteTimeout: cfg.Timeout, PoolTimeout: cfg.Timeout, ContextTimeoutEnabled: true,
		})
		r.client = r.cluster
		r.pubCmd = "SPUBLISH"
	} else {
		r.client = redis.NewClient(base)
		r.pubCmd = "PUBLISH"
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	ctx, cancel := context.WithTimeout(r.ctx, cfg.Timeout)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		r.cancel()
		_ = r.client.Close()
		return nil, fmt.Errorf("%w: %v", ErrRedis, err)
	}
	r.wg.Add(1)
	go r.keepEpochs()
	return r, nil
}

// keepEpochs refreshes the epoch TTL of every topic subscribed here, so a
// room whose players are connected but quiet does not lose its epoch (and
// send them all phx_error and recovered=false on its next event), as the
// memory engine keeps every topic that has a handler.
func (r *Redis) keepEpochs() {
	defer r.wg.Done()
	ttl := redisMetaTTLFactor * r.cfg.HistoryTTL
	t := time.NewTicker(min(ttl/3, 5*time.Minute))
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		topics := make([]string, 0, len(r.subs))
		for _, s := range r.subs {
			topics = append(topics, s.topic)
		}
		r.mu.Unlock()
		for len(topics) > 0 {
			batch := topics[:min(len(topics), 1000)]
			topics = topics[len(batch):]
			ctx, cancel := r.callCtx(r.ctx)
			_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, topic := range batch {
					p.PExpire(ctx, r.metaKey(topic), ttl)
				}
				return nil
			})
			cancel()
			if err != nil {
				r.m.errors.WithLabelValues("keepalive").Inc()
			}
		}
	}
}

// Key names: see redisTopicKey.
func (r *Redis) metaKey(topic string) string   { return redisTopicKey(r.cfg.Prefix, topic, "m") }
func (r *Redis) streamKey(topic string) string { return redisTopicKey(r.cfg.Prefix, topic, "s") }
func (r *Redis) channel(topic string) string   { return redisTopicKey(r.cfg.Prefix, topic, "c") }
func (r *Redis) idemKey(topic, key string) string {
	return redisTopicKey(r.cfg.Prefix, topic, "k:"+key)
}

func (r *Redis) historySize(topic string) int {
	if r.cfg.HistorySize == nil {
		return 0
	}
	return min(max(r.cfg.HistorySize(topic), 0), MaxHistorySize)
}

// luaEpoch is the start both scripts share: the topic's meta and stream
// keys, and its epoch, created from the argument named newEpoch (a fresh
// one from Go) when the topic has none, with any stale stream dropped.
func luaEpoch(newEpoch string) string {
	return `
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ` + newEpoch + `
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 't', 0, 'b', 0)
end
`
}

// publishScript appends one event. KEYS: meta, stream, idempotency key
// (or the meta key again when none). ARGV: event, payload, binary flag
// ("1"/"0"), history size, history bytes, history TTL ms, meta TTL ms,
// epoch to create, channel, publish command, ephemeral flag, time ms,
// idempotency TTL ms, keyed flag.
//
// The stream is trimmed by hand rather than with XADD MAXLEN so that the
// byte bound is exact: the meta hash keeps the payload bytes held ("b").
// Entry IDs are "<offset>-0", so XRANGE reads by offset.
var publishScript = redis.NewScript(luaEpoch("ARGV[8]") + `
local metattl = tonumber(ARGV[7])
if ARGV[11] == '1' then
  redis.call('PEXPIRE', meta, metattl)
  redis.call(ARGV[10], ARGV[9], '- 0 ' .. ARGV[12] .. ' ' .. ARGV[3] .. ' ' .. #ARGV[1] .. '\n' .. ARGV[1] .. ARGV[2])
  return {epoch, 0}
end
if ARGV[14] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local e, o = string.match(seen, '^(.*) (%d+)$')
    if e then return {e, tonumber(o)} end
  end
end
local top = redis.call('HINCRBY', meta, 't', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  local maxbytes = tonumber(ARGV[5])
  if redis.call('EXISTS', stream) == 0 then
    redis.call('HSET', meta, 'b', 0) -- the history expired: nothing is held
  end
  redis.call('XADD', stream, top .. '-0', 'e', ARGV[1], 'p', ARGV[2], 'b', ARGV[3], 't', ARGV[12])
  local bytes = tonumber(redis.call('HINCRBY', meta, 'b', #ARGV[2]))
  local n = redis.call('XLEN', stream)
  -- Trim the oldest entries, a batch at a time, down to the count and
  -- byte bounds (the newest one always stays).
  while n > size or (bytes > maxbytes and n > 1) do
    local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(n - 1, 256))
    local cut = nil
    local freed = 0
    for _, e in ipairs(batch) do
      if n <= size and (bytes - freed <= maxbytes or n <= 1) then break end
      freed = freed + #e[2][4]
      n = n - 1
      cut = e[1]
    end
    if not cut then break end
    -- Everything up to cut goes: XTRIM MINID keeps IDs >= the next one.
    local off = tonumber(string.match(cut, '^(%d+)'))
    redis.call('XTRIM', stream, 'MINID', (off + 1) .. '-0')
    bytes = tonumber(redis.call('HINCRBY', meta, 'b', -freed))
  end
  redis.call('PEXPIRE', stream, tonumber(ARGV[6]))
end
redis.call('PEXPIRE', meta, metattl)
if ARGV[14] == '1' then
  redis.call('SET', KEYS[3], epoch .. ' ' .. top, 'PX', tonumber(ARGV[13]))
end
redis.call(ARGV[10], ARGV[9], epoch .. ' ' .. top .. ' ' .. ARGV[12] .. ' ' .. ARGV[3] .. ' ' .. #ARGV[1] .. '\n' .. ARGV[1] .. ARGV[2])
return {epoch, top}
`)

// historyScript reads a topic's position and, when the position asked
// for is in the same epoch and not ahead, the entries after it. KEYS:
// meta, stream. ARGV: epoch asked for, offset asked for, count, epoch to
// create, meta TTL ms. A topic never published gets its epoch here, so
// every position handed out names one.
var historyScript = redis.NewScript(luaEpoch("ARGV[4]") + `
redis.call('PEXPIRE', meta, tonumber(ARGV[5]))
local top = tonumber(redis.call('HGET', meta, 't'))
local since = tonumber(ARGV[2])
if ARGV[1] ~= epoch or since >= top then
  return {epoch, top}
end
return {epoch, top, redis.call('XRANGE', stream, (since + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[3]))}
`)

func (r *Redis) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.Timeout)
}

// Publish implements Broker.
func (r *Redis) Publish(ctx context.Context, topic string, msg Message) (Position, error) {
	if len(msg.IdempotencyKey) > MaxIdempotencyKeyLen {
		return Position{}, ErrBadIdempotencyKey
	}
	if r.isClosed() {
		return Position{}, ErrClosed
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	keyed := msg.IdempotencyKey != "" && !msg.Ephemeral
	keys := []string{r.metaKey(topic), r.streamKey(topic), r.metaKey(topic)}
	if keyed {
		keys[2] = r.idemKey(topic, msg.IdempotencyKey)
	}
	res, err := publishScript.Run(ctx, r.client, keys,
		msg.Event, msg.Payload, flag(msg.Binary), r.historySize(topic), r.cfg.HistoryBytes,
		r.cfg.HistoryTTL.Milliseconds(), (redisMetaTTLFactor * r.cfg.HistoryTTL).Milliseconds(),
		newEpoch(), r.channel(topic), r.pubCmd, flag(msg.Ephemeral), time.Now().UnixMilli(),
		redisIdempotencyWindow.Milliseconds(), flag(keyed)).Slice()
	if err != nil {
		r.m.errors.WithLabelValues("publish").Inc()
		return Position{}, fmt.Errorf("%w: publish to %q: %v", ErrRedis, topic, err)
	}
	r.m.publishes.Inc()
	pos, err := scriptPosition(res)
	if err != nil || msg.Ephemeral {
		return Position{}, err
	}
	return pos, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// scriptPosition reads the {epoch, offset} both scripts start with.
func scriptPosition(res []any) (Position, error) {
	if len(res) < 2 {
		return Position{}, fmt.Errorf("%w: short script answer", ErrRedis)
	}
	epoch, ok1 := res[0].(string)
	off, ok2 := res[1].(int64)
	if !ok1 || !ok2 || off < 0 {
		return Position{}, fmt.Errorf("%w: malformed script answer", ErrRedis)
	}
	return Position{Epoch: epoch, Offset: uint64(off)}, nil
}

// History implements Broker.
func (r *Redis) History(ctx context.Context, topic string, since Position, limit int) (HistoryResult, error) {
	if r.isClosed() {
		return HistoryResult{}, ErrClosed
	}
	if limit <= 0 || limit > MaxHistoryPage {
		limit = MaxHistoryPage
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	epoch, off := since.Epoch, since.Offset
	if since.IsZero() {
		epoch = "" // never an epoch: only the top comes back
	}
	res, err := historyScript.Run(ctx, r.client, []string{r.metaKey(topic), r.streamKey(topic)},
		epoch, off, limit, newEpoch(), (redisMetaTTLFactor * r.cfg.HistoryTTL).Milliseconds()).Slice()
	if err != nil {
		r.m.errors.WithLabelValues("history").Inc()
		return HistoryResult{}, fmt.Errorf("%w: history of %q: %v", ErrRedis, topic, err)
	}
	top, err := scriptPosition(res)
	if err != nil {
		return HistoryResult{}, err
	}
	hr := HistoryResult{Top: top}
	if since.IsZero() || since.Epoch != top.Epoch || since.Offset > top.Offset {
		return hr, nil
	}
	if since.Offset == top.Offset {
		hr.Recovered = true
		return hr, nil
	}
	if len(res) < 3 {
		return hr, nil
	}
	entries, _ := res[2].([]any)
	want := since.Offset + 1
	for _, e := range entries {
		ev, err := r.entryEvent(topic, top.Epoch, e)
		if err != nil {
			return HistoryResult{}, err
		}
		if ev.Pos.Offset != want {
			break // trimmed (or a hole): what was missed is not all here
		}
		hr.Events = append(hr.Events, ev)
		want++
	}
	if len(hr.Events) == 0 {
		return HistoryResult{Top: top}, nil // the next one is gone
	}
	hr.Recovered = true
	return hr, nil
}

// entryEvent decodes one XRANGE entry: [id, [field, value, …]].
func (r *Redis) entryEvent(topic, epoch string, e any) (*Event, error) {
	bad := fmt.Errorf("%w: malformed stream entry of %q", ErrRedis, topic)
	pair, ok := e.([]any)
	if !ok || len(pair) != 2 {
		return nil, bad
	}
	id, _ := pair[0].(string)
	offStr, _, _ := strings.Cut(id, "-")
	off, err := strconv.ParseUint(offStr, 10, 64)
	if err != nil {
		return nil, bad
	}
	fields, _ := pair[1].([]any)
	ev := &Event{Topic: topic, Pos: Position{Epoch: epoch, Offset: off}}
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		switch k {
		case "e":
			ev.Event = v
		case "p":
			ev.Payload = []byte(v)
		case "b":
			ev.Binary = v == "1"
		case "t":
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
				ev.Published = time.UnixMilli(ms)
			}
		}
	}
	return ev, nil
}

// Ping implements Broker: Redis answers within Timeout.
func (r *Redis) Ping(ctx context.Context) error {
	if r.isClosed() {
		return ErrClosed
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	if r.cluster != nil {
		// Every master must answer: a topic on a dead one cannot publish.
		err := r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
		if err != nil {
			return fmt.Errorf("%w: %v", ErrRedis, err)
		}
		return nil
	}
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrRedis, err)
	}
	return nil
}

func (r *Redis) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// Subscribe implements Broker. It returns once Redis has confirmed the
// subscription, with the topic's position read after that.
func (r *Redis) Subscribe(ctx context.Context, topic string, h Handler) (Position, error) {
	if h == nil {
		return Position{}, errors.New("pubsub: nil handler")
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	ch := r.channel(topic)
	sh, err := r.shardFor(ctx, ch)
	if err != nil {
		r.m.errors.WithLabelValues("subscribe").Inc()
		return Position{}, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return Position{}, ErrClosed
	}
	r.subs[ch] = &redisSub{topic: topic, h: h, shard: sh}
	r.mu.Unlock()
	err = sh.subscribe(ctx, ch)
	var hr HistoryResult
	if err == nil {
		hr, err = r.History(ctx, topic, Position{}, 1)
	}
	if err != nil {
		// Undo it all, or the connection would keep (and resubscribe on
		// every reconnect) a channel nobody reads.
		r.mu.Lock()
		if s := r.subs[ch]; s != nil && s.h == h {
			delete(r.subs, ch)
		}
		r.mu.Unlock()
		uctx, cancel := r.callCtx(r.ctx)
		_ = sh.unsubscribe(uctx, ch)
		cancel()
		r.m.errors.WithLabelValues("subscribe").Inc()
		return Position{}, fmt.Errorf("%w: subscribe to %q: %v", ErrRedis, topic, err)
	}
	return hr.Top, nil
}

// Unsubscribe implements Broker.
func (r *Redis) Unsubscribe(ctx context.Context, topic string) error {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	ch := r.channel(topic)
	r.mu.Lock()
	s := r.subs[ch]
	delete(r.subs, ch)
	var sh *redisShard
	if s != nil {
		sh = s.shard
	}
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := sh.unsubscribe(ctx, ch); err != nil {
		r.m.errors.WithLabelValues("subscribe").Inc()
		return fmt.Errorf("%w: unsubscribe from %q: %v", ErrRedis, topic, err)
	}
	return nil
}

// shardFor returns the pub/sub connection for a channel: one of Shards
// per server (per master owning the channel's slot in a Cluster), started
// on first use.
func (r *Redis) shardFor(ctx context.Context, ch string) (*redisShard, error) {
	var node *redis.Client
	if r.cluster != nil {
		c, err := r.cluster.MasterForKey(ctx, ch)
		if err != nil {
			return nil, fmt.Errorf("%w: no master for %q: %v", ErrRedis, ch, err)
		}
		node = c
	} else {
		node = r.client.(*redis.Client)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(ch))
	key := node.Options().Addr + "#" + strconv.Itoa(int(h.Sum32()%uint32(r.cfg.Shards)))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	sh := r.shards[key]
	if sh == nil {
		sh = &redisShard{r: r, node: node, waits: map[string][]chan struct{}{}, unsubs: map[string]int{}}
		sh.ps = sh.newPubSub()
		r.shards[key] = sh
		r.wg.Add(1)
		go sh.run()
	}
	return sh, nil
}

func (sh *redisShard) newPubSub() *redis.PubSub {
	if sh.r.cluster != nil {
		return sh.node.SSubscribe(sh.r.ctx)
	}
	return sh.node.Subscribe(sh.r.ctx)
}

// subscribe sends the subscription and waits for Redis to confirm it (a
// confirmation may come over a new connection if the first one dies).
func (sh *redisShard) subscribe(ctx context.Context, ch string) error {
	done := make(chan struct{})
	sh.mu.Lock()
	sh.waits[ch] = append(sh.waits[ch], done)
	ps := sh.ps
	sh.mu.Unlock()
	var err error
	if sh.r.cluster != nil {
		err = ps.SSubscribe(ctx, ch)
	} else {
		err = ps.Subscribe(ctx, ch)
	}
	if err == nil {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	sh.mu.Lock()
	ws := sh.waits[ch]
	for i, w := range ws {
		if w == done {
			sh.waits[ch] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(sh.waits[ch]) == 0 {
		delete(sh.waits, ch)
	}
	sh.mu.Unlock()
	return err
}

func (sh *redisShard) unsubscribe(ctx context.Context, ch string) error {
	sh.mu.Lock()
	sh.unsubs[ch]++
	ps := sh.ps
	sh.mu.Unlock()
	if sh.r.cluster != nil {
		return ps.SUnsubscribe(ctx, ch)
	}
	return ps.Unsubscribe(ctx, ch)
}

// run reads the shard's connection until Close. After any failure it
// resyncs every topic of the shard once the connection works again; a
// connection silent for redisDeadAfter (pings unanswered) is replaced.
func (sh *redisShard) run() {
	r := sh.r
	defer r.wg.Done()
	resync := false
	lastHeard := time.Now()
	for r.ctx.Err() == nil {
		sh.mu.Lock()
		ps := sh.ps
		sh.mu.Unlock()
		msg, err := ps.ReceiveTimeout(r.ctx, redisPingEvery)
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Since(lastHeard) > redisDeadAfter {
					sh.replace()
					resync = true
					lastHeard = time.Now()
					r.m.reconnects.Inc()
					continue
				}
				pctx, cancel := r.callCtx(r.ctx)
				_ = ps.Ping(pctx)
				cancel()
				continue
			}
			if !resync {
				r.m.reconnects.Inc()
			}
			resync = true
			r.m.errors.WithLabelValues("pubsub").Inc()
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(min(redisRetryPause, r.cfg.Timeout)):
			}
			if r.cluster != nil {
				// go-redis resubscribes a new connection with one
				// SSUBSCRIBE for every channel, which a Cluster refuses
				// (CROSSSLOT) once they span slots: start over with one
				// subscription per channel.
				sh.replace()
			}
			continue
		}
		lastHeard = time.Now()
		if resync {
			resync = false
			// The new connection subscribed to what is installed now:
			// confirmations of unsubscriptions sent on the old one will
			// not come.
			sh.mu.Lock()
			clear(sh.unsubs)
			sh.mu.Unlock()
			sh.resyncAll()
		}
		switch m := msg.(type) {
		case *redis.Message:
			sh.deliver(m)
		case *redis.Subscription:
			sh.confirm(m)
		}
	}
}

// replace swaps a connection that stopped answering for a new one with the
// same subscriptions.
func (sh *redisShard) replace() {
	r := sh.r
	var chans []string
	r.mu.Lock()
	for ch, s := range r.subs {
		if s.shard == sh {
			chans = append(chans, ch)
		}
	}
	r.mu.Unlock()
	sh.mu.Lock()
	for ch := range sh.waits {
		chans = append(chans, ch)
	}
	clear(sh.unsubs) // the old connection's confirmations will not come
	old := sh.ps
	sh.ps = sh.newPubSub()
	ps := sh.ps
	sh.mu.Unlock()
	_ = old.Close()
	if len(chans) == 0 {
		return
	}
	ctx, cancel := r.callCtx(r.ctx)
	defer cancel()
	if r.cluster == nil {
		_ = ps.Subscribe(ctx, chans...)
		return
	}
	for _, ch := range chans {
		// One per command: channels of different slots cannot share one.
		_ = ps.SSubscribe(ctx, ch)
	}
}

func (sh *redisShard) confirm(m *redis.Subscription) {
	switch m.Kind {
	case "subscribe", "ssubscribe":
		sh.mu.Lock()
		ws := sh.waits[m.Channel]
		delete(sh.waits, m.Channel)
		sh.mu.Unlock()
		for _, w := range ws {
			close(w)
		}
	case "unsubscribe", "sunsubscribe":
		sh.mu.Lock()
		expected := sh.unsubs[m.Channel] > 0
		if expected {
			sh.unsubs[m.Channel]--
			if sh.unsubs[m.Channel] == 0 {
				delete(sh.unsubs, m.Channel)
			}
		}
		sh.mu.Unlock()
		if !expected {
			// Redis dropped the subscription itself: in a Cluster, the
			// slot moved to another master. Subscribe again where it
			// lives now, and catch up.
			sh.r.moved(m.Channel)
		}
	}
}

// moved re-subscribes a channel whose subscription Redis ended (in a
// Cluster, its slot moved to another master): with the slot map reloaded,
// where the slot lives now, retrying until that works, the topic is
// unsubscribed, or the engine closes. Then the topic catches up.
func (r *Redis) moved(ch string) {
	r.mu.Lock()
	s := r.subs[ch]
	var oldShard *redisShard
	if s != nil {
		oldShard = s.shard
	}
	r.mu.Unlock()
	if s == nil {
		return
	}
	r.wg.Add(1)
	go func() {
		// Not on the shard's goroutine: subscribing waits for a
		// confirmation that this shard may be the one to read.
		defer r.wg.Done()
		// The old connection forgets the channel (go-redis would
		// resubscribe it there on its next reconnect).
		oldShard.mu.Lock()
		oldShard.unsubs[ch]++
		old := oldShard.ps
		oldShard.mu.Unlock()
		ctx, cancel := r.callCtx(r.ctx)
		if r.cluster != nil {
			_ = old.SUnsubscribe(ctx, ch)
		} else {
			_ = old.Unsubscribe(ctx, ch)
		}
		cancel()
		pause := 50 * time.Millisecond
		for r.ctx.Err() == nil {
			r.mu.Lock()
			current := r.subs[ch] == s
			r.mu.Unlock()
			if !current {
				return // unsubscribed, or subscribed anew, meanwhile
			}
			if err := r.resubscribe(s); err == nil {
				s.h.Resync(s.topic)
				return
			}
			r.m.errors.WithLabelValues("subscribe").Inc()
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, redisRetryPause)
		}
	}()
}

// resubscribe subscribes s's channel where its slot lives now and, unless
// the topic changed hands meanwhile, records the new shard.
func (r *Redis) resubscribe(s *redisSub) error {
	ctx, cancel := r.callCtx(r.ctx)
	defer cancel()
	if r.cluster != nil {
		r.cluster.ReloadState(ctx)
	}
	ch := r.channel(s.topic)
	sh, err := r.shardFor(ctx, ch)
	if err != nil {
		return err
	}
	if err := sh.subscribe(ctx, ch); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.subs[ch] == s {
		s.shard = sh
	}
	return nil
}

// resyncAll tells every handler of the shard to catch up.
func (sh *redisShard) resyncAll() {
	r := sh.r
	var subs []*redisSub
	r.mu.Lock()
	for _, s := range r.subs {
		if s.shard == sh {
			subs = append(subs, s)
		}
	}
	r.mu.Unlock()
	r.m.resyncs.Add(float64(len(subs)))
	for _, s := range subs {
		s.h.Resync(s.topic)
	}
}

// deliver decodes a live event, "<epoch> <offset> <ms> <binary> <event
// length>\n<event><payload>" (epoch "-" and offset 0 for an ephemeral
// one), and hands it to the topic's handler.
func (sh *redisShard) deliver(m *redis.Message) {
	r := sh.r
	r.mu.Lock()
	s := r.subs[m.Channel]
	r.mu.Unlock()
	if s == nil {
		return // unsubscribed meanwhile
	}
	ev, err := decodeLive(s.topic, m.Payload)
	if err != nil {
		r.m.errors.WithLabelValues("decode").Inc()
		s.h.Resync(s.topic) // what it carried is read from history
		return
	}
	s.h.Deliver(ev)
}

func decodeLive(topic, msg string) (*Event, error) {
	bad := fmt.Errorf("%w: malformed live event on %q", ErrRedis, topic)
	head, body, ok := strings.Cut(msg, "\n")
	if !ok {
		return nil, bad
	}
	f := strings.Fields(head)
	if len(f) != 5 {
		return nil, bad
	}
	off, err1 := strconv.ParseUint(f[1], 10, 64)
	ms, err2 := strconv.ParseInt(f[2], 10, 64)
	n, err3 := strconv.Atoi(f[4])
	if err1 != nil || err2 != nil || err3 != nil || n < 0 || n > len(body) {
		return nil, bad
	}
	ev := &Event{Topic: topic, Event: body[:n], Payload: []byte(body[n:]), Binary: f[3] == "1",
		Published: time.UnixMilli(ms)}
	if f[0] != "-" {
		ev.Pos = Position{Epoch: f[0], Offset: off}
	}
	return ev, nil
}

// Close implements Broker: it stops every pub/sub reader and closes the
// clients. Later calls return ErrClosed.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	shards := r.shards
	r.shards = nil
	r.subs = map[string]*redisSub{}
	r.mu.Unlock()
	r.cancel()
	for _, sh := range shards {
		sh.mu.Lock()
		_ = sh.ps.Close()
		sh.mu.Unlock()
	}
	r.wg.Wait()
	return r.client.Close()
}

// Client returns the engine's Redis client, for other state kept in the
// same Redis (presence). It is closed by Close.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Collector returns the engine's metrics for registration.
func (r *Redis) Collector() prometheus.Collector { return r.m }

type redisMetrics struct {
	publishes  prometheus.Counter
	errors     *prometheus.CounterVec
	reconnects prometheus.Counter
	resyncs    prometheus.Counter
}

func newRedisMetrics() *redisMetrics {
	m := &redisMetrics{
		publishes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_pubsub_redis_publishes_total", Help: "Events published through Redis by this node.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_pubsub_redis_errors_total", Help: "Failed Redis calls, by operation (publish, history, subscribe, pubsub, decode, keepalive).",
		}, []string{"op"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_pubsub_redis_reconnects_total", Help: "Pub/sub connections lost (or replaced after going silent) and re-established.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_pubsub_redis_resyncs_total", Help: "Topics caught up from history after a pub/sub reconnect.",
		}),
	}
	for _, op := range []string{"publish", "history", "subscribe", "pubsub", "decode", "keepalive"} {
		m.errors.WithLabelValues(op)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *redisMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.publishes.Describe(ch)
	m.errors.Describe(ch)
	m.reconnects.Describe(ch)
	m.resyncs.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *redisMetrics) Collect(ch chan<- prometheus.Metric) {
	m.publishes.Collect(ch)
	m.errors.Collect(ch)
	m.reconnects.Collect(ch)
	m.resyncs.Collect(ch)
}

var _ Broker = (*Redis)(nil)
