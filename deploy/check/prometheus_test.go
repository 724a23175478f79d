package check

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/clients/phx"
	"github.com/phxgate/phxgate/clients/testport"
	"github.com/phxgate/phxgate/gateway"
	"github.com/phxgate/phxgate/pubsub/redistest"
	"sigs.k8s.io/yaml"
)

// lookTool finds a binary the tests need or fails naming the make target
// that installs it.
func lookTool(t testing.TB, name, target string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run `make %s`", name, target)
	}
	return p
}

func promtool(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(lookTool(t, "promtool", "prom-deps"), args...).CombinedOutput()
	return string(out), err
}

func TestPromtoolChecks(t *testing.T) {
	if out, err := promtool(t, "check", "config", deployPath(t, "prometheus", "prometheus.yml")); err != nil {
		t.Errorf("promtool check config prometheus.yml: %v\n%s", err, out)
	}
	if out, err := promtool(t, "check", "rules", deployPath(t, "prometheus", "rules.yml")); err != nil {
		t.Errorf("promtool check rules rules.yml: %v\n%s", err, out)
	}
	// The check can fail: a rule file with broken PromQL is refused.
	bad := filepath.Join(t.TempDir(), "bad.yml")
	if err := os.WriteFile(bad, []byte("groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: rate(x[\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := promtool(t, "check", "rules", bad); err == nil {
		t.Errorf("promtool accepted broken PromQL:\n%s", out)
	}
}

// promConfig is the part of a Prometheus config the test reads and writes.
type promConfig struct {
	Global        map[string]any   `json:"global,omitempty"`
	RuleFiles     []string         `json:"rule_files,omitempty"`
	ScrapeConfigs []map[string]any `json:"scrape_configs"`
}

// testNamespace and testPod are the target labels the k8s scrape config
// would set; the adapter's series query selects on them.
const (
	testNamespace = "phxgate-check"
	testPod       = "phxgate-0"
)

// liveConfig is deploy/prometheus/prometheus.yml's phxgate job pointed at
// target, scraped every second, with rules.yml loaded from deploy/.
func liveConfig(t *testing.T, target string) []byte {
	t.Helper()
	var pc promConfig
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "prometheus.yml")), &pc); err != nil {
		t.Fatal(err)
	}
	var job map[string]any
	for _, sc := range pc.ScrapeConfigs {
		if sc["job_name"] == "phxgate" {
			job = sc
		}
	}
	if job == nil {
		t.Fatal("prometheus.yml: no job phxgate")
	}
	if job["metrics_path"] != nil && job["metrics_path"] != "/metrics" {
		t.Fatalf("job phxgate metrics_path %v, phxgate serves /metrics", job["metrics_path"])
	}
	job["scrape_interval"] = "1s"
	job["scrape_timeout"] = "1s"
	job["static_configs"] = []any{map[string]any{
		"targets": []string{target},
		"labels":  map[string]string{"namespace": testNamespace, "pod": testPod},
	}}
	var rules []string
	for _, r := range pc.RuleFiles {
		rules = append(rules, deployPath(t, "prometheus", r))
	}
	out, err := yaml.Marshal(promConfig{
		Global:        map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		RuleFiles:     rules,
		ScrapeConfigs: []map[string]any{job},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// freePort returns a port of 127.0.0.1 nothing listens on right now (for
// Prometheus, which cannot report a port 0 it was given).
func freePort(t *testing.T) int {
	t.Helper()
	p, err := testport.Free()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startProcess runs cmd, logs its output to a file in the test's temp dir
// (shown when the test fails), and kills it and waits for it at cleanup.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) (logPath string) {
	t.Helper()
	logPath = filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s log tail:\n%s", name, b)
		}
	})
	return logPath
}

// hs256Secret signs the test players' tokens.
const hs256Secret = "deploy-check-secret-0123456789abcdef"

// startNode builds phxgate and runs it on Redis with ephemeral ports, a
// route per backend kind the dashboard shows (echo, the built-in gRPC
// demo game with presence, a webhook that is never called), and returns
// its client and admin addresses read from its "listening" log line.
func startNode(t *testing.T, redisURL string) (listen, admin string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "phxgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/phxgate")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/phxgate: %v\n%s", err, out)
	}
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
api_listen: "127.0.0.1:0"
node_id: check-node
redis_url: %q
log_format: json
auth:
  hs256_secret: %q
routes:
  - topic: "room:*"
    backend: echo
    history: 100
  - topic: "table:*"
    backend: demo
    presence: true
  - topic: "hook:*"
    backend: "http://127.0.0.1:9/never?unsigned=true"
