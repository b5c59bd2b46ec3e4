#!/usr/bin/env bash
# CTest entry for the Helm chart (no helm binary is packaged for Debian 12): builds the Go renderer
# in tests/deploy/helmrender (text/template + sprig, as Helm), renders helm/ttt-serve with the
# default values and each scenario in tests/deploy/values, yamllints the values and every rendered
# manifest, and runs the Go assertions (chart_test.go). Needs `deploy/install-deps.sh test`.
#   tests/deploy/helm_chart_test.sh [OUT_DIR]   # rendered manifests are left in OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
for tool in go yamllint; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run deploy/install-deps.sh test" >&2; exit 1; }
done
export GO111MODULE=off GOPATH=/usr/share/gocode
export HOME="${HOME:-$out}"  # the Go build cache lives under it
export TTT_SOURCE_DIR="$root"
# Two cores are shared with C++ builds: keep the Go toolchain to one.
export GOMAXPROCS="${GOMAXPROCS:-1}"

cd "$root/tests/deploy/helmrender"
go vet .
go build -p 1 -o "$out/helmrender" .

chart="$root/helm/ttt-serve"
lint=(yamllint --strict -c "$root/tests/deploy/yamllint.yaml")
"${lint[@]}" "$chart/Chart.yaml" "$chart/values.yaml" "$root"/tests/deploy/values/*.yaml \
  "$root"/deploy/prometheus/*.yml
"${PYTHON:-/usr/bin/python3}" -c 'import json,sys; [json.load(open(f)) for f in sys.argv[1:]]' \
  "$chart/values.schema.json" "$root/deploy/grafana/ttt-serve-dashboard.json"

render() {  # NAME [values files...]
  local name="$1"; shift
  local args=()
  for f in "$@"; do args+=(-f "$root/tests/deploy/values/$f"); done
  "$out/helmrender" -chart "$chart" -release ttt -namespace serving \
    -api-versions monitoring.coreos.com/v1 "${args[@]}" > "$out/$name.yaml"
  "${lint[@]}" "$out/$name.yaml"
  echo "rendered $name: $(grep -c '^kind:' "$out/$name.yaml") manifests -> $out/$name.yaml"
}
render default
render gpu-monitoring-hpa gpu-monitoring-hpa.yaml
render scaleout scaleout.yaml
render secured secured.yaml
render scaleout-haproxy scaleout-haproxy.yaml
render hpa-haproxy hpa-haproxy.yaml
render haproxy-tls haproxy-tls.yaml

go test -p 1 -count=1 .
