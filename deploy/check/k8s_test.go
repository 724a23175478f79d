package check

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/gateway"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// manifests is every object of deploy/k8s, decoded strictly.
type manifests struct {
	configMaps  map[string]*corev1.ConfigMap
	services    map[string]*corev1.Service
	deployments map[string]*appsv1.Deployment
	pdbs        map[string]*policyv1.PodDisruptionBudget
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler
	secrets     map[string]*corev1.Secret
	netpols     map[string]*networkingv1.NetworkPolicy
}

// splitDocs splits a YAML stream on its "---" lines, dropping empty
// documents (comments only).
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		empty := true
		for _, line := range strings.Split(d, "\n") {
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// decodeObject decodes one manifest strictly (an unknown or misspelt field
// is an error) into the API type its apiVersion and kind name.
func decodeObject(doc []byte) (metav1.Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj metav1.Object
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2 HorizontalPodAutoscaler":
		obj = &autoscalingv2.HorizontalPodAutoscaler{}
	case "v1 Secret":
		obj = &corev1.Secret{}
	case "networking.k8s.io/v1 NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	default:
		return nil, fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{
		configMaps:  map[string]*corev1.ConfigMap{},
		services:    map[string]*corev1.Service{},
		deployments: map[string]*appsv1.Deployment{},
		pdbs:        map[string]*policyv1.PodDisruptionBudget{},
		hpas:        map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		secrets:     map[string]*corev1.Secret{},
		netpols:     map[string]*networkingv1.NetworkPolicy{},
	}
	files, err := filepath.Glob(deployPath(t, "k8s", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no files in deploy/k8s")
	}
	for _, f := range files {
		if ext := filepath.Ext(f); ext != ".yaml" {
			t.Errorf("%s: deploy/k8s holds only .yaml manifests", f)
			continue
		}
		docs := splitDocs(readFile(t, f))
		if len(docs) == 0 {
			t.Errorf("%s: no manifest", f)
		}
		for i, doc := range docs {
			obj, err := decodeObject(doc)
			if err != nil {
				t.Errorf("%s document %d: %v", filepath.Base(f), i, err)
				continue
			}
			name := obj.GetName()
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				m.configMaps[name] = o
			case *corev1.Service:
				m.services[name] = o
			case *appsv1.Deployment:
				m.deployments[name] = o
			case *policyv1.PodDisruptionBudget:
				m.pdbs[name] = o
			case *autoscalingv2.HorizontalPodAutoscaler:
				m.hpas[name] = o
			case *corev1.Secret:
				m.secrets[name] = o
			case *networkingv1.NetworkPolicy:
				m.netpols[name] = o
			}
			if name == "" {
				t.Errorf("%s document %d: no metadata.name", filepath.Base(f), i)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return m
}

// TestStrictDecodeRefusesUnknownFields shows the decoding below is strict:
// a misspelt field of a real manifest is an error, not silently dropped.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	doc := readFile(t, deployPath(t, "k8s", "deployment.yaml"))
	if _, err := decodeObject(doc); err != nil {
		t.Fatalf("deployment.yaml: %v", err)
	}
	bad := bytes.Replace(doc, []byte("readinessProbe:"), []byte("readynessProbe:"), 1)
	if bytes.Equal(bad, doc) {
		t.Fatal("deployment.yaml has no readinessProbe to misspell")
	}
	if _, err := decodeObject(bad); err == nil || !strings.Contains(err.Error(), "readynessProbe") {
		t.Fatalf("a misspelt field decoded without an error naming it: %v", err)
	}
}

// gatewayConfig is the phxgate config of the ConfigMap the Deployment
// mounts, read and validated by phxgate's own loader.
func gatewayConfig(t *testing.T, cm *corev1.ConfigMap, key string) gateway.Config {
	t.Helper()
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q", cm.Name, key)
	}
	cfg, err := gateway.ParseYAML([]byte(data))
	if err != nil {
		t.Fatalf("ConfigMap %s %s: %v", cm.Name, key, err)
	}
	return cfg
}

func portOf(t *testing.T, key, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("config %s %q: %v", key, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 {
		t.Fatalf("config %s %q: want a fixed port", key, addr)
	}
	return int32(n)
}

// containerPort resolves a probe's or Service's port (a name or a number)
// against the container's ports.
func containerPort(c corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// phxgateDeployment returns the Deployment, its phxgate container and the
// config its --config flag names in the mounted ConfigMap.
func phxgateDeployment(t *testing.T, m manifests) (*appsv1.Deployment, corev1.Container, gateway.Config) {
	t.Helper()
	d := m.deployments["phxgate"]
	if d == nil {
		t.Fatal("no Deployment phxgate")
	}
	spec := d.Spec.Template.Spec
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "phxgate" })
	if i < 0 {
		t.Fatal("Deployment phxgate: no container phxgate")
	}
	c := spec.Containers[i]
	j := slices.Index(c.Args, "--config")
	if j < 0 || j+1 >= len(c.Args) {
		t.Fatalf("container args %q: no --config FILE", c.Args)
	}
	file := c.Args[j+1]
	for _, vm := range c.VolumeMounts {
		if filepath.Dir(file) != filepath.Clean(vm.MountPath) {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil {
				cm := m.configMaps[v.ConfigMap.Name]
				if cm == nil {
					t.Fatalf("volume %s: no ConfigMap %s in deploy/k8s", v.Name, v.ConfigMap.Name)
				}
				return d, c, gatewayConfig(t, cm, filepath.Base(file))
			}
		}
	}
	t.Fatalf("--config %s is not in a mounted ConfigMap", file)
	return nil, corev1.Container{}, gateway.Config{}
}

func TestK8sDeploymentMatchesConfig(t *testing.T) {
	m := loadManifests(t)
	d, c, cfg := phxgateDeployment(t, m)
	pod := d.Spec.Template

	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("Deployment selector %v does not match its pod labels %v (%v)", d.Spec.Selector, pod.Labels, err)
	}

	admin := portOf(t, "admin_listen", cfg.AdminListen)
	probes := map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe}
	// The Service follows the node's own readiness only: dependencies
	// every pod shares (Redis, the games) would take every pod out at
	// once (deploy/README.md "Readiness").
	wantPath := map[string]string{"readinessProbe": gateway.ReadyzLocalPath, "livenessProbe": "/healthz"}
	for name, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", name)
			continue
		}
		if p.HTTPGet.Path != wantPath[name] {
			t.Errorf("%s path %q, want %q", name, p.HTTPGet.Path, wantPath[name])
		}
		if port, ok := containerPort(c, p.HTTPGet.Port); !ok || port != admin {
			t.Errorf("%s port %s is container port %d, want admin_listen's %d", name, p.HTTPGet.Port.String(), port, admin)
		}
	}
	for key, addr := range map[string]string{"listen": cfg.Listen, "api_listen": cfg.APIListen} {
		port := portOf(t, key, addr)
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.ContainerPort == port }) {
			t.Errorf("%s port %d is not a container port", key, port)
		}
	}
	if h, _, _ := net.SplitHostPort(cfg.AdminListen); h == "127.0.0.1" || h == "localhost" {
		t.Errorf("admin_listen %q is loopback: the kubelet's probes and Prometheus cannot reach it", cfg.AdminListen)
	}

	// The drain must finish before the kubelet's SIGKILL.
	var preStop time.Duration
	if l := c.Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
		preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
	} else {
		t.Error("container phxgate: want a preStop sleep (the pod leaves the endpoints before SIGTERM)")
	}
	if pod.Spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	// A shutdown overruns drain_timeout by up to gateway.ShutdownOverrun
	// (HTTP and API stops, the Closers' floor, the trace flush).
	if need := preStop + cfg.DrainTimeout + gateway.ShutdownOverrun + graceMargin; grace < need {
		t.Errorf("terminationGracePeriodSeconds %v must cover preStop %v + drain_timeout %v + gateway.ShutdownOverrun %v + margin %v = %v",
			grace, preStop, cfg.DrainTimeout, gateway.ShutdownOverrun, graceMargin, need)
	}

	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.Cmp(c.Resources.Requests[corev1.ResourceMemory]) < 0 {
		t.Errorf("memory limit %v below the request", q.String())
	}
	var sysctls []string
	if sc := pod.Spec.SecurityContext; sc != nil {
		for _, s := range sc.Sysctls {
			sysctls = append(sysctls, s.Name)
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Error("pod securityContext: want runAsNonRoot")
		}
	}
	// Only sysctls a stock kubelet allows: any other gets the pod refused
	// (SysctlForbidden) unless the nodes opt in (deploy/README.md).
	if !slices.Contains(sysctls, "net.ipv4.ip_local_port_range") {
		t.Errorf("pod sysctls %v: no net.ipv4.ip_local_port_range", sysctls)
	}
	for _, name := range sysctls {
		if !slices.Contains(safeSysctls, name) {
			t.Errorf("pod sysctl %s is not in the kubelet's safe set: pods are refused unless every node allows it", name)
		}
	}
	checkGOMEMLIMIT(t, c)
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == gateway.EnvName("node_id") && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil &&
			e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Errorf("container env: want %s from metadata.name (a distinct node id per pod)", gateway.EnvName("node_id"))
	}
}

