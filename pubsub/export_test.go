package pubsub

// RedisTopicKey is redisTopicKey, for the tests of package pubsub_test.
var RedisTopicKey = redisTopicKey
