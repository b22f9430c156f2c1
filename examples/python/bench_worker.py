"""Worker drain throughput: Python Celery's solo worker vs the Rust worker, the same number of
pre-filled messages on the same broker in the same run (run by `scripts/bench_celery.sh`, after
the publish benchmark).

    python bench_worker.py --drain target/release/examples/worker_drain --count 20000 \
        --brokers redis,amqp

For each broker, `worker_drain` (the Rust example) pre-fills a queue with `count` copies of the
same `domain_events.bench.noop` task (DRAIN_PREFILL_ONLY), then:
- Python: a Celery solo worker (`task_acks_late=True`, no heartbeat/gossip/mingle, Celery's
  default prefetch) with a no-op task drains it; timed from the worker's `worker_ready` signal
  (Python's start-up is not counted) to the last task's return;
- Rust: `worker_drain` (DRAIN_SKIP_PREFILL) drains the other queue with a no-op handler, acking
  after it; timed from the worker's start (connections included) to the last message
  processed, in a process of its own, which also reports its peak RSS (VmHWM).
Prints msg/s per worker, the ratio, and both peak RSS figures.

`--events-cost` measures what Celery's task events (`-E`) cost the Rust worker instead: for each
broker, `--rounds` rounds of two drains of `count` messages each, task events off then on
(DRAIN_TASK_EVENTS), interleaved so that a change in the machine's load hits both; prints each
round's msg/s, the mean ratio on/off and the events dropped (`WorkerStats::events_dropped`:
events the background publisher could not take).
"""

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid

TASK = "domain_events.bench.noop"


def worker_mode(args):
    """The Python Celery worker: drains `--count` messages, writes its figures, stops."""
    from celery import Celery, signals

    app = Celery("bench_worker", broker=args.broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    state = {"ready": None, "done": 0}

    @signals.worker_ready.connect
    def ready(**_):
        state["ready"] = time.perf_counter()

    @app.task(name=TASK)
    def noop(payload):
        state["done"] += 1
        if state["done"] == args.count:
            seconds = time.perf_counter() - state["ready"]
            with open(args.result_file, "w") as out:
                json.dump(
                    {
                        "count": args.count,
                        "seconds": seconds,
                        "msg_per_s": args.count / seconds,
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                        / 1024,
                    },
                    out,
                )
            # Warm shutdown: this task returns and is acknowledged, then the worker exits.
            os.kill(os.getpid(), signal.SIGTERM)
        return None

    app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "-Q",
            args.queue,
            "-n",
            f"{args.queue}@%h",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ]
    )


def prefill(drain, url, queue, count):
    env = dict(os.environ, DRAIN_PREFILL_ONLY="1")
    env.pop("DRAIN_SKIP_PREFILL", None)
    subprocess.run([drain, url, str(count), queue], env=env, check=True, stdout=subprocess.DEVNULL)


def python_drain(url, queue, count):
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--broker",
            url,
            "--queue",
            queue,
            "--count",
            str(count),
            "--result-file",
            result_file,
        ]
        process = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=900)
        if not os.path.exists(result_file):
            raise SystemExit(f"the Python worker did not finish:\n{process.stderr}")
        with open(result_file) as f:
            return json.load(f)


RUST_LINE = re.compile(
    r"rust worker: (\d+) messages in ([\d.]+)s = (\d+) msg/s, peak RSS ([\d.]+) MiB"
)


DROPPED_LINE = re.compile(r"monitoring events dropped \(publisher behind\): (\d+)")


def rust_drain(drain, url, queue, count, extra_env=None):
    env = dict(os.environ, DRAIN_SKIP_PREFILL="1", **(extra_env or {}))
    env.pop("DRAIN_PREFILL_ONLY", None)
    out = subprocess.run(
        [drain, url, str(count), queue], env=env, check=True, capture_output=True, text=True
    ).stdout
    match = RUST_LINE.search(out)
    if not match:
        raise SystemExit(f"unexpected worker_drain output: {out!r}")
    done, seconds, rate, rss = match.groups()
    if int(done) < count:
        raise SystemExit(f"the Rust worker processed {done} of {count}")
    dropped = DROPPED_LINE.search(out)
    return {"count": int(done), "seconds": float(seconds), "msg_per_s": float(rate),
            "peak_rss_mib": float(rss), "events_dropped": int(dropped.group(1)) if dropped else 0}


