//! Fault scenario 8, floods and outages: a queue flooded with bad messages does not starve a
//! quiet queue of the same worker (Redis and RabbitMQ); a flood of bad messages leaves
//! dead-letter storage within its bound, with the overflow counted, and its log lines
//! rate-limited with a count; a worker facing an unreachable Redis runs one reconnect loop per
//! connection with backoff, each failure logged once; an idle Redis worker polls once per
//! interval, not once per fetcher.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use events_celery::{CeleryBackend, CeleryConfig};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tests::fault::{
    Counts, PrivateRedis, Published, Refusing, WorkerProcess, WorkerSpec, cleanup_redis_queue_at,
    command, fault_redis_url, forget_run, most_attempts, rust_count, rust_runs, sized, tick,
};
use tests::{amqp_channel, amqp_url, cleanup_amqp_queue, eventually, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running")
}

/// Pushes `n` entries that are not JSON onto the list `queue`, as a publisher would (LPUSH).
async fn flood_redis(url: &str, queue: &str, n: usize) {
    let mut connection = redis_at(url).await;
    for start in (0..n).step_by(5000) {
        let batch: Vec<String> = (start..n.min(start + 5000))
            .map(|i| format!("garbage {i}"))
            .collect();
        let _: () = redis::cmd("LPUSH")
            .arg(queue)
            .arg(&batch)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

async fn llen(url: &str, key: &str) -> usize {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut redis_at(url).await)
        .await
        .unwrap()
}

/// Publishes one `fault.tick` of `run` to `queue`.
async fn one_tick(url: &str, queue: &str, run: &str) {
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(queue))
        .await
        .unwrap();
    backend.send(tick(&backend, run, 0)).await.unwrap();
}

/// The worker's stats line (`fault_worker stopped: [...]`): the value of `name` (0 when the
/// worker has no such counter).
fn stat(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("fault_worker stopped"))
        .unwrap_or_else(|| panic!("the worker did not stop cleanly:\n{log}"));
    let Some(at) = line.find(&format!("(\"{name}\", ")) else {
        return 0;
    };
    let rest = &line[at + name.len() + 5..];
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

