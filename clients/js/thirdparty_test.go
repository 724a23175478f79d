package js_test

// An independent check with a client phxgate's authors did not write: the
// npm package phoenix-channels (a community Node port of an old phoenix.js;
// V1 JSON objects without join_ref, on the `websocket` package) runs
// unchanged against a freshly built gateway. The assertions are in
// clients/js/thirdparty/*.test.mjs; this test builds and starts the gateway
// with the helpers of conformance_test.go and fails if node fails.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// thirdPartyIdleTimeout is the idle phase's idle_timeout: short enough to
// watch the server close a socket that does not heartbeat, and long enough
// (over the gateway's 1 s idle sweep) for heartbeats at a quarter of it to
// keep a socket open under -race.
const thirdPartyIdleTimeout = 3 * time.Second

// thirdPartyIdleConfig is gatewayConfig with a short idle_timeout.
const thirdPartyIdleConfig = `# written by clients/js/thirdparty_test.go (idle phase)
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: %s
auth:
  required: false
routes:
  - topic: "room:*"
    backend: echo
    history: 100
  - topic: "bench:*"
    backend: bench
`

func TestThirdPartyPhoenixChannels(t *testing.T) {
	if testing.Short() {
		t.Skip("the third-party phoenix-channels suite is skipped in -short mode")
	}
	jsDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(jsDir))
	tpDir := filepath.Join(jsDir, "thirdparty")
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed; run `make test`, which installs nodejs and npm and runs `npm ci` in clients/js and clients/js/thirdparty")
	}
	if _, err := os.Stat(filepath.Join(tpDir, "node_modules")); err != nil {
		t.Fatal("clients/js/thirdparty/node_modules is missing; run `make test` (or `cd clients/js/thirdparty && npm ci`)")
	}
	for _, pkg := range []string{"phoenix-channels", "websocket"} {
		if _, err := os.Stat(filepath.Join(tpDir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("clients/js/thirdparty/node_modules/%s is missing; run `make test` (or `cd clients/js/thirdparty && npm ci`)", pkg)
		}
	}
	// runNode's failure message names the phoenix.js suite; say which one
	// this is.
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("the failing suite is the third-party phoenix-channels one: clients/js/thirdparty (see its README.md)")
		}
	})

	if url := os.Getenv("PHXGATE_URL"); url != "" {
		t.Logf("PHXGATE_URL is set: running against %s instead of a fresh build (the idle tests skip)", url)
		t.Run("main", func(t *testing.T) { runNode(t, node, tpDir, ".", "PHXGATE_URL="+url) })
		return
	}
	bin := gatewayBinary(t, root)
	t.Run("main", func(t *testing.T) {
		url, _ := startGateway(t, bin, plainConfig)
		runNode(t, node, tpDir, ".", "PHXGATE_URL="+url)
	})
	// The idle phase needs a short idle_timeout, which the main phase's
	// gateway must not have (its sockets heartbeat every 30 s).
	t.Run("idle", func(t *testing.T) {
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(thirdPartyIdleConfig, listen, admin, thirdPartyIdleTimeout)
		})
		runNode(t, node, tpDir, "heartbeat.test.mjs", "PHXGATE_URL="+url,
			fmt.Sprintf("PHXGATE_IDLE_TIMEOUT_MS=%d", thirdPartyIdleTimeout.Milliseconds()))
	})
	// The limits phase floods heartbeats from one socket while checking a
	// neighbour on the same address, so it gets a gateway of its own.
	t.Run("limits", func(t *testing.T) {
		url, _ := startGateway(t, bin, plainConfig)
		runNode(t, node, tpDir, "limits.test.mjs", "PHXGATE_URL="+url, "PHXGATE_LIMITS_PHASE=1")
	})
}
