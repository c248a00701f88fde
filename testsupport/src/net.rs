//! Loopback ports for the servers tests start.

use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that nothing listens on now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`; panics naming `what` after
/// `within`.
pub fn wait_listening(port: u16, what: &str, within: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < within,
            "{what} did not listen on 127.0.0.1:{port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
