// Tests of the ttt-serve Helm chart (helm/ttt-serve) against the server's contract
// (docs/contract.md) and the image (Dockerfile): rendered with the default values and with the
// scenarios in tests/deploy/values, every manifest parsed, and what matters asserted: ports,
// probes, the checkpoint volume, the security context, GPU resources, routing.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type obj = map[string]interface{}

// repoRoot is the source tree: $TTT_SOURCE_DIR, or three levels up from this package.
func repoRoot(t *testing.T) string {
	if d := os.Getenv("TTT_SOURCE_DIR"); d != "" {
		return d
	}
	d, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// contract holds what docs/contract.md says about the server binary.
type contract struct {
	flags          map[string]string // flag name (no dashes) -> default column
	grpcPort       int
	metricsPort    int
	imageCkptDir   string
	drainTimeoutS  int
	healthServices []string
}

var portRe = regexp.MustCompile(`:(\d+)` + "`?$")

func parseContract(t *testing.T) contract {
	f, err := os.Open(filepath.Join(repoRoot(t), "docs/contract.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := contract{flags: map[string]string{}}
	// A row names one flag or several ("`--a`, `--b`") in its first cell.
	rowRe := regexp.MustCompile("^\\|\\s*((?:`--[a-z0-9_]+`,?\\s*)+)\\|\\s*(.*?)\\s*\\|")
	nameRe := regexp.MustCompile("`--([a-z0-9_]+)`")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := rowRe.FindStringSubmatch(sc.Text()); m != nil {
			for _, name := range nameRe.FindAllStringSubmatch(m[1], -1) {
				c.flags[name[1]] = m[2]
			}
		}
	}
	port := func(flag string) int {
		def := strings.Trim(c.flags[flag], "` ")
		m := portRe.FindStringSubmatch(def)
		if m == nil {
			t.Fatalf("contract.md: no port in --%s default %q", flag, def)
		}
		p, _ := strconv.Atoi(m[1])
		return p
	}
	c.grpcPort = port("listen")
	c.metricsPort = port("metrics_listen")
	m := regexp.MustCompile("`(/[^`]+)` in the image").FindStringSubmatch(c.flags["checkpoint_dir"])
	if m == nil {
		t.Fatalf("contract.md: no image path in --checkpoint_dir default %q", c.flags["checkpoint_dir"])
	}
	c.imageCkptDir = m[1]
	c.drainTimeoutS, _ = strconv.Atoi(strings.TrimSpace(c.flags["drain_timeout_s"]))
	return c
}

type manifest struct {
	source string
	o      obj
}

func (m manifest) kind() string { return str(m.o, "kind") }
func (m manifest) name() string { return str(m.o, "metadata", "name") }

// get walks maps by key and lists by integer index.
func get(v interface{}, path ...interface{}) interface{} {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]interface{})
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v interface{}, path ...interface{}) string {
	s, _ := get(v, path...).(string)
	return s
}

func num(v interface{}, path ...interface{}) int {
	switch n := get(v, path...).(type) {
	case int:
		return n
	case float64:
		return int(n)
	}
	return -1
}

func list(v interface{}, path ...interface{}) []interface{} {
	l, _ := get(v, path...).([]interface{})
	return l
}

type rendered struct {
	all  []manifest
	text string
}

func (r rendered) find(kind string) []manifest {
	var out []manifest
	for _, m := range r.all {
		if m.kind() == kind {
			out = append(out, m)
		}
	}
	return out
}

func (r rendered) one(t *testing.T, kind string) manifest {
	t.Helper()
	l := r.find(kind)
	if len(l) != 1 {
		t.Fatalf("want exactly one %s, got %d", kind, len(l))
	}
	return l[0]
}

// render renders the chart with the given scenario files and parses every document.
func render(t *testing.T, scenarios ...string) rendered {
	t.Helper()
	r, err := renderOverlay(t, "", scenarios...)
	if err != nil {
		t.Fatalf("render %v: %v", scenarios, err)
	}
	return r
}

// renderOverlay renders the scenario files and then the values in overlay (YAML text, "" for
// none) over them; it returns the renderer's error (a schema error or a template's fail).
func renderOverlay(t *testing.T, overlay string, scenarios ...string) (rendered, error) {
	t.Helper()
	root := repoRoot(t)
	var files []string
	for _, s := range scenarios {
		files = append(files, filepath.Join(root, "tests/deploy/values", s))
	}
	if overlay != "" {
		f := filepath.Join(t.TempDir(), "overlay.yaml")
		if err := os.WriteFile(f, []byte(overlay), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	r, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: files, ReleaseName: "ttt",
		Namespace: "serving", APIVersions: []string{"monitoring.coreos.com/v1"}})
	if err != nil {
		return rendered{}, err
	}
	return parseRendered(t, r), nil
}

// parseRendered parses every document of a render; kinds and names must be set and unique.
func parseRendered(t *testing.T, r *Rendered) rendered {
	t.Helper()
	out := rendered{text: r.Stream()}
	seen := map[string]bool{}
	for _, src := range r.Sorted() {
		dec := yaml.NewDecoder(strings.NewReader(r.Manifests[src]))
		for {
			var v interface{}
			err := dec.Decode(&v)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: not YAML: %v\n%s", src, err, r.Manifests[src])
			}
			if v == nil {
				continue
			}
			o, ok := v.(obj)
			if !ok {
				t.Fatalf("%s: document is not a mapping", src)
			}
			m := manifest{source: src, o: o}
			if str(o, "apiVersion") == "" || m.kind() == "" || m.name() == "" {
				t.Fatalf("%s: apiVersion, kind and metadata.name are required", src)
			}
			key := m.kind() + "/" + m.name()
			if seen[key] {
				t.Fatalf("%s: duplicate %s", src, key)
			}
			seen[key] = true
			out.all = append(out.all, m)
		}
	}
	if len(out.all) == 0 {
		t.Fatal("nothing rendered")
	}
	return out
}

