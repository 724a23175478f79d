package js_test

import (
	"crypto/rand"
	"fmt"
	"testing"
)

// bigRoomConfig is the presence-bigroom phase's gateway: a 64 KiB write
// queue (presence_state pieces of 8 KiB), tokens for player ids, room:*
// with presence, long-poll on, the Gateway API (no secret: loopback,
// this run only) for the control endpoint that sets metas, and
// per-address limits that let a few hundred sockets in at once.
const bigRoomConfig = `# written by clients/js/bigroom_test.go (presence-bigroom phase)
listen: "%s"
admin_listen: "%s"
api_listen: "%s"
write_queue_max_bytes: 65536
auth:
  required: true
  hs256_secret: "%s"
# a long-poll session buffers 128 KiB: a poll takes 32 KiB of a stream.
longpoll:
  enabled: true
  max_buffer_bytes: 131072
limits:
  joins_per_second: 1000
  join_burst: 1000
  ip_max_conns: 5000
  ip_handshakes_per_second: 10000
  ip_handshake_burst: 5000
  ip_max_handshakes: 1000
routes:
  - topic: "room:*"
    backend: echo
    presence: true
`

// runBigRoom runs presence-bigroom/: phoenix.js joins a room whose
// presence_state is many times the write queue.
func runBigRoom(t *testing.T, bin, node, jsDir string) {
	secret := rand.Text() + rand.Text()
	api := freePort(t)
	url, _ := startGateway(t, bin, func(listen, admin string) string {
		return fmt.Sprintf(bigRoomConfig, listen, admin, api, secret)
	})
	control := startControl(t, api)
	runNode(t, node, jsDir, "presence-bigroom/", "PHXGATE_URL="+url, "PHXGATE_AUTH_SECRET="+secret, "PHXGATE_CONTROL="+control)
}
