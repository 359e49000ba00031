#!/usr/bin/env python3
"""Drives a wallet server the way upstream GoVerse's Python clients do: the official grpcio stack
and stubs generated from gate.proto, reliable calls through gate.GateService/ReliableCallObject,
and 30 % of the calls replayed with the same call_id.

Checks, and exits non-zero when one fails:
- a replay returns what the first call returned (ok and balance), and moves no money;
- refusals come back in the response with status SKIPPED (a safe retry), not as gRPC errors;
- at the end every wallet holds exactly what the applied calls add up to.

Usage: stress_test.py --gate 127.0.0.1:49000 [--clients 8] [--calls 150]
"""

import argparse
import base64
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PROTOS = [
    (os.path.join(ROOT, "crates", "goverse-proto", "proto"), "gate.proto"),
    (os.path.join(ROOT, "samples", "wallet", "proto"), "wallet.proto"),
]


def generate_stubs():
    """Compiles the .proto files into a temporary package with grpcio-tools."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="goverse-stubs-")
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for include, name in PROTOS:
        args = ["protoc", f"-I{include}", f"-I{wkt}", f"--python_out={out}",
                f"--grpc_python_out={out}", os.path.join(include, name)]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {name}")
    sys.path.insert(0, out)


class SkippedOrFailed(Exception):
    """A reliable call answered FAILED or SKIPPED; `status` says whether a retry is safe."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def new_call_id():
    # A microsecond timestamp and 8 random bytes, URL-safe base64 with padding.
    raw = struct.pack(">Q", int(time.time() * 1_000_000)) + os.urandom(8)
    return base64.urlsafe_b64encode(raw).decode("ascii")


class Client:
    def __init__(self, address):
        import grpc
        import gate_pb2_grpc
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.stub = gate_pb2_grpc.GateServiceStub(self.channel)

    def reliable(self, call_id, wallet, method, request):
        import gate_pb2
        from google.protobuf.any_pb2 import Any
        packed = Any()
        packed.Pack(request)
        answer = self.stub.ReliableCallObject(gate_pb2.ReliableCallObjectRequest(
            call_id=call_id, type="Wallet", id=wallet, method=method, request=packed), timeout=20)
        if answer.error:
            raise SkippedOrFailed(answer.error, answer.status)
        import wallet_pb2
        out = wallet_pb2.WalletResponse()
        answer.response.Unpack(out)
        return out, answer.status

    def balance(self, wallet):
        import gate_pb2
        import wallet_pb2
        from google.protobuf.any_pb2 import Any
        packed = Any()
        packed.Pack(wallet_pb2.GetBalanceRequest())
        answer = self.stub.CallObject(gate_pb2.CallObjectRequest(
            type="Wallet", id=wallet, method="GetBalance", request=packed), timeout=20)
        out = wallet_pb2.WalletResponse()
        answer.response.Unpack(out)
        return out.balance


def run(args):
    import wallet_pb2
    wallets = [f"py-wallet-{i:02d}" for i in range(args.wallets)]
    failures = []
    applied = {w: 0 for w in wallets}
    lock = threading.Lock()

    def one_client(seed):
        rng = random.Random(seed)
        client = Client(args.gate)
        for _ in range(args.calls):
            wallet = rng.choice(wallets)
            amount = rng.randint(1, 100)
            deposit = rng.random() < 0.6
            method, request = (("Deposit", wallet_pb2.DepositRequest(amount=amount)) if deposit
                               else ("Withdraw", wallet_pb2.WithdrawRequest(amount=amount)))
            call_id = new_call_id()
            first, status = client.reliable(call_id, wallet, method, request)
            if status != "SUCCESS":
                failures.append(f"{call_id}: status {status}")
            if rng.random() < 0.3:
                again, status = client.reliable(call_id, wallet, method, request)
                if (again.ok, again.balance, status) != (first.ok, first.balance, "SUCCESS"):
                    failures.append(f"replay of {call_id}: first {first.ok}/{first.balance}, "
                                    f"then {again.ok}/{again.balance}/{status}")
            if first.ok:
                with lock:
                    applied[wallet] += amount if deposit else -amount

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    client = Client(args.gate)
    for wallet in wallets:
        got = client.balance(wallet)
        if got != applied[wallet]:
            failures.append(f"{wallet}: expected {applied[wallet]}, server has {got}")

    # Refusals: in the response, status SKIPPED; the same call id may then run.
    for call_id, method, why in [("", "Deposit", "call_id is empty"),
                                 ("refused-1", "Steal", "no method")]:
        try:
            client.reliable(call_id, wallets[0], method, wallet_pb2.DepositRequest(amount=1))
            failures.append(f"{method} with call id {call_id!r} was not refused")
        except SkippedOrFailed as e:
            if e.status != "SKIPPED" or why not in str(e):
                failures.append(f"refusal of {method}: status {e.status}: {e}")
    answer, status = client.reliable("refused-1", wallets[0], "Deposit",
                                     wallet_pb2.DepositRequest(amount=1))
    if status != "SUCCESS" or not answer.ok:
        failures.append(f"a skipped call id did not run afterwards: {status}")

    calls = args.clients * args.calls
    if failures:
        for f in failures[:20]:
            print("FAIL:", f)
        print(f"{len(failures)} failures in {calls} calls")
        return 1
    print(f"ok: {calls} reliable calls from {args.clients} clients, 30% replayed; "
          f"balances exact across {len(wallets)} wallets")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--wallets", type=int, default=10)
    args = parser.parse_args()
    generate_stubs()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
