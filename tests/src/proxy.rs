//! A TCP proxy in front of a broker whose connections a test can cut, as a broker restart or a
//! network failure would cut them, without touching the broker the other tests share.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Forwards every connection made to `127.0.0.1:`[`port`](Self::port) to the broker, until
/// [`cut`](Self::cut) closes them all; new connections are forwarded again afterwards.
pub struct CuttableProxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopped: Arc<AtomicBool>,
}

impl CuttableProxy {
    /// A proxy to `upstream` (`host:port`), listening on a free local port.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        {
            let (accepted, open, stopped) = (
                Arc::clone(&accepted),
                Arc::clone(&open),
                Arc::clone(&stopped),
            );
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut kept = open.lock().unwrap();
                    for stream in [&client, &server] {
                        if let Ok(clone) = stream.try_clone() {
                            kept.push(clone);
                        }
                    }
                    drop(kept);
                    pipe(&client, &server);
                    pipe(&server, &client);
                }
            });
        }
        Self {
            port,
            accepted,
            open,
            stopped,
        }
    }

    /// The local port to connect to instead of the broker's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections were forwarded so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every connection forwarded so far, both ways.
    pub fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` into `to` on a thread of its own; closes both when either side ends.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread, which then sees it is stopped.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