// serverContainer returns the server's StatefulSet (the one with a ttt-serve container; the
// chart's etcd is another) and that container.
func serverContainer(t *testing.T, r rendered) (manifest, obj) {
	t.Helper()
	var sts manifest
	var ctr obj
	for _, s := range r.find("StatefulSet") {
		for _, c := range list(s.o, "spec", "template", "spec", "containers") {
			if str(c, "name") == "ttt-serve" {
				if ctr != nil {
					t.Fatalf("two StatefulSets run ttt-serve: %s and %s", sts.name(), s.name())
				}
				sts, ctr = s, c.(obj)
			}
		}
	}
	if ctr == nil {
		t.Fatal("no StatefulSet has a ttt-serve container")
	}
	return sts, ctr
}

// named returns the manifest of that kind and name.
func (r rendered) named(t *testing.T, kind, name string) manifest {
	t.Helper()
	for _, m := range r.find(kind) {
		if m.name() == name {
			return m
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return manifest{}
}

// args maps --flag=value arguments of the container.
func args(t *testing.T, c obj) map[string]string {
	out := map[string]string{}
	for _, a := range list(c, "args") {
		s, _ := a.(string)
		m := regexp.MustCompile(`^--([a-z0-9_]+)=(.*)$`).FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("argument %q is not --flag=value", s)
		}
		out[m[1]] = m[2]
	}
	return out
}

func addrPort(t *testing.T, addr string) int {
	i := strings.LastIndex(addr, ":")
	p, err := strconv.Atoi(addr[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("bad address %q", addr)
	}
	return p
}

func containerPort(c obj, name string) int {
	for _, p := range list(c, "ports") {
		if str(p, "name") == name {
			return num(p, "containerPort")
		}
	}
	return -1
}

var scenarios = [][]string{{}, {"gpu-monitoring-hpa.yaml"}, {"scaleout.yaml"}, {"secured.yaml"},
	{"scaleout-haproxy.yaml"}, {"hpa-haproxy.yaml"}, {"haproxy-tls.yaml"}}

func TestFlagsArePortsAndNamesOfTheContract(t *testing.T) {
	c := parseContract(t)
	for _, sc := range scenarios {
		r := render(t, sc...)
		_, ctr := serverContainer(t, r)
		a := args(t, ctr)
		for f := range a {
			if _, ok := c.flags[f]; !ok {
				t.Errorf("%v: --%s is not a server flag in docs/contract.md", sc, f)
			}
		}
		for _, f := range []string{"listen", "metrics_listen", "checkpoint_dir", "memory_budget_mb", "max_sessions",
			"idle_ttl_s", "device", "dtype", "max_batch_tokens", "max_decode_batch_tokens",
			"max_resident_sessions", "checkpoint_on_shutdown"} {
			if _, ok := a[f]; !ok {
				t.Errorf("%v: --%s is not set from values", sc, f)
			}
		}
		if got := addrPort(t, a["listen"]); got != c.grpcPort {
			t.Errorf("%v: --listen port %d, contract default %d", sc, got, c.grpcPort)
		}
		if got := addrPort(t, a["metrics_listen"]); got != c.metricsPort {
			t.Errorf("%v: --metrics_listen port %d, contract default %d", sc, got, c.metricsPort)
		}
		if got := containerPort(ctr, "grpc"); got != c.grpcPort {
			t.Errorf("%v: containerPort grpc %d, want %d", sc, got, c.grpcPort)
		}
		if got := containerPort(ctr, "metrics"); got != c.metricsPort {
			t.Errorf("%v: containerPort metrics %d, want %d", sc, got, c.metricsPort)
		}
		for _, v := range a {
			if strings.Contains(v, "e+") {
				t.Errorf("%v: flag value %q printed in float notation", sc, v)
			}
		}
	}
}

// The engine's step budgets and the resident pool's limit come from values: the defaults are the
// contract's, and a deployment's values (the GPU scenario's larger pool and steps) reach the flags.
func TestBatchingAndPoolFlagsFollowValues(t *testing.T) {
	c := parseContract(t)
	leadingInt := regexp.MustCompile(`^\d+`)
	_, ctr := serverContainer(t, render(t))
	a := args(t, ctr)
	for _, f := range []string{"max_batch_tokens", "max_decode_batch_tokens", "max_resident_sessions"} {
		if want := leadingInt.FindString(c.flags[f]); want == "" || a[f] != want {
			t.Errorf("default --%s=%q, contract default %q", f, a[f], c.flags[f])
		}
	}
	_, ctr = serverContainer(t, render(t, "gpu-monitoring-hpa.yaml"))
	a = args(t, ctr)
	for f, want := range map[string]string{"max_batch_tokens": "8192", "max_decode_batch_tokens": "256",
		"max_resident_sessions": "512", "max_sessions": "4096"} {
		if a[f] != want {
			t.Errorf("gpu scenario: --%s=%q, want %s (tests/deploy/values/gpu-monitoring-hpa.yaml)", f, a[f], want)
		}
	}
}

// Idle compaction is off by default, as the contract's defaults say; values turn it on and pick
// the KV cache's form.
func TestCompactionFlagsFollowValues(t *testing.T) {
	c := parseContract(t)
	_, ctr := serverContainer(t, render(t))
	a := args(t, ctr)
	for _, f := range []string{"compact_idle_s", "compact_kv_cache", "compact_kv_dtype"} {
		if !strings.HasPrefix(c.flags[f], a[f]) || a[f] == "" {
			t.Errorf("default --%s=%q, contract default %q", f, a[f], c.flags[f])
		}
	}
	r, err := renderOverlay(t, "server:\n  compactIdleS: 300\n  compactKvCache: true\n  compactKvDtype: int8\n")
	if err != nil {
		t.Fatal(err)
	}
	_, ctr = serverContainer(t, r)
	a = args(t, ctr)
	for f, want := range map[string]string{"compact_idle_s": "300", "compact_kv_cache": "true",
		"compact_kv_dtype": "int8"} {
		if a[f] != want {
			t.Errorf("--%s=%q, want %s", f, a[f], want)
		}
	}
}

// The delta dtype is the model config's unless values name one (the contract's default ""); the
// schema refuses anything but the two the server takes.
func TestDeltaDtypeFlagFollowsValues(t *testing.T) {
	c := parseContract(t)
	if !strings.HasPrefix(c.flags["ttt_delta_dtype"], `""`) {
		t.Fatalf("contract default of --ttt_delta_dtype %q, want \"\" (the model's)", c.flags["ttt_delta_dtype"])
	}
	_, ctr := serverContainer(t, render(t))
	if v, ok := args(t, ctr)["ttt_delta_dtype"]; ok {
		t.Errorf("default: --ttt_delta_dtype=%q set, want it left to the model config", v)
	}
	r, err := renderOverlay(t, "server:\n  tttDeltaDtype: bfloat16\n")
	if err != nil {
		t.Fatal(err)
	}
	_, ctr = serverContainer(t, r)
	if v := args(t, ctr)["ttt_delta_dtype"]; v != "bfloat16" {
		t.Errorf("--ttt_delta_dtype=%q, want bfloat16", v)
	}
}

func TestServicesExposeGrpcAndMetrics(t *testing.T) {
	c := parseContract(t)
	r := render(t)
	sts, _ := serverContainer(t, r)
	podLabels := get(sts.o, "spec", "template", "metadata", "labels").(obj)
	var headless, lb int
	for _, s := range r.find("Service") {
		if strings.HasSuffix(s.name(), "-router") {
			continue
		}
		sel := get(s.o, "spec", "selector").(obj)
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("Service %s selects %s=%v, pods have %v", s.name(), k, v, podLabels[k])
			}
		}
		ports := map[string]int{}
		for _, p := range list(s.o, "spec", "ports") {
			ports[str(p, "name")] = num(p, "port")
			if tp := str(p, "targetPort"); tp != str(p, "name") {
				t.Errorf("Service %s port %s targets %q", s.name(), str(p, "name"), tp)
			}
		}
		if ports["grpc"] != c.grpcPort || ports["metrics"] != c.metricsPort {
			t.Errorf("Service %s ports %v, want grpc %d metrics %d", s.name(), ports, c.grpcPort, c.metricsPort)
		}
		if str(s.o, "spec", "clusterIP") == "None" {
			headless++
			if str(sts.o, "spec", "serviceName") != s.name() {
				t.Errorf("StatefulSet serviceName %q, headless Service %q", str(sts.o, "spec", "serviceName"), s.name())
			}
		} else {
			lb++
		}
	}
	if headless != 1 || lb != 1 {
		t.Errorf("want one headless and one load-balanced Service, got %d and %d", headless, lb)
	}
}

