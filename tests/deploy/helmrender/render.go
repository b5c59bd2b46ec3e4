// A small Helm chart renderer for tests: loads Chart.yaml, values.yaml (+ overrides) and
// values.schema.json, and renders templates/ with Go's text/template and sprig, the engine Helm
// itself uses, plus the Helm built-ins the ttt-serve chart relies on (include, tpl, required, fail,
// toYaml, toJson, fromYaml, lookup, .Values/.Release/.Chart/.Capabilities/.Template/.Files). No helm binary
// is packaged for Debian 12, so CI renders with this. Where Helm has a quirk that charts must guard
// against, this copies it: numbers in values are float64 (so large ints print as 1e+07 unless cast),
// missing keys render as empty strings, and values are validated against the schema
// (gojsonschema, the validator Helm 3 uses).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v3"
)

// ChartMeta mirrors the Chart.yaml fields templates read through .Chart.
type ChartMeta struct {
	APIVersion  string `yaml:"apiVersion"`
	Name        string `yaml:"name"`
	Version     string `yaml:"version"`
	AppVersion  string `yaml:"appVersion"`
	Description string `yaml:"description"`
	Type        string `yaml:"type"`
	KubeVersion string `yaml:"kubeVersion"`
}

// Release mirrors Helm's .Release.
type Release struct {
	Name      string
	Namespace string
	Service   string
	Revision  int
	IsInstall bool
	IsUpgrade bool
}

// KubeVersion mirrors Helm's .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

// APIVersions mirrors Helm's .Capabilities.APIVersions (with .Has).
type APIVersions []string

// Has reports whether the group/version (or group/version/Kind) is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// Capabilities mirrors Helm's .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions APIVersions
}

// Files mirrors Helm's .Files: the chart's files outside templates/ by path relative to the chart,
// symbolic links read through as Helm's loader does.
type Files map[string][]byte

// Get returns the file's text, or "" when the chart has no such file (as Helm does).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns the file's bytes, or nil.
func (f Files) GetBytes(name string) []byte { return f[name] }

// loadFiles reads every file of chartDir that Helm exposes through .Files: not templates/, not
// Chart.yaml, values.yaml or values.schema.json.
func loadFiles(chartDir string) (Files, error) {
	files := Files{}
	err := filepath.WalkDir(chartDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(chartDir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "templates" || rel == "charts" {
				return filepath.SkipDir
			}
			return nil
		}
		switch rel {
		case "Chart.yaml", "values.yaml", "values.schema.json", ".helmignore":
			return nil
		}
		data, err := os.ReadFile(path) // follows a link; a dangling one fails, as in Helm
		if err != nil {
			return fmt.Errorf("chart file %s: %w", rel, err)
		}
		files[rel] = data
		return nil
	})
	return files, err
}

// Options select the release, cluster capabilities and value overrides of one render.
type Options struct {
	ValuesFiles []string // applied in order over the chart's values.yaml
	ReleaseName string
	Namespace   string
	KubeVersion string   // e.g. "v1.29.0"
	APIVersions []string // extra API versions, e.g. "monitoring.coreos.com/v1"
}

// Rendered is the output of one render: manifests by template path, and NOTES.txt.
type Rendered struct {
	Manifests map[string]string // "ttt-serve/templates/x.yaml" -> rendered text
	Notes     string
	Values    map[string]interface{}
}

// Sorted returns the manifest template paths in a stable order.
func (r *Rendered) Sorted() []string {
	keys := make([]string, 0, len(r.Manifests))
	for k := range r.Manifests {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Stream returns all manifests as one multi-document YAML stream, as `helm template` prints it.
func (r *Rendered) Stream() string {
	var b strings.Builder
	for _, k := range r.Sorted() {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", k, strings.TrimSpace(r.Manifests[k]))
	}
	return b.String()
}

// readYAMLMap parses a YAML file into Helm-shaped values (JSON types: numbers are float64).
func readYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var v interface{}
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	j, err := toJSONValue(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, ok := j.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: top level is not a mapping", path)
	}
	return m, nil
}

// toJSONValue converts yaml.v3 output to what encoding/json would produce (as sigs.k8s.io/yaml
// does for Helm): string keys, float64 numbers.
func toJSONValue(v interface{}) (interface{}, error) {
	b, err := json.Marshal(normalizeKeys(v))
	if err != nil {
		return nil, err
	}
	var out interface{}
	err = json.Unmarshal(b, &out)
	return out, err
}

func normalizeKeys(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[k] = normalizeKeys(x)
		}
		return m
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[fmt.Sprint(k)] = normalizeKeys(x)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, x := range t {
			l[i] = normalizeKeys(x)
		}
		return l
	}
	return v
}

