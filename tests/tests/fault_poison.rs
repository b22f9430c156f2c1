//! Fault scenario 7, poison messages (RabbitMQ): messages nested so deep that a recursive parser
//! overflows its stack — headers holding arrays or tables nested to the deepest level one AMQP
//! frame allows, and bodies nested far past any JSON parser's limit. Without a guard, the first
//! one aborts the worker process (`lapin-io-loop` overflows its stack), goes back to the queue
//! and kills every worker that takes it next. Each must end in `<queue>.dead_letter` with a
//! reason, the worker process must stay up (never restarted here), and a good message behind
//! them must run.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tests::amqp_raw::{RawAmqp, RawMessage, nested_entry, string_entry};
use tests::fault::{
    Counts, Published, WorkerProcess, WorkerSpec, command, dead_letter_reasons, rust_runs,
};
use tests::{amqp_url, cleanup_amqp_queue, eventually, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

/// Celery's two required headers, for a `fault.tick` task.
fn celery_headers() -> Vec<u8> {
    let mut headers = string_entry("task", "domain_events.fault.tick");
    headers.extend(string_entry("id", &uuid::Uuid::new_v4().to_string()));
    headers
}

fn message(name: &str, headers: Vec<u8>, body: Vec<u8>) -> RawMessage {
    RawMessage {
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        headers,
        message_id: name.into(),
        body,
    }
}

fn tick_body(run: &str, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([[], {"payload": {"run": run, "seq": seq}}, {}])).unwrap()
}

/// The deepest `nested_entry` that fits in `budget` bytes.
fn deepest(budget: usize, arrays: bool) -> usize {
    let mut depth = if arrays { budget / 5 } else { budget / 7 } + 2;
    while nested_entry("x-deep", depth, arrays).len() > budget {
        depth -= 1;
    }
    depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_deeply_nested_messages_are_dead_lettered() {
    let url = amqp_url();
    let queue = unique_queue("fault_poison");
    let run = queue.clone();
    let mut raw = tokio::task::block_in_place(RawAmqp::connect);
    raw.declare(&queue);

    // (name, message, what its reason must say)
    let mut cases: Vec<(String, RawMessage, &str)> = Vec::new();
    // Case names (the message ids) are shorter than the probe's.
    let probe = message(&"p".repeat(60), celery_headers(), tick_body(&run, 0));
    let budget = raw.max_headers_len(&probe) - celery_headers().len();
    for arrays in [true, false] {
        let kind = if arrays { "arrays" } else { "tables" };
        for depth in [65, 2_500, deepest(budget, arrays)] {
            let mut headers = celery_headers();
            headers.extend(nested_entry("x-deep", depth, arrays));
            let name = format!("header {kind} nested {depth} deep");
            assert!(name.len() <= 60);
            cases.push((
                name.clone(),
                message(&name, headers, tick_body(&run, 0)),
                "nest deeper than 64 levels",
            ));
        }
    }
    // The deepest tables alone, with no Celery header at all.
    let depth = deepest(budget, false);
    cases.push((
        "bare header table nested deepest".into(),
        message(
            "bare header table",
            nested_entry("x-deep", depth, false),
            tick_body(&run, 0),
        ),
        "nest deeper than 64 levels",
    ));
    for (what, open, close) in [("arrays", "[", "]"), ("objects", "{\"a\": ", "}")] {
        for depth in [200, 100_000] {
            let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let bodies = [
                ("body", deep.clone()),
                (
                    "payload",
                    format!("[[], {{\"payload\": {{\"run\": \"{run}\", \"seq\": {deep}}}}}, {{}}]"),
                ),
            ];
            for (part, body) in bodies {
                let name = format!("{part} {what} nested {depth} deep");
                cases.push((
                    name.clone(),
                    message(&name, celery_headers(), body.into_bytes()),
                    "recursion limit",
                ));
            }
        }
    }

    let mut worker = WorkerProcess::start(WORKER, &WorkerSpec::new(&url, &queue));
    tokio::task::block_in_place(|| {
        for (_, message, _) in &cases {
            raw.publish(&queue, message);
        }
        raw.publish(
            &queue,
            &message("good", celery_headers(), tick_body(&run, 1)),
        );
    });

    let ran = eventually(Duration::from_secs(60), || async {
        rust_runs(&run).await.contains_key(&1).then_some(())
    })
    .await;
    worker.assert_running();
    assert!(
        ran.is_some(),
        "the good message behind the poison did not run; worker log:\n{}",
        worker.log()
    );
    let reasons = eventually(Duration::from_secs(30), || async {
        dead_letter_reasons(&url, &queue)
            .await
            .filter(|r| r.len() >= cases.len())
    })
    .await
    .unwrap_or_default();
    assert_eq!(
        reasons.len(),
        cases.len(),
        "every poison message is dead-lettered once: {reasons:#?}"
    );
    // The dead letters come in publishing order (one queue, prefetch in order).
    for ((name, _, expected), reason) in cases.iter().zip(&reasons) {
        assert!(
            reason.contains(expected),
            "{name}: the reason {reason:?} should say {expected:?}"
        );
    }
    worker.assert_running();
    assert!(worker.terminate(Duration::from_secs(10)), "a clean stop");

    let runs: HashMap<u64, u64> = rust_runs(&run).await;
    let published = Published {
        confirmed: (0..=cases.len() as u64).collect::<BTreeSet<_>>(),
        ..Published::default()
    };
    // Every bad one counts as processed by its dead letter; the good one by its run.
    let mut processed: HashMap<u64, u64> = (1..=cases.len() as u64).map(|i| (i, 1)).collect();
    processed.insert(0, runs.get(&1).copied().unwrap_or(0));
    let deepest_arrays = deepest(budget, true);
    let deepest_tables = deepest(budget, false);
    Counts::new(
        "7. poison messages, RabbitMQ",
        &format!(
            "{} messages nested past every parser's limit, published raw, then 1 good one: \
             header arrays/tables 65, 2,500 and {deepest_arrays}/{deepest_tables} levels \
             deep (the deepest a {}-byte frame holds), bodies and payloads 200 and 100,000 \
             levels deep; one worker process, never restarted: each dead-lettered with its \
             reason, the good one ran",
            cases.len(),
            raw.frame_max()
        ),
        &published,
        &processed,
        &command(
            "fault_poison",
            "amqp_deeply_nested_messages_are_dead_lettered",
        ),
    )
    .report();
    cleanup_amqp_queue(&queue).await;
    cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
}