// graceMargin is the slack on top of the shutdown's known bound.
const graceMargin = 5 * time.Second

// safeSysctls are the namespaced sysctls a stock kubelet allows (the
// Kubernetes "safe" set).
var safeSysctls = []string{
	"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
	"net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports",
	"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
	"net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
}

// kernelShare is the least part of the memory limit GOMEMLIMIT must leave
// to what the Go runtime does not count but the pod's cgroup does (socket
// buffers, above all).
const kernelShare = 0.15

// checkGOMEMLIMIT requires a literal GOMEMLIMIT at most (1-kernelShare) of
// the container's memory limit.
func checkGOMEMLIMIT(t *testing.T, c corev1.Container) {
	t.Helper()
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" })
	if i < 0 {
		t.Error("container env: no GOMEMLIMIT")
		return
	}
	e := c.Env[i]
	if e.ValueFrom != nil {
		t.Error("GOMEMLIMIT from the memory limit leaves nothing for the kernel's socket memory: set a literal below it")
		return
	}
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Error("no memory limit")
		return
	}
	v, err := parseGoMemLimit(e.Value)
	if err != nil {
		t.Errorf("GOMEMLIMIT %q: %v", e.Value, err)
		return
	}
	if max := int64(float64(limit.Value()) * (1 - kernelShare)); v > max || v <= 0 {
		t.Errorf("GOMEMLIMIT %q = %d bytes, want above 0 and at most %d (memory limit %s less %.0f%% for the kernel)",
			e.Value, v, max, limit.String(), kernelShare*100)
	}
}