// mergeValues overlays src onto dst as Helm coalesces user values over chart defaults: maps merge
// recursively, anything else replaces, and a null deletes the key.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		sm, sok := sv.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = sv
		}
	}
	return dst
}

// toYAML is Helm's toYaml: the value as YAML without the trailing newline; integral floats print
// as integers (sigs.k8s.io/yaml goes through JSON, which does the same).
func toYAML(v interface{}) string {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(integralFloats(normalizeKeys(v))); err != nil {
		return ""
	}
	enc.Close()
	return strings.TrimSuffix(b.String(), "\n")
}

func integralFloats(v interface{}) interface{} {
	switch t := v.(type) {
	case float64:
		if t == float64(int64(t)) {
			return int64(t)
		}
	case map[string]interface{}:
		for k, x := range t {
			t[k] = integralFloats(x)
		}
	case []interface{}:
		for i, x := range t {
			t[i] = integralFloats(x)
		}
	}
	return v
}

func fromYAML(s string) map[string]interface{} {
	var v interface{}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		m["Error"] = err.Error()
		return m
	}
	if j, err := toJSONValue(v); err == nil {
		if jm, ok := j.(map[string]interface{}); ok {
			return jm
		}
	}
	return m
}

func toJSON(v interface{}) string {
	b, err := json.Marshal(normalizeKeys(v))
	if err != nil {
		return ""
	}
	return string(b)
}

// validateSchema checks values against values.schema.json when the chart has one.
func validateSchema(chartDir string, values map[string]interface{}) error {
	schemaPath := filepath.Join(chartDir, "values.schema.json")
	schema, err := os.ReadFile(schemaPath)
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	res, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if !res.Valid() {
		var msgs []string
		for _, e := range res.Errors() {
			msgs = append(msgs, "- "+e.String())
		}
		return fmt.Errorf("values don't meet the specifications of the schema(s):\n%s", strings.Join(msgs, "\n"))
	}
	return nil
}

// Render renders chartDir with opts, as `helm template` would.
func Render(chartDir string, opts Options) (*Rendered, error) {
	var meta ChartMeta
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %w", err)
	}
	if meta.Name == "" || meta.Version == "" || meta.APIVersion != "v2" {
		return nil, fmt.Errorf("Chart.yaml: needs apiVersion v2, name and version")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return nil, err
	}
	for _, f := range opts.ValuesFiles {
		over, err := readYAMLMap(f)
		if err != nil {
			return nil, err
		}
		values = mergeValues(values, over)
	}
	if err := validateSchema(chartDir, values); err != nil {
		return nil, err
	}

	kv := opts.KubeVersion
	if kv == "" {
		kv = "v1.29.0"
	}
	parts := strings.SplitN(strings.TrimPrefix(kv, "v"), ".", 3)
	if len(parts) < 2 {
		return nil, fmt.Errorf("bad kube version %q", kv)
	}
	caps := Capabilities{
		KubeVersion: KubeVersion{Version: kv, Major: parts[0], Minor: parts[1], GitVersion: kv},
		APIVersions: append(APIVersions{"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2",
			"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}, opts.APIVersions...),
	}
	release := Release{Name: opts.ReleaseName, Namespace: opts.Namespace, Service: "Helm", Revision: 1,
		IsInstall: true}
	if release.Name == "" {
		release.Name = "release-name"
	}
	if release.Namespace == "" {
		release.Namespace = "default"
	}

	// All templates share one namespace of defines, as in Helm.
	root := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includeDepth := 0
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: nested too deeply", name)
		}
		includeDepth++
		defer func() { includeDepth-- }()
		var b bytes.Buffer
		if err := root.ExecuteTemplate(&b, name, data); err != nil {
			return "", err
		}
		return b.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(b.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, fmt.Errorf("%s", msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", fmt.Errorf("%s", msg) }
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil // helm template: no cluster
	}
	root.Funcs(funcs)

	files, err := loadFiles(chartDir)
	if err != nil {
		return nil, err
	}

	tdir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		text, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		if err != nil {
			return nil, err
		}
		name := meta.Name + "/templates/" + e.Name()
		if _, err := root.New(name).Parse(string(text)); err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		names = append(names, name)
	}
	sort.Strings(names)

	out := &Rendered{Manifests: map[string]string{}, Values: values}
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        meta,
			"Capabilities": caps,
			"Template":     map[string]interface{}{"Name": name, "BasePath": meta.Name + "/templates"},
			"Files":        files,
		}
		var b bytes.Buffer
		if err := root.ExecuteTemplate(&b, name, top); err != nil {
			return nil, fmt.Errorf("render %s: %w", name, err)
		}
		text := strings.ReplaceAll(b.String(), "<no value>", "")
		if base == "NOTES.txt" {
			out.Notes = text
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		out.Manifests[name] = text
	}
	return out, nil
}