`, redisURL, hs256Secret)
	cfgPath := filepath.Join(dir, "phxgate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	logPath := startProcess(t, "phxgate", cmd)
	eventually(t, 30*time.Second, func() error {
		f, err := os.Open(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var line struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
				Admin  string `json:"admin"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "phxgate listening" {
				listen, admin = line.Listen, line.Admin
				return nil
			}
		}
		return fmt.Errorf("no \"phxgate listening\" line in %s yet", logPath)
	})
	return listen, admin
}

func token(t *testing.T, player string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": player, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(hs256Secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// driveTraffic connects players that join a room and a dice table, push
// and broadcast, plus one connect with a bad token, and returns the number
// of sockets left open (closed at cleanup).
func driveTraffic(t *testing.T, listen string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsURL := "ws://" + listen + "/socket/websocket"
	const players = 4
	for i := range players {
		tok := token(t, fmt.Sprintf("player-%d", i))
		sock, err := phx.Connect(ctx, wsURL, phx.Options{Params: func() map[string]any { return map[string]any{"token": tok} }})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { _ = sock.Close() })
		room := sock.Channel("room:lobby", func() any { return map[string]any{"offset": nil} })
		if r, err := room.Join(ctx); err != nil || !r.OK() {
			t.Fatalf("join room:lobby: %v %+v", err, r)
		}
		if r, err := room.Call(ctx, "echo", map[string]any{"n": i}); err != nil || !r.OK() {
			t.Fatalf("echo: %v %+v", err, r)
		}
		if r, err := room.Call(ctx, "shout", map[string]any{"n": i}); err != nil || !r.OK() {
			t.Fatalf("shout: %v %+v", err, r)
		}
		table := sock.Channel("table:1", nil)
		if r, err := table.Join(ctx); err != nil || !r.OK() {
			t.Fatalf("join table:1: %v %+v", err, r)
		}
	}
	if sock, err := phx.Connect(ctx, wsURL, phx.Options{
		Params:    func() map[string]any { return map[string]any{"token": "not-a-token"} },
		Reconnect: func(int) time.Duration { return time.Hour },
	}); err == nil {
		_ = sock.Close()
		t.Fatal("a bad token was let in")
	}
	return players
}

// promQuery runs an instant query and returns its result (a vector or
// matrix as JSON values).
func promQuery(base, expr string) ([]json.RawMessage, error) {
	resp, err := http.Get(base + "/api/v1/query?" + url.Values{"query": {expr}}.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s", expr, r.Error)
	}
	if r.Data.ResultType != "vector" && r.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("query %q: result type %s", expr, r.Data.ResultType)
	}
	var res []json.RawMessage
	if err := json.Unmarshal(r.Data.Result, &res); err != nil {
		return nil, err
	}
	return res, nil
}

// grafanaVars are the dashboard's variables and the concrete values the
// queries run with here.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$instance", ".+")

// dashboardExprs returns every panel's query of the Grafana dashboard,
// variables substituted, keyed by "panel title/refId".
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	var dash struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, deployPath(t, "grafana", "phxgate.json")), &dash); err != nil {
		t.Fatalf("phxgate.json: %v", err)
	}
	exprs := map[string]string{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			e := grafanaVars.Replace(tg.Expr)
			if strings.TrimSpace(e) == "" || strings.Contains(e, "$") {
				t.Errorf("panel %q %s: query %q is empty or has a variable the test does not know", p.Title, tg.RefID, tg.Expr)
				continue
			}
			exprs[p.Title+"/"+tg.RefID] = e
		}
	}
	if len(exprs) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return exprs
}

