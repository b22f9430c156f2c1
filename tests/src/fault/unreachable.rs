//! A broker that cannot be reached, for the outage scenarios: a port whose server accepts each
//! connection and closes it, counting the attempts, and how many attempts one reconnect loop
//! with backoff may make in a given time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A server on `127.0.0.1:port` that accepts each connection and closes it after `hold`:
/// every connection attempt fails, and is counted. Stops when dropped.
#[derive(Debug)]
pub struct Refusing {
    /// Its port.
    pub port: u16,
    /// Connection attempts made to it.
    pub made: Arc<AtomicUsize>,
    /// The most connections open at once.
    pub most: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Refusing {
    /// Starts it on a free port (inside a tokio runtime).
    pub async fn start(hold: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let port = listener.local_addr().expect("a bound port").port();
        let made = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let task = {
            let (made, most) = (Arc::clone(&made), Arc::clone(&most));
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    made.fetch_add(1, Ordering::SeqCst);
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let open = Arc::clone(&open);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        drop(socket);
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Self {
            port,
            made,
            most,
            task,
        }
    }

    /// Stops accepting (connections then are refused).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most attempts one loop backing off from 200 ms (×0.75 jitter at least), doubling up
/// to `max`, can make in `elapsed`.
pub fn most_attempts(elapsed: Duration, max: Duration) -> usize {
    let (mut spent, mut delay, mut attempts) = (Duration::ZERO, Duration::from_millis(200), 1);
    loop {
        spent += delay.mul_f64(0.75);
        if spent > elapsed {
            return attempts;
        }
        attempts += 1;
        delay = (delay * 2).min(max);
    }
}
