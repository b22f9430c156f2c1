"""The Python side of the domain events: a Celery app whose tasks are the events Rust publishes.

Every event `<name>` is the task `domain_events.<name>`, called as
`send_task("domain_events.<name>", kwargs={"payload": {...}})` — exactly what the Rust
`CeleryBackend` sends. Each task logs what it got and, when `EVENTS_RESULT_KEY` is set, RPUSHes
a JSON record of it onto that Redis list (the interop tests read it back):

    {"task", "id", "payload", "ran_at", "eta", "expires", "priority", "delivery_info"}

Environment:
    CELERY_BROKER_URL                 broker (default amqp://guest:guest@127.0.0.1:5672//)
    EVENTS_CELERY_QUEUE_MAX_PRIORITY  task_queue_max_priority (x-max-priority on RabbitMQ);
                                      the Rust side reads the same variable
    EVENTS_TASK_NAMES                 extra event names to register, comma-separated
    EVENTS_RESULT_KEY                 Redis list to record each run on (optional)
    EVENTS_RESULT_URL                 Redis for the records (default redis://127.0.0.1:6379/0)
    EVENTS_REMOTE_CONTROL             "0" to turn off the worker's remote control (pidbox)
    EVENTS_ACKS_LATE                  "1": task_acks_late (ack after the task ran, as the Rust
                                      worker does)
    EVENTS_TASK_SLEEP                 seconds each task sleeps before recording its run
    EVENTS_VISIBILITY_TIMEOUT         Redis: kombu's visibility_timeout (seconds), with the
                                      unacked-restore sweep every second (interval 1, throttle 1)

Run a worker (from this directory):
    python -m celery -A domain_events_app worker --pool solo -Q celery --loglevel INFO
"""

import json
import logging
import os
import time

from celery import Celery

logger = logging.getLogger("domain_events")

TASK_PREFIX = "domain_events."

# The events the Rust example (`examples/celery_publisher.rs`) publishes.
EXAMPLE_EVENTS = [
    "products.product_created",
    "orders.order_placed",
    "orders.order_cancelled",
]

app = Celery(
    "domain_events_app",
    broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    enable_utc=True,
    worker_enable_remote_control=os.environ.get("EVENTS_REMOTE_CONTROL", "1") != "0",
    broker_connection_retry_on_startup=True,
)
if os.environ.get("EVENTS_CELERY_QUEUE_MAX_PRIORITY", "").strip():
    app.conf.task_queue_max_priority = int(os.environ["EVENTS_CELERY_QUEUE_MAX_PRIORITY"])
if os.environ.get("EVENTS_ACKS_LATE", "").strip() == "1":
    app.conf.task_acks_late = True
if os.environ.get("EVENTS_VISIBILITY_TIMEOUT", "").strip():
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["EVENTS_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
TASK_SLEEP = float(os.environ.get("EVENTS_TASK_SLEEP", "").strip() or 0)

_results = None


def _result_list():
    """The Redis client and list key for records, or (None, None) when not recording."""
    global _results
    key = os.environ.get("EVENTS_RESULT_KEY", "").strip()
    if not key:
        return None, None
    if _results is None:
        import redis

        _results = redis.Redis.from_url(
            os.environ.get("EVENTS_RESULT_URL", "redis://127.0.0.1:6379/0")
        )
    return _results, key


def _iso(value):
    if value is None:
        return None
    return value if isinstance(value, str) else value.isoformat()


def _make_task(event_name):
    @app.task(name=TASK_PREFIX + event_name, bind=True)
    def handle(self, payload):
        if TASK_SLEEP > 0:
            time.sleep(TASK_SLEEP)
        request = self.request
        delivery_info = dict(request.delivery_info or {})
        record = {
            "task": self.name,
            "id": request.id,
            "payload": payload,
            "ran_at": time.time(),
            "eta": _iso(request.eta),
            "expires": _iso(request.expires),
            "priority": delivery_info.get("priority"),
            "delivery_info": {k: v for k, v in delivery_info.items() if _is_json(v)},
        }
        text = json.dumps(record)
        logger.info("event %s: %s", event_name, json.dumps(record, ensure_ascii=False))
        client, key = _result_list()
        if client is not None:
            client.rpush(key, text)
        return None

    return handle


def _is_json(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _event_names():
    extra = [n.strip() for n in os.environ.get("EVENTS_TASK_NAMES", "").split(",")]
    names = []
    for name in EXAMPLE_EVENTS + extra:
        if name and name not in names:
            names.append(name)
    return names


TASKS = {name: _make_task(name) for name in _event_names()}
