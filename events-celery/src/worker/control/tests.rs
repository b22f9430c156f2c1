//! Dispatcher tests against what Celery 5.7 replied (tests/fixtures/control).
