package pubsub

import (
	"hash/fnv"
	"strconv"
)

// redisTopicKey is the name of a topic's key of a kind ("m", "s", "c",
// "k:<idempotency key>"): <prefix>:{<fnv64a of the topic, hex>}<topic
// length>:<topic>:<kind>. The hash tag is the topic's hash, never its
// text, so a topic holding braces (or empty) keeps all its keys in one
// Redis Cluster slot; the length makes the name unambiguous whatever the
// topic holds.
func redisTopicKey(prefix, topic, kind string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(topic))
	return prefix + ":{" + strconv.FormatUint(h.Sum64(), 16) + "}" + strconv.Itoa(len(topic)) + ":" + topic + ":" + kind
}
