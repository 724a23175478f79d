package gateway

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/gateway/internal/configload"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

// BrokerConfig holds the top-level keys of the pubsub engine and of replay.
// Zero means the engine's default wherever a field says so.
type BrokerConfig struct {
	// RedisURL selects the Redis Streams broker (redis:// or rediss://
	// for TLS); empty with no RedisClusterAddrs is the embedded in-memory
	// broker (one node only).
	RedisURL string `yaml:"redis_url" usage:"Redis URL, redis:// or rediss:// (empty: in-memory broker)"`
	// RedisClusterAddrs (redis_cluster_addrs) selects Redis Cluster: the
	// host:port of some of its masters. RedisURL then only lends its
	// credentials and TLS.
	RedisClusterAddrs []string `yaml:"redis_cluster_addrs" usage:"Redis Cluster masters host:port, comma-separated (selects Cluster)"`
	// RedisPrefix (redis_prefix) starts every Redis key and channel, so
	// that deployments can share a Redis; empty means "phx".
	RedisPrefix string `yaml:"redis_prefix" usage:"prefix of every Redis key and channel (empty: phx)"`
	// RedisTimeout (redis_timeout) bounds every Redis call; a publish
	// fails after it while Redis is unreachable. Zero means 2s.
	RedisTimeout time.Duration `yaml:"redis_timeout" usage:"bound of every Redis call (0s: 2s)"`
	// RedisShards (redis_shards) is the number of pub/sub connections per
	// node (per master on a Cluster); 0 means 4, at most 256.
	RedisShards int `yaml:"redis_shards" usage:"Redis pub/sub connections per node, per master on a Cluster (0: 4)"`
	// MaxTopics (max_topics) bounds the topics the in-memory broker
	// tracks at once; a publish or join on one more fails. 0 means
	// 100,000.
	MaxTopics int `yaml:"max_topics" usage:"topics the in-memory broker tracks at once (0: 100000)"`
	// HistoryTTL (history_ttl) is how long a topic's history outlives its
	// last publish (Redis; the memory engine: its last use). Zero means 10m.
	HistoryTTL time.Duration `yaml:"history_ttl" usage:"how long a topic's history outlives its last publish (0s: 10m)"`
	// HistoryBytes (history_bytes) bounds the payload bytes of one topic's
	// history; the oldest events go first. Zero means 8 MiB.
	HistoryBytes int `yaml:"history_bytes" usage:"payload bytes kept per topic's history (0: 8 MiB)"`
	// MaxReplay (max_replay) is the most events one resuming join is
	// replayed; a client that missed more gets recovered=false. Zero
	// means 1,000.
	MaxReplay int `yaml:"max_replay" usage:"most events one resuming join is replayed (0: 1000)"`
	// ReplayBytes (replay_bytes) is the most payload bytes one resuming
	// join is replayed (past it: recovered=false), so a replay never
	// overflows the socket's write queue. Zero means half of
	// write_queue_max_bytes.
	ReplayBytes int `yaml:"replay_bytes" usage:"most payload bytes one resuming join is replayed (0: half of write_queue_max_bytes)"`
}

// usesRedis reports whether the Redis engine is selected.
func (b BrokerConfig) usesRedis() bool { return b.RedisURL != "" || len(b.RedisClusterAddrs) > 0 }

// memoryConfig and redisConfig are the engines' configs, as Start builds
// them and Validate checks them; history sizes each topic.
func (b BrokerConfig) memoryConfig(history func(string) int) pubsub.MemoryConfig {
	m := pubsub.NewMemoryConfig()
	m.HistorySize = history
	m.HistoryTTL = cmp.Or(b.HistoryTTL, m.HistoryTTL)
	m.HistoryBytes = cmp.Or(b.HistoryBytes, m.HistoryBytes)
	m.MaxTopics = cmp.Or(b.MaxTopics, m.MaxTopics)
	return m
}

