//! Fault scenario 6, security: passwords never reach logs or errors (captured at TRACE level);
//! TLS URLs (`amqps://`, `rediss://`) are accepted and really use TLS (a plain port fails the
//! handshake — never a silent downgrade); a message over the size limit is dead-lettered
//! before it is decoded. (Only JSON is ever deserialised: see the pickle, yaml and msgpack
//! cases of `fault_bad_input.rs`.)

use std::sync::{Mutex, Once};
use std::time::Duration;

use events_celery::{BrokerUrl, CeleryBackend, CeleryConfig, Worker, WorkerConfig};
use events_core::{Backend, domain_event, handler};
use tests::fault::{
    Counts, PrivateRedis, Published, WorkerProcess, WorkerSpec, cleanup_redis_queue_at, command,
    dead_letter_reasons, fault_redis_url, forget_run, process_memory, rabbitmqctl, rust_count,
    tick,
};
use tests::{InProcessWorker, amqp_url, cleanup_amqp_queue, eventually, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

/// Everything logged in this test binary, at every level.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static CAPTURE: Once = Once::new();

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    CAPTURE.call_once(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// Fails if `secret` appears in the captured logs or in `texts`.
fn assert_secret_kept(secret: &str, texts: &[String]) {
    let logs = logs();
    assert!(
        !logs.is_empty(),
        "nothing was logged: the test proves nothing"
    );
    if let Some(at) = logs.find(secret) {
        let start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
        panic!("the password was logged: {}", &logs[start..end]);
    }
    for text in texts {
        assert!(!text.contains(secret), "the password is in: {text}");
    }
}

#[domain_event(name = "fault.secure")]
#[derive(Debug, Clone)]
struct Secure {
    run: String,
    filler: String,
}

static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[handler]
fn secure(event: &Secure) {
    RAN.lock().unwrap().push(event.run.clone());
}

fn ran(run: &str) -> usize {
    RAN.lock().unwrap().iter().filter(|r| *r == run).count()
}

/// Publishes one event and runs a worker until it ran; returns what could leak: errors and
/// `Debug` output.
async fn round_trip(url: &str) -> Vec<String> {
    let queue = unique_queue("fault_secure");
    let config = CeleryConfig::new(url).unwrap().default_queue(&queue);
    let mut texts = vec![format!("{config:?}")];
    let backend = CeleryBackend::connect(config).await.unwrap();
    texts.push(backend.describe());
    backend
        .publish(&Secure {
            run: queue.clone(),
            filler: String::new(),
        })
        .await
        .unwrap();
    let config = WorkerConfig::new(url).unwrap().queues([queue.clone()]);
    texts.push(format!("{config:?}"));
    let worker = InProcessWorker::start(config);
    let done_running = eventually(Duration::from_secs(20), || async {
        (ran(&queue) == 1).then_some(())
    })
    .await;
    assert!(done_running.is_some(), "the event did not run");
    worker.stop().await;
    if url.starts_with("amqp") {
        cleanup_amqp_queue(&queue).await;
    }
    texts
}

/// What connecting to `url` says when it fails, and what a worker logs trying for a while.
async fn failing(url: &str) -> Vec<String> {
    let config = CeleryConfig::new(url)
        .unwrap()
        .publish_timeout(Duration::from_secs(3));
    let mut texts = vec![format!("{config:?}")];
    let Err(error) = CeleryBackend::connect(config).await else {
        panic!("connecting to {} must fail", BrokerUrl::parse(url).unwrap());
    };
    texts.push(error.to_string());
    texts.push(format!("{error:?}"));
    let worker = Worker::new(
        WorkerConfig::new(url)
            .unwrap()
            .queues([unique_queue("fault_secure")])
            .reconnect_max_delay(Duration::from_millis(200)),
    )
    .unwrap();
    let result = worker
        .run_until(tokio::time::sleep(Duration::from_millis(1500)))
        .await;
    texts.push(format!("{result:?}"));
    texts
}

/// A RabbitMQ user with a password of its own, deleted when dropped.
struct RabbitUser(&'static str);

impl RabbitUser {
    fn create(name: &'static str, password: &str) -> Self {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", name])
            .output();
        rabbitmqctl(&["add_user", name, password]);
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        Self(name)
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_passwords_are_never_logged() {
    capture_logs();
    let secret = "S3cr3t-amqp-Pw";
    let _user = RabbitUser::create("fault_secure_user", secret);
    let url = format!("amqp://fault_secure_user:{secret}@127.0.0.1:5672//");
    let mut texts = round_trip(&url).await;
    // Wrong password on the real broker, and a closed port.
    texts.extend(
        failing(&format!(
            "amqp://fault_secure_user:{secret}-wrong@127.0.0.1:5672//"
        ))
        .await,
    );
    texts.extend(failing(&format!("amqp://fault_secure_user:{secret}@127.0.0.1:1//")).await);
    assert_secret_kept(secret, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passwords_are_never_logged() {
    capture_logs();
    let secret = "S3cr3t-redis-Pw";
    let redis = PrivateRedis::start_with_password(Some(secret));
    let mut texts = round_trip(&redis.url()).await;
    let wrong = redis.url().replace(secret, &format!("{secret}-wrong"));
    texts.extend(failing(&wrong).await);
    texts.extend(failing(&format!("redis://:{secret}@127.0.0.1:1/0")).await);
    texts.extend(failing(&format!("redis://user:{secret}@127.0.0.1:1/0")).await);
    assert_secret_kept(secret, &texts);
}

/// What a client sends first to a listener of ours: a TLS client sends a handshake record
/// (`0x16 0x03 …`), a plain one `AMQP\0…` or a RESP command.
async fn first_bytes(scheme: &str) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match scheme {
        "amqps" => format!("amqps://guest:guest@127.0.0.1:{port}//"),
        _ => format!("rediss://127.0.0.1:{port}/0"),
    };
    let accept = std::thread::spawn(move || {
        use std::io::Read;
        let (mut socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut first = vec![0u8; 3];
        socket.read_exact(&mut first).unwrap();
        first
    });
    let config = CeleryConfig::new(&url)
        .unwrap()
        .publish_timeout(Duration::from_secs(3));
    let error = CeleryBackend::connect(config).await.err();
    assert!(
        error.is_some(),
        "{url} connected to a listener that never answers"
    );
    accept.join().unwrap()
}

/// `amqps://` and `rediss://` parse as TLS URLs, open TLS connections (the first bytes on the
/// wire are a TLS handshake record), and fail — never fall back to plain text — against a
/// plain-text broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_urls_use_tls() {
    capture_logs();
    for scheme in ["amqps", "rediss"] {
        let first = first_bytes(scheme).await;
        assert_eq!(
            &first[..2],
            &[0x16, 0x03],
            "{scheme}: not a TLS handshake: {first:?}"
        );
    }
    for (url, plain) in [
        ("amqps://guest:guest@127.0.0.1:5672//", amqp_url()),
        ("rediss://127.0.0.1:6379/0", fault_redis_url()),
    ] {
        assert!(BrokerUrl::parse(url).unwrap().is_tls(), "{url}");
        assert!(!BrokerUrl::parse(&plain).unwrap().is_tls());
        let config = CeleryConfig::new(url)
            .unwrap()
            .publish_timeout(Duration::from_secs(3));
        let error = CeleryBackend::connect(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} connected to a plain-text port"));
        // RabbitMQ answers the ClientHello with its protocol header (a TLS error here); Redis
        // waits for a command line that never comes (a time-out).
        eprintln!("{url}: {error}");
    }
}

async fn size_limit(url: &str) -> (String, Vec<String>) {
    let queue = unique_queue("fault_size");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    for filler in ["x".repeat(64 * 1024), String::new()] {
        backend
            .publish(&Secure {
                run: run.clone(),
                filler,
            })
            .await
            .unwrap();
    }
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(1)
            .max_message_bytes(16 * 1024),
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            (ran(&run) == 1).then_some(())
        })
        .await
        .is_some()
    );
    let reasons: Vec<String> = eventually(Duration::from_secs(20), || async {
        let reasons = dead_letter_reasons(url, &queue).await?;
        (!reasons.is_empty()).then_some(reasons)
    })
    .await
    .expect("the big message was dead-lettered");
    worker.stop().await;
    assert_eq!(ran(&run), 1, "the big message ran");
    (queue, reasons)
}

/// A message over `WorkerConfig::max_message_bytes` is dead-lettered as too large, never
/// decoded; the small one after it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_is_enforced_before_decoding() {
    capture_logs();
    for (broker, url) in [("Redis", fault_redis_url()), ("RabbitMQ", amqp_url())] {
        let (queue, reasons) = size_limit(&url).await;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("is over the 16384-byte limit"),
            "{broker}: {reasons:?}"
        );
        let mut published = Published::default();
        published.confirmed.extend([0, 1]);
        Counts::new(
            &format!("6. size limit, {broker}"),
            "a 64 KiB event then a small one, worker limit 16 KiB: the big one dead-lettered \
             (\"over the 16384-byte limit\", never decoded), the small one ran",
            &published,
            &[(0, 1), (1, 1)].into_iter().collect(),
            &command("fault_security", "size_limit_is_enforced_before_decoding"),
        )
        .report();
        if broker == "Redis" {
            cleanup_redis_queue_at(&url, &queue).await;
        } else {
            cleanup_amqp_queue(&queue).await;
            cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
        }
    }
}

/// Generated passwords hold any character. Unencoded in a URL, each is either read as URL
/// parsers read it (`@`, `:`, `%`, spaces, unicode) or refused because it moves the end of the
/// host part (`/`, `?`, `#`); either way it never appears in an error, a `Debug` form or a log
/// line — the publisher's errors, the worker's `worker starting` line and its reconnect
/// errors. Percent-encoded, each one logs in to RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_passwords_are_never_shown() {
    capture_logs();
    let odd = [
        "pa/ss",
        "p@ss",
        "p:ss",
        "p#ss",
        "p?ss",
        "p%ss",
        "p%2Fss",
        "p ss",
        "pässwörd",
        "a/b@c",
        "x?y=z&w",
        "//@@::",
    ];
    let mut texts = Vec::new();
    for password in odd {
        // Marked at both ends: neither end may show.
        let secret = format!("Zq7{password}Zq7");
        for base in [
            "amqp://fault_odd_user:{}@127.0.0.1:1//",
            "redis://user:{}@127.0.0.1:1/0",
            "redis://:{}@127.0.0.1:1/0",
        ] {
            let url = base.replace("{}", &secret);
            let config = match CeleryConfig::new(&url) {
                Ok(config) => config.publish_timeout(Duration::from_secs(2)),
                Err(refused) => {
                    texts.push(format!("{refused} {refused:?}"));
                    assert!(
                        password.contains(['/', '?', '#']),
                        "{password:?} refused: {refused}"
                    );
                    continue;
                }
            };
            texts.push(format!("{config:?}"));
            let Err(error) = CeleryBackend::connect(config).await else {
                panic!("nothing listens on port 1");
            };
            texts.push(format!("{error} {error:?}"));
            let worker = Worker::new(
                WorkerConfig::new(&url)
                    .unwrap()
                    .queues([unique_queue("fault_odd")])
                    .reconnect_max_delay(Duration::from_millis(100)),
            )
            .unwrap();
            let result = worker
                .run_until(tokio::time::sleep(Duration::from_millis(300)))
                .await;
            texts.push(format!("{result:?}"));
        }
    }
    assert!(logs().contains("worker starting"), "the worker logged");
    assert_secret_kept("Zq7", &texts);

    // Percent-encoded, the same passwords log in.
    let encoded = |p: &str| {
        p.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    for password in ["pa/ss", "p@ss:#?", "pässwörd %"] {
        let _user = RabbitUser::create("fault_odd_user", password);
        let url = format!(
            "amqp://fault_odd_user:{}@127.0.0.1:5672//",
            encoded(password)
        );
        round_trip(&url).await;
    }
}

/// A CA file that cannot be read is named, on both brokers (RabbitMQ used to report only an
/// untrusted certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_named() {
    for url in [
        "amqps://guest:guest@127.0.0.1:5671//",
        "rediss://127.0.0.1:6380/0",
    ] {
        let mut spec = WorkerSpec::new(url, &unique_queue("fault_cafile"));
        spec.env
            .push(("SSL_CERT_FILE".into(), "/nonexistent/ca-bundle.pem".into()));
        let mut worker = WorkerProcess::start(WORKER, &spec);
        let said = eventually(Duration::from_secs(20), || {
            let log = worker.log();
            async move {
                log.contains(
                    "SSL_CERT_FILE names `/nonexistent/ca-bundle.pem`, which cannot be read",
                )
                .then_some(())
            }
        })
        .await;
        worker.assert_running();
        assert!(
            said.is_some(),
            "{url}: the missing file is not named:\n{}",
            worker.log()
        );
    }
}