// The kubelet's gRPC probes speak neither TLS nor tokens: they go to the plaintext health
// listener (--health_listen) when there is one, else to the gRPC port.
func TestProbesUseGrpcHealthOnTheHealthListener(t *testing.T) {
	for _, sc := range scenarios {
		r := render(t, sc...)
		_, ctr := serverContainer(t, r)
		a := args(t, ctr)
		probePort := addrPort(t, a["listen"])
		if h, ok := a["health_listen"]; ok {
			probePort = addrPort(t, h)
			if got := containerPort(ctr, "health"); got != probePort {
				t.Errorf("%v: containerPort health %d, --health_listen port %d", sc, got, probePort)
			}
		}
		for _, p := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
			probe, ok := ctr[p].(obj)
			if !ok {
				t.Fatalf("%v: no %s", sc, p)
			}
			if num(probe, "grpc", "port") != probePort {
				t.Errorf("%v: %s is %v, want grpc on port %d", sc, p, probe, probePort)
			}
			for _, other := range []string{"httpGet", "exec", "tcpSocket"} {
				if probe[other] != nil {
					t.Errorf("%v: %s also has %s", sc, p, other)
				}
			}
		}
		if svc := str(ctr, "readinessProbe", "grpc", "service"); svc != "" && svc != "tttserve.v1.TttService" {
			t.Errorf("%v: readiness asks for health service %q, the server reports \"\" and tttserve.v1.TttService", sc, svc)
		}
	}
}

