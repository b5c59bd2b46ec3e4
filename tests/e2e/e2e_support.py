"""What the end-to-end scripts share: the one launcher of ttt-serve (ServeProcess), test token
streams and float bits, free loopback ports, the Python gRPC stubs of the service (generated at
test time from proto/), the flags of the unittest scripts, stopping a process, waiting for a
condition or an HTTP endpoint, a log's last lines, and an etcd member."""
import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


def tokens(n, vocab, seed):
    """n pseudo-random token ids in [3, vocab) from `seed` (a fixed LCG: the same in every run)."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(3 + x % (vocab - 3))
    return out


def bits(floats):
    """The float32 bit patterns of `floats`: scores compared bit for bit."""
    return [struct.pack("<f", x) for x in floats]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n):
    """n different TCP ports on 127.0.0.1 that were free a moment ago (bound together, so that
    the kernel cannot hand out one twice, as two free_port() calls in a row may)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# google.rpc's Status, ErrorInfo and RetryInfo as Debian ships them (golang-github-gogo-googleapis-dev),
# the definitions the server's status details are built from.
GOOGLE_RPC_PROTO_DIR = "/usr/share/gocode/src/github.com/gogo/googleapis"


def load_stubs(proto_dir, out_dir):
    """Generates tttserve.v1's Python stubs (and google.rpc's status details) into out_dir and
    returns (pb, pb_grpc)."""
    import grpc_tools
    from grpc_tools import protoc
    os.makedirs(out_dir, exist_ok=True)
    rc = protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out_dir,
                      "--grpc_python_out=" + out_dir,
                      os.path.join(proto_dir, "tttserve/v1/ttt_service.proto")])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed with %d" % rc)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", "-I" + GOOGLE_RPC_PROTO_DIR, "-I" + well_known,
                      "--python_out=" + out_dir,
                      os.path.join(GOOGLE_RPC_PROTO_DIR, "google/rpc/status.proto"),
                      os.path.join(GOOGLE_RPC_PROTO_DIR, "google/rpc/error_details.proto")])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed with %d on google/rpc" % rc)
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    from tttserve.v1 import ttt_service_pb2, ttt_service_pb2_grpc
    return ttt_service_pb2, ttt_service_pb2_grpc


