//! Numbers from real Python Celery (5.7) through the Rust worker, on Redis and on RabbitMQ:
//! Python's `json.dumps` spells floats as `repr` does (`1e-07`, `1e+300`, `2.0`, `5e-324`) and
//! writes `NaN`, `Infinity` and `-Infinity` (not JSON, but Python and kombu read them), and
//! sends integers of any size. Every one arrives exactly, in every serde shape an event can
//! take (internally and adjacently tagged and untagged enums, `flatten`), and a non-finite
//! float for a field that is not a float is dead-lettered with the field named.
//!
//! Without the Python interpreter (`EVENTS_TEST_PYTHON`) these tests fail; they never skip.

use std::sync::Mutex;
use std::time::Duration;

use events_celery::WorkerConfig;
use events_core::{domain_event, handler};
use serde::{Deserialize, Serialize};
use tests::fault::dead_letter_reasons;
use tests::{
    InProcessWorker, amqp_url, cleanup_amqp_queue, cleanup_redis_queue, eventually, python,
    redis_url, unique_queue,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Position {
    lat: f64,
    lon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value")]
enum Measure {
    Ratio(f64),
    Range { low: f64, high: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Mixed {
    Plain(f64),
    Labelled { value: f64, unit: String },
}

#[domain_event(name = "worker_numbers.reading")]
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    run: String,
    case: String,
    value: f64,
    #[serde(flatten)]
    at: Position,
    measure: Measure,
    mixed: Vec<Mixed>,
    serial: u128,
    offset: i128,
}

#[domain_event(name = "worker_numbers.shape")]
#[derive(Debug, Clone, PartialEq)]
#[serde(tag = "type")]
enum Shape {
    Point { run: String, x: f64, y: f64 },
}

#[domain_event(name = "worker_numbers.count")]
#[derive(Debug, Clone, PartialEq)]
struct Count {
    run: String,
    n: u32,
}

static READINGS: Mutex<Vec<Reading>> = Mutex::new(Vec::new());
static SHAPES: Mutex<Vec<Shape>> = Mutex::new(Vec::new());

#[handler]
fn record_reading(event: &Reading) {
    READINGS.lock().unwrap().push(event.clone());
}

#[handler]
fn record_shape(event: &Shape) {
    SHAPES.lock().unwrap().push(event.clone());
}

#[handler]
fn never_runs(event: &Count) {
    panic!("a NaN cannot be a u32, yet {event:?} was decoded");
}

/// Python's floats by case name, as `json.dumps` writes them.
const CASES: [(&str, &str); 9] = [
    ("tiny", "1e-7"),
    ("huge", "1e300"),
    ("whole", "2.0"),
    ("negative_zero", "-0.0"),
    ("denormal", "5e-324"),
    ("tenth", "0.1"),
    ("nan", "float('nan')"),
    ("inf", "float('inf')"),
    ("ninf", "float('-inf')"),
];

fn expected(case: &str) -> f64 {
    match case {
        "tiny" => 1e-7,
        "huge" => 1e300,
        "whole" => 2.0,
        "negative_zero" => -0.0,
        "denormal" => 5e-324,
        "tenth" => 0.1,
        "nan" => f64::NAN,
        "inf" => f64::INFINITY,
        "ninf" => f64::NEG_INFINITY,
        other => unreachable!("{other}"),
    }
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Sends every case with Python Celery's `send_task`; prints the body Python wrote for one.
fn python_sends(url: &str, queue: &str, run: &str) -> String {
    let cases: String = CASES
        .iter()
        .map(|(case, float)| format!("({case:?}, {float}), "))
        .collect();
    let script = format!(
        r#"
import json, sys
from celery import Celery
broker, queue, run = sys.argv[1:4]
app = Celery("worker_numbers", broker=broker)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
for case, f in [{cases}]:
    payload = {{"run": run, "case": case, "value": f, "lat": f, "lon": 0.1,
        "measure": {{"kind": "Range", "value": {{"low": f, "high": 1e300}}}},
        "mixed": [f, {{"value": f, "unit": "C"}}],
        "serial": 2**70, "offset": -(2**64) - 1}}
    app.send_task("domain_events.worker_numbers.reading", kwargs={{"payload": payload}}, queue=queue)
app.send_task("domain_events.worker_numbers.shape",
    kwargs={{"payload": {{"type": "Point", "run": run, "x": 1e-7, "y": float("-inf")}}}}, queue=queue)
app.send_task("domain_events.worker_numbers.count",
    kwargs={{"payload": {{"run": run, "n": float("nan")}}}}, queue=queue)
print(json.dumps({{"payload": {{"n": float("nan"), "x": float("inf"), "y": 1e-7}}}}))
"#
    );
    let mut command = std::process::Command::new(python());
    command.args(["-c", &script, url, queue, run]);
    let output = tests::output_within(command, tests::PYTHON_LIMIT);
    assert!(
        output.status.success(),
        "the Python publisher failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn python_numbers_reach_rust_handlers(url: String) {
    let queue = unique_queue("numbers");
    let run = queue.clone();
    let worker = InProcessWorker::start(
        WorkerConfig::new(&url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(2),
    );
    let printed = python_sends(&url, &queue, &run);
    // What Python writes: not JSON, and what the worker must read.
    assert_eq!(
        printed.trim(),
        r#"{"payload": {"n": NaN, "x": Infinity, "y": 1e-07}}"#
    );

    let readings = || {
        READINGS
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.run == run)
            .cloned()
            .collect::<Vec<_>>()
    };
    let all = eventually(Duration::from_secs(30), || async {
        let dead = dead_letter_reasons(&url, &queue).await.unwrap_or_default();
        (readings().len() == CASES.len() && !dead.is_empty()).then_some(dead)
    })
    .await;
    let stats: std::collections::HashMap<_, _> =
        worker.stop().await.snapshot().into_iter().collect();
    let dead = all.unwrap_or_else(|| {
        panic!(
            "not everything arrived within 30 s: {} readings; stats {stats:?}",
            readings().len()
        )
    });

    for reading in readings() {
        let f = expected(&reading.case);
        let case = &reading.case;
        assert!(same(reading.value, f), "{case}: {}", reading.value);
        assert!(
            same(reading.at.lat, f),
            "{case}: flattened {}",
            reading.at.lat
        );
        let Measure::Range { low, high } = reading.measure else {
            panic!("{case}: {:?}", reading.measure)
        };
        assert!(same(low, f) && high == 1e300, "{case}: adjacently tagged");
        match reading.mixed.as_slice() {
            [Mixed::Plain(a), Mixed::Labelled { value, unit }] => {
                assert!(
                    same(*a, f) && same(*value, f) && unit == "C",
                    "{case}: untagged"
                );
            }
            other => panic!("{case}: {other:?}"),
        }
        assert_eq!(reading.serial, 1 << 70, "{case}");
        assert_eq!(reading.offset, -(1i128 << 64) - 1, "{case}");
    }
    let shapes: Vec<Shape> = SHAPES.lock().unwrap().clone();
    assert!(
        shapes.contains(&Shape::Point {
            run: run.clone(),
            x: 1e-7,
            y: f64::NEG_INFINITY
        }),
        "{shapes:?}"
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("field `n`") && dead[0].contains("floating point `NaN`, expected u32"),
        "{dead:?}"
    );
    assert_eq!(stats["succeeded"], CASES.len() as u64 + 1, "{stats:?}");
    assert_eq!(stats["dead_lettered"], 1, "{stats:?}");

    if url.starts_with("redis") {
        cleanup_redis_queue(&queue, &[]).await;
    } else {
        cleanup_amqp_queue(&queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_numbers_reach_rust_handlers_exactly() {
    python_numbers_reach_rust_handlers(redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_numbers_reach_rust_handlers_exactly() {
    python_numbers_reach_rust_handlers(amqp_url()).await;
}
