package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub"
	"github.com/phxgate/phxgate/pubsub/brokertest"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

func TestMemoryConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Harness{
		New: func(t *testing.T, l brokertest.Limits) pubsub.Broker {
			cfg := pubsub.NewMemoryConfig()
			cfg.HistorySize = func(string) int { return l.History }
			cfg.HistoryBytes = l.HistoryBytes
			return pubsub.NewMemory(cfg)
		},
	})
}

func redisConfig(l brokertest.Limits) pubsub.RedisConfig {
	cfg := pubsub.NewRedisConfig()
	cfg.HistorySize = func(string) int { return l.History }
	cfg.HistoryBytes = l.HistoryBytes
	return cfg
}

// each runs f on a plain client of every server.
func each(t *testing.T, addrs []string, f func(c *redis.Client) error) {
	t.Helper()
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a, ReadTimeout: 5 * time.Second})
		err := f(c)
		_ = c.Close()
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
}

func redisHarness(addrs []string, newBroker func(t *testing.T, l brokertest.Limits) pubsub.Broker) brokertest.Harness {
	return brokertest.Harness{
		New:  newBroker,
		Peer: func(t *testing.T, _ pubsub.Broker, l brokertest.Limits) pubsub.Broker { return newBroker(t, l) },
		DropLive: func(t *testing.T, _ pubsub.Broker) {
			each(t, addrs, func(c *redis.Client) error {
				return c.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err()
			})
		},
		LoseHistory: func(t *testing.T, _ pubsub.Broker) {
			each(t, addrs, func(c *redis.Client) error {
				err := c.FlushAll(context.Background()).Err()
				if err != nil && redis.HasErrorPrefix(err, "READONLY") {
					return nil // a replica
				}
				return err
			})
		},
	}
}

func TestRedisConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	brokertest.Run(t, redisHarness([]string{srv.Addr()}, func(t *testing.T, l brokertest.Limits) pubsub.Broker {
		cfg := redisConfig(l)
		cfg.URL = srv.URL()
		b, err := pubsub.NewRedis(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}))
}

func TestRedisClusterConformance(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	brokertest.Run(t, redisHarness(cl.Addrs(), func(t *testing.T, l brokertest.Limits) pubsub.Broker {
		cfg := redisConfig(l)
		cfg.ClusterAddrs = cl.Addrs()
		b, err := pubsub.NewRedis(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}))
}