/// How long from `started` until `run` has more than `seen` messages processed, looked at
/// every 2 ms.
async fn time_to_run(run: &str, seen: usize, started: Instant) -> Option<Duration> {
    while started.elapsed() < Duration::from_secs(20) {
        if rust_count(run).await > seen {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// The row of a fairness scenario: the quiet queue's one message, confirmed and processed.
async fn report_quiet(scenario: &str, what: &str, run: &str, test: &str) {
    let published = Published {
        confirmed: [0].into(),
        ..Published::default()
    };
    Counts::new(
        scenario,
        what,
        &published,
        &rust_runs(run).await,
        &command("fault_flood", test),
    )
    .report();
}

/// How many "… and 9,999 more like it" a summary line counts.
fn summarised(line: &str) -> Option<u64> {
    let after = line.split("… and ").nth(1)?;
    after.split(' ').next()?.replace(',', "").parse().ok()
}

/// The dead letters a worker's log accounts for: (lines logged one by one, lines counted in
/// summaries).
fn dead_letter_lines(log: &str) -> (u64, u64) {
    let about_dead =
        |l: &&str| l.contains("message dead-lettered") || l.contains("dead-letter list full");
    let logged = log
        .lines()
        .filter(about_dead)
        .filter(|l| summarised(l).is_none())
        .count() as u64;
    let counted = log.lines().filter(about_dead).filter_map(summarised).sum();
    (logged, counted)
}

/// A queue flooded with bad entries listed first, a quiet queue second: the quiet queue's
/// message runs while most of the flood is still queued (before: the worker drained the
/// flooded queue first — 190,000 entries, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flooded_queue_does_not_starve_a_quiet_one() {
    let url = fault_redis_url();
    let flooded = unique_queue("fault_flooded");
    let quiet = unique_queue("fault_quiet");
    let run = quiet.clone();
    let n = sized(20_000, 190_000);
    flood_redis(&url, &flooded, n).await;
    one_tick(&url, &quiet, &run).await;
    let mut spec = WorkerSpec::new(&url, &format!("{flooded},{quiet}"));
    spec.env
        .push(("FAULT_DEAD_LETTER_MAX".to_owned(), (n + 1).to_string()));
    let mut worker = WorkerProcess::start(WORKER, &spec);
    let left = eventually(Duration::from_secs(120), || async {
        (rust_count(&run).await == 1).then_some(())
    })
    .await;
    let remaining = llen(&url, &flooded).await;
    worker.assert_running();
    assert!(left.is_some(), "the quiet queue's message never ran");
    report_quiet(
        "8. flooded queue, Redis",
        &format!(
            "{n} non-JSON entries on queue A, 1 message on queue B, one worker on A,B: B's ran \
             with {remaining} of A's still queued"
        ),
        &run,
        "redis_flooded_queue_does_not_starve_a_quiet_one",
    )
    .await;
    assert!(
        remaining >= n / 2,
        "the quiet queue waited for the flooded one: only {remaining} of {n} entries were left \
         when its message ran"
    );
    worker.terminate(Duration::from_secs(20));
    forget_run(&run, None).await;
    cleanup_redis_queue_at(&url, &flooded).await;
    cleanup_redis_queue_at(&url, &quiet).await;
}

/// The same on RabbitMQ: each flooded message is dead-lettered (published, then acked); the
/// quiet queue's consumer on the same channel still gets its message early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_flooded_queue_does_not_starve_a_quiet_one() {
    let url = amqp_url();
    let flooded = unique_queue("fault_flooded");
    let quiet = unique_queue("fault_quiet");
    let run = quiet.clone();
    let n = sized(5_000, 50_000);
    let (connection, channel) = amqp_channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declare = |passive: bool| {
        let (channel, flooded) = (channel.clone(), flooded.clone());
        async move {
            channel
                .queue_declare(
                    flooded.as_str().into(),
                    QueueDeclareOptions { passive, ..durable },
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count() as usize
        }
    };
    declare(false).await;
    for i in 0..n {
        channel
            .basic_publish(
                "".into(),
                flooded.as_str().into(),
                BasicPublishOptions::default(),
                format!("garbage {i}").as_bytes(),
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .unwrap();
    }
    let queued = eventually(Duration::from_secs(60), || async {
        (declare(true).await >= n).then_some(())
    })
    .await;
    assert!(queued.is_some(), "the flood did not reach RabbitMQ");
    one_tick(&url, &quiet, &run).await;
    let mut worker = WorkerProcess::start(
        WORKER,
        &WorkerSpec::new(&url, &format!("{flooded},{quiet}")),
    );
    let ran = eventually(Duration::from_secs(120), || async {
        (rust_count(&run).await == 1).then_some(())
    })
    .await;
    let remaining = declare(true).await;
    worker.assert_running();
    assert!(ran.is_some(), "the quiet queue's message never ran");
    report_quiet(
        "8. flooded queue, RabbitMQ",
        &format!(
            "{n} non-JSON messages on queue A (each dead-lettered: publish + ack), 1 message on \
             queue B, one worker on A,B: B's ran with {remaining} of A's still queued"
        ),
        &run,
        "amqp_flooded_queue_does_not_starve_a_quiet_one",
    )
    .await;
    assert!(
        remaining >= n / 2,
        "the quiet queue waited for the flooded one: only {remaining} of {n} messages were left \
         when its message ran"
    );
    // The rest of the flood is dead-lettered too, its log lines rate-limited with a count.
    // Drained once every dead letter is in the dead-letter queue: an empty queue alone still
    // leaves the last prefetched messages in flight, and a stop then would return them to it.
    // (Declared as the worker declares it, durable: never a `NOT_FOUND` closing the channel.)
    let dead_letter_queue = format!("{flooded}.dead_letter");
    let dead_letters = || {
        let (channel, queue) = (channel.clone(), dead_letter_queue.clone());
        async move {
            channel
                .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                .await
                .unwrap()
                .message_count() as usize
        }
    };
    let drained = eventually(Duration::from_secs(300), || async {
        let dead = dead_letters().await;
        (declare(true).await == 0 && dead >= n).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the worker did not drain the flood");
    // An empty queue still has messages in the worker's prefetch: wait until every one was
    // dead-lettered before stopping it.
    let dead_queue = format!("{flooded}{}", events_celery::DEAD_LETTER_SUFFIX);
    let dead_count = || {
        let (channel, dead_queue) = (channel.clone(), dead_queue.clone());
        async move {
            channel
                .queue_declare(
                    dead_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()
                .map(|q| q.message_count() as usize)
        }
    };
    let dead = eventually(Duration::from_secs(60), || async {
        (dead_count().await? >= n).then_some(())
    })
    .await;
    assert!(
        dead.is_some(),
        "not every flooded message was dead-lettered"
    );
    assert!(
        worker.terminate(Duration::from_secs(30)),
        "{}",
        worker.log()
    );
    let log = worker.log();
    let (logged, counted) = dead_letter_lines(&log);
    eprintln!("{n} dead letters: {logged} logged, {counted} counted in summaries");
    assert_eq!(
        logged + counted,
        n as u64,
        "every dead letter is logged or counted"
    );
    assert!(logged < n as u64 / 10, "{logged} lines: not rate-limited");
    let _ = connection.close(200, "done".into()).await;
    forget_run(&run, None).await;
    for queue in [&flooded, &quiet] {
        cleanup_amqp_queue(queue).await;
        cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
    }
}

/// A flood of bad entries (and oversize ones, refused inside Redis) past the dead-letter bound:
/// the list stops at the bound, every dead letter past it is counted as dropped, a record of a
/// refused content type keeps the task and id its headers carry, and the flood's log lines are
/// rate-limited with a count (before: one record and one ERROR line per entry, without bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dead_letters_stay_within_their_bound() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_dl_bound");
    let dead = format!("{queue}.dead_letter");
    let cap = sized(500, 10_000);
    let garbage = sized(3_000, 100_000);
    let oversize = 20;
    let mut connection = redis_at(&url).await;
    // First in line (RPOP takes from the right): a pickled message whose headers say who it is.
    let pickled = serde_json::json!({
        "body": "gASVAAAAAAAAAAA=",
        "content-type": "application/x-python-serialize",
        "content-encoding": "binary",
        "headers": {"lang": "py", "task": "domain_events.fault.tick", "id": "pickled-1"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t1", "priority": 0,
            "delivery_info": {"exchange": "", "routing_key": queue}},
    })
    .to_string();
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(&pickled)
        .query_async(&mut connection)
        .await
        .unwrap();
    flood_redis(&url, &queue, garbage).await;
    let big = vec![b'x'; 4096];
    for _ in 0..oversize {
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(&big)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let mut spec = WorkerSpec::new(&url, &queue);
    spec.max_message_bytes = Some(2048);
    spec.env
        .push(("FAULT_DEAD_LETTER_MAX".to_owned(), cap.to_string()));
    let mut worker = WorkerProcess::start(WORKER, &spec);
    let drained = eventually(Duration::from_secs(300), || async {
        (llen(&url, &queue).await == 0).then_some(())
    })
    .await;
    worker.assert_running();
    assert!(drained.is_some(), "the worker did not drain the flood");
    // Settled: the last messages taken are acknowledged before a graceful stop returns.
    assert!(
        worker.terminate(Duration::from_secs(30)),
        "{}",
        worker.log()
    );
    let log = worker.log();
    let total = garbage + oversize + 1;
    let kept = llen(&url, &dead).await;
    let dropped = stat(&log, "dead_letters_dropped") as usize;
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&dead)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut connection)
        .await
        .unwrap();
    eprintln!(
        "{total} bad entries: {kept} dead-letter records (bound {cap}, {} bytes in Redis), \
         {dropped} dropped, {} log lines ({} bytes)",
        bytes.unwrap_or(0),
        log.lines().count(),
        log.len()
    );
    assert_eq!(kept, cap, "the dead-letter list is not at its bound");
    assert_eq!(
        dropped,
        total - cap,
        "every dead letter past the bound is counted"
    );
    assert_eq!(stat(&log, "dead_lettered") as usize, total);
    // The pickled message (taken first, so within the bound) was refused, but its record
    // keeps the task and id its headers carry.
    let records: Vec<String> = redis::cmd("LRANGE")
        .arg(&dead)
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .unwrap();
    let record = records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .find(|r| r["envelope"].as_str() == Some(pickled.as_str()))
        .expect("the pickled message's record is kept");
    assert_eq!(record["task"], "domain_events.fault.tick", "{record}");
    assert_eq!(record["id"], "pickled-1", "{record}");
    // Rate-limited: a handful of lines per kind per window, and counts for the rest.
    let errors = log.lines().filter(|l| l.contains(" ERROR ")).count();
    assert!(
        errors < total / 10,
        "{errors} ERROR lines for {total} bad entries: not rate-limited"
    );
    let (logged, counted) = dead_letter_lines(&log);
    assert_eq!(
        logged + counted,
        total as u64,
        "every dead letter is logged or counted ({logged} logged, {counted} counted)"
    );
    let full_counted: u64 = log
        .lines()
        .filter(|l| l.contains("dead-letter list full"))
        .filter_map(summarised)
        .sum();
    assert!(full_counted > 0, "the overflow is logged with a count");
    cleanup_redis_queue_at(&url, &queue).await;
}

/// An unreachable Redis (it accepts connections and drops them): the worker's 16 fetchers
/// reconnect through one loop, with backoff — before, each ran its own (16 attempts at once,
/// 112 ERROR lines in 20 s) and `moving due postponed messages failed` was logged 4 times a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_one_reconnect_loop_per_connection() {
    let server = Refusing::start(Duration::from_millis(300)).await;
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    let mut spec = WorkerSpec::new(&url, &unique_queue("fault_unreachable"));
    spec.prefetch = 64; // 16 fetchers
    let started = Instant::now();
    let mut worker = WorkerProcess::start(WORKER, &spec);
    tokio::time::sleep(sized(Duration::from_secs(4), Duration::from_secs(20))).await;
    worker.assert_running();
    worker.terminate(Duration::from_secs(10));
    let elapsed = started.elapsed();
    server.stop();
    let log = worker.log();
    let made = server.made.load(Ordering::SeqCst);
    let most = server.most.load(Ordering::SeqCst);
    let errors = log.lines().filter(|l| l.contains(" ERROR ")).count();
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    let steps = most_attempts(elapsed, spec.reconnect_max_delay);
    eprintln!(
        "{elapsed:?} unreachable: {made} connection attempts, at most {most} at once, {errors} \
         ERROR and {warnings} WARN lines (one loop can make {steps} attempts)"
    );
    // The fetchers' connections, the bookkeeping connection and the control plane's (events
    // and mailbox): three loops at most.
    assert!(
        most <= 3,
        "{most} connection attempts at once: one reconnect loop per fetcher"
    );
    // Fetchers, due-message mover, restorer (every 10 s): each at most one attempt per step.
    assert!(
        made <= 3 * steps,
        "{made} attempts in {elapsed:?}: more than one per backoff step"
    );
    assert!(
        errors <= steps,
        "{errors} ERROR lines in {elapsed:?}: more than one per backoff step:\n{log}"
    );
    assert!(
        warnings <= 2 * steps,
        "{warnings} WARN lines in {elapsed:?}: more than one per backoff step:\n{log}"
    );
    assert!(errors > 0, "the outage was not logged:\n{log}");
}

/// An idle worker with 16 fetchers on its own Redis: how many scripts it runs per second (one
/// poller at most every 50 ms, and the due-message mover every 250 ms), and how long a message
/// pushed to it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idle_worker_polls_once_not_once_per_fetcher() {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let queue = unique_queue("fault_idle");
    let mut spec = WorkerSpec::new(&url, &queue);
    spec.prefetch = 64; // 16 fetchers
    let mut worker = WorkerProcess::start(WORKER, &spec);
    let scripts = || async {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis_at(&url).await)
            .await
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    // Let it settle into idling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, started) = (scripts().await, Instant::now());
    tokio::time::sleep(sized(Duration::from_secs(3), Duration::from_secs(20))).await;
    let calls = scripts().await - before;
    let elapsed = started.elapsed();
    let per_second = calls as f64 / elapsed.as_secs_f64();
    // Latency of a message pushed to the idle worker (reported, not asserted).
    let backend = CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let run = queue.clone();
    let mut waits = Vec::new();
    for seq in 0..sized(5, 20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        backend.send(tick(&backend, &run, seq)).await.unwrap();
        let ran = time_to_run(&run, seq as usize, sent).await;
        waits.push(ran.expect("a message pushed to the idle worker never ran"));
    }
    worker.assert_running();
    worker.terminate(Duration::from_secs(10));
    waits.sort();
    eprintln!(
        "idle: {calls} script calls in {elapsed:?} ({per_second:.1}/s); pushed message ran \
         after {:?} (median of {}) to {:?} (max)",
        waits[waits.len() / 2],
        waits.len(),
        waits[waits.len() - 1]
    );
    // Pauses never end early: one poller (every 50 ms once warmed up, a few quicker polls
    // before) and one mover (every 250 ms) make at most this many calls.
    let most = elapsed.as_secs_f64() / 0.05 + elapsed.as_secs_f64() / 0.25 + 16.0;
    assert!(
        (calls as f64) <= most,
        "{calls} script calls in {elapsed:?} while idle: more than one poller"
    );
    forget_run(&run, None).await;
}