func (b BrokerConfig) redisConfig(history func(string) int) pubsub.RedisConfig {
	r := pubsub.NewRedisConfig()
	r.URL, r.ClusterAddrs, r.HistorySize = b.RedisURL, b.RedisClusterAddrs, history
	r.Prefix = cmp.Or(b.RedisPrefix, r.Prefix)
	r.Timeout = cmp.Or(b.RedisTimeout, r.Timeout)
	r.HistoryTTL = cmp.Or(b.HistoryTTL, r.HistoryTTL)
	r.HistoryBytes = cmp.Or(b.HistoryBytes, r.HistoryBytes)
	r.Shards = cmp.Or(b.RedisShards, r.Shards)
	return r
}

// redisKey is the key a Redis engine error is reported under.
func (b BrokerConfig) redisKey() string {
	if len(b.RedisClusterAddrs) > 0 {
		return "redis_cluster_addrs"
	}
	return "redis_url"
}

// validateBroker checks the broker keys, then the selected engine's own
// Validate on the config Start will build.
func (c Config) validateBroker() error {
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return keyErr("redis_url", "must be redis://host:port[/db] or rediss://host:port[/db]")
		}
	}
	for i, a := range c.RedisClusterAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return keyErr(fmt.Sprintf("redis_cluster_addrs[%d]", i), "must be host:port, got %q", a)
		}
	}
	switch {
	case strings.ContainsAny(c.RedisPrefix, "{}"):
		// Keys carry a hash tag of the topic after the prefix: a brace in
		// the prefix would take the tag's place on a Redis Cluster.
		return keyErr("redis_prefix", "must not contain { or } (got %q): each key's Cluster hash tag follows it", c.RedisPrefix)
	case c.RedisTimeout < 0 || c.RedisTimeout > time.Minute:
		return keyErr("redis_timeout", "must be between 0s and 1m")
	case c.RedisShards < 0 || c.RedisShards > 256:
		return keyErr("redis_shards", "must be between 0 and 256")
	case c.MaxTopics < 0 || c.MaxTopics > 100_000_000:
		return keyErr("max_topics", "must be between 0 and 100000000")
	case c.HistoryTTL < 0 || c.HistoryTTL > 7*24*time.Hour:
		return keyErr("history_ttl", "must be between 0s and 168h")
	case c.HistoryBytes < 0 || c.HistoryBytes > 1<<30:
		return keyErr("history_bytes", "must be between 0 and 1073741824")
	case c.MaxReplay < 0 || c.MaxReplay > pubsub.MaxHistorySize:
		return keyErr("max_replay", "must be between 0 and %d", pubsub.MaxHistorySize)
	case c.ReplayBytes < 0 || (c.ReplayBytes > c.WriteQueueMaxBytes && c.WriteQueueMaxBytes > 0):
		return keyErr("replay_bytes", "must be between 0 and write_queue_max_bytes (%d): a bigger replay would close the socket", c.WriteQueueMaxBytes)
	}
	if c.usesRedis() {
		if err := c.redisConfig(nil).Validate(); err != nil {
			return configload.Section(c.redisKey()+": ", err, pubsub.ErrInvalidConfig)
		}
		return nil
	}
	return configload.Section("broker: ", c.memoryConfig(nil).Validate(), pubsub.ErrInvalidConfig)
}

// newBroker builds the pubsub engine the configuration selects: Redis
// Streams when a Redis URL or Cluster addresses are set, else the
// in-memory engine. History is sized per route.
func newBroker(cfg Config, router *channels.Router, reg prometheus.Registerer) (pubsub.Broker, error) {
	history := func(topic string) int {
		if r := router.Match(topic); r != nil {
			return r.History
		}
		return 0
	}
	if !cfg.usesRedis() {
		return pubsub.NewMemory(cfg.memoryConfig(history)), nil
	}
	r, err := pubsub.NewRedis(cfg.redisConfig(history))
	if err != nil {
		return nil, keyErr(cfg.redisKey(), "%v", err)
	}
	if reg != nil {
		if err := reg.Register(r.Collector()); err != nil {
			_ = r.Close()
			return nil, err
		}
	}
	return r, nil
}
