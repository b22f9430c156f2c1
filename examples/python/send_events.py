"""Python Celery sending domain events to a Rust worker: `app.send_task("domain_events.<event>",
kwargs={"payload": ...}, queue=...)` with a Celery app configured like `domain_events_app`
(`task_serializer='json'`). The Rust worker interop tests (`tests/tests/worker_interop.rs`) run it.

    python send_events.py --broker redis://127.0.0.1:6379/0 --queue celery --run r1 \
        --cases plain,eta,priority,kombu_types,protocol_v1

Cases (every payload carries `"run"`, to tell test runs apart, and `"case"`):
    plain        worker_interop.order_placed, a nested payload
    eta          worker_interop.reminder_due with `countdown=` (--countdown, default 3 s)
    priority     worker_interop.reminder_due with `priority=7`
    kombu_types  worker_interop.typed_values: datetimes (UTC, +02:00, naive), a date, a time,
                 Decimal, UUID, UTF-8 bytes and non-UTF-8 bytes, which kombu's JSON tags
    protocol_v1  worker_interop.order_placed from a second app with `task_protocol=1`
    shop         the example worker's events (`examples/celery_worker.rs`, types in
                 `examples/src/lib.rs`): products.product_created, orders.order_placed and
                 orders.order_cancelled (both variants), as Rust's serde reads them; these
                 payloads carry no "run" or "case". Not among the defaults:

    python send_events.py --broker amqp://guest:guest@127.0.0.1:5672// --queue celery --cases shop

`--compression zlib` (or any kombu method or alias) sends every message compressed.

Prints one JSON line per message sent: {"case", "id", "eta", "sent_at"}.
"""

import argparse
import datetime
import decimal
import json
import sys
import time
import uuid

from celery import Celery

TASK_PREFIX = "domain_events."
CASES = ["plain", "eta", "priority", "kombu_types", "protocol_v1"]
# Sent only when asked for (`--cases shop`).
EXTRA_CASES = ["shop"]


def shop_events():
    """(event, payload) pairs of the example worker's events, shaped as its Rust types."""
    return [
        (
            "products.product_created",
            {"product_id": "abc-123", "name": "Brake pad", "stock": 4},
        ),
        (
            "orders.order_placed",
            {
                "order_id": 1001,
                "customer": "Zoë Ångström 🚗",
                "lines": [{"product_id": "abc-123", "quantity": 2, "unit_price_cents": 1999}],
                "coupon": None,
            },
        ),
        # serde's externally tagged enum: {"<Variant>": <fields or value>}.
        (
            "orders.order_cancelled",
            {"ByCustomer": {"order_id": 1001, "reason": "changed my mind"}},
        ),
        ("orders.order_cancelled", {"OutOfStock": 1002}),
    ]


def make_app(broker, protocol, max_priority):
    app = Celery("send_events", broker=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        enable_utc=True,
        task_protocol=protocol,
    )
    if max_priority is not None:
        app.conf.task_queue_max_priority = max_priority
    return app


def order_placed(run, case):
    return {
        "run": run,
        "case": case,
        "order_id": 1_000_042,
        "customer": {
            "name": "Zoë Ångström",
            "address": {"city": "Łódź", "zip": "90-926", "lines": ["ul. Piotrkowska 104"]},
        },
        "lines": [
            {"sku": "BRAKE-PAD", "quantity": 2, "unit_price_cents": 1999},
            {"sku": "OIL-5W30", "quantity": 1, "unit_price_cents": 4550},
        ],
        "tags": ["new", "vip"],
        "note": None,
        "total": 85.48,
    }


def typed_values(run):
    utc = datetime.timezone.utc
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    at_utc = datetime.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=utc)
    return {
        "run": run,
        "case": "kombu_types",
        "at_utc": at_utc,
        "at_utc_text": at_utc,
        "at_offset": datetime.datetime(2024, 5, 17, 14, 30, 45, tzinfo=plus_two),
        "naive": datetime.datetime(2024, 5, 17, 12, 30, 45),
        "day": datetime.date(2024, 5, 17),
        "time_of_day": datetime.time(12, 30, 45, 500),
        "price": decimal.Decimal("9.99"),
        "prices": [decimal.Decimal("0.10"), decimal.Decimal("1E+3")],
        "id": uuid.UUID("6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01"),
        "id_text": uuid.UUID("6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01"),
        "raw": b"hello",
        "blob": b"\x00\xff\xfe\x80",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument(
        "--run", default="example", help="put in every payload (not the shop events')"
    )
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--countdown", type=float, default=3.0)
    parser.add_argument("--priority", type=int, default=7)
    parser.add_argument(
        "--compression", default=None, help="kombu compression for every message (zlib, bzip2, …)"
    )
    parser.add_argument(
        "--max-priority", type=int, default=None, help="task_queue_max_priority (RabbitMQ)"
    )
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES + EXTRA_CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; expected some of {CASES + EXTRA_CASES}")

    app = make_app(args.broker, 2, args.max_priority)
    sent = []

    def send(case, event, payload, sender=app, **options):
        # Celery computes the eta from its own clock after this: the one printed is a lower bound.
        before = datetime.datetime.now(datetime.timezone.utc)
        if args.compression:
            options["compression"] = args.compression
        result = sender.send_task(
            TASK_PREFIX + event, kwargs={"payload": payload}, queue=args.queue, **options
        )
        eta = None
        if "countdown" in options:
            eta = (before + datetime.timedelta(seconds=options["countdown"])).isoformat()
        sent.append({"case": case, "id": result.id, "eta": eta, "sent_at": time.time()})

    for case in cases:
        if case == "plain":
            send(case, "worker_interop.order_placed", order_placed(args.run, case))
        elif case == "eta":
            payload = {"run": args.run, "case": case}
            send(case, "worker_interop.reminder_due", payload, countdown=args.countdown)
        elif case == "priority":
            payload = {"run": args.run, "case": case}
            send(case, "worker_interop.reminder_due", payload, priority=args.priority)
        elif case == "kombu_types":
            send(case, "worker_interop.typed_values", typed_values(args.run))
        elif case == "shop":
            for event, payload in shop_events():
                send(case, event, payload)
        elif case == "protocol_v1":
            v1 = make_app(args.broker, 1, args.max_priority)
            send(case, "worker_interop.order_placed", order_placed(args.run, case), sender=v1)
            v1.close()
    app.close()
    for line in sent:
        json.dump(line, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
