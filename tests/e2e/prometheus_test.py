#!/usr/bin/python3
"""A real Prometheus (Debian's `prometheus`) scrapes a real ttt-serve: the test ingests N tokens
over gRPC, then queries Prometheus's HTTP API for tttserve_tokens_ingested_total and expects N.

Usage: prometheus_test.py SERVER_BINARY MODEL_DIR PROTO_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from e2e_support import ServeProcess, free_port, load_stubs, stop_process, wait_http

N_TOKENS = 777


def main():
    server_bin, model, proto = sys.argv[1:4]
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.path.exists(prometheus):
        print("prometheus binary not found (apt-get install prometheus)")
        return 1
    tmp = tempfile.mkdtemp(prefix="ttt-prom-")
    procs = []
    try:
        import grpc
        pb, pb_grpc = load_stubs(proto, os.path.join(tmp, "stubs"))

        server = ServeProcess(server_bin, model, tmp, ["--checkpoint_on_shutdown=false"]).start()
        procs.append(server.proc)
        grpc_port, metrics_port, prom_port = server.port, server.metrics_port, free_port()

        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: tttserve\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % metrics_port)
        prom_log = open(os.path.join(tmp, "prometheus.log"), "w")
        procs.append(subprocess.Popen(
            [prometheus, "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(tmp, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % prom_port],
            stdout=prom_log, stderr=subprocess.STDOUT))
        wait_http("http://127.0.0.1:%d/-/ready" % prom_port, 60)

        channel = grpc.insecure_channel("127.0.0.1:%d" % grpc_port)
        stub = pb_grpc.TttServiceStub(channel)
        vocab = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).vocab_size
        session = stub.CreateSession(pb.CreateSessionRequest(), timeout=30)
        tokens = [3 + (i * 11) % (vocab - 3) for i in range(N_TOKENS)]

        def requests():
            for i in range(0, N_TOKENS, 100):
                yield pb.IngestRequest(session_id=session.session_id if i == 0 else "",
                                       token_ids=tokens[i:i + 100])
        responses = list(stub.Ingest(requests(), timeout=120))
        assert responses[-1].stream_tokens == N_TOKENS, responses[-1]

        query = "http://127.0.0.1:%d/api/v1/query?%s" % (
            prom_port, urllib.parse.urlencode({"query": "tttserve_tokens_ingested_total"}))
        deadline, value = time.time() + 60, None
        while time.time() < deadline:
            answer = json.loads(wait_http(query, 10))
            result = answer.get("data", {}).get("result", [])
            if result:
                value = float(result[0]["value"][1])
                if value == N_TOKENS:
                    break
            time.sleep(1)
        print("Prometheus reports tttserve_tokens_ingested_total = %s (sent %d)" % (value, N_TOKENS))
        if value != N_TOKENS:
            print(open(os.path.join(tmp, "prometheus.log")).read()[-3000:])
            print("0 passed, 1 failed")
            return 1
        # The health of the scrape itself, as Prometheus sees it.
        up = json.loads(wait_http("http://127.0.0.1:%d/api/v1/query?query=up" % prom_port, 10))
        assert up["data"]["result"][0]["value"][1] == "1", up
        print("1 passed, 0 failed")
        return 0
    finally:
        for p in reversed(procs):
            stop_process(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
