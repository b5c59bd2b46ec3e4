// Tests of the chart's PrometheusRule and Grafana dashboard ConfigMap: off by default, found by the
// labels the Prometheus Operator and Grafana's sidecar select on, and carrying exactly the files the
// repository tests (deploy/prometheus/alerts.yml under promtool, deploy/grafana's dashboard), which
// the chart reads through links in helm/ttt-serve/files.
package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// readYAML parses a file of the repository into plain maps and lists.
func readYAML(t *testing.T, rel string) obj {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	var o obj
	if err := yaml.Unmarshal(data, &o); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return o
}

func TestMonitoringExtrasAreOffByDefault(t *testing.T) {
	def := render(t)
	if len(def.find("PrometheusRule")) != 0 {
		t.Error("default values render a PrometheusRule")
	}
	for _, cm := range def.find("ConfigMap") {
		if strings.HasSuffix(cm.name(), "-dashboard") {
			t.Errorf("default values render the dashboard ConfigMap %s", cm.name())
		}
	}
}

// The rule is the promtool-tested file, group for group, and it still passes promtool's checks and
// the unit tests of tests/deploy/alerts_test.yml when Prometheus reads it from the manifest.
func TestPrometheusRuleIsTheTestedAlertsFile(t *testing.T) {
	r := render(t, "gpu-monitoring-hpa.yaml")
	rule := r.one(t, "PrometheusRule")
	if str(rule.o, "apiVersion") != "monitoring.coreos.com/v1" || rule.name() != "ttt-ttt-serve" {
		t.Errorf("PrometheusRule %s %s", str(rule.o, "apiVersion"), rule.name())
	}
	labels := get(rule.o, "metadata", "labels").(obj)
	if labels["release"] != "kube-prometheus-stack" || labels["app.kubernetes.io/name"] != "ttt-serve" {
		t.Errorf("PrometheusRule labels %v: want the chart's and prometheusRule.labels", labels)
	}
	spec, _ := get(rule.o, "spec").(obj)
	if len(spec) != 1 || len(list(spec, "groups")) == 0 {
		t.Fatalf("PrometheusRule spec %v: want groups only", spec)
	}
	if want := readYAML(t, "deploy/prometheus/alerts.yml")["groups"]; !reflect.DeepEqual(spec["groups"], want) {
		t.Errorf("PrometheusRule groups differ from deploy/prometheus/alerts.yml:\n%s", toYAML(spec))
	}
	for _, g := range list(spec, "groups") {
		for _, rl := range list(g, "rules") {
			if str(rl, "alert") == "" || str(rl, "expr") == "" {
				t.Errorf("rule %v: needs alert and expr", rl)
			}
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool missing: run deploy/install-deps.sh test")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rendered.yml"), []byte(toYAML(spec)), 0o644); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot(t), "tests/deploy/alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	const tested = "  - ../../deploy/prometheus/alerts.yml\n"
	if !strings.Contains(string(unit), tested) {
		t.Fatalf("tests/deploy/alerts_test.yml no longer names its rule file as %q", tested)
	}
	unitText := strings.Replace(string(unit), tested, "  - rendered.yml\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yml"), []byte(unitText), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmdArgs := range [][]string{{"check", "rules", "rendered.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, cmdArgs...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s on the rendered rule: %v\n%s", strings.Join(cmdArgs, " "), err, out)
		}
	}
}

func TestDashboardConfigMapIsTheRepositoryDashboard(t *testing.T) {
	r := render(t, "gpu-monitoring-hpa.yaml")
	cm := r.named(t, "ConfigMap", "ttt-ttt-serve-dashboard")
	if str(cm.o, "metadata", "namespace") != "monitoring" {
		t.Errorf("dashboard namespace %q, want grafanaDashboard.namespace", str(cm.o, "metadata", "namespace"))
	}
	if str(cm.o, "metadata", "labels", "grafana_dashboard") != "1" {
		t.Errorf("labels %v: want the sidecar's grafana_dashboard: \"1\"", get(cm.o, "metadata", "labels"))
	}
	if str(cm.o, "metadata", "annotations", "grafana_folder") != "ttt-serve" {
		t.Errorf("annotations %v: want grafanaDashboard.annotations", get(cm.o, "metadata", "annotations"))
	}
	data, _ := get(cm.o, "data").(obj)
	if len(data) != 1 {
		t.Fatalf("dashboard data keys %v, want one JSON file", data)
	}
	var got, want interface{}
	if err := json.Unmarshal([]byte(str(data, "ttt-serve.json")), &got); err != nil {
		t.Fatalf("ttt-serve.json in the ConfigMap is not JSON: %v", err)
	}
	file, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/grafana/ttt-serve-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(file, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Error("the ConfigMap's dashboard differs from deploy/grafana/ttt-serve-dashboard.json")
	}
}

// A chart packaged without its files/ (the links not followed) must say so instead of rendering an
// empty rule or dashboard.
func TestMissingMonitoringFilesFailTheRender(t *testing.T) {
	src := filepath.Join(repoRoot(t), "helm/ttt-serve")
	chart := t.TempDir()
	for _, rel := range []string{"Chart.yaml", "values.yaml", "values.schema.json", "templates"} {
		if out, err := exec.Command("cp", "-r", filepath.Join(src, rel), chart).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v %s", rel, err, out)
		}
	}
	for overlay, want := range map[string]string{
		"prometheusRule: {enabled: true}\n":   "files/alerts.yml (a link to deploy/prometheus/alerts.yml) has no rule groups",
		"grafanaDashboard: {enabled: true}\n": "files/ttt-serve-dashboard.json (a link to deploy/grafana/ttt-serve-dashboard.json) is missing",
	} {
		f := filepath.Join(t.TempDir(), "v.yaml")
		if err := os.WriteFile(f, []byte(overlay), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Render(chart, Options{ValuesFiles: []string{f}, ReleaseName: "ttt"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error containing %q, got %v", strings.TrimSpace(overlay), want, err)
		}
	}
}