#[domain_event(name = "fault.echo")]
#[derive(Debug, Clone)]
struct Echo {
    text: String,
}

/// Fails with the event's own text: a handler error quoting what the message held.
#[handler(max_retries = 0)]
fn echo(event: &Echo) -> Result<(), std::io::Error> {
    Err(std::io::Error::other(format!("refused {}", event.text)))
}

/// What a log line forged inside a message looks like.
const FORGED: &str = "2026-12-01T00:00:00.000000Z  INFO FORGED: admin logged in";

/// A message whose content type, task name, id and payload each carry a newline, a carriage
/// return, an ANSI escape or a Unicode line separator followed by a fake log line: every log
/// line and dead-letter reason stays one line (the fake one never starts a line), on both
/// brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_forges_a_log_line() {
    use base64::Engine as _;
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    capture_logs();
    let breaks = ["\n", "\r\n", "\r", "\u{1b}[2K\r", "\u{2028}", "\u{85}"];
    let body = |text: &str| {
        serde_json::to_vec(&serde_json::json!([[], {"payload": {"text": text}}, {}])).unwrap()
    };
    for url in [amqp_url(), fault_redis_url()] {
        let queue = unique_queue("fault_forge");
        // (content type, task, id, payload text)
        let mut messages = Vec::new();
        for b in breaks {
            let forged = format!("{b}{FORGED}");
            let task = "domain_events.fault.echo".to_owned();
            let id = uuid::Uuid::new_v4().to_string();
            messages.push((
                format!("application/json{forged}"),
                task.clone(),
                id.clone(),
                "x".to_owned(),
            ));
            messages.push((
                "application/json".to_owned(),
                format!("{task}{forged}"),
                id.clone(),
                "x".to_owned(),
            ));
            messages.push((
                "application/json".to_owned(),
                task.clone(),
                format!("{id}{forged}"),
                "x".to_owned(),
            ));
            messages.push((
                "application/json".to_owned(),
                task,
                id,
                format!("payload{forged}"),
            ));
        }
        if url.starts_with("amqp") {
            let (connection, channel) = tests::amqp_channel().await;
            channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            for (content_type, task, id, text) in &messages {
                let mut headers = FieldTable::default();
                headers.insert("task".into(), AMQPValue::LongString(task.as_str().into()));
                headers.insert("id".into(), AMQPValue::LongString(id.as_str().into()));
                let properties = lapin::BasicProperties::default()
                    .with_content_type(content_type.as_str().into())
                    .with_content_encoding("utf-8".into())
                    .with_headers(headers);
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body(text),
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            let _ = connection.close(200, "done".into()).await;
        } else {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut redis = client.get_multiplexed_async_connection().await.unwrap();
            for (content_type, task, id, text) in &messages {
                let envelope = serde_json::json!({
                    "body": base64::engine::general_purpose::STANDARD.encode(body(text)),
                    "content-type": content_type, "content-encoding": "utf-8",
                    "headers": {"task": task, "id": id},
                    "properties": {
                        "delivery_info": {"exchange": "", "routing_key": queue},
                        "priority": 0, "body_encoding": "base64",
                        "delivery_tag": uuid::Uuid::new_v4().to_string()
                    }
                });
                redis::cmd("LPUSH")
                    .arg(&queue)
                    .arg(envelope.to_string())
                    .exec_async(&mut redis)
                    .await
                    .unwrap();
            }
        }
        let worker =
            InProcessWorker::start(WorkerConfig::new(&url).unwrap().queues([queue.clone()]));
        let reasons = eventually(Duration::from_secs(30), || async {
            dead_letter_reasons(&url, &queue)
                .await
                .filter(|r| r.len() >= messages.len())
        })
        .await
        .unwrap_or_else(|| panic!("{url}: not every message was dead-lettered"));
        worker.stop().await;
        for reason in &reasons {
            assert!(
                !reason.contains(['\n', '\r', '\u{1b}', '\u{2028}', '\u{85}']),
                "{reason:?}"
            );
        }
        if url.starts_with("amqp") {
            cleanup_amqp_queue(&queue).await;
            cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
        } else {
            cleanup_redis_queue_at(&url, &queue).await;
        }
    }
    let logs = logs();
    let mut seen = 0;
    for line in logs.split(['\n', '\r', '\u{2028}', '\u{85}']) {
        if line.contains("FORGED") {
            seen += 1;
            assert!(
                !line
                    .trim_start_matches('\u{1b}')
                    .starts_with("2026-12-01T00:00:00"),
                "a forged line: {line:?}"
            );
        }
    }
    assert!(
        seen > 0,
        "the hostile text was never logged: the test proves nothing"
    );
}

