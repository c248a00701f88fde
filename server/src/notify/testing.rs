//! Test doubles for notification targets: a webhook receiver and an SMTP sink, both listening on
//! 127.0.0.1 at a port the system picks. Built for tests (`cfg(test)` or the `testing` feature).
//!
//! Each double records what it got and stops when dropped. Both are deliberately minimal: one
//! HTTP/1.1 request per connection with a Content-Length body; SMTP without TLS or pipelining.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Waits until `list` has at least `n` entries, polling; panics after `timeout` with what it has.
async fn wait_for<T: Clone + std::fmt::Debug>(
    list: &Mutex<Vec<T>>,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let got = list.lock().unwrap();
            if got.len() >= n {
                return got.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {n} {what}, got {}: {got:#?}",
                    got.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// One HTTP request a [`WebhookReceiver`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// GET, POST...
    pub method: String,
    /// The request target, like "/hook?x=1".
    pub path: String,
    /// Header names in lower case, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as sent.
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An HTTP server that records every request and answers each with a fixed status.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<WebhookRequest>>>,
    task: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts a receiver answering 200 OK; returns its address and itself.
    pub async fn start() -> (SocketAddr, Self) {
        Self::start_with_status(200).await
    }

    /// Starts a receiver answering every request with `status` (like 500).
    pub async fn start_with_status(status: u16) -> (SocketAddr, Self) {
        let (listener, addr) = bind().await;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = serve_http(stream, status, &sink).await;
                });
            }
        });
        (
            addr,
            WebhookReceiver {
                addr,
                requests,
                task,
            },
        )
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT" followed by `path` (which should start with '/').
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests so far.
    pub fn received(&self) -> Vec<WebhookRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The bodies so far, parsed as JSON (panics on one that is not).
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.received().iter().map(WebhookRequest::json).collect()
    }

    /// Waits for at least `n` requests; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<WebhookRequest> {
        wait_for(&self.requests, n, timeout, "webhook requests").await
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http(
    stream: TcpStream,
    status: u16,
    sink: &Mutex<Vec<WebhookRequest>>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    // Recorded before answering, so a sender that got the answer finds its request here.
    sink.lock().unwrap().push(WebhookRequest {
        method,
        path,
        headers,
        body,
    });
    let reply = format!("status {status}\n");
    let head = format!(
        "HTTP/1.1 {status} Test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    );
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// One mail an [`SmtpSink`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpMail {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// (username, password) when the client authenticated (AUTH PLAIN or LOGIN).
    pub auth: Option<(String, String)>,
    /// MAIL FROM address, without the angle brackets.
    pub from: String,
    /// RCPT TO addresses, without the angle brackets.
    pub to: Vec<String>,
    /// The DATA as sent (CRLF line ends), dot-stuffing undone, without the final ".".
    pub data: String,
}

impl SmtpMail {
    /// A header's value (any case of name), continuation lines unfolded; as sent, not decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut fields: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.push_str(line);
                }
            } else {
                fields.push(line.to_string());
            }
        }
        fields.iter().find_map(|f| {
            let (n, v) = f.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body, decoded from quoted-printable or base64 when the mail says so, with "\n" line ends.
    pub fn body(&self) -> String {
        let raw = self
            .data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "quoted-printable" => decode_quoted_printable(raw),
            "base64" => decode_base64(raw),
            _ => raw.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }
}

/// An SMTP server that accepts every mail (or refuses recipients) and records it.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<SmtpMail>>>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Starts a sink accepting every mail; returns its address and itself.
    pub async fn start() -> (SocketAddr, Self) {
        Self::start_inner(None).await
    }

    /// Starts a sink answering every RCPT TO with `reply`, a full SMTP reply like "550 5.1.1 no such user".
    pub async fn start_rejecting_rcpt(reply: &str) -> (SocketAddr, Self) {
        Self::start_inner(Some(reply.to_string())).await
    }

    async fn start_inner(reject_rcpt: Option<String>) -> (SocketAddr, Self) {
        let (listener, addr) = bind().await;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let sink = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                let reject = reject_rcpt.clone();
                tokio::spawn(async move {
                    let _ = serve_smtp(stream, reject.as_deref(), &sink).await;
                });
            }
        });
        (addr, SmtpSink { addr, mails, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mails so far.
    pub fn received(&self) -> Vec<SmtpMail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits for at least `n` mails; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SmtpMail> {
        wait_for(&self.mails, n, timeout, "mails").await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_smtp(
    stream: TcpStream,
    reject_rcpt: Option<&str>,
    sink: &Mutex<Vec<SmtpMail>>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut mail = SmtpMail {
        helo: String::new(),
        auth: None,
        from: String::new(),
        to: Vec::new(),
        data: String::new(),
    };
    say(&mut stream, "220 sink.test ESMTP forge-notify test sink").await?;
    loop {
        let Some(line) = read_line(&mut stream).await? else {
            return Ok(());
        };
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                mail.helo = arg.trim().to_string();
                say(
                    &mut stream,
                    "250-sink.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME",
                )
                .await?;
            }
            "HELO" => {
                mail.helo = arg.trim().to_string();
                say(&mut stream, "250 sink.test").await?;
            }
            "AUTH" => {
                let (mechanism, initial) = arg.split_once(' ').unwrap_or((arg, ""));
                match mechanism.to_ascii_uppercase().as_str() {
                    "PLAIN" => {
                        let answer = if initial.is_empty() {
                            say(&mut stream, "334 ").await?;
                            read_line(&mut stream).await?.unwrap_or_default()
                        } else {
                            initial.to_string()
                        };
                        let decoded = String::from_utf8_lossy(&decode_base64(&answer)).into_owned();
                        let mut parts = decoded.split('\0').skip(1);
                        let user = parts.next().unwrap_or_default().to_string();
                        let pass = parts.next().unwrap_or_default().to_string();
                        mail.auth = Some((user, pass));
                    }
                    "LOGIN" => {
                        say(&mut stream, "334 VXNlcm5hbWU6").await?;
                        let user = read_line(&mut stream).await?.unwrap_or_default();
                        say(&mut stream, "334 UGFzc3dvcmQ6").await?;
                        let pass = read_line(&mut stream).await?.unwrap_or_default();
                        mail.auth = Some((
                            String::from_utf8_lossy(&decode_base64(&user)).into_owned(),
                            String::from_utf8_lossy(&decode_base64(&pass)).into_owned(),
                        ));
                    }
                    _ => {
                        say(&mut stream, "504 5.5.4 unknown mechanism").await?;
                        continue;
                    }
                }
                say(&mut stream, "235 2.7.0 authenticated").await?;
            }
            "MAIL" => {
                mail.from = address(arg);
                mail.to.clear();
                say(&mut stream, "250 2.1.0 ok").await?;
            }
            "RCPT" => match reject_rcpt {
                Some(reply) => say(&mut stream, reply).await?,
                None => {
                    mail.to.push(address(arg));
                    say(&mut stream, "250 2.1.5 ok").await?;
                }
            },
            "DATA" => {
                say(&mut stream, "354 end with <CRLF>.<CRLF>").await?;
                let mut data = String::new();
                loop {
                    let Some(line) = read_line(&mut stream).await? else {
                        return Ok(());
                    };
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push_str("\r\n");
                }
                mail.data = data;
                // Recorded before answering, so a sender that got the 250 finds its mail here.
                sink.lock().unwrap().push(mail.clone());
                mail.from.clear();
                mail.to.clear();
                say(&mut stream, "250 2.0.0 queued").await?;
            }
            "RSET" => {
                mail.from.clear();
                mail.to.clear();
                say(&mut stream, "250 2.0.0 ok").await?;
            }
            "NOOP" => say(&mut stream, "250 2.0.0 ok").await?,
            "QUIT" => {
                say(&mut stream, "221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => say(&mut stream, "502 5.5.2 not implemented").await?,
        }
    }
}

/// Reads one line without its CRLF; `None` at end of stream.
async fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    if stream.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn say(stream: &mut BufReader<TcpStream>, reply: &str) -> std::io::Result<()> {
    let stream = stream.get_mut();
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(b"\r\n").await
}

/// "FROM:<a@b> SIZE=12" -> "a@b".
fn address(arg: &str) -> String {
    let after_colon = arg.split_once(':').map_or(arg, |(_, a)| a).trim();
    let inner = after_colon
        .strip_prefix('<')
        .and_then(|a| a.split_once('>'))
        .map_or(after_colon, |(a, _)| a);
    inner
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().take_while(|c| *c != b'=') {
        let Some(v) = value(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("AHVzZXIAcGFzcw=="), b"\0user\0pass");
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(decode_base64("aGVs\r\nbG8="), b"hello");
    }

    #[test]
    fn quoted_printable() {
        assert_eq!(
            decode_quoted_printable("a=3Db=\r\nc =C3=A9"),
            "a=bc é".as_bytes()
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(address("FROM:<ci@example.com> SIZE=100"), "ci@example.com");
        assert_eq!(address("TO:<dev@example.com>"), "dev@example.com");
        assert_eq!(address("FROM: plain@example.com"), "plain@example.com");
    }

    #[test]
    fn mail_headers_unfold_and_body_decodes() {
        let mail = SmtpMail {
            helo: String::new(),
            auth: None,
            from: String::new(),
            to: vec![],
            data: "Subject: a long\r\n subject\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nline =C3=A9\r\nnext\r\n".into(),
        };
        assert_eq!(mail.header("subject").as_deref(), Some("a long subject"));
        assert_eq!(mail.header("X-None"), None);
        assert_eq!(mail.body(), "line é\nnext\n");
    }
}
