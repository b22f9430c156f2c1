#!/usr/bin/env bash
# Starts Redis, RabbitMQ and PostgreSQL on 127.0.0.1 if they are not answering (and creates the
# PostgreSQL database `test` the outbox tests use), and installs the Python Celery used by the
# interop tests into ./.venv. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379; then
    echo "starting redis-server"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! port_open 5672; then
    echo "starting rabbitmq-server"
    rabbitmq-server -detached
    rabbitmqctl await_startup --timeout 120 >/dev/null
fi
if ! port_open 5432; then
    echo "starting postgresql"
    if command -v pg_lsclusters >/dev/null; then
        # Debian's clusters: start every one that is down (the machine has one, 5432).
        pg_lsclusters --no-header | while read -r version cluster port status _; do
            if [ "$status" != "online" ]; then pg_ctlcluster "$version" "$cluster" start; fi
        done
    else
        service postgresql start
    fi
fi
for i in $(seq 1 60); do
    if port_open 6379 && port_open 5672 && port_open 5432; then break; fi
    sleep 1
done
port_open 6379 || { echo "redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
port_open 5672 || { echo "rabbitmq is not answering on 127.0.0.1:5672" >&2; exit 1; }
port_open 5432 || { echo "postgresql is not answering on 127.0.0.1:5432" >&2; exit 1; }
# The outbox tests' database (trust auth for 127.0.0.1, as the machine is set up).
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    echo "creating the postgresql database test"
    psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
fi

CELERY_VERSION=5.7.0
FLOWER_VERSION=2.2.0
# backports.zstd and brotli: kombu registers its zstd and brotli compression with them.
# flower (with its dependencies pinned): the control-plane tests run a real Flower.
if ! .venv/bin/python -c "import celery, flower, sys, backports.zstd, brotli; sys.exit(celery.__version__ != '$CELERY_VERSION' or flower.__version__ != '$FLOWER_VERSION')" 2>/dev/null; then
    echo "installing celery[redis]==$CELERY_VERSION, flower==$FLOWER_VERSION, backports.zstd, brotli into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "celery[redis]==$CELERY_VERSION" \
        "backports.zstd==1.8.0" "brotli==1.2.1" "flower==$FLOWER_VERSION" "tornado==6.6.1" \
        "prometheus_client==0.26.0" "humanize==4.17.0" "pytz==2026.6"
fi
