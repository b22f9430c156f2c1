"""Python Celery's own publishing speed: `app.send_task` in a loop, for comparison with the Rust
publisher (run by `cargo bench -p events-celery --bench celery_publish`, which calls this with
the same broker, queue and payload in the same run).

    python bench_send_task.py --broker redis://127.0.0.1:6379/0 --queue bench \
        --task domain_events.bench.order_placed --payload '{"order_id": 1}' --count 5000

Prints one JSON line: {"count", "seconds", "msg_per_s"}. On RabbitMQ, publisher confirms are on
(`confirm_publish`), as the Rust publisher always waits for them; `--no-confirm` measures
Celery's default (no confirms); `--transient` sets `task_default_delivery_mode = "transient"`.
Messages stay in the queue;
the caller purges it.
"""

import argparse
import json
import sys
import time

from celery import Celery


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--payload", required=True, help="the event as JSON")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--no-confirm", action="store_true", help="RabbitMQ: Celery's default, no confirms"
    )
    parser.add_argument(
        "--transient", action="store_true", help="task_default_delivery_mode = 'transient'"
    )
    args = parser.parse_args()

    app = Celery("bench_send_task", broker=args.broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=args.queue,
        broker_transport_options={"confirm_publish": not args.no_confirm},
        task_default_delivery_mode="transient" if args.transient else "persistent",
    )
    payload = json.loads(args.payload)
    kwargs = {"payload": payload}

    with app.producer_or_acquire() as producer:
        for _ in range(args.warmup):
            app.send_task(args.task, kwargs=kwargs, producer=producer)
        started = time.perf_counter()
        for _ in range(args.count):
            app.send_task(args.task, kwargs=kwargs, producer=producer)
        seconds = time.perf_counter() - started
    json.dump(
        {"count": args.count, "seconds": seconds, "msg_per_s": args.count / seconds},
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
