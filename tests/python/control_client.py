"""Python Celery 5.7 as a client of a Rust worker's control plane (tests/tests/control_plane.rs).

    send     --queue Q --run R [--fail] [--task-id ID]   send one control_plane.work task; print its id
             [--hold] [--exchange E --routing-key K]      (--hold: a control_plane.gated task, which
                                                          waits for the test; --exchange: published
                                                          to the topic exchange E with K instead of
                                                          to the queue)
             [--event E] [--payload JSON]                 another event (domain_events.E), another payload
             [--count N] [--eta-in S]                     N tasks (one id a line); with an eta S seconds
                                                          ahead (then the eta's isoformat() after each id)
    add      --hostname H --queue Q [--exchange E] [--type T] [--routing-key K]
                                                          app.control.add_consumer(...): the replies
    bad_consumers --hostname H                            add_consumer / cancel_consumer with bad
                                                          arguments; then a ping: one JSON object
    results  ID...                                        AsyncResult(id).get(timeout=30) for each;
                                                          one JSON line each: {"id", "ok"} or {"id", "raised", "message"}
    bad      --hostname H                                 unknown command, malformed bodies, huge
                                                          arguments; then a ping: one JSON object

The broker is CELERY_BROKER_URL, the result backend CELERY_RESULT_BACKEND.
"""

import argparse
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from celery import Celery
from kombu import Exchange

app = Celery(
    "control_client",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ.get("CELERY_RESULT_BACKEND"),
)


def send(args):
    options = {}
    if args.task_id:
        options["task_id"] = args.task_id
    if args.exchange:
        # As a topic exchange: kombu's Redis transport routes by the type the publisher
        # declared (RabbitMQ by the broker's own).
        exchange = Exchange(args.exchange, type="topic")
        options["exchange"] = exchange
        options["routing_key"] = args.routing_key
        options["declare"] = [exchange]
    else:
        options["queue"] = args.queue
    if args.hold:
        name, payload = "domain_events.control_plane.gated", {"run": args.run}
    else:
        name = "domain_events." + args.event
        if args.payload is not None:
            payload = json.loads(args.payload)
        else:
            payload = {"run": args.run, "fail": args.fail}
    for _ in range(args.count):
        if args.eta_in is not None:
            options["eta"] = datetime.now(timezone.utc) + timedelta(seconds=args.eta_in)
        result = app.send_task(name, kwargs={"payload": payload}, **options)
        print(result.id)
        if args.eta_in is not None:
            print(options["eta"].isoformat())


def add(args):
    replies = app.control.add_consumer(
        args.queue,
        exchange=args.exchange,
        exchange_type=args.type,
        routing_key=args.routing_key,
        destination=[args.hostname],
        reply=True,
        timeout=5,
    )
    print(json.dumps(replies))


def bad_consumers(args):
    dest = [args.hostname]
    cases = {
        "missing": ("add_consumer", {}),
        "not_text": ("add_consumer", {"queue": 5}),
        "empty": ("add_consumer", {"queue": ""}),
        "huge": ("add_consumer", {"queue": "q" * 100_000}),
        "separator": ("add_consumer", {"queue": "a\x06\x16b"}),
        "headers": ("add_consumer", {"queue": "q", "exchange_type": "headers"}),
        "option": ("add_consumer", {"queue": "q", "exclusive": True}),
        "cancel_list": ("cancel_consumer", {"queue": ["a"]}),
        "cancel_huge": ("cancel_consumer", {"queue": "q" * 100_000}),
    }
    out = {
        name: app.control.broadcast(
            method, arguments=arguments, destination=dest, reply=True, timeout=3
        )
        for name, (method, arguments) in cases.items()
    }
    out["ping_after"] = app.control.ping(destination=dest, timeout=5)
    print(json.dumps(out))


def results(args):
    for task_id in args.ids:
        try:
            value = app.AsyncResult(task_id).get(timeout=30)
            print(json.dumps({"id": task_id, "ok": value}))
        except Exception as error:  # the test reads what was raised
            print(json.dumps({"id": task_id, "raised": type(error).__name__, "message": str(error)}))
        sys.stdout.flush()


def bad(args):
    out = {}
    dest = [args.hostname]
    out["unknown"] = app.control.broadcast(
        "no_such_command", destination=dest, reply=True, timeout=3
    )
    mailbox = app.control.mailbox
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        # Not JSON, a JSON list, a JSON object without a method.
        for body in (b"{not json", b"[1, 2, 3]", b'{"destination": null}'):
            producer.publish(
                body,
                exchange=mailbox.exchange,
                routing_key="",
                content_type="application/json",
                content_encoding="utf-8",
                declare=[mailbox.exchange],
            )
    out["huge"] = app.control.broadcast(
        "ping", arguments={"pad": "x" * (2 << 20)}, destination=dest, reply=True, timeout=2
    )
    out["ping_after"] = app.control.ping(destination=dest, timeout=5)
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("--queue")
    p.add_argument("--run")
    p.add_argument("--fail", action="store_true")
    p.add_argument("--task-id")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--exchange")
    p.add_argument("--routing-key")
    p.add_argument("--event", default="control_plane.work")
    p.add_argument("--payload")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--eta-in", type=float)
    p = sub.add_parser("add")
    p.add_argument("--hostname", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--exchange")
    p.add_argument("--type", default="direct")
    p.add_argument("--routing-key")
    p = sub.add_parser("bad_consumers")
    p.add_argument("--hostname", required=True)
    p = sub.add_parser("results")
    p.add_argument("ids", nargs="+")
    p = sub.add_parser("bad")
    p.add_argument("--hostname", required=True)
    args = parser.parse_args()
    commands = {"send": send, "add": add, "bad_consumers": bad_consumers, "results": results, "bad": bad}
    commands[args.command](args)


if __name__ == "__main__":
    main()
