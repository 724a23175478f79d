package redistest

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// clusterTimeout bounds how long the cluster may take to report
	// cluster_state:ok on every node.
	clusterTimeout = 20 * time.Second
	// createTimeout bounds `redis-cli --cluster create`.
	createTimeout = 30 * time.Second
	// minMasters is the fewest masters redis-cli --cluster create accepts.
	minMasters = 3
)

// Cluster is a Redis Cluster of masters without replicas, owned by a test.
type Cluster struct {
	t     testing.TB
	nodes []*Server
}

// StartCluster runs masters (at least 3) cluster-enabled redis-servers, each
// on free ports in its own directory, joins them with
// `redis-cli --cluster create --cluster-replicas 0`, and waits until every
// node reports cluster_state:ok with all 16384 slots assigned. Every node is
// killed when the test ends. Nodes use a 2 s cluster-node-timeout; a node's
// Restart keeps its ports and nodes.conf, so it rejoins as the same node.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < minMasters {
		t.Fatalf("redistest: StartCluster(%d): a cluster needs at least %d masters", masters, minMasters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redistest: redis-cli is not on PATH; %s: %v", installHint, err)
	}
	c := &Cluster{t: t}
	for range masters {
		c.nodes = append(c.nodes, start(t, Options{}, true))
	}
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.WaitOK()
	return c
}

// Addrs are the nodes' host:port addresses, in the order of Nodes.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes are the cluster's servers, to Kill, Stop or Restart one of them.
func (c *Cluster) Nodes() []*Server { return append([]*Server(nil), c.nodes...) }

// WaitOK waits up to 20 s until every node reports cluster_state:ok, all
// 16384 slots assigned and every other node known, e.g. after a node's
// Restart; it fails the test with the last CLUSTER INFO otherwise.
func (c *Cluster) WaitOK() {
	c.t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	want := map[string]string{
		"cluster_state":          "ok",
		"cluster_slots_assigned": "16384",
		"cluster_known_nodes":    strconv.Itoa(len(c.nodes)),
	}
	for _, n := range c.nodes {
		for {
			info, err := command(n.Addr(), time.Second, "CLUSTER", "INFO")
			if err == nil && clusterInfoHas(info, want) {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("redistest: cluster node %s not ok within %v (want %v): err=%v info:\n%s",
					n.Addr(), clusterTimeout, want, err, info)
			}
			time.Sleep(pollInterval)
		}
	}
}

// clusterInfoHas reports whether the CLUSTER INFO text has every field of
// want with its value.
func clusterInfoHas(info string, want map[string]string) bool {
	got := make(map[string]string)
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			got[k] = v
		}
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