// parseGoMemLimit reads a GOMEMLIMIT value: a number with an optional
// B, KiB, MiB, GiB or TiB suffix (the runtime's syntax).
func parseGoMemLimit(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want a number with B, KiB, MiB, GiB or TiB: %w", err)
	}
	return n * mult, nil
}

// isLoopback reports whether a listen address only takes local callers.
func isLoopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// TestK8sAPIAndAdminLockedDown: a Gateway API reachable from the network
// needs api_secret (in the config, or PHXGATE_API_SECRET from a Secret of
// deploy/k8s), and a NetworkPolicy limits who reaches the api and admin
// ports (admin serves pprof).
func TestK8sAPIAndAdminLockedDown(t *testing.T) {
	m := loadManifests(t)
	d, c, cfg := phxgateDeployment(t, m)
	checkAPISecret(t, m, c, cfg)
	podLabels := labels.Set(d.Spec.Template.Labels)
	for _, key := range []string{"api_listen", "admin_listen"} {
		addr := map[string]string{"api_listen": cfg.APIListen, "admin_listen": cfg.AdminListen}[key]
		if addr == "" || isLoopback(addr) {
			continue
		}
		port := portOf(t, key, addr)
		if !portRestricted(t, m, c, podLabels, port) {
			t.Errorf("%s port %d: no NetworkPolicy selecting the phxgate pods restricts who reaches it", key, port)
		}
	}
}

// checkAPISecret requires an API secret when api_listen is not loopback.
func checkAPISecret(t *testing.T, m manifests, c corev1.Container, cfg gateway.Config) {
	t.Helper()
	if cfg.APIListen == "" || isLoopback(cfg.APIListen) || cfg.APISecret != "" {
		return
	}
	env := gateway.EnvName("api_secret")
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == env })
	if i < 0 {
		t.Errorf("api_listen %q is reachable from the network, but neither api_secret nor %s is set", cfg.APIListen, env)
		return
	}
	e := c.Env[i]
	if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("%s: want it from a Secret (valueFrom.secretKeyRef), not a literal in the manifest", env)
		return
	}
	ref := e.ValueFrom.SecretKeyRef
	sec := m.secrets[ref.Name]
	if sec == nil {
		t.Errorf("%s: Secret %s is not in deploy/k8s", env, ref.Name)
		return
	}
	_, inData := sec.Data[ref.Key]
	_, inString := sec.StringData[ref.Key]
	if !inData && !inString {
		t.Errorf("%s: Secret %s has no key %q", env, ref.Name, ref.Key)
	}
}