def events_cost(args, brokers):
    """Task events off vs on, interleaved rounds, per broker: msg/s, ratio, events dropped."""
    rows = []
    for broker, url in brokers:
        runs = {"off": [], "on": []}
        for round_ in range(max(1, args.rounds)):
            for mode in ("off", "on"):
                queue = f"bench_events_{mode}_{uuid.uuid4().hex[:8]}"
                print(f"{broker}: round {round_ + 1}, task events {mode}…", file=sys.stderr)
                try:
                    prefill(args.drain, url, queue, args.count)
                    env = {"DRAIN_TASK_EVENTS": "1" if mode == "on" else "0"}
                    runs[mode].append(rust_drain(args.drain, url, queue, args.count, env))
                finally:
                    cleanup(url, queue)
        rows.append((broker, runs))
    print()
    print(f"{'broker':<8} {'messages':>8} {'task events off (msg/s)':>26} "
          f"{'task events on (msg/s)':>26} {'on/off':>7} {'events dropped (on)':>22}")
    for broker, runs in rows:
        off = [r["msg_per_s"] for r in runs["off"]]
        on = [r["msg_per_s"] for r in runs["on"]]
        dropped = [r["events_dropped"] for r in runs["on"]]
        ratio = (sum(on) / len(on)) / (sum(off) / len(off))
        print(f"{broker:<8} {args.count:>8} {' / '.join(f'{v:.0f}' for v in off):>26} "
              f"{' / '.join(f'{v:.0f}' for v in on):>26} {ratio:>6.0%} "
              f"{' / '.join(str(d) for d in dropped):>22}")
    print(f"(the Rust worker, no-op handler, {max(1, args.rounds)} interleaved rounds; on/off: "
          "ratio of the means; events dropped: of 3 per message)")


def cleanup(url, queue):
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        keys = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        keys += [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]
        client.delete(*keys)
    else:
        from kombu import Connection

        with Connection(url) as connection:
            channel = connection.default_channel
            for delete in (channel.queue_delete, channel.exchange_delete):
                try:
                    delete(queue)
                except Exception:  # noqa: BLE001 - best effort; the channel may be closed
                    channel = connection.channel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broker")
    parser.add_argument("--queue")
    parser.add_argument("--result-file")
    parser.add_argument("--drain", help="the worker_drain example binary")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rust-rounds", type=int, default=2, help="best of")
    parser.add_argument("--events-cost", action="store_true",
                        help="the Rust worker with task events off vs on, instead")
    parser.add_argument("--rounds", type=int, default=3, help="--events-cost rounds")
    parser.add_argument("--brokers", default="redis,amqp")
    parser.add_argument("--redis-url", default=os.environ.get(
        "EVENTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--amqp-url", default=os.environ.get(
        "EVENTS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
    args = parser.parse_args()
    if args.worker:
        return worker_mode(args)
    if not args.drain:
        parser.error("--drain is required")

    urls = {"redis": args.redis_url, "amqp": args.amqp_url, "rabbitmq": args.amqp_url}
    brokers = [(b.strip(), urls[b.strip()]) for b in args.brokers.split(",") if b.strip()]
    if args.events_cost:
        return events_cost(args, brokers)
    rows = []
    for broker, url in brokers:
        tag = uuid.uuid4().hex[:8]
        py_queue, rs_queue = f"bench_worker_py_{tag}", f"bench_worker_rs_{tag}"
        try:
            print(f"{broker}: Python Celery solo worker draining {args.count} messages…",
                  file=sys.stderr)
            prefill(args.drain, url, py_queue, args.count)
            python = python_drain(url, py_queue, args.count)
            rust = None
            for _ in range(max(1, args.rust_rounds)):
                print(f"{broker}: Rust worker draining {args.count} messages…", file=sys.stderr)
                prefill(args.drain, url, rs_queue, args.count)
                result = rust_drain(args.drain, url, rs_queue, args.count)
                if rust is None or result["msg_per_s"] > rust["msg_per_s"]:
                    rust = result
        finally:
            cleanup(url, py_queue)
            cleanup(url, rs_queue)
        rows.append((broker, python, rust))

    print()
    print(f"{'broker':<8} {'messages':>8} {'Python Celery solo':>19} {'Rust worker':>12} "
          f"{'Rust/Python':>11} {'Rust peak RSS':>14} {'Python peak RSS':>16}")
    for broker, python, rust in rows:
        print(f"{broker:<8} {args.count:>8} {python['msg_per_s']:>19.0f} {rust['msg_per_s']:>12.0f} "
              f"{rust['msg_per_s'] / python['msg_per_s']:>10.1f}x "
              f"{rust['peak_rss_mib']:>10.1f} MiB {python['peak_rss_mib']:>12.1f} MiB")
    print("(msg/s; no-op handler/task, acked after it ran; Rust: best of "
          f"{max(1, args.rust_rounds)} rounds)")


if __name__ == "__main__":
    main()
