#!/usr/bin/env bash
# CTest entry for deploy/prometheus: the alerting rules parse (promtool check rules), fire as
# intended on synthetic series (promtool test rules tests/deploy/alerts_test.yml), and the scrape
# configurations parse. Debian's prometheus package is built without Kubernetes service discovery,
# so the kubernetes_sd_configs jobs are checked by an upstream promtool only; here they are removed
# before `promtool check config` and the rest is checked.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
command -v promtool >/dev/null || { echo "promtool missing: run deploy/install-deps.sh test" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

promtool check rules "$root/deploy/prometheus/alerts.yml"
# The local configuration must be accepted as it is, by this (Debian's) promtool as by upstream's.
promtool check config "$root/deploy/prometheus/prometheus-local.yml"
(cd "$root/tests/deploy" && promtool test rules alerts_test.yml)

cp "$root/deploy/prometheus/alerts.yml" "$tmp/"
if promtool check config "$root/deploy/prometheus/prometheus.yml" >"$tmp/log" 2>&1; then
  cat "$tmp/log"
else
  grep -q "field kubernetes_sd_configs not found" "$tmp/log" || { cat "$tmp/log"; exit 1; }
  "${PYTHON:-/usr/bin/python3}" - "$root/deploy/prometheus/prometheus.yml" "$tmp/prometheus.yml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
jobs = cfg["scrape_configs"]
k8s = [j for j in jobs if "kubernetes_sd_configs" in j]
assert k8s, "expected a kubernetes_sd_configs job"
for j in k8s:  # what the Kubernetes job must keep: the chart's pod label and port name
    keep = {(tuple(r["source_labels"]), r["regex"]) for r in j["relabel_configs"] if r.get("action") == "keep"}
    assert (("__meta_kubernetes_pod_label_app_kubernetes_io_name",), "ttt-serve") in keep, keep
    assert (("__meta_kubernetes_pod_container_port_name",), "metrics") in keep, keep
    assert j.get("metrics_path", "/metrics") == "/metrics"
cfg["scrape_configs"] = [j for j in jobs if "kubernetes_sd_configs" not in j]
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
  echo "(this promtool lacks Kubernetes SD: checking the config without the kubernetes_sd_configs jobs)"
  promtool check config "$tmp/prometheus.yml"
fi
