"""Builds tttserve-client, generating its gRPC stubs from the repository's proto/ at build time
(and google.rpc's status details from Debian's golang-github-gogo-googleapis-dev, the definitions
the server builds them from), so the package always matches the API it is built with.
Install: pip install --no-build-isolation ./clients/python (Debian's python3-grpc-tools must be
installed; add --no-deps where grpcio and protobuf come from Debian)."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
GOOGLE_RPC_DIR = os.environ.get("TTT_GOOGLE_RPC_PROTO_DIR",
                                "/usr/share/gocode/src/github.com/gogo/googleapis")


def _protoc(args):
    import grpc_tools
    from grpc_tools import protoc
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", "-I" + well_known] + args)
    if rc != 0:
        raise RuntimeError("protoc failed (%d): %s" % (rc, " ".join(args)))


def _touch_inits(root, *parts):
    path = root
    for part in parts:
        path = os.path.join(path, part)
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "__init__.py"), "a").close()


class BuildWithStubs(build_py):
    """build_py, then the generated modules: tttserve/v1/ttt_service_pb2(_grpc).py at the top of
    the package tree (the generated code imports them by that name) and google.rpc's under
    tttserve_client/_rpc (private, so that an installed googleapis-common-protos is untouched)."""

    def run(self):
        super().run()
        _protoc(["-I" + PROTO_DIR, "--python_out=" + self.build_lib,
                 "--grpc_python_out=" + self.build_lib,
                 os.path.join(PROTO_DIR, "tttserve/v1/ttt_service.proto")])
        _touch_inits(self.build_lib, "tttserve", "v1")
        rpc_out = os.path.join(self.build_lib, "tttserve_client", "_rpc")
        _touch_inits(self.build_lib, "tttserve_client", "_rpc", "google", "rpc")
        _protoc(["-I" + GOOGLE_RPC_DIR, "--python_out=" + rpc_out,
                 os.path.join(GOOGLE_RPC_DIR, "google/rpc/status.proto"),
                 os.path.join(GOOGLE_RPC_DIR, "google/rpc/error_details.proto")])


setup(cmdclass={"build_py": BuildWithStubs})
