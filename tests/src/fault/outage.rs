//! Broker control: RabbitMQ stopped and started again (`rabbitmqctl stop_app`/`start_app`), and
//! a private persistent `redis-server` that can be shut down and restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `rabbitmqctl` with `args`; panics with its output if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let mut command = Command::new("rabbitmqctl");
    command.args(args);
    let output = crate::output_within(command, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// RabbitMQ stopped with `rabbitmqctl stop_app` (durable queues and persistent messages are
/// kept); started again by [`end`](Self::end), or when dropped — so a failing test never
/// leaves the shared broker down.
#[derive(Debug)]
pub struct RabbitOutage {
    down: bool,
}

impl RabbitOutage {
    /// Stops the RabbitMQ application.
    pub fn begin() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self { down: true }
    }

    /// Starts it again and waits until it is up.
    pub fn end(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if self.down {
            self.down = false;
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup", "--timeout", "120"]);
            wait_port(5672, Duration::from_secs(60));
        }
    }
}

impl Drop for RabbitOutage {
    fn drop(&mut self) {
        self.start();
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !port_open(port) {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of the test's own, on a free port, persisting every write before it
/// replies (`--appendonly yes --appendfsync always`), so it can be restarted without losing
/// what it confirmed. (The shared Redis on 6379 runs without persistence: restarting it
/// would drop every queued message by design.) Killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// Starts one that requires `password` (`--requirepass`).
    pub fn start_with_password(password: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "fault-redis-{port}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("create the redis directory");
        let mut redis = Self {
            port,
            dir,
            password: password.map(str::to_owned),
            child: None,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (it must be installed)");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(20));
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL (database 0).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `redis-cli shutdown` (its own command: the append-only file is flushed), then waits
    /// for the process to exit.
    pub fn shutdown(&mut self) {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let status = command.arg("shutdown").output().expect("run redis-cli");
        let _ = status;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("redis-server on port {} did not shut down", self.port);
        }
    }

    /// Starts it again on the same port and directory (it reloads the append-only file).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "shut it down first");
        self.launch();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
