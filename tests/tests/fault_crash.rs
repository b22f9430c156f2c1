//! Fault scenario 1, worker crash: a `fault_worker` process with a slow handler is killed with
//! `kill -9` mid-way through N messages; another worker (on Redis, once the visibility timeout
//! has passed) processes every one of them. Counts in `docs/RELIABILITY.md`.

use std::collections::HashMap;
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use tests::fault::{
    Counts, WorkerProcess, WorkerSpec, cleanup_redis_queue_at, command, fault_redis_url,
    forget_run, publish_ticks, rust_count, rust_runs, sized, tick, wait_processed,
};
use tests::{amqp_url, cleanup_amqp_queue, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

async fn crash_mid_way(broker: &str, url: &str, test: &str) -> String {
    let queue = unique_queue("fault_crash");
    let run = queue.clone();
    let n: u64 = sized(300, 2000);
    let crashes: u64 = sized(2, 5);
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let published = publish_ticks(&backend, &run, n, 32).await;
    assert_eq!(
        published.confirmed.len() as u64,
        n,
        "{:?}",
        published.errors
    );

    let sleep = Duration::from_millis(20);
    let visibility = Duration::from_secs(3);
    let final_spec = WorkerSpec {
        sleep,
        concurrency: 4,
        prefetch: 16,
        visibility_timeout: Some(visibility),
        restore_interval: Some(Duration::from_millis(500)),
        ..WorkerSpec::new(url, &queue)
    };
    // The workers to be killed restore only at start-up, so that a kill never lands while
    // one holds kombu's `unacked_mutex` (which would block restores for its 300 s expiry).
    let doomed_spec = WorkerSpec {
        restore_interval: Some(Duration::from_secs(600)),
        ..final_spec.clone()
    };
    let mut killed_at = Vec::new();
    for i in 1..=crashes {
        let mut worker = WorkerProcess::start(WORKER, &doomed_spec);
        let target = (n * i / (crashes + 1)) as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            worker.assert_running();
            let done = rust_count(&run).await;
            if done >= target {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {done} of {n} processed; worker output:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.kill9();
        let done = rust_count(&run).await;
        assert!(
            done < n as usize,
            "the kill came after the end: nothing was at stake"
        );
        killed_at.push(done);
    }
    let mut last = WorkerProcess::start(WORKER, &final_spec);
    wait_processed(&run, None, &published.confirmed, Duration::from_secs(120)).await;
    // Let late duplicates (if any) land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = rust_runs(&run).await;
    last.assert_running();
    assert!(last.terminate(Duration::from_secs(15)), "{}", last.log());
    let what = format!(
        "{n} msgs, handler sleeps {} ms, concurrency 4; `kill -9` {} at {killed_at:?} processed, \
         then a new worker{}",
        sleep.as_millis(),
        if crashes == 1 {
            "once".to_owned()
        } else {
            format!("{crashes} times (one worker after another)")
        },
        if broker == "Redis" {
            format!(" (visibility timeout {} s)", visibility.as_secs())
        } else {
            String::new()
        }
    );
    Counts::new(
        &format!("1. worker crash, {broker}"),
        &what,
        &published,
        &runs,
        &command("fault_crash", test),
    )
    .report();
    forget_run(&run, None).await;
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_worker_crash_loses_nothing() {
    let url = fault_redis_url();
    let queue = crash_mid_way("Redis", &url, "redis_worker_crash_loses_nothing").await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_worker_crash_loses_nothing() {
    let queue = crash_mid_way("RabbitMQ", &amqp_url(), "amqp_worker_crash_loses_nothing").await;
    cleanup_amqp_queue(&queue).await;
}

/// Item: two messages that carry the same `delivery_tag` (an envelope pushed twice, a
/// publisher re-sending the same bytes) each have a backup of their own while a worker holds
/// them. The tag `a` is carried by 2 messages, `b` by 5, mixed with distinct ones, and one
/// envelope is pushed twice byte for byte; a `fault_worker` holding all of them (slow handler,
/// concurrency 2) is killed with `kill -9` once a few have run (and been acked); a new worker
/// restores the rest after the visibility timeout. Every push must run. (Before, the first
/// ack of a tag removed the one `unacked` entry both shared: 4 of 20 gone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_same_delivery_tag_crash_loses_nothing() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_same_tag");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    // One round: 23 pushes of 22 messages; the full version repeats it with other tags.
    let rounds: u64 = sized(1, 5);
    let mut pushes: Vec<(u64, Vec<u8>)> = Vec::new();
    for round in 0..rounds {
        let base = round * 100;
        let tag_of = |i: u64| match i {
            0 | 19 => format!("{queue}-a{round}"),
            1 | 5 | 10 | 15 | 18 => format!("{queue}-b{round}"),
            _ => format!("{queue}-{round}-{i}"),
        };
        let mut twice = None;
        for i in 0..21 {
            let mut message = tick(&backend, &run, base + i);
            message.properties.delivery_tag = Some(tag_of(i));
            let envelope = message.to_redis().unwrap().envelope.into_bytes();
            if i == 2 {
                twice = Some(envelope.clone());
            }
            pushes.push((base + i, envelope));
        }
        // The same bytes again, late in the round.
        pushes.push((base + 2, twice.expect("pushed")));
        let end = pushes.len() - 1;
        pushes.swap(end, end - 2);
    }
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (_, envelope) in &pushes {
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(envelope)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let mut copies: std::collections::BTreeMap<u64, u64> = Default::default();
    for (seq, _) in &pushes {
        *copies.entry(*seq).or_default() += 1;
    }

    let spec = WorkerSpec {
        sleep: Duration::from_millis(300),
        concurrency: 2,
        prefetch: u16::try_from(pushes.len()).unwrap(),
        visibility_timeout: Some(Duration::from_secs(3)),
        restore_interval: Some(Duration::from_millis(500)),
        ..WorkerSpec::new(&url, &queue)
    };
    // The worker to be killed restores only at start-up (see `crash_mid_way`).
    let doomed = WorkerSpec {
        restore_interval: Some(Duration::from_secs(600)),
        ..spec.clone()
    };
    let mut worker = WorkerProcess::start(WORKER, &doomed);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rust_count(&run).await < 4 {
        worker.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "nothing ran; worker output:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.kill9();
    let killed_at = rust_count(&run).await;
    assert!(
        killed_at < copies.len(),
        "the kill came after the end: nothing was at stake"
    );
    let mut last = WorkerProcess::start(WORKER, &spec);
    let short = |runs: &HashMap<u64, u64>| -> u64 {
        copies
            .iter()
            .map(|(seq, n)| n.saturating_sub(*runs.get(seq).unwrap_or(&0)))
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut runs = rust_runs(&run).await;
    while short(&runs) > 0 && std::time::Instant::now() < deadline {
        last.assert_running();
        tokio::time::sleep(Duration::from_millis(200)).await;
        runs = rust_runs(&run).await;
    }
    last.assert_running();
    assert!(last.terminate(Duration::from_secs(15)), "{}", last.log());
    cleanup_redis_queue_at(&url, &queue).await;
    forget_run(&run, None).await;
    let lost = short(&runs);
    let processed: u64 = copies
        .iter()
        .map(|(seq, n)| (*n).min(*runs.get(seq).unwrap_or(&0)))
        .sum();
    let counts = Counts {
        scenario: "1. worker crash, Redis, repeated delivery tags".to_owned(),
        what: format!(
            "{} pushes of {} messages ({rounds} round(s) of: a tag on 2 messages, a tag on 5, \
             15 distinct, one envelope pushed twice byte for byte); handler sleeps 300 ms, \
             concurrency 2; `kill -9` at {killed_at} processed, then a new worker (visibility \
             timeout 3 s); processed = runs up to the pushes of each message",
            pushes.len(),
            copies.len()
        ),
        published: pushes.len(),
        confirmed: pushes.len(),
        failed: 0,
        processed: processed as usize,
        lost: lost as usize,
        duplicated: copies
            .iter()
            .filter(|(seq, n)| runs.get(seq).unwrap_or(&0) > n)
            .count(),
        failed_but_processed: 0,
        command: command("fault_crash", "redis_same_delivery_tag_crash_loses_nothing"),
    };
    assert_eq!(
        lost,
        0,
        "pushes never run, by seq: {:?}",
        copies
            .iter()
            .filter(|(seq, n)| runs.get(seq).unwrap_or(&0) < n)
            .collect::<Vec<_>>()
    );
    counts.report();
}