// secured.yaml: the Secret's files reach the server as flags, the probes use the health
// listener, Prometheus scrapes with its token, and the NetworkPolicy admits the named peers.
func TestSecuredConfigWiresTheSecretToTheFlags(t *testing.T) {
	def := render(t)
	_, defCtr := serverContainer(t, def)
	for _, f := range []string{"tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file", "metrics_auth", "metrics_tls_cert_file", "quotas_file"} {
		if _, ok := args(t, defCtr)[f]; ok {
			t.Errorf("default values pass --%s", f)
		}
	}
	if len(def.find("NetworkPolicy")) != 0 {
		t.Error("default values render a NetworkPolicy")
	}

	r := render(t, "secured.yaml")
	sts, ctr := serverContainer(t, r)
	a := args(t, ctr)
	dir := "/etc/ttt-serve/secrets"
	for flag, want := range map[string]string{
		"tls_cert_file": dir + "/tls.crt", "tls_key_file": dir + "/tls.key",
		"tls_client_ca_file": dir + "/ca.crt", "auth_tokens_file": dir + "/tokens",
		"metrics_auth": "true", "reflection": "off", "health_listen": "0.0.0.0:50052",
		"metrics_tls_cert_file": dir + "/tls.crt", "metrics_tls_key_file": dir + "/tls.key",
		"quotas_file": "/etc/ttt-serve/quotas/quotas",
	} {
		if a[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, a[flag], want)
		}
	}
	mounted := false
	for _, m := range list(ctr, "volumeMounts") {
		if str(m, "name") == "secrets" && str(m, "mountPath") == dir && get(m, "readOnly") == true {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("the Secret is not mounted read-only at %s: %v", dir, list(ctr, "volumeMounts"))
	}
	quotasMounted := false
	for _, m := range list(ctr, "volumeMounts") {
		if str(m, "name") == "quotas" && str(m, "mountPath") == "/etc/ttt-serve/quotas" &&
			get(m, "readOnly") == true && get(m, "subPath") == nil {
			quotasMounted = true
		}
	}
	if !quotasMounted {
		t.Errorf("the quotas ConfigMap is not mounted read-only (without subPath, so updates reach the server): %v", list(ctr, "volumeMounts"))
	}
	var quotasMap string
	for _, v := range list(sts.o, "spec", "template", "spec", "volumes") {
		if str(v, "name") == "quotas" {
			quotasMap = str(v, "configMap", "name")
		}
	}
	cm := r.one(t, "ConfigMap")
	if quotasMap == "" || str(cm.o, "metadata", "name") != quotasMap ||
		!strings.Contains(str(cm.o, "data", "quotas"), "alice  live_sessions=1000") {
		t.Errorf("quotas volume from ConfigMap %q; the ConfigMap: %v", quotasMap, cm.o)
	}
	var secretName string
	for _, v := range list(sts.o, "spec", "template", "spec", "volumes") {
		if str(v, "name") == "secrets" {
			secretName = str(v, "secret", "secretName")
		}
	}
	if secretName != "ttt-serve-tls" {
		t.Errorf("secrets volume from Secret %q, want the existing ttt-serve-tls", secretName)
	}
	ep := get(r.one(t, "ServiceMonitor").o, "spec", "endpoints", 0)
	if str(ep, "bearerTokenSecret", "name") != "ttt-serve-metrics-token" || str(ep, "bearerTokenSecret", "key") != "metrics-token" {
		t.Errorf("ServiceMonitor scrapes without the metrics token: %v", ep)
	}
	if str(ep, "scheme") != "https" || str(ep, "tlsConfig", "ca", "secret", "key") != "ca.crt" ||
		str(ep, "tlsConfig", "serverName") != "ttt-serve" {
		t.Errorf("ServiceMonitor does not scrape https with the tlsConfig given: %v", ep)
	}
	np := r.one(t, "NetworkPolicy")
	rules := map[string]interface{}{}
	for _, rule := range list(np.o, "spec", "ingress") {
		rules[str(rule, "ports", 0, "port")] = get(rule, "from")
	}
	if str(rules["grpc"], 0, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != "clients" {
		t.Errorf("NetworkPolicy gRPC peers %v", rules["grpc"])
	}
	if str(rules["metrics"], 0, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != "monitoring" {
		t.Errorf("NetworkPolicy metrics peers %v", rules["metrics"])
	}
	if _, ok := rules["health"]; !ok || rules["health"] != nil {
		t.Errorf("NetworkPolicy must admit the kubelet to the health port from anywhere: %v", rules)
	}
}

func TestSecurityValuesThatCannotWorkAreRefused(t *testing.T) {
	root := repoRoot(t)
	for name, c := range map[string]struct{ text, fragment string }{
		"noSecret":  {"security:\n  tls: true\n", "read the Secret"},
		"mtlsNoTls": {"secret:\n  existingSecret: s\nsecurity:\n  mutualTls: true\n", "mutualTls needs security.tls"},
		"mtlsNoTokens": {"secret:\n  existingSecret: s\nsecurity:\n  tls: true\n  mutualTls: true\n",
			"mutualTls needs security.tokens"},
		"crlNoMtls": {"secret:\n  existingSecret: s\nsecurity:\n  tls: true\n  crl: true\n",
			"crl revokes client certificates"},
		"metricsNoT": {"security:\n  metricsAuth: true\n", "metricsAuth checks tokens"},
		"smNoToken": {"secret:\n  existingSecret: s\nsecurity:\n  tokens: true\n  metricsAuth: true\nserviceMonitor:\n  enabled: true\n",
			"bearerTokenSecret.name"},
		"metricsTls": {"security:\n  metricsTls: true\n", "metricsTls reads tls.crt"},
		"quotasNone": {"quotas:\n  enabled: true\n", "set quotas.rules"},
		"envoyTls":   {"secret:\n  existingSecret: s\nsecurity:\n  tls: true\nrouting:\n  envoy:\n    enabled: true\n", "cannot front security.tls"},
		"haproxyMtls": {"secret:\n  existingSecret: s\nsecurity:\n  tls: true\n  mutualTls: true\nrouting:\n  haproxy:\n    enabled: true\n",
			"not the client's certificate"},
	} {
		f := filepath.Join(t.TempDir(), name+".yaml")
		os.WriteFile(f, []byte(c.text), 0o644)
		_, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: []string{f},
			APIVersions: []string{"monitoring.coreos.com/v1"}})
		if err == nil || !strings.Contains(err.Error(), c.fragment) {
			t.Errorf("%s: want an error with %q, got %v", name, c.fragment, err)
		}
	}
}

func TestCheckpointVolumeIsMountedWhereTheServerWrites(t *testing.T) {
	c := parseContract(t)
	for _, sc := range scenarios {
		r := render(t, sc...)
		sts, ctr := serverContainer(t, r)
		dir := args(t, ctr)["checkpoint_dir"]
		if dir != c.imageCkptDir {
			t.Errorf("%v: --checkpoint_dir=%s, the image's volume is %s", sc, dir, c.imageCkptDir)
		}
		var volume string
		for _, m := range list(ctr, "volumeMounts") {
			if str(m, "mountPath") == dir {
				volume = str(m, "name")
				if get(m, "readOnly") == true {
					t.Errorf("%v: checkpoint mount is read-only", sc)
				}
			}
		}
		if volume == "" {
			t.Fatalf("%v: nothing is mounted at --checkpoint_dir=%s", sc, dir)
		}
		var fromTemplate, fromPod bool
		for _, v := range list(sts.o, "spec", "volumeClaimTemplates") {
			fromTemplate = fromTemplate || str(v, "metadata", "name") == volume
		}
		for _, v := range list(sts.o, "spec", "template", "spec", "volumes") {
			if str(v, "name") == volume {
				fromPod = true
				claim := str(v, "persistentVolumeClaim", "claimName")
				if claim == "" {
					t.Errorf("%v: checkpoint volume is not a PersistentVolumeClaim: %v", sc, v)
				}
				found := false
				for _, p := range r.find("PersistentVolumeClaim") {
					if p.name() == claim {
						found = true
						modes := list(p.o, "spec", "accessModes")
						if len(modes) == 0 || modes[0] != "ReadWriteMany" {
							t.Errorf("%v: shared claim %s has access modes %v", sc, claim, modes)
						}
					}
				}
				if !found {
					t.Errorf("%v: claim %s is not rendered", sc, claim)
				}
			}
		}
		if fromTemplate == fromPod {
			t.Errorf("%v: volume %q must come from exactly one of volumeClaimTemplates / pod volumes", sc, volume)
		}
	}
}

