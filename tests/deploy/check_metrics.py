#!/usr/bin/env python3
"""Checks that a ttt-serve exports every metric the alerting rules and the dashboard use.

Scrapes SOURCE (a running server's metrics URL such as http://127.0.0.1:9464/metrics, a bare
host:port, or a file holding /metrics text), collects every `tttserve_*` name used in
deploy/prometheus/alerts.yml and deploy/grafana/ttt-serve-dashboard.json, and fails unless each one
is exported: a plain name as a sample or a declared family (# TYPE), a `_bucket`/`_sum`/`_count`
name as a sample of a histogram family (a `_bucket` name must belong to a histogram). With
--contract, every used name must also be in docs/contract.md's metric tables with the right type,
and every metric of its "Metrics" table (exported whatever the flags) must be exported with its
type (gauges with a sample), so a metric the contract promises but the server lost fails too. Standard library only.

  check_metrics.py http://127.0.0.1:9464/metrics
  check_metrics.py --contract docs/contract.md tests/deploy/testdata/metrics_ok.txt
"""
import argparse
import os
import re
import sys
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NAME_RE = re.compile(r"\btttserve_[a-zA-Z0-9_]*[a-zA-Z0-9]")
SUFFIXES = ("_bucket", "_sum", "_count")


def used_names(paths):
    """Returns {name: [files]} for every tttserve_ name in the given files."""
    used = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for name in NAME_RE.findall(f.read()):
                used.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    return used


def fetch(source, timeout):
    if os.path.exists(source):
        with open(source, encoding="utf-8") as f:
            return f.read()
    url = source if "://" in source else "http://%s/metrics" % source
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status != 200:
            raise RuntimeError("%s: HTTP %d" % (url, r.status))
        return r.read().decode("utf-8")


def parse_exposition(text):
    """Returns (types {family: type}, samples {sample name: count}) of Prometheus text format."""
    types, samples = {}, {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\d+)?$", line)
        if not m:
            raise ValueError("line %d is not Prometheus text format: %r" % (lineno, line))
        float(m.group(3).replace("Nan", "nan"))  # the value must be a number (+Inf, NaN included)
        samples[m.group(1)] = samples.get(m.group(1), 0) + 1
    return types, samples


def contract_metrics(path, section=None):
    """Returns {name: type} from docs/contract.md's metric tables: all of them, or only those of
    the `## ` section whose title starts with `section`."""
    out = {}
    inside = section is None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if section is not None and line.startswith("## "):
                inside = line[3:].startswith(section)
            m = re.match(r"\|\s*`(tttserve_[a-z0-9_]+)`\s*\|\s*([a-z]+)", line)
            if m and inside:
                out[m.group(1)] = m.group(2)
    return out


def family_of(name, types):
    """The exposition family a used name refers to, and its type (None when undeclared)."""
    if name in types:
        return name, types[name]
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in types:
            return name[: -len(s)], types[name[: -len(s)]]
    return None, None


def check_exported(used, types, samples):
    """Returns a list of problems: used names the exposition lacks or exports with another type."""
    problems = []
    for name in sorted(used):
        where = ", ".join(sorted(used[name]))
        family, kind = family_of(name, types)
        if family is None:
            if name not in samples:
                problems.append("%s (used in %s) is not exported" % (name, where))
            continue
        # A _bucket/_sum/_count series needs a histogram family. A declared family without samples
        # is fine: prometheus-cpp has no child of a labelled family before its first observation.
        if family != name:
            if kind not in ("histogram", "summary") or (name.endswith("_bucket") and kind != "histogram"):
                problems.append("%s (used in %s): %s is a %s, not a histogram" % (name, where, family, kind))
    return problems


def check_contract(used, contract):
    problems = []
    for name in sorted(used):
        if name in contract:
            continue
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
        if base in contract and contract[base] == "histogram":
            continue
        problems.append("%s (used in %s) is not a docs/contract.md metric%s" % (
            name, ", ".join(sorted(used[name])),
            " of type histogram" if base in contract else ""))
    return problems


def check_contract_exported(contract, types, samples):
    """Returns a list of problems: metrics of docs/contract.md's "Metrics" table (those every
    server exports, whatever its flags) that the exposition lacks or mistypes."""
    problems = []
    for name, kind in sorted(contract.items()):
        declared = types.get(name)
        if declared is None and name not in samples:
            problems.append("%s (a %s in docs/contract.md) is not exported" % (name, kind))
        elif declared is not None and declared != kind:
            problems.append("%s is exported as a %s, docs/contract.md says %s" % (name, declared, kind))
        elif kind == "gauge" and name not in samples:
            # Every gauge of the contract is unlabelled or always set: a bare declaration means
            # the server never set it.
            problems.append("%s (a gauge in docs/contract.md) has no sample" % name)
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="metrics URL, host:port, or a file of /metrics text")
    ap.add_argument("--alerts", default=os.path.join(ROOT, "deploy/prometheus/alerts.yml"))
    ap.add_argument("--dashboard", default=os.path.join(ROOT, "deploy/grafana/ttt-serve-dashboard.json"))
    ap.add_argument("--contract", help="also check the names against this docs/contract.md")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)

    used = used_names([args.alerts, args.dashboard])
    if not used:
        print("no tttserve_ metric names found in %s, %s" % (args.alerts, args.dashboard))
        return 1
    problems = []
    promised = contract_metrics(args.contract, "Metrics") if args.contract else {}
    if args.contract:
        problems += check_contract(used, contract_metrics(args.contract))
    try:
        types, samples = parse_exposition(fetch(args.source, args.timeout))
    except Exception as e:  # report a failed scrape as a failed check, not a traceback
        print("FAIL: cannot scrape %s: %s" % (args.source, e))
        return 1
    problems += check_exported(used, types, samples)
    problems += check_contract_exported(promised, types, samples)
    if problems:
        for p in problems:
            print("FAIL:", p)
        return 1
    print("OK: %d metric names used by the alerts and the dashboard%s are exported by %s" % (
        len(used), " and the %d of the contract" % len(promised) if promised else "", args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