def error_details(rpc_error):
    """The google.rpc details of a failed call, as a program acts on them: (ErrorInfo reason,
    domain, metadata dict, RetryInfo delay in seconds or None). Needs load_stubs first."""
    # google.rpc is generated into the stubs folder, beside google.protobuf's installed package.
    import importlib
    status_pb2 = importlib.import_module("google.rpc.status_pb2")
    details_pb2 = importlib.import_module("google.rpc.error_details_pb2")
    raw = dict(rpc_error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if raw is None:
        raise AssertionError("no grpc-status-details-bin in %r" % (rpc_error,))
    status = status_pb2.Status.FromString(raw)
    reason, domain, metadata, delay = None, None, {}, None
    for any_detail in status.details:
        info = details_pb2.ErrorInfo()
        retry = details_pb2.RetryInfo()
        if any_detail.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif any_detail.Unpack(retry):
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return reason, domain, metadata, delay


def parse_unittest_args(*extra_flags):
    """The unittest scripts' command line: --server (the ttt-serve binary), --model, --proto and
    --<each of extra_flags>, all required; generates the stubs into a temporary folder. Returns
    (args, pb, pb_grpc, argv for unittest.main with what was not a flag of ours)."""
    parser = argparse.ArgumentParser()
    for flag in ("server", "model", "proto") + extra_flags:
        parser.add_argument("--" + flag, required=True)
    args, rest = parser.parse_known_args()
    pb, pb_grpc = load_stubs(args.proto, tempfile.mkdtemp(prefix="ttt-stubs-"))
    return args, pb, pb_grpc, [sys.argv[0]] + rest


def stop_process(proc, sig=signal.SIGTERM, timeout=30):
    """Sends sig to proc unless it has exited (SIGTERM: ttt-serve drains and persists its
    sessions), kills it if it has not exited within timeout seconds; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until(predicate, timeout):
    """Whether predicate() became true within timeout seconds (polled every 0.2 s; asked once
    more at the end, so a slow last poll still counts)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def wait_http(url, timeout):
    """The body of the first successful GET of url within timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("no answer from " + url)


def log_tail(path, n=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


class ServeProcess:
    """One ttt-serve process on loopback, started the way every end-to-end test starts it
    (e2e_support.sh does the same for the shell scripts). The command line: --model, --listen and
    --metrics_listen on free ports of `host` (metrics=False: no metrics listener),
    --checkpoint_dir (default <folder>/ckpt-<port>), --shutdown_delay_s=0, --drain_timeout_s=2,
    then `flags`, which override any of these (the last of a repeated flag wins). Output goes to
    `log_path` (default <folder>/ttt-serve-<port>.log), appended to, so that restarts of one
    replica share a log. `prefix`: a command that execs the server (`ip netns exec NS`); `env`:
    the whole environment; `new_session`: a process session of its own (SIGSTOP stays in the
    test's hands).

    start() returns once the server has said "gRPC on port" in this start's output (every
    listener is up and it serves), and raises with the log's tail when the process exits first
    or `timeout` passes. ready_timeout=None: start() returns at once, for tests that watch the
    start themselves."""

    READY_LINE = "gRPC on port"

    def __init__(self, binary, model, folder, flags=(), host="127.0.0.1", metrics=True,
                 checkpoint_dir=None, log_path=None, prefix=(), env=None, new_session=False):
        self.binary, self.model, self.host = binary, model, host
        self.port, metrics_port = free_ports(2)
        self.metrics_port = metrics_port if metrics else None
        self.checkpoint_dir = checkpoint_dir or os.path.join(folder, "ckpt-%d" % self.port)
        self.log_path = log_path or os.path.join(folder, "ttt-serve-%d.log" % self.port)
        self.flags, self.prefix, self.env = list(flags), list(prefix), env
        self.new_session = new_session
        self.proc = None

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def metrics_url(self, path):
        """http://HOST:METRICS_PORT/path: /metrics, /readyz."""
        return "http://%s:%d%s" % (self.host, self.metrics_port, path)

    def command(self):
        metrics = "%s:%d" % (self.host, self.metrics_port) if self.metrics_port else ""
        return self.prefix + [
            self.binary, "--model=" + self.model, "--listen=" + self.address,
            "--metrics_listen=" + metrics, "--checkpoint_dir=" + self.checkpoint_dir,
            "--shutdown_delay_s=0", "--drain_timeout_s=2"] + self.flags

    def start(self, ready_timeout=120):
        with open(self.log_path, "a") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=self.new_session)
        if ready_timeout is not None:
            try:
                self.wait_for_log(self.READY_LINE, ready_timeout, offset)
            except RuntimeError:
                stop_process(self.proc, signal.SIGKILL)
                raise
        return self

    def wait_for_log(self, text, timeout, offset=0):
        """Waits until `text` appears in the log after byte `offset`; raises with the log's tail
        when the process exits first or `timeout` seconds pass."""
        deadline = time.time() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if text.encode() in f.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError("ttt-serve exited (status %d) before saying %r:\n%s"
                                   % (self.proc.returncode, text, log_tail(self.log_path)))
            if time.time() > deadline:
                raise RuntimeError("ttt-serve did not say %r within %d s:\n%s"
                                   % (text, timeout, log_tail(self.log_path)))
            time.sleep(0.1)

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the server (SIGTERM: it drains and persists its sessions) and returns its exit
        status (None when it was never started); see stop_process."""
        return stop_process(self.proc, sig, timeout) if self.proc is not None else None


class Etcd:
    """An etcd cluster of `members` (Debian's etcd-server; one by default) on loopback ports, its
    data and logs in `folder`: the coordinator of replicas that share sessions
    (docs/coordination.md). `also_on`: one more address every member serves clients on (a test's
    network namespace reaches etcd there). Reads keys and member status through etcd's own v3
    JSON gateway; kill() and restart() one member; stop() kills them all."""

    def __init__(self, folder, binary="/usr/bin/etcd", members=1, also_on=None):
        if not os.access(binary, os.X_OK):
            raise RuntimeError("no etcd at %s (deploy/install-deps.sh test installs etcd-server)"
                               % binary)
        os.makedirs(folder, exist_ok=True)
        self.binary, self.folder, self.also_on = binary, folder, also_on
        self.ports = [(free_port(), free_port()) for _ in range(members)]
        self.procs = [None] * members
        self.cluster = ",".join("e%d=http://127.0.0.1:%d" % (i, peer)
                                for i, (_, peer) in enumerate(self.ports))
        for i in range(members):  # all at once: a member waits for a quorum to become healthy
            self.start(i, wait=False)
        for i in range(members):
            self.wait_healthy(i)
        self.url = self.urls()[0]
        self.endpoint = self.url[len("http://"):]

    def urls(self, host="127.0.0.1"):
        """Every member's client URL on `host` (127.0.0.1 or also_on)."""
        return ["http://%s:%d" % (host, client) for client, _ in self.ports]

    def endpoints(self, host="127.0.0.1"):
        """Every member's endpoint on `host`, comma-separated, as --etcd_endpoints takes them."""
        return ",".join(url[len("http://"):] for url in self.urls(host))

    def start(self, i, wait=True):
        """Starts member i (again, on its data, after kill(i))."""
        client, peer = self.ports[i]
        listen = "http://127.0.0.1:%d" % client
        if self.also_on:
            listen += ",http://%s:%d" % (self.also_on, client)
        peer_url = "http://127.0.0.1:%d" % peer
        with open(os.path.join(self.folder, "e%d.log" % i), "a") as log:
            self.procs[i] = subprocess.Popen(
                [self.binary, "--name", "e%d" % i,
                 "--data-dir", os.path.join(self.folder, "e%d.data" % i),
                 "--listen-client-urls", listen, "--advertise-client-urls", listen,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", self.cluster, "--initial-cluster-token", self.folder,
                 "--logger", "zap", "--log-outputs", "stderr"],
                stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy(i)

    def wait_healthy(self, i):
        url = self.urls()[i]
        if '"health":"true"' not in wait_http(url + "/health", 30):
            raise RuntimeError("etcd member e%d did not become healthy:\n%s" % (
                i, log_tail(os.path.join(self.folder, "e%d.log" % i))))

    def kill(self, i):
        stop_process(self.procs[i], signal.SIGKILL)

    def live(self):
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def _post(self, i, path, body):
        import json
        request = urllib.request.Request(self.urls()[i] + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)

    def get(self, key):
        """The value of `key` (str), or None when etcd has no such key (asks a live member)."""
        import base64
        answer = self._post(self.live()[0], "/v3/kv/range",
                            {"key": base64.b64encode(key.encode()).decode()})
        kvs = answer.get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def leader(self):
        """The index of the member that leads now, as the live members report it (bounded wait
        while they elect one)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                ids = {self._post(i, "/v3/maintenance/status", {})["header"]["member_id"]: i
                       for i in self.live()}
                leaders = {self._post(i, "/v3/maintenance/status", {}).get("leader")
                           for i in self.live()}
                if len(leaders) == 1 and next(iter(leaders)) in ids:
                    return ids[next(iter(leaders))]
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the etcd members agree on no leader")

    def stop(self):
        for proc in self.procs:
            if proc is not None:
                stop_process(proc, signal.SIGKILL)