func TestSecurityContextHolds(t *testing.T) {
	for _, sc := range scenarios {
		r := render(t, sc...)
		for _, kind := range []string{"StatefulSet", "Deployment"} {
			for _, w := range r.find(kind) {
				pod := get(w.o, "spec", "template", "spec").(obj)
				if get(pod, "securityContext", "runAsNonRoot") != true {
					t.Errorf("%v %s: pod runAsNonRoot is not true", sc, w.name())
				}
				if str(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
					t.Errorf("%v %s: pod seccompProfile is not RuntimeDefault", sc, w.name())
				}
				if get(pod, "automountServiceAccountToken") != false {
					t.Errorf("%v %s: the service account token is mounted", sc, w.name())
				}
				tmpVolumes := map[string]bool{}
				for _, v := range list(pod, "volumes") {
					if get(v, "emptyDir") != nil {
						tmpVolumes[str(v, "name")] = true
					}
				}
				for _, c := range list(pod, "containers") {
					sc2 := get(c, "securityContext")
					name := w.name() + "/" + str(c, "name")
					if get(sc2, "readOnlyRootFilesystem") != true {
						t.Errorf("%v %s: root filesystem is writable", sc, name)
					}
					if get(sc2, "allowPrivilegeEscalation") != false {
						t.Errorf("%v %s: privilege escalation allowed", sc, name)
					}
					if get(sc2, "runAsNonRoot") != true || num(sc2, "runAsUser") == 0 {
						t.Errorf("%v %s: may run as root", sc, name)
					}
					drop := list(sc2, "capabilities", "drop")
					if len(drop) != 1 || drop[0] != "ALL" {
						t.Errorf("%v %s: capabilities.drop is %v, want [ALL]", sc, name, drop)
					}
					if add := list(sc2, "capabilities", "add"); len(add) > 0 {
						t.Errorf("%v %s: adds capabilities %v", sc, name, add)
					}
					if str(sc2, "seccompProfile", "type") != "RuntimeDefault" && str(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
						t.Errorf("%v %s: no RuntimeDefault seccomp profile", sc, name)
					}
					tmp := false
					for _, m := range list(c, "volumeMounts") {
						if str(m, "mountPath") == "/tmp" && tmpVolumes[str(m, "name")] {
							tmp = true
						}
					}
					if !tmp {
						t.Errorf("%v %s: no emptyDir at /tmp for a read-only root", sc, name)
					}
				}
			}
		}
	}
}

func TestGracefulTerminationCoversDrainAndCheckpoint(t *testing.T) {
	c := parseContract(t)
	for _, sc := range scenarios {
		r := render(t, sc...)
		sts, ctr := serverContainer(t, r)
		a := args(t, ctr)
		drain, err := strconv.Atoi(a["drain_timeout_s"])
		if err != nil {
			drain = c.drainTimeoutS
		}
		delay, err := strconv.Atoi(a["shutdown_delay_s"])
		if err != nil || delay < 1 {
			t.Errorf("%v: --shutdown_delay_s=%q: want a delay, so endpoints and routers move first", sc, a["shutdown_delay_s"])
		}
		grace := num(sts.o, "spec", "template", "spec", "terminationGracePeriodSeconds")
		if grace < delay+drain+30 {
			t.Errorf("%v: terminationGracePeriodSeconds %d leaves under 30 s to checkpoint after a %d s delay and a %d s drain", sc, grace, delay, drain)
		}
		if a["checkpoint_on_shutdown"] != "true" {
			t.Errorf("%v: --checkpoint_on_shutdown=%s", sc, a["checkpoint_on_shutdown"])
		}
	}
	root := repoRoot(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("terminationGracePeriodSeconds: 10\n"), 0o644)
	_, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: []string{bad}})
	if err == nil || !strings.Contains(err.Error(), "terminationGracePeriodSeconds must exceed") {
		t.Errorf("grace 10 s with a 20 s drain: want a render failure, got %v", err)
	}
	os.WriteFile(bad, []byte("terminationGracePeriodSeconds: 22\nserver:\n  shutdownDelayS: 5\n"), 0o644)
	_, err = Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: []string{bad}})
	if err == nil || !strings.Contains(err.Error(), "server.shutdownDelayS plus server.drainTimeoutS") {
		t.Errorf("grace 22 s with a 5 s delay and a 20 s drain: want a render failure, got %v", err)
	}
}

