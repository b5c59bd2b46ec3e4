#!/usr/bin/env python3
"""Unit tests of check_metrics.py against canned /metrics text (testdata/metrics_ok.txt, written
in prometheus-cpp's format), served from files and over a real HTTP server on loopback."""
import contextlib
import http.server
import io
import os
import re
import socket
import tempfile
import threading
import unittest

import check_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OK = os.path.join(HERE, "testdata", "metrics_ok.txt")
CONTRACT = os.path.join(ROOT, "docs", "contract.md")


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = check_metrics.main(list(argv))
    return rc, out.getvalue()


def canned():
    with open(OK, encoding="utf-8") as f:
        return f.read()


class Served:
    """Serves `text` at /metrics on a free loopback port for the duration of a with block."""

    def __init__(self, text):
        body = text.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class CheckMetricsTest(unittest.TestCase):
    def write(self, text, name="metrics.txt"):
        d = tempfile.mkdtemp()
        path = os.path.join(d, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_passes_when_every_used_metric_is_exported(self):
        rc, out = run("--contract", CONTRACT, OK)
        self.assertEqual(rc, 0, out)
        self.assertIn("OK:", out)

    def test_scrapes_a_url_and_a_bare_host_port(self):
        with Served(canned()) as s:
            for source in ("http://%s/metrics" % s.address, s.address):
                rc, out = run(source)
                self.assertEqual(rc, 0, out)

    def test_fails_naming_a_missing_metric(self):
        text = "\n".join(l for l in canned().splitlines() if "tttserve_queue_capacity" not in l)
        with Served(text) as s:
            rc, out = run(s.address)
        self.assertEqual(rc, 1)
        self.assertRegex(out, r"FAIL: tttserve_queue_capacity \(used in .*deploy/prometheus/alerts.yml.*\) is not exported")

    def test_fails_when_a_histogram_is_exported_as_a_gauge(self):
        text = re.sub(r"^tttserve_batch_tokens_(bucket|sum|count).*\n", "", canned(), flags=re.M)
        text = text.replace("# TYPE tttserve_batch_tokens histogram",
                            "# TYPE tttserve_batch_tokens gauge\ntttserve_batch_tokens 3")
        rc, out = run(self.write(text))
        self.assertEqual(rc, 1)
        self.assertIn("tttserve_batch_tokens_bucket (used in deploy/grafana/ttt-serve-dashboard.json):"
                      " tttserve_batch_tokens is a gauge, not a histogram", out)

    def test_declared_family_without_samples_counts_as_exported(self):
        # prometheus-cpp declares a labelled family before its first child exists.
        text = re.sub(r"^tttserve_request_duration_seconds_.*\n", "", canned(), flags=re.M)
        rc, out = run(self.write(text))
        self.assertEqual(rc, 0, out)

    def test_contract_rejects_a_name_the_server_does_not_define(self):
        alerts = self.write("groups:\n- name: x\n  rules:\n  - alert: A\n"
                            "    expr: rate(tttserve_made_up_total[5m]) > 0\n", "alerts.yml")
        rc, out = run("--alerts", alerts, "--contract", CONTRACT, OK)
        self.assertEqual(rc, 1)
        self.assertIn("tttserve_made_up_total", out)
        self.assertIn("is not a docs/contract.md metric", out)
        self.assertIn("is not exported", out)

    def test_contract_fails_naming_a_promised_gauge_the_server_lost(self):
        # Not used by any alert or dashboard panel: only the contract's table promises it.
        for gauge in ("tttserve_pool_resident_sessions", "tttserve_pool_limit_bytes"):
            text = "\n".join(l for l in canned().splitlines() if gauge not in l)
            with Served(text) as s:
                rc, out = run("--contract", CONTRACT, s.address)
            self.assertEqual(rc, 1, out)
            self.assertIn("FAIL: %s (a gauge in docs/contract.md) is not exported" % gauge, out)
            rc, out = run(self.write(text))  # without --contract only the used names count
            self.assertEqual(rc, 0, out)

    def test_contract_fails_on_a_declared_gauge_without_sample_or_a_wrong_type(self):
        text = re.sub(r"^tttserve_pool_bytes .*\n", "", canned(), flags=re.M)
        rc, out = run("--contract", CONTRACT, self.write(text))
        self.assertEqual(rc, 1)
        self.assertIn("tttserve_pool_bytes (a gauge in docs/contract.md) has no sample", out)
        text = canned().replace("# TYPE tttserve_pool_limit_sessions gauge",
                                "# TYPE tttserve_pool_limit_sessions counter")
        rc, out = run("--contract", CONTRACT, self.write(text))
        self.assertEqual(rc, 1)
        self.assertIn("tttserve_pool_limit_sessions is exported as a counter, docs/contract.md says gauge", out)

    def test_contract_metrics_of_optional_features_are_not_required(self):
        # The quota families (docs/contract.md, "Quotas") exist only with --quotas_file.
        self.assertNotIn("tttserve_tenant_sessions", canned())
        rc, out = run("--contract", CONTRACT, OK)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"and the \d+ of the contract are exported")

    def test_unreachable_server_fails_cleanly(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        rc, out = run("--timeout", "2", "127.0.0.1:%d" % port)
        self.assertEqual(rc, 1)
        self.assertIn("FAIL: cannot scrape", out)

    def test_malformed_exposition_fails(self):
        rc, out = run(self.write(canned() + "tttserve_queue_depth{oops 1 2 3\n"))
        self.assertEqual(rc, 1)
        self.assertIn("not Prometheus text format", out)


if __name__ == "__main__":
    unittest.main()