/// Item: a stream of envelopes over the size limit never reaches the worker. A `fault_worker`
/// process (limit 1 MiB) gets bursts of 3 oversize envelopes (quick: 2 bursts of 17 MB; full: 5
/// of 70 MB) — a kombu envelope padded with a big header, bytes that are no JSON with quotes,
/// backslashes, control characters and multi-byte UTF-8, and a second padded envelope. Each is
/// dead-lettered with its size as the reason and its bytes kept exactly; the worker's resident
/// memory, sampled from `/proc/<pid>/status` all along, grows by less than half of one envelope
/// (before, each was read whole: one 17 MB envelope took the worker to 204 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_oversize_stream_stays_out_of_the_worker() {
    const LIMIT: usize = 1024 * 1024;
    let size: usize = tests::fault::sized(17_000_000, 70_000_000);
    let bursts: u64 = tests::fault::sized(2, 5);
    let url = fault_redis_url();
    let queue = unique_queue("fault_oversize");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap();
    let spec = WorkerSpec {
        max_message_bytes: Some(LIMIT),
        ..WorkerSpec::new(&url, &queue)
    };
    let mut worker = WorkerProcess::start(env!("CARGO_BIN_EXE_fault_worker"), &spec);
    let ran = |n: usize| {
        let run = run.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                (rust_count(&run).await >= n).then_some(())
            })
            .await
            .is_some()
        }
    };
    backend.send(tick(&backend, &run, 0)).await.unwrap();
    assert!(
        ran(1).await,
        "the first message did not run:\n{}",
        worker.log()
    );
    let (rss_before, peak_before) = worker.memory();
    let pid = worker.id();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut highest = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                highest = highest.max(process_memory(pid).0);
                std::thread::sleep(Duration::from_millis(5));
            }
            highest
        })
    };
    let padded = |seq: u64| {
        let mut message = tick(&backend, &run, 1000 + seq);
        let bare = message.to_redis().unwrap().envelope.len();
        let pad = size - bare - r#", "x-pad": """#.len();
        message
            .headers
            .custom
            .push(("x-pad".into(), serde_json::json!("p".repeat(pad)).into()));
        let envelope = message.to_redis().unwrap().envelope.into_bytes();
        assert_eq!(envelope.len(), size);
        envelope
    };
    let hostile: Vec<u8> = "\"\\\u{0}\u{1}\n\t\u{1f}é€🦀 "
        .bytes()
        .cycle()
        .take(size)
        .collect();
    let dead = format!("{queue}.dead_letter");
    let mut checked = 0;
    for burst in 0..bursts {
        let envelopes = [padded(burst * 2), hostile.clone(), padded(burst * 2 + 1)];
        for envelope in &envelopes {
            let _: () = redis::cmd("LPUSH")
                .arg(&queue)
                .arg(envelope)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        let records: Vec<Vec<u8>> = eventually(Duration::from_secs(60), || {
            let (mut connection, dead) = (connection.clone(), dead.clone());
            async move {
                let n: usize = redis::cmd("LLEN")
                    .arg(&dead)
                    .query_async(&mut connection)
                    .await
                    .ok()?;
                if n < 3 {
                    return None;
                }
                redis::cmd("LPOP")
                    .arg(&dead)
                    .arg(3)
                    .query_async(&mut connection)
                    .await
                    .ok()
            }
        })
        .await
        .unwrap_or_else(|| panic!("3 dead letters expected:\n{}", worker.log()));
        for record in records {
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
            let reason = record["reason"].as_str().unwrap();
            assert!(
                reason.contains(&format!(
                    "message of {size} bytes is over the {LIMIT}-byte limit"
                )),
                "{reason}"
            );
            assert_eq!(record["queue"], queue.as_str());
            let kept = record["envelope"].as_str().unwrap().as_bytes();
            assert!(
                envelopes.iter().any(|e| e == kept),
                "the dead letter does not hold the envelope byte for byte"
            );
            checked += 1;
        }
        worker.assert_running();
    }
    backend.send(tick(&backend, &run, 1)).await.unwrap();
    assert!(
        ran(2).await,
        "the last message did not run:\n{}",
        worker.log()
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let highest = sampler.join().unwrap();
    let (rss_after, peak_after) = worker.memory();
    assert!(
        worker.terminate(Duration::from_secs(15)),
        "{}",
        worker.log()
    );
    cleanup_redis_queue_at(&url, &queue).await;
    forget_run(&run, None).await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let numbers = format!(
        "{checked} envelopes of {size} bytes: worker RSS {:.1} MiB before, highest sampled \
         {:.1} MiB, {:.1} MiB after; peak (VmHWM) {:.1} -> {:.1} MiB",
        mib(rss_before),
        mib(highest),
        mib(rss_after),
        mib(peak_before),
        mib(peak_after)
    );
    eprintln!("{numbers}");
    let bound = size as u64 / 2;
    assert!(
        peak_after.saturating_sub(peak_before) < bound
            && highest.saturating_sub(rss_before) < bound,
        "the worker's memory grew by half an envelope or more: {numbers}"
    );
    let mut published = Published::default();
    published.confirmed.extend(0..checked + 2);
    Counts::new(
        "6. size limit, Redis, a stream of oversize envelopes",
        &format!(
            "limit 1 MiB, {bursts} bursts of 3 envelopes of {size} bytes, then a small one: \
             each dead-lettered inside the take script, its bytes kept; {numbers}"
        ),
        &published,
        &(0..checked + 2).map(|i| (i, 1)).collect(),
        &command(
            "fault_security",
            "redis_oversize_stream_stays_out_of_the_worker",
        ),
    )
    .report();
}