// TestDashboardOnLivePrometheus runs a real phxgate node on a real Redis,
// scraped by a real Prometheus with the phxgate job and rules of
// deploy/prometheus, drives a little traffic, then checks that every query
// of the Grafana dashboard and of the HPA's adapter rule returns data, and
// that every rule evaluates.
func TestDashboardOnLivePrometheus(t *testing.T) {
	promBin := lookTool(t, "prometheus", "prom-deps")
	lookTool(t, "redis-server", "redis-deps")
	exprs := dashboardExprs(t)

	redis := redistest.Start(t, redistest.Options{})
	listen, admin := startNode(t, redis.URL())

	// The probes of deploy/k8s answer on the admin port.
	m := loadManifests(t)
	_, c, _ := phxgateDeployment(t, m)
	for _, p := range []string{c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path} {
		eventually(t, 10*time.Second, func() error {
			resp, err := http.Get("http://" + admin + p)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET %s: %s", p, resp.Status)
			}
			// The node must know the probe, not merely answer its path
			// (a query it ignored would give plain /readyz).
			if p == gateway.ReadyzLocalPath && string(body) != "ok (local)\n" {
				return fmt.Errorf("GET %s: %q, want the local readiness answer", p, body)
			}
			return nil
		})
	}

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, liveConfig(t, admin), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := promtool(t, "check", "config", cfgPath); err != nil {
		t.Fatalf("generated config: %v\n%s", err, out)
	}
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	startProcess(t, "prometheus", exec.Command(promBin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
	))
	eventually(t, 30*time.Second, func() error {
		res, err := promQuery(base, `up{job="phxgate"} == 1`)
		if err == nil && len(res) == 0 {
			err = fmt.Errorf("target %s not up yet", admin)
		}
		return err
	})

	open := driveTraffic(t, listen)

	// A counter first seen with the traffic needs two scrapes before a rate
	// over it has a value: wait for each query rather than for a time.
	var mu sync.Mutex
	pending := map[string]string{}
	for k, v := range exprs {
		pending[k] = v
	}
	eventually(t, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		var errs []string
		for name, e := range pending {
			res, err := promQuery(base, e)
			switch {
			case err != nil:
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			case len(res) == 0:
				errs = append(errs, fmt.Sprintf("%s: no data for %s", name, e))
			default:
				delete(pending, name)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%d of %d dashboard queries without data:\n%s", len(errs), len(exprs), strings.Join(errs, "\n"))
		}
		return nil
	})
	t.Logf("%d dashboard queries returned data", len(exprs))
	checkReadmeListsFamilies(t, admin)

	// The adapter rule's queries: the series it discovers, and the value it
	// serves the HPA for the test pod, which is the open socket count.
	rule, _ := loadAdapterRule(t)
	series := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`).FindString(rule.SeriesQuery)
	metricsQuery := strings.NewReplacer(
		"<<.Series>>", series,
		"<<.LabelMatchers>>", fmt.Sprintf(`namespace=%q,pod=~%q`, testNamespace, testPod),
		"<<.GroupBy>>", "pod",
	).Replace(rule.MetricsQuery)
	eventually(t, 30*time.Second, func() error {
		res, err := promQuery(base, rule.SeriesQuery)
		if err != nil || len(res) == 0 {
			return fmt.Errorf("adapter seriesQuery %q: %d series, %v", rule.SeriesQuery, len(res), err)
		}
		res, err = promQuery(base, metricsQuery)
		if err != nil || len(res) != 1 {
			return fmt.Errorf("adapter metricsQuery %q: %d results, %v", metricsQuery, len(res), err)
		}
		var s struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(res[0], &s); err != nil {
			return err
		}
		if s.Metric["pod"] != testPod || s.Value[1] != fmt.Sprint(open) {
			return fmt.Errorf("adapter metricsQuery %q = %v, want %d for pod %s", metricsQuery, s, open, testPod)
		}
		return nil
	})

	// Every rule's expression runs; recording rules produce their series.
	var rf struct {
		Groups []struct {
			Rules []struct {
				Record string `json:"record"`
				Alert  string `json:"alert"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "rules.yml")), &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if _, err := promQuery(base, r.Expr); err != nil {
				t.Errorf("rule %s%s: %v", r.Record, r.Alert, err)
			}
			if r.Record == "" {
				continue
			}
			eventually(t, 30*time.Second, func() error {
				res, err := promQuery(base, r.Record)
				if err == nil && len(res) == 0 {
					err = fmt.Errorf("recording rule %s has produced no series", r.Record)
				}
				return err
			})
		}
	}
}

// checkReadmeListsFamilies fails for every phxgate_* family the node at
// admin serves that the top README's Metrics table does not list.
func checkReadmeListsFamilies(t *testing.T, admin string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	readme := string(readFile(t, filepath.Join(repoRoot(t), "README.md")))
	i := strings.Index(readme, "\n## Metrics\n")
	if i < 0 {
		t.Fatal("README.md: no Metrics section")
	}
	section := readme[i+1:]
	if j := strings.Index(section[1:], "\n## "); j >= 0 {
		section = section[:j+1]
	}
	const webhook = "phxgate_backend_webhook_"
	families := regexp.MustCompile(`(?m)^# TYPE (phxgate_\w+) `).FindAllStringSubmatch(string(body), -1)
	if len(families) == 0 {
		t.Fatal("the node serves no phxgate_* family")
	}
	for _, m := range families {
		name := m[1]
		listed := strings.Contains(section, "`"+name+"`")
		if rest, ok := strings.CutPrefix(name, webhook); ok && !listed {
			listed = strings.Contains(section, "`"+webhook+"*`") && strings.Contains(section, "`"+rest+"`")
		}
		if !listed {
			t.Errorf("README.md Metrics does not list %s", name)
		}
	}
}
