#!/usr/bin/env python3
"""Talks to a gate over TLS the way upstream GoVerse's Python client would with TLS credentials
(grpcio's ssl_channel_credentials), and as a plaintext client of the same ports.

Prints one line per check:
  tls-call <value>                    Counter/<id>.Add(5) over TLS
  plaintext-call <status> <details>   the same call on a plaintext channel
  https-ready <status>                GET /healthz over HTTPS, checked against the CA
  http-plaintext <status> <body>      GET /healthz in plaintext on the HTTPS port

Usage: tls.py --gate 127.0.0.1:49000 --http 127.0.0.1:8080 --ca ca.pem --id counter-id
"""

import argparse
import http.client
import os
import ssl
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


def call(channel, object_id):
    import gate_pb2
    import gate_pb2_grpc
    from google.protobuf import any_pb2, wrappers_pb2

    request = any_pb2.Any()
    request.Pack(wrappers_pb2.Int32Value(value=5))
    stub = gate_pb2_grpc.GateServiceStub(channel)
    response = stub.CallObject(
        gate_pb2.CallObjectRequest(type="Counter", id=object_id, method="Add", request=request),
        timeout=10,
    )
    value = wrappers_pb2.Int32Value()
    response.response.Unpack(value)
    return value.value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--id", required=True)
    args = parser.parse_args()
    generate_stubs()
    import grpc

    with open(args.ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(args.gate, credentials) as channel:
        print(f"tls-call {call(channel, args.id)}", flush=True)

    with grpc.insecure_channel(args.gate) as channel:
        try:
            call(channel, args.id)
            print("plaintext-call OK", flush=True)
        except grpc.RpcError as err:
            print(f"plaintext-call {err.code()} {err.details()}", flush=True)

    host, port = args.http.rsplit(":", 1)
    context = ssl.create_default_context(cafile=args.ca)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    conn.request("GET", "/healthz")
    print(f"https-ready {conn.getresponse().status}", flush=True)

    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    body = response.read().decode().strip()
    print(f"http-plaintext {response.status} {body}", flush=True)


if __name__ == "__main__":
    main()