// --threads follows the container's CPU request through the downward API (rounded up to whole
// cores), unless server.torchThreads names a count.
func TestThreadsFollowTheCpuRequest(t *testing.T) {
	for _, sc := range [][]string{{}, {"hpa-haproxy.yaml"}} {
		_, ctr := serverContainer(t, render(t, sc...))
		if a := args(t, ctr); a["threads"] != "$(TTT_CPU_REQUEST)" {
			t.Errorf("%v: --threads=%q, want $(TTT_CPU_REQUEST)", sc, a["threads"])
		}
		var ref interface{}
		for _, e := range list(ctr, "env") {
			if str(e, "name") == "TTT_CPU_REQUEST" {
				ref = get(e, "valueFrom", "resourceFieldRef")
			}
		}
		if str(ref, "resource") != "requests.cpu" || str(ref, "containerName") != "ttt-serve" ||
			str(ref, "divisor") != "1" {
			t.Errorf("%v: TTT_CPU_REQUEST from %v, want requests.cpu of ttt-serve in whole cores", sc, ref)
		}
	}
	f := filepath.Join(t.TempDir(), "threads.yaml")
	os.WriteFile(f, []byte("server:\n  torchThreads: 3\n"), 0o644)
	r, err := Render(filepath.Join(repoRoot(t), "helm/ttt-serve"), Options{ValuesFiles: []string{f}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Stream(), `- "--threads=3"`) || !strings.Contains(r.Stream(), "OMP_NUM_THREADS") {
		t.Errorf("server.torchThreads 3: want --threads=3 and OMP_NUM_THREADS")
	}
}

func TestGpuResourcesOnlyWithGpuValues(t *testing.T) {
	for _, sc := range [][]string{{}, {"scaleout.yaml"}} {
		r := render(t, sc...)
		if strings.Contains(r.text, "nvidia.com/gpu") {
			t.Errorf("%v: nvidia.com/gpu rendered without gpu.enabled", sc)
		}
		_, ctr := serverContainer(t, r)
		if d := args(t, ctr)["device"]; d != "cpu" {
			t.Errorf("%v: --device=%s without a GPU", sc, d)
		}
		if strings.HasSuffix(str(ctr, "image"), "-cuda") {
			t.Errorf("%v: CUDA image without a GPU", sc)
		}
	}
	r := render(t, "gpu-monitoring-hpa.yaml")
	sts, ctr := serverContainer(t, r)
	if n := num(ctr, "resources", "limits", "nvidia.com/gpu"); n != 1 {
		t.Errorf("limits nvidia.com/gpu = %d, want 1", n)
	}
	if d := args(t, ctr)["device"]; !strings.HasPrefix(d, "cuda") {
		t.Errorf("--device=%s on a GPU", d)
	}
	if !strings.HasSuffix(str(ctr, "image"), "-cuda") {
		t.Errorf("image %s is not the CUDA build", str(ctr, "image"))
	}
	tolerated := false
	for _, tol := range list(sts.o, "spec", "template", "spec", "tolerations") {
		tolerated = tolerated || str(tol, "key") == "nvidia.com/gpu"
	}
	if !tolerated {
		t.Error("no toleration for nvidia.com/gpu taints")
	}
}

func TestMonitoringAndAutoscalingAreOptional(t *testing.T) {
	c := parseContract(t)
	def := render(t)
	for _, kind := range []string{"ServiceMonitor", "HorizontalPodAutoscaler", "Deployment", "Secret"} {
		if len(def.find(kind)) != 0 {
			t.Errorf("default values render a %s", kind)
		}
	}
	if len(def.find("PodDisruptionBudget")) != 1 {
		t.Error("default values render no PodDisruptionBudget")
	}
	r := render(t, "gpu-monitoring-hpa.yaml")
	sm := r.one(t, "ServiceMonitor")
	ep := get(sm.o, "spec", "endpoints", 0)
	if str(ep, "port") != "metrics" || str(ep, "path") != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v, want port metrics path /metrics", ep)
	}
	// The ServiceMonitor must pick exactly the load-balanced Service.
	var picked []string
	for _, s := range r.find("Service") {
		labels := get(s.o, "metadata", "labels").(obj)
		ok := true
		for k, v := range get(sm.o, "spec", "selector", "matchLabels").(obj) {
			ok = ok && labels[k] == v
		}
		for _, e := range list(sm.o, "spec", "selector", "matchExpressions") {
			if str(e, "operator") == "DoesNotExist" {
				_, has := labels[str(e, "key")]
				ok = ok && !has
			}
		}
		if ok {
			picked = append(picked, s.name())
			for _, p := range list(s.o, "spec", "ports") {
				if str(p, "name") == "metrics" && num(p, "port") != c.metricsPort {
					t.Errorf("metrics port %d", num(p, "port"))
				}
			}
		}
	}
	if len(picked) != 1 || picked[0] != "ttt-ttt-serve" {
		t.Errorf("ServiceMonitor selects Services %v, want [ttt-ttt-serve]", picked)
	}
	hpa := r.one(t, "HorizontalPodAutoscaler")
	sts, _ := serverContainer(t, r)
	if str(hpa.o, "spec", "scaleTargetRef", "kind") != "StatefulSet" || str(hpa.o, "spec", "scaleTargetRef", "name") != sts.name() {
		t.Errorf("HPA targets %v", get(hpa.o, "spec", "scaleTargetRef"))
	}
	if get(sts.o, "spec", "replicas") != nil {
		t.Error("StatefulSet sets replicas while the HPA owns them")
	}
	if len(list(hpa.o, "spec", "metrics")) != 2 {
		t.Errorf("HPA metrics %v, want CPU and queue depth", list(hpa.o, "spec", "metrics"))
	}
}

// The HAProxy router (the one tests/e2e/scaleout_e2e_test.py runs): a consistent hash of the
// session header over one h2 server per StatefulSet pod, by its stable DNS name; and the replicas
// get the shared store's flags.
func TestHaproxyHashesTheSessionHeaderOverEveryReplica(t *testing.T) {
	c := parseContract(t)
	r := render(t, "scaleout-haproxy.yaml")
	sts, ctr := serverContainer(t, r)
	cfg := ""
	for _, cm := range r.find("ConfigMap") {
		if text := str(cm.o, "data", "haproxy.cfg"); text != "" {
			cfg = text
		}
	}
	for _, want := range []string{"balance hdr(x-session-id)", "hash-type consistent",
		"bind :8080 proto h2", "retry-on conn-failure", "default-server proto h2 check"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, cfg)
		}
	}
	for i := 0; i < 3; i++ {
		pod := fmt.Sprintf("%s-%d", str(sts.o, "metadata", "name"), i)
		want := fmt.Sprintf("server %s %s.%s.serving.svc:%d", pod, pod, str(sts.o, "spec", "serviceName"), c.grpcPort)
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
	if n := strings.Count(cfg, "\n  server "); n != 3 {
		t.Errorf("%d server lines, want one per replica (3)", n)
	}
	a := args(t, ctr)
	for flag, want := range map[string]string{"replica_id": "$(POD_NAME)", "durability": "sync",
		"lease_s": "4", "persist_interval_s": "1"} {
		if a[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, a[flag], want)
		}
	}
}

// haproxyCfg is the router's haproxy.cfg in a render ("" without one).
func haproxyCfg(r rendered) string {
	for _, cm := range r.find("ConfigMap") {
		if text := str(cm.o, "data", "haproxy.cfg"); text != "" {
			return text
		}
	}
	return ""
}

// seconds parses an HAProxy duration ("1s", "500ms", "1m").
func seconds(t *testing.T, d string) float64 {
	m := regexp.MustCompile(`^(\d+)(ms|s|m)$`).FindStringSubmatch(d)
	if m == nil {
		t.Fatalf("bad HAProxy duration %q", d)
	}
	n, _ := strconv.Atoi(m[1])
	return float64(n) * map[string]float64{"ms": 0.001, "s": 1, "m": 60}[m[2]]
}