// portRestricted reports whether some NetworkPolicy selecting the pods
// governs ingress and none of them lets port in from everyone (policies
// add up: one rule open to all opens the port, whatever the others say).
func portRestricted(t *testing.T, m manifests, c corev1.Container, pod labels.Set, port int32) bool {
	restricted := false
	t.Helper()
	for name, np := range m.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Errorf("NetworkPolicy %s: %v", name, err)
			continue
		}
		if !sel.Matches(pod) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		open := false
		for _, rule := range np.Spec.Ingress {
			matches := len(rule.Ports) == 0
			for _, p := range rule.Ports {
				if p.Port == nil {
					matches = true
					continue
				}
				if n, ok := containerPort(c, *p.Port); ok && n == port {
					matches = true
				}
			}
			if matches && len(rule.From) == 0 {
				open = true
			}
		}
		// Once a policy selects the pods for ingress, a port no rule
		// names is closed: that is restricted too.
		if open {
			return false
		}
		restricted = true
	}
	return restricted
}

func TestK8sServicesAndPDBSelectPods(t *testing.T) {
	m := loadManifests(t)
	d, c, _ := phxgateDeployment(t, m)
	podLabels := labels.Set(d.Spec.Template.Labels)
	if len(m.services) == 0 {
		t.Fatal("no Service")
	}
	for name, s := range m.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s selector %v does not select the phxgate pods", name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := containerPort(c, p.TargetPort); !ok {
				t.Errorf("Service %s port %s: targetPort %s is no container port", name, p.Name, p.TargetPort.String())
			}
			if p.Name == "admin" {
				t.Errorf("Service %s exposes the admin port (pprof)", name)
			}
		}
	}
	pdb := m.pdbs["phxgate"]
	if pdb == nil {
		t.Fatal("no PodDisruptionBudget phxgate")
	}
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the phxgate pods (%v)", pdb.Spec.Selector, err)
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Error("PodDisruptionBudget: neither maxUnavailable nor minAvailable")
	}
}

// adapterConfig is the part of prometheus-adapter's config file that
// deploy/k8s/prometheus-adapter.yaml uses, with its field names, decoded
// strictly so a misspelt key fails here instead of in the adapter.
type adapterConfig struct {
	Rules []adapterRule `json:"rules"`
}

type adapterRule struct {
	SeriesQuery   string `json:"seriesQuery"`
	SeriesFilters []struct {
		Is    string `json:"is,omitempty"`
		IsNot string `json:"isNot,omitempty"`
	} `json:"seriesFilters,omitempty"`
	Resources struct {
		Overrides map[string]struct {
			Group    string `json:"group,omitempty"`
			Resource string `json:"resource"`
		} `json:"overrides,omitempty"`
		Template string `json:"template,omitempty"`
	} `json:"resources"`
	Name struct {
		Matches string `json:"matches"`
		As      string `json:"as,omitempty"`
	} `json:"name"`
	MetricsQuery string `json:"metricsQuery"`
}

