"""Policy server under load: N concurrent clients for T seconds, then the same under bad requests.

    python benchmarks/bench_server.py                         # 4 clients x 20 s, 256² frames, act
    python benchmarks/bench_server.py --clients 8 --seconds 30 --op infer
    python benchmarks/bench_server.py --clients 2 --seconds 5 --oversize-mb 16   # quick smoke run

Starts ``worldvla serve --random-init`` (a tiny randomly initialized checkpoint, written into
a temporary directory) in a subprocess on 127.0.0.1 and drives it from client threads in
this process. Each client resets once, then sends ``--op`` requests (``act``: one action, a
model call every K-th request as in LIBERO evaluation; ``infer``: a model call each time)
with its own frame, as fast as replies come, for ``--seconds``.

Phase ``clean``: the clients alone. Phase ``attacked``: the same clients while one more
connection, from its own process (so that its work does not hold the clients' GIL), keeps
sending bad requests, one every ``--attack-interval`` seconds (paced, so that on a small
machine the attacker's own CPU use, e.g. building and masking a 300 MB frame, does not
crowd out the server) — a message of ``--oversize-mb`` MB (over the
server's ``max_message_bytes``; the server closes that connection with code 1009 and the
attacker reconnects), a 20 KB and a 100,000-character instruction (refused by the
instruction limit), a frame of the wrong size. The tables give requests/s, latency
percentiles (client side, and server side: waiting for the model + in it, from each reply's
``server_timing``) and errors of the valid clients in each phase, the time each bad request took to
be refused (client side: from the start of the send to the error), and the server's peak
resident memory (``VmHWM`` from ``/proc``, Linux only) after loading and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from worldvla.serving.client import PolicyClient
from worldvla.serving.protocol import ServerError, packb


def start_server(workdir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "worldvla.cli",
        "serve",
        "--random-init",
        str(workdir / "run"),
        "--image-size",
        str(args.image_size),
        "--port",
        "0",
    ]
    env = dict(os.environ)
    if args.server_threads:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:  # the server prints its port once it is bound
        m = re.search(r"serving on ws://[^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def peak_rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def run_client(port: int, args: argparse.Namespace, seed: int, stop: threading.Event, out: dict) -> None:
    frame = np.random.default_rng(seed).integers(0, 256, (args.image_size,) * 2 + (3,), dtype=np.uint8)
    obs = {"image": frame, "instruction": "put the black bowl on the plate"}
    lat, server, errors = [], [], 0
    with PolicyClient("127.0.0.1", port, connect_timeout=30, request_timeout=120) as client:
        client.reset()
        while not stop.is_set():
            t = time.perf_counter()
            try:
                timing = client.request(args.op, obs)["server_timing"]
                lat.append(time.perf_counter() - t)
                server.append((timing["queue_ms"] + timing["infer_ms"]) / 1e3)
            except ServerError:
                errors += 1
    out[seed] = (lat, server, errors)


def attack(port: int, args: argparse.Namespace, stop: threading.Event, out: dict) -> None:
    """Run the attacker in its own process, so that its work does not hold this process's GIL."""
    cmd = [sys.executable, __file__, "--attack-port", str(port), "--image-size", str(args.image_size)]
    cmd += ["--oversize-mb", str(args.oversize_mb), "--attack-interval", str(args.attack_interval)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stop.wait()
    out.update(json.loads(proc.communicate("stop\n", timeout=300)[0]))


def attacker(port: int, args: argparse.Namespace) -> None:
    """Keep sending bad requests until stdin says stop; reconnect whenever the server closes."""
    size = args.image_size
    good = np.zeros((size, size, 3), np.uint8)
    big = f"{args.oversize_mb} MB message"
    cases = {
        big: b"\0" * (args.oversize_mb << 20),
        "20 KB instruction": packb({"op": "act", "obs": {"image": good, "instruction": "x" * 20_000}}),
        "100k-char instruction": packb({"op": "act", "obs": {"image": good, "instruction": "x" * 100_000}}),
        "wrong frame size": packb(
            {"op": "act", "obs": {"image": np.zeros((size // 2, size // 2, 3), np.uint8), "instruction": "x"}}
        ),
    }
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    times: dict[str, list[float]] = {k: [] for k in cases}
    accepted: dict[str, int] = {k: 0 for k in cases}
    client = PolicyClient("127.0.0.1", port, connect_timeout=30, request_timeout=120)
    if len(cases[big]) <= int(client.metadata["max_message_bytes"]):
        raise SystemExit("--oversize-mb is under the server's max_message_bytes")
    while not stop.is_set():
        for name, frame in cases.items():
            t = time.perf_counter()
            try:
                client.send_raw(frame)
                accepted[name] += 1
            except ServerError:
                times[name].append(time.perf_counter() - t)
                if name == big:
                    client = PolicyClient("127.0.0.1", port, connect_timeout=30, request_timeout=120)
            if stop.wait(args.attack_interval):
                break
    client.close()
    print(json.dumps({"times": times, "accepted": accepted}))


def phase(port: int, args: argparse.Namespace, attacked: bool) -> tuple[dict, dict]:
    stop, results, bad = threading.Event(), {}, {}
    threads = [
        threading.Thread(target=run_client, args=(port, args, seed, stop, results))
        for seed in range(args.clients)
    ]
    if attacked:
        threads.append(threading.Thread(target=attack, args=(port, args, stop, bad)))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    return results, bad


def ms(x: float) -> str:
    return f"{1e3 * x:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--op", choices=("act", "infer"), default="act")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--oversize-mb", type=int, default=300, help="size of the oversized message")
    ap.add_argument(
        "--attack-interval", type=float, default=0.2, help="seconds between the attacker's bad requests"
    )
    ap.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--attack-port", type=int, default=None, help=argparse.SUPPRESS)  # the attacker process
    args = ap.parse_args()
    if args.attack_port is not None:
        attacker(args.attack_port, args)
        return
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    print(
        f"# bench_server: clients={args.clients} seconds={args.seconds:g} op={args.op} "
        f"image={args.image_size} cpus={os.cpu_count()} server_threads={args.server_threads or 'default'} "
        f"cpu={platform.processor() or platform.machine()} load(1/5/15 min)={load}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), args)
        try:
            with PolicyClient("127.0.0.1", port, connect_timeout=30) as probe:
                max_bytes = int(probe.metadata["max_message_bytes"])
            loaded = peak_rss_mb(proc.pid)
            rows, attack_out = [], {}
            for name, attacked in (("clean", False), ("attacked", True)):
                results, bad = phase(port, args, attacked)
                lat = np.array([x for lats, _, _ in results.values() for x in lats])
                server = np.array([x for _, srv, _ in results.values() for x in srv])
                errors = sum(e for _, _, e in results.values())
                rows.append((name, lat, server, errors))
                attack_out = bad or attack_out
            peak = peak_rss_mb(proc.pid)
        finally:
            stop_server(proc)

    print(f"\nValid clients (max_message_bytes={max_bytes:,}):\n")
    print("| phase | clients | requests | req/s | p50 ms | p99 ms | max ms | server p50 / p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, lat, server, errors in rows:
        if len(lat) == 0:
            print(f"| {name} | {args.clients} | 0 | 0 | - | - | - | - | {errors} |")
            continue
        p50, p99 = np.percentile(lat, [50, 99])
        s50, s99 = np.percentile(server, [50, 99])
        print(
            f"| {name} | {args.clients} | {len(lat):,} | {len(lat) / args.seconds:,.1f} | {ms(p50)} | "
            f"{ms(p99)} | {ms(lat.max())} | {ms(s50)} / {ms(s99)} | {errors} |"
        )
    print("\nBad requests during the attacked phase (time from send to refusal, client side):\n")
    print("| request | refused | accepted | median ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, times in attack_out.get("times", {}).items():
        t = np.array(times)
        med = ms(float(np.median(t))) if len(t) else "-"
        mx = ms(float(t.max())) if len(t) else "-"
        print(f"| {name} | {len(t)} | {attack_out['accepted'][name]} | {med} | {mx} |")
    fmt = lambda v: f"{v:,.0f} MB" if v is not None else "n/a"  # noqa: E731
    print(f"\nServer peak resident memory: {fmt(loaded)} after loading, {fmt(peak)} at the end.")


if __name__ == "__main__":
    main()