// With the HPA the router lists every pod the HPA can add (maxReplicas), each resolved at run time
// through the headless Service; every replica is checked over HTTP on its own /readyz (metrics
// port), and leaves the ring well inside the shutdown delay and the lease; the NetworkPolicy lets
// the router reach the metrics port.
func TestHaproxyFollowsThePodsTheHpaCanAddAndChecksReadyz(t *testing.T) {
	c := parseContract(t)
	r := render(t, "hpa-haproxy.yaml")
	sts, ctr := serverContainer(t, r)
	cfg := haproxyCfg(r)
	for i := 0; i < 5; i++ {
		pod := fmt.Sprintf("%s-%d", sts.name(), i)
		want := fmt.Sprintf("server %s %s.%s.serving.svc:%d\n", pod, pod, str(sts.o, "spec", "serviceName"), c.grpcPort)
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, cfg)
		}
	}
	if n := strings.Count(cfg, "\n  server "); n != 5 {
		t.Errorf("%d server lines, want autoscaling.maxReplicas (5)", n)
	}
	for _, want := range []string{"option httpchk\n", "http-check connect default proto h1\n",
		"http-check send meth GET uri /readyz ", "http-check expect status 200\n",
		fmt.Sprintf(" check port %d ", c.metricsPort), "resolvers cluster init-addr last,libc,none"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, cfg)
		}
	}
	m := regexp.MustCompile(`inter (\S+) fall (\d+) rise \d+`).FindStringSubmatch(cfg)
	tm := regexp.MustCompile(`timeout check (\S+)`).FindStringSubmatch(cfg)
	if m == nil || tm == nil {
		t.Fatalf("haproxy.cfg has no check interval or timeout:\n%s", cfg)
	}
	fall, _ := strconv.Atoi(m[2])
	detect := seconds(t, m[1])*float64(fall) + seconds(t, tm[1])
	a := args(t, ctr)
	delay, _ := strconv.Atoi(a["shutdown_delay_s"])
	lease, _ := strconv.Atoi(a["lease_s"])
	if detect >= float64(delay) || detect >= float64(lease)/2 {
		t.Errorf("a replica leaves the ring after up to %.1f s: want under --shutdown_delay_s=%d and half of --lease_s=%d", detect, delay, lease)
	}
	// Values that would let the router send calls after the listener closed do not render.
	bad := filepath.Join(t.TempDir(), "slow-check.yaml")
	os.WriteFile(bad, []byte("routing:\n  haproxy:\n    enabled: true\n    healthCheck:\n      inter: 2s\n      fall: 2\n      timeout: 500ms\nserver:\n  shutdownDelayS: 4\n"), 0o644)
	_, err := Render(filepath.Join(repoRoot(t), "helm/ttt-serve"), Options{ValuesFiles: []string{bad}})
	if err == nil || !strings.Contains(err.Error(), "takes up to 4500 ms to take a stopping replica out of the ring") {
		t.Errorf("a 4.5 s check with a 4 s shutdown delay: want a render failure, got %v", err)
	}
	np := r.named(t, "NetworkPolicy", sts.name())
	router := false
	for _, rule := range list(np.o, "spec", "ingress") {
		if str(rule, "ports", 0, "port") != "metrics" {
			continue
		}
		for _, from := range list(rule, "from") {
			if strings.HasSuffix(str(from, "podSelector", "matchLabels", "app.kubernetes.io/name"), "-haproxy") {
				router = true
			}
		}
	}
	if !router {
		t.Errorf("the NetworkPolicy keeps the router from the metrics port (/readyz): %v", get(np.o, "spec", "ingress"))
	}
}

// With security.tls the HAProxy router terminates TLS with the Secret's certificate (its key
// projected where HAProxy looks: tls.crt.key) and re-encrypts to the replicas, verifying them
// against ca.crt unless routing.haproxy.verifyReplicas is off.
func TestHaproxyTerminatesTlsAndReencryptsToTheReplicas(t *testing.T) {
	r := render(t, "haproxy-tls.yaml")
	cfg := haproxyCfg(r)
	for _, want := range []string{"bind :8080 ssl crt /usr/local/etc/haproxy-tls/tls.crt alpn h2\n",
		"default-server ssl alpn h2 verify required ca-file /usr/local/etc/haproxy-tls/ca.crt\n",
		"default-server proto h2 check port "} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, cfg)
		}
	}
	var router manifest
	for _, d := range r.find("Deployment") {
		if strings.HasSuffix(d.name(), "-haproxy") {
			router = d
		}
	}
	pod := get(router.o, "spec", "template", "spec")
	if num(pod, "securityContext", "fsGroup") != 99 {
		t.Errorf("router fsGroup %v: HAProxy (uid 99) cannot read the Secret's 0440 files", get(pod, "securityContext"))
	}
	items := map[string]string{}
	for _, v := range list(pod, "volumes") {
		if str(v, "name") == "tls" && str(v, "secret", "secretName") == "ttt-serve-tls" {
			for _, it := range list(v, "secret", "items") {
				items[str(it, "key")] = str(it, "path")
			}
		}
	}
	if items["tls.crt"] != "tls.crt" || items["tls.key"] != "tls.crt.key" || items["ca.crt"] != "ca.crt" {
		t.Errorf("router's Secret items %v, want tls.crt, tls.key as tls.crt.key, ca.crt", items)
	}
	mounted := false
	for _, m := range list(pod, "containers", 0, "volumeMounts") {
		mounted = mounted || (str(m, "name") == "tls" && str(m, "mountPath") == "/usr/local/etc/haproxy-tls")
	}
	if !mounted {
		t.Errorf("the router does not mount the Secret where haproxy.cfg reads it")
	}

	f := filepath.Join(t.TempDir(), "noverify.yaml")
	os.WriteFile(f, []byte("routing:\n  haproxy:\n    verifyReplicas: false\n"), 0o644)
	root := repoRoot(t)
	out, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: []string{
		filepath.Join(root, "tests/deploy/values/haproxy-tls.yaml"), f}})
	if err != nil {
		t.Fatal(err)
	}
	if text := out.Stream(); !strings.Contains(text, "default-server ssl alpn h2 verify none\n") || strings.Contains(text, "key: ca.crt") {
		t.Errorf("verifyReplicas false: want verify none and no ca.crt item")
	}
}

