//! Counting handler runs: what the `fault_worker`s (and a Python worker) recorded on the shared
//! Redis for a run, waiting until every confirmed message was processed, and forgetting a run.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Where the handler runs of `run` are counted (a hash: seq → runs), on [`crate::redis_url`].
pub fn runs_key(run: &str) -> String {
    format!("fault:{run}:runs")
}

/// A connection to the Redis the runs are recorded on, with room for big replies.
async fn records() -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(crate::redis_url())
        .expect("valid redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis is running on 127.0.0.1:6379 (scripts/services.sh starts it)")
}

/// The handler runs of `run` recorded by `fault_worker`s: seq → runs.
pub async fn rust_runs(run: &str) -> HashMap<u64, u64> {
    let raw: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(runs_key(run))
        .query_async(&mut records().await)
        .await
        .expect("HGETALL");
    raw.into_iter()
        .map(|(seq, n)| (seq.parse().expect("a seq"), n))
        .collect()
}

/// How many distinct messages of `run` the `fault_worker`s processed (cheap: `HLEN`).
pub async fn rust_count(run: &str) -> usize {
    redis::cmd("HLEN")
        .arg(runs_key(run))
        .query_async(&mut records().await)
        .await
        .expect("HLEN")
}

/// The runs of `run` a Python Celery worker (`examples/python/domain_events_app.py`) recorded
/// on `key`: seq → runs.
pub async fn python_runs(key: &str, run: &str) -> HashMap<u64, u64> {
    let mut counts = HashMap::new();
    for record in crate::task_records(key).await {
        if record["payload"]["run"] == run {
            let seq = record["payload"]["seq"].as_u64().expect("a seq");
            *counts.entry(seq).or_insert(0) += 1;
        }
    }
    counts
}

/// Adds `more` runs into `into`.
pub fn merge(into: &mut HashMap<u64, u64>, more: &HashMap<u64, u64>) {
    for (seq, n) in more {
        *into.entry(*seq).or_insert(0) += n;
    }
}

/// Waits until every confirmed message of `run` has been processed (by `fault_worker`s, and
/// by the Python worker recording on `python_key`), for at most `limit`; returns the runs
/// seen then.
pub async fn wait_processed(
    run: &str,
    python_key: Option<&str>,
    confirmed: &BTreeSet<u64>,
    limit: Duration,
) -> HashMap<u64, u64> {
    let deadline = Instant::now() + limit;
    loop {
        // Counting first (cheap), then the full check once the count is there.
        let mut count = rust_count(run).await;
        if let Some(key) = python_key {
            count += python_runs(key, run).await.len();
        }
        if count >= confirmed.len() || Instant::now() >= deadline {
            let runs = all_runs(run, python_key).await;
            if confirmed.iter().all(|seq| runs.contains_key(seq)) || Instant::now() >= deadline {
                return runs;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every recorded run of `run`, Rust and (with a key) Python.
pub async fn all_runs(run: &str, python_key: Option<&str>) -> HashMap<u64, u64> {
    let mut runs = rust_runs(run).await;
    if let Some(key) = python_key {
        merge(&mut runs, &python_runs(key, run).await);
    }
    runs
}

/// Deletes what `run` recorded.
pub async fn forget_run(run: &str, python_key: Option<&str>) {
    let mut connection = crate::redis().await;
    let mut del = redis::cmd("DEL");
    del.arg(runs_key(run));
    if let Some(key) = python_key {
        del.arg(key);
    }
    let _: redis::RedisResult<()> = del.query_async(&mut connection).await;
}
