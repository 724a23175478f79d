package js_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsGatewayConfig is the metrics phase's configuration: anonymous
// sockets, no idle timeout (the script sends no heartbeats), and echo in a
// class with a burst of 1 and a slow refill, so the second echo push is
// refused.
const metricsGatewayConfig = `# written by clients/js/metrics_test.go
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: 0s
auth:
  required: false
limits:
  classes:
    tight: {per_second: 0.01, burst: 1}
routes:
  - topic: "room:*"
    backend: echo
    rate_limits:
      events: {echo: tight}
`

// metricsWatched are the families whose every series is compared before
// and after each step: a series a step does not name must not move.
var metricsWatched = []string{
	"phxgate_gateway_handshakes_total",
	"phxgate_gateway_connect_refused_total",
	"phxgate_gateway_connections",
	"phxgate_admission_connections",
	"phxgate_gateway_disconnects_total",
	"phxgate_frames_in_total",
	"phxgate_messages_in_total",
	"phxgate_channels_joins_total",
	"phxgate_channels_joined",
	"phxgate_ratelimit_limited_total",
	"phxgate_ratelimit_abusive_total",
	"phxgate_backend_calls_total",
	"phxgate_leaves_total",
	"phxgate_leaves_lost_total",
}

// metricsSteps are metrics/steps.mjs's steps, in order, with the exact
// change each makes to the watched series (written as the text format
// names them, labels in order).
var metricsSteps = []struct {
	name string
	want map[string]float64
}{
	{"connect", map[string]float64{
		`phxgate_gateway_handshakes_total{result="ok"}`: 1,
		`phxgate_gateway_connections`:                   1,
		`phxgate_admission_connections`:                 1,
	}},
	{"join", map[string]float64{
		`phxgate_frames_in_total`:                            1,
		`phxgate_messages_in_total{kind="join"}`:             1,
		`phxgate_channels_joins_total{result="ok"}`:          1,
		`phxgate_channels_joined`:                            1,
		`phxgate_backend_calls_total{op="join",result="ok"}`: 1,
	}},
	{"push", map[string]float64{
		`phxgate_frames_in_total`:                                 1,
		`phxgate_messages_in_total{kind="event"}`:                 1,
		`phxgate_backend_calls_total{op="handle_in",result="ok"}`: 1,
	}},
	{"rate-limited push", map[string]float64{
		`phxgate_frames_in_total`:                       1,
		`phxgate_messages_in_total{kind="event"}`:       1,
		`phxgate_ratelimit_limited_total{kind="event"}`: 1,
	}},
	{"refused join", map[string]float64{
		`phxgate_frames_in_total`:                          1,
		`phxgate_messages_in_total{kind="join"}`:           1,
		`phxgate_channels_joins_total{result="unmatched"}`: 1,
	}},
	{"disconnect", map[string]float64{
		`phxgate_frames_in_total`:                                   1, // the close frame
		`phxgate_gateway_disconnects_total{reason="client_closed"}`: 1,
		`phxgate_gateway_connections`:                               -1,
		`phxgate_admission_connections`:                             -1,
		`phxgate_channels_joined`:                                   -1,
		`phxgate_leaves_total{reason="disconnected"}`:               1,
		`phxgate_backend_calls_total{op="leave",result="ok"}`:       1,
	}},
}

// metricsSettle bounds the wait for a step's counters to reach their
// values (a disconnect's Leave is counted after the socket is gone).
const metricsSettle = 10 * time.Second

// TestMetricsPhoenixJS: a real phoenix.js client connects, joins, pushes,
// gets rate-limited, has a join refused and disconnects, one step at a
// time (metrics/steps.mjs); around each step the test scrapes /metrics,
// parses it with the Prometheus text parser, and checks that exactly the
// series the step must move moved, by exactly how much, and that no other
// series of the watched families moved.
func TestMetricsPhoenixJS(t *testing.T) {
	if testing.Short() {
		t.Skip("the phoenix.js metrics test is skipped in -short mode")
	}
	jsDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(jsDir))
	node := requireNode(t, jsDir)
	bin := gatewayBinary(t, root)
	var admin string
	url, _ := startGateway(t, bin, func(listen, adm string) string {
		admin = adm
		return fmt.Sprintf(metricsGatewayConfig, listen, adm)
	})

	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "metrics/steps.mjs")
	cmd.Dir = jsDir
	cmd.Env = append(os.Environ(), "PHXGATE_URL="+url, "NO_COLOR=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := logWriter(t, "node: ")
	defer stderr.Close()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		// Wait closes stdout: the reader below stops.
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		cancel()
		<-exited
	})
	fromNode := make(chan string, 16) // the script prints one line, then waits
	go func() {
		defer close(fromNode)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fromNode <- sc.Text()
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case line, ok := <-fromNode:
			if !ok {
				t.Fatalf("node exited while the test waited for %q; see its output above", want)
			}
			if line != want {
				t.Fatalf("node said %q, want %q", line, want)
			}
		case <-time.After(metricsSettle + 10*time.Second):
			t.Fatalf("node said nothing within %v; want %q", metricsSettle+10*time.Second, want)
		}
	}
	send := func(line string) {
		t.Helper()
		if _, err := io.WriteString(stdin, line+"\n"); err != nil {
			t.Fatalf("writing %q to node: %v", line, err)
		}
	}

	for _, st := range metricsSteps {
		expect("step " + st.name)
		before := scrapeWatched(t, admin)
		send("go")
		expect("done " + st.name)
		var after map[string]float64
		deadline := time.Now().Add(metricsSettle)
		for {
			after = scrapeWatched(t, admin)
			if reached(before, after, st.want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an outcome
		}
		for _, d := range diffSeries(before, after, st.want) {
			t.Errorf("step %q: %s", st.name, d)
		}
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("step %q: %d series moved as expected, nothing else in %d families", st.name, len(st.want), len(metricsWatched))
		send("next")
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("node: %v", err)
		}
	case <-time.After(metricsSettle):
		t.Fatal("node did not exit after the last step")
	}
}

// scrapeWatched parses the node's /metrics with the Prometheus text parser
// and returns every series of metricsWatched by its text-format name.
func scrapeWatched(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := map[string]float64{}
	for _, name := range metricsWatched {
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("/metrics has no family %s", name)
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := name
			if len(labels) > 0 {
				slices.Sort(labels)
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// reached reports whether every wanted change has happened (at least).
func reached(before, after, want map[string]float64) bool {
	for k, d := range want {
		got := after[k] - before[k]
		if (d > 0 && got < d) || (d < 0 && got > d) {
			return false
		}
	}
	return true
}

// diffSeries lists every series whose change is not the wanted one (0 for
// the series want does not name), and wanted series that are not served.
func diffSeries(before, after, want map[string]float64) []string {
	var out []string
	for k := range want {
		if _, ok := after[k]; !ok {
			out = append(out, k+" is not served")
		}
	}
	for k, v := range after {
		if got := v - before[k]; got != want[k] {
			out = append(out, fmt.Sprintf("%s moved by %v, want %v (%v → %v)", k, got, want[k], before[k], v))
		}
	}
	slices.Sort(out)
	return out
}
