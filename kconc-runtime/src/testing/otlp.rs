//! A minimal OTLP/HTTP receiver (the `otel` feature), for tests and
//! benchmarks of a program that exports: it answers every request with
//! 200 and keeps what it was sent.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Each request's path and body, in order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver listening on a thread of its own until the
/// process ends (see [`OtlpReceiver::start`]).
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Received,
    keep: bool,
}

impl OtlpReceiver {
    /// Listens on `addr` (`127.0.0.1:0` for a free port). With `keep`, it
    /// keeps each request's path and body ([`OtlpReceiver::bodies`]);
    /// without, it only reads them (a sink for a benchmark).
    pub fn start(addr: &str, keep: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let receiver = OtlpReceiver {
            addr: listener.local_addr()?,
            received: Arc::default(),
            keep,
        };
        let serving = receiver.clone();
        std::thread::Builder::new()
            .name("kconc-otlp-receiver".to_owned())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let connection = serving.clone();
                    let _ = std::thread::Builder::new()
                        .name("kconc-otlp-connection".to_owned())
                        .spawn(move || connection.serve(stream));
                }
            })?;
        Ok(receiver)
    }

    /// Where it listens: `http://{addr}` is the exporter's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bodies of every request to `path` (`/v1/traces`,
    /// `/v1/metrics`) received so far, in order.
    pub fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .map(|r| r.iter().filter(|(p, _)| p == path).map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// Serves one connection's requests (HTTP/1.1, kept alive) until it
    /// closes or sends what it cannot read.
    fn serve(&self, stream: TcpStream) {
        let Ok(read_half) = stream.try_clone() else { return };
        let mut reader = BufReader::new(read_half);
        let mut stream = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            if self.keep {
                if let Ok(mut received) = self.received.lock() {
                    received.push((path, body));
                }
            }
            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}
