"""Python Celery 5.7 as a client of a Rust worker's control plane (tests/tests/control_plane.rs).

    send     --queue Q --run R [--fail] [--task-id ID]   send one control_plane.work task; print its id
             [--event E] [--payload JSON]                 another event (domain_events.E), another payload
             [--count N] [--eta-in S]                     N tasks (one id a line); with an eta S seconds
                                                          ahead (then the eta's isoformat() after each id)
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

app = Celery(
    "control_client",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ.get("CELERY_RESULT_BACKEND"),
)


def send(args):
    options = {}
    if args.task_id:
        options["task_id"] = args.task_id
    if args.payload is not None:
        payload = json.loads(args.payload)
    else:
        payload = {"run": args.run, "fail": args.fail}
    for _ in range(args.count):
        if args.eta_in is not None:
            options["eta"] = datetime.now(timezone.utc) + timedelta(seconds=args.eta_in)
        result = app.send_task(
            "domain_events." + args.event,
            kwargs={"payload": payload},
            queue=args.queue,
            **options,
        )
        print(result.id)
        if args.eta_in is not None:
            print(options["eta"].isoformat())


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
    p.add_argument("--queue", required=True)
    p.add_argument("--run")
    p.add_argument("--fail", action="store_true")
    p.add_argument("--task-id")
    p.add_argument("--event", default="control_plane.work")
    p.add_argument("--payload")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--eta-in", type=float)
    p = sub.add_parser("results")
    p.add_argument("ids", nargs="+")
    p = sub.add_parser("bad")
    p.add_argument("--hostname", required=True)
    args = parser.parse_args()
    {"send": send, "results": results, "bad": bad}[args.command](args)


if __name__ == "__main__":
    main()