func TestEnvoyRoutesBySessionHeaderToTheReplicas(t *testing.T) {
	c := parseContract(t)
	r := render(t, "scaleout.yaml")
	sts, ctr := serverContainer(t, r)
	if num(sts.o, "spec", "replicas") != 3 {
		t.Errorf("replicas %v", get(sts.o, "spec", "replicas"))
	}
	var cfg obj
	for _, cm := range r.find("ConfigMap") {
		if text := str(cm.o, "data", "envoy.yaml"); text != "" {
			if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
				t.Fatalf("envoy.yaml: %v", err)
			}
		}
	}
	if cfg == nil {
		t.Fatal("no Envoy config rendered")
	}
	cluster := get(cfg, "static_resources", "clusters", 0)
	if str(cluster, "lb_policy") != "RING_HASH" || str(cluster, "type") != "STRICT_DNS" {
		t.Errorf("cluster %v: want a STRICT_DNS RING_HASH cluster", cluster)
	}
	addr := get(cluster, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address")
	if want := str(sts.o, "spec", "serviceName") + ".serving.svc"; str(addr, "address") != want {
		t.Errorf("Envoy resolves %q, want the headless Service %q", str(addr, "address"), want)
	}
	if num(addr, "port_value") != c.grpcPort || containerPort(ctr, "grpc") != c.grpcPort {
		t.Errorf("Envoy upstream port %d, want %d", num(addr, "port_value"), c.grpcPort)
	}
	route := get(cfg, "static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config",
		"route_config", "virtual_hosts", 0, "routes", 0, "route")
	if h := str(route, "hash_policy", 0, "header", "header_name"); h != "x-session-id" {
		t.Errorf("hash on header %q, want x-session-id", h)
	}
	if get(cluster, "health_checks", 0, "grpc_health_check") == nil {
		t.Error("Envoy does not health-check replicas over gRPC")
	}
	// Secret: created and mounted read-only.
	sec := r.one(t, "Secret")
	mounted := false
	for _, m := range list(ctr, "volumeMounts") {
		if str(m, "name") == "secrets" && get(m, "readOnly") == true {
			mounted = true
		}
	}
	for _, v := range list(sts.o, "spec", "template", "spec", "volumes") {
		if str(v, "name") == "secrets" && str(v, "secret", "secretName") != sec.name() {
			t.Errorf("secret volume names %q, want %q", str(v, "secret", "secretName"), sec.name())
		}
	}
	if !mounted {
		t.Error("secret not mounted read-only")
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	root := repoRoot(t)
	for name, text := range map[string]string{
		"device":   "server:\n  device: tpu\n",
		"port":     "server:\n  grpcPort: 70000\n",
		"rootfs":   "securityContext:\n  readOnlyRootFilesystem: false\n",
		"typo":     "servr: {}\n",
		"extraArg": "server:\n  extraArgs: [\"-x\"]\n",
		"pool":     "server:\n  maxResidentSessions: -1\n",
		"cache":    "server:\n  stateCacheMb: -1\n",
		"compact":  "server:\n  compactIdleS: -5\n",
		"kvdtype":  "server:\n  compactKvDtype: fp8\n",
		"delta":    "server:\n  tttDeltaDtype: half\n",
		"decode":   "server:\n  maxDecodeBatchTokens: 0\n",
		"delay":    "server:\n  shutdownDelayS: -1\n",
		"threads":  "server:\n  torchThreads: all\n",
		"check":    "routing:\n  haproxy:\n    healthCheck:\n      timeout: soon\n",
		"rule":     "prometheusRule:\n  enabled: true\n  labels: {release: 1}\n",
		"folder":   "grafanaDashboard:\n  folder: ttt\n",
	} {
		f := filepath.Join(t.TempDir(), name+".yaml")
		os.WriteFile(f, []byte(text), 0o644)
		_, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ValuesFiles: []string{f}})
		if err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s: want a schema error, got %v", name, err)
		}
	}
}

func TestNotesRender(t *testing.T) {
	root := repoRoot(t)
	r, err := Render(filepath.Join(root, "helm/ttt-serve"), Options{ReleaseName: "ttt"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Notes, "ttt health --address=127.0.0.1:50051") {
		t.Errorf("NOTES.txt:\n%s", r.Notes)
	}
}

// The image must agree with the contract and the chart: ports, volume, health check, user, and the
// one install script in both stages.
func TestDockerfileMatchesContract(t *testing.T) {
	c := parseContract(t)
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	want := []string{
		"EXPOSE " + strconv.Itoa(c.grpcPort) + " " + strconv.Itoa(c.metricsPort),
		"VOLUME " + c.imageCkptDir,
		`"health", "--address=127.0.0.1:` + strconv.Itoa(c.grpcPort) + `"`,
		"--checkpoint_dir=" + c.imageCkptDir,
		"bash deploy/install-deps.sh build",
		"ttt-install-deps runtime",
		"COPY deploy/install-deps.sh",
		"USER 10001",
		"FROM ${DEBIAN_IMAGE} AS build",
		"FROM ${DEBIAN_IMAGE} AS runtime",
		"ARG DEBIAN_IMAGE=debian:bookworm",
		"--target ttt-serve ttt",
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("Dockerfile lacks %q", w)
		}
	}
	// The chart's non-root user must be the image's.
	r := render(t)
	_, ctr := serverContainer(t, r)
	if num(ctr, "securityContext", "runAsUser") != 10001 {
		t.Errorf("chart runs as %d, image user is 10001", num(ctr, "securityContext", "runAsUser"))
	}
	if !strings.Contains(text, "models/ttt-brown") || !strings.Contains(args(t, ctr)["model"], "/opt/ttt-serve/models/ttt-brown") {
		t.Error("the shipped model path differs between the image and the chart")
	}
}
