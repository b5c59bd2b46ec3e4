#!/usr/bin/env bash
# Draws the server's RSS over a stress run from the stress client's --report_json (docs/robustness.md).
#   tools/plot_stress_rss.sh REPORT.json OUT.png [TITLE]
# Needs /usr/bin/python3 and gnuplot (gnuplot-nox, in deploy/install-deps.sh test).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 REPORT.json OUT.png [TITLE]" >&2; exit 2; }
report="$1" out="$2" title="${3:-ttt stress: server RSS}"
data="$(mktemp)"
trap 'rm -f "$data"' EXIT
/usr/bin/python3 - "$report" "$data" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for t, mib in r["rss_mib"]:
        f.write("%g %g\n" % (t, mib))
print("warmup=%g slope=%s ops=%.1f" % (r["warmup_s"], r["rss_slope_mib_per_min"], r["operations_per_s"]))
PY
gnuplot <<GP
set terminal pngcairo size 800,400
set output "$out"
set title "$title"
set xlabel "seconds into the run"
set ylabel "RSS (MiB)"
set yrange [0:*]
set grid
plot "$data" using 1:2 with lines lw 2 title "ttt-serve RSS"
GP
echo "wrote $out"
