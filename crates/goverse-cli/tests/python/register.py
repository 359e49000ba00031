#!/usr/bin/env python3
"""Registers at a gate the way upstream GoVerse's Python client does (grpcio, stubs generated
from gate.proto, gate.GateService/Register) and reports how the push stream ends: an RpcError is
what makes that client fire its disconnect callback; a quiet end does not.

Prints `registered <client_id>`, then `disconnected <status code> <details>` or `ended quietly`.

Usage: register.py --gate 127.0.0.1:49000
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "..", "goverse-proto", "proto"))


def generate_stubs():
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="goverse-stubs-")
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", f"--python_out={out}",
            f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "gate.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on gate.proto")
    sys.path.insert(0, out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", required=True)
    args = parser.parse_args()
    generate_stubs()
    import grpc
    import gate_pb2
    import gate_pb2_grpc

    channel = grpc.insecure_channel(args.gate)
    stub = gate_pb2_grpc.GateServiceStub(channel)
    stream = stub.Register(gate_pb2.Empty())
    first = next(stream)
    registered = gate_pb2.RegisterResponse()
    if not first.Unpack(registered):
        sys.exit(f"first message is a {first.type_url}")
    print(f"registered {registered.client_id}", flush=True)
    try:
        for _ in stream:
            pass
        print("ended quietly", flush=True)
    except grpc.RpcError as err:
        print(f"disconnected {err.code()} {err.details()}", flush=True)


if __name__ == "__main__":
    main()