// loadAdapterRule returns the adapter rule that serves the metric name the
// HPA asks for, and that name.
func loadAdapterRule(t *testing.T) (adapterRule, string) {
	t.Helper()
	docs := splitDocs(readFile(t, deployPath(t, "k8s", "prometheus-adapter.yaml")))
	if len(docs) != 1 {
		t.Fatalf("prometheus-adapter.yaml: %d documents, want 1 ConfigMap", len(docs))
	}
	obj, err := decodeObject(docs[0])
	if err != nil {
		t.Fatal(err)
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		t.Fatalf("prometheus-adapter.yaml: %T, want a ConfigMap", obj)
	}
	var ac adapterConfig
	if err := yaml.UnmarshalStrict([]byte(cm.Data["config.yaml"]), &ac); err != nil {
		t.Fatalf("adapter config.yaml: %v", err)
	}
	if len(ac.Rules) != 1 {
		t.Fatalf("adapter config: %d rules, want 1", len(ac.Rules))
	}
	r := ac.Rules[0]
	series := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`).FindString(r.SeriesQuery)
	re, err := regexp.Compile(r.Name.Matches)
	if err != nil || !re.MatchString(series) {
		t.Fatalf("adapter rule name.matches %q does not match its series %q (%v)", r.Name.Matches, series, err)
	}
	name := series
	if r.Name.As != "" {
		name = re.ReplaceAllString(series, r.Name.As)
	}
	return r, name
}

func TestK8sHPAOnAdapterMetric(t *testing.T) {
	m := loadManifests(t)
	d, _, cfg := phxgateDeployment(t, m)
	hpa := m.hpas["phxgate"]
	if hpa == nil {
		t.Fatal("no HorizontalPodAutoscaler phxgate")
	}
	ref := hpa.Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("scaleTargetRef %+v, want apps/v1 Deployment %s", ref, d.Name)
	}
	rule, served := loadAdapterRule(t)
	if len(hpa.Spec.Metrics) != 1 {
		t.Fatalf("HPA: %d metrics, want the one Pods metric", len(hpa.Spec.Metrics))
	}
	ms := hpa.Spec.Metrics[0]
	if ms.Type != autoscalingv2.PodsMetricSourceType || ms.Pods == nil {
		t.Fatalf("HPA metric type %q, want Pods", ms.Type)
	}
	if ms.Pods.Metric.Name != served {
		t.Errorf("HPA metric %q, but the adapter rule serves %q", ms.Pods.Metric.Name, served)
	}
	tg := ms.Pods.Target
	if tg.Type != autoscalingv2.AverageValueMetricType || tg.AverageValue == nil || tg.AverageValue.IsZero() {
		t.Fatalf("HPA target %+v, want a non-zero AverageValue", tg)
	}
	// The target must leave room under the node cap for failover.
	if capConns := int64(cfg.Limits.MaxConns); tg.AverageValue.Value() >= capConns {
		t.Errorf("HPA target %v connections per pod is not below limits.max_conns %d", tg.AverageValue, capConns)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 {
		t.Error("HPA minReplicas below 2: a drain would leave no pod")
	}
	if !strings.HasPrefix(rule.SeriesQuery, "phxgate_gateway_connections") {
		t.Errorf("adapter seriesQuery %q is not over the open-connections gauge", rule.SeriesQuery)
	}
	want := map[string]string{"namespace": "namespace", "pod": "pod"}
	for label, res := range want {
		if o, ok := rule.Resources.Overrides[label]; !ok || o.Resource != res {
			t.Errorf("adapter rule: label %q not mapped to resource %q", label, res)
		}
	}
	for _, s := range []string{"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} {
		if !strings.Contains(rule.MetricsQuery, s) {
			t.Errorf("adapter metricsQuery %q lacks %s", rule.MetricsQuery, s)
		}
	}

	// The labels the adapter maps are the ones the k8s scrape config sets.
	var pk struct {
		ScrapeConfigs []struct {
			JobName        string `json:"job_name"`
			RelabelConfigs []struct {
				TargetLabel string `json:"target_label"`
			} `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "prometheus-k8s.yml")), &pk); err != nil {
		t.Fatalf("prometheus-k8s.yml: %v", err)
	}
	i := slices.IndexFunc(pk.ScrapeConfigs, func(s struct {
		JobName        string `json:"job_name"`
		RelabelConfigs []struct {
			TargetLabel string `json:"target_label"`
		} `json:"relabel_configs"`
	}) bool {
		return s.JobName == "phxgate"
	})
	if i < 0 {
		t.Fatal("prometheus-k8s.yml: no job phxgate")
	}
	for label := range want {
		if !slices.ContainsFunc(pk.ScrapeConfigs[i].RelabelConfigs, func(r struct {
			TargetLabel string `json:"target_label"`
		}) bool {
			return r.TargetLabel == label
		}) {
			t.Errorf("prometheus-k8s.yml job phxgate sets no %q label for the adapter", label)
		}
	}
}

// TestComposeConfig validates the compose stack's phxgate config with
// phxgate's loader and checks the nodes are told apart.
func TestComposeConfig(t *testing.T) {
	cfg, err := gateway.ParseYAML(readFile(t, deployPath(t, "phxgate-compose.yaml")))
	if err != nil {
		t.Fatalf("phxgate-compose.yaml: %v", err)
	}
	if cfg.RedisURL == "" {
		t.Error("phxgate-compose.yaml: three nodes need redis_url")
	}
	var compose composeFile
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "compose.yaml")), &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	ids := map[string]bool{}
	for name, s := range compose.Services {
		if !strings.HasPrefix(name, "phxgate-") {
			continue
		}
		id := s.Environment[gateway.EnvName("node_id")]
		if id == "" || ids[id] {
			t.Errorf("service %s: node id %q missing or shared", name, id)
		}
		ids[id] = true
	}
	if len(ids) != 3 {
		t.Errorf("compose.yaml: %d phxgate nodes, want 3", len(ids))
	}
	for _, s := range []string{"redis", "dice", "prometheus", "grafana", "jaeger"} {
		if _, ok := compose.Services[s]; !ok {
			t.Errorf("compose.yaml: no service %s", s)
		}
	}
	if _, err := os.Stat(deployPath(t, "grafana", "provisioning", "dashboards", "phxgate.yaml")); err != nil {
		t.Error(err)
	}
}

// composeFile is what the checks read of compose.yaml.
type composeFile struct {
	Services map[string]struct {
		Image       string            `json:"image"`
		Environment map[string]string `json:"environment"`
		Expose      []string          `json:"expose"`
	} `json:"services"`
}
