#!/usr/bin/env python3
"""Drives the bomberman sample the way upstream GoVerse's bomberman stress client does: the
official grpcio stack and stubs generated from gate.proto and bomberman.proto, each client
registered (gate.GateService/Register, kept open) and cycling JoinQueue -> wait until its
player's total_matches grows -> JoinQueue again. Matches end on their time limit (the server is
started with BOMBERMAN_MATCH_TIME_LIMIT_TICKS), so nobody has to play.

Checks, and exits non-zero when one fails:
- every cycle adds exactly one match to the player's stats (the results are reliable calls);
- at the end each player's total_matches equals its completed cycles and wins + losses.

Usage: stress.py --gate 127.0.0.1:49000 [--clients 8] [--duration 15]
"""

import argparse
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PROTOS = [
    (os.path.join(ROOT, "crates", "goverse-proto", "proto"), "gate.proto"),
    (os.path.join(ROOT, "samples", "bomberman", "proto"), "bomberman.proto"),
]


def generate_stubs():
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


class Player:
    def __init__(self, index, gate, grpc, gate_pb2, gate_pb2_grpc, bomberman_pb2):
        self.grpc, self.gate_pb2, self.bomberman_pb2 = grpc, gate_pb2, bomberman_pb2
        self.player_id = f"stress-player-{index:03d}"
        self.channel = grpc.insecure_channel(gate)
        self.stub = gate_pb2_grpc.GateServiceStub(self.channel)
        self.stream = self.stub.Register(gate_pb2.Empty())
        registered = gate_pb2.RegisterResponse()
        next(self.stream).Unpack(registered)
        self.client_id = registered.client_id
        # Pushes (the match's snapshots) are read and dropped, as a headless client does.
        threading.Thread(target=self._drain, daemon=True).start()
        self.cycles = 0
        self.violations = 0
        self.errors = 0

    def _drain(self):
        try:
            for _ in self.stream:
                pass
        except self.grpc.RpcError:
            pass

    def call(self, object_type, object_id, method, request, response):
        from google.protobuf.any_pb2 import Any
        packed = Any()
        packed.Pack(request)
        answer = self.stub.CallObject(self.gate_pb2.CallObjectRequest(
            client_id=self.client_id, type=object_type, id=object_id, method=method,
            request=packed), timeout=10.0)
        answer.response.Unpack(response)
        return response

    def stats(self):
        pb = self.bomberman_pb2
        return self.call("Player", f"Player-{self.player_id}", "GetStats",
                         pb.GetPlayerStatsRequest(), pb.GetPlayerStatsResponse()).stats

    def run(self, stop):
        pb = self.bomberman_pb2
        while not stop.is_set():
            try:
                before = self.stats().total_matches
                joined = self.call("MatchmakingQueue", "MatchmakingQueue", "JoinQueue",
                                   pb.JoinQueueRequest(player_id=self.player_id,
                                                       client_id=self.client_id),
                                   pb.JoinQueueResponse())
                if not joined.ok:
                    self.errors += 1
                    print(f"{self.player_id}: JoinQueue refused: {joined.reason}", flush=True)
                    time.sleep(0.5)
                    continue
                deadline = time.time() + 60
                while time.time() < deadline:
                    time.sleep(0.2)
                    after = self.stats().total_matches
                    if after > before:
                        if after - before != 1:
                            self.violations += 1
                            print(f"{self.player_id}: total_matches {before} -> {after} "
                                  f"in one cycle", flush=True)
                        self.cycles += 1
                        break
                else:
                    self.errors += 1
                    print(f"{self.player_id}: no match ended within 60 s", flush=True)
            except self.grpc.RpcError as err:
                self.errors += 1
                print(f"{self.player_id}: {err.code()} {err.details()}", flush=True)
                time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    generate_stubs()
    import grpc
    import gate_pb2
    import gate_pb2_grpc
    import bomberman_pb2

    players = [Player(i, args.gate, grpc, gate_pb2, gate_pb2_grpc, bomberman_pb2)
               for i in range(args.clients)]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in players]
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(timeout=90)

    failures = 0
    cycles = 0
    for p in players:
        # A cycle cut short by the stop may still be counted once on the server.
        final = p.stats()
        if p.violations:
            failures += 1
        elif final.total_matches < p.cycles or final.total_matches > p.cycles + 1:
            print(f"{p.player_id}: {p.cycles} cycles but total_matches {final.total_matches}",
                  flush=True)
            failures += 1
        elif final.total_matches != final.wins + final.losses:
            print(f"{p.player_id}: total {final.total_matches} != wins {final.wins} + losses "
                  f"{final.losses}", flush=True)
            failures += 1
        cycles += p.cycles
    if failures or cycles == 0:
        print(f"FAILED: {failures} players wrong, {cycles} cycles", flush=True)
        sys.exit(1)
    print(f"ok: {cycles} cycles by {len(players)} players, each counted once", flush=True)


if __name__ == "__main__":
    main()
