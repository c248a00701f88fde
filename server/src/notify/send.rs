//! The senders: a JSON webhook and a plain-SMTP email.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::notify::message::Message;

/// How long one webhook request or one SMTP command may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The webhook could not be reached, or did not answer in time.
    #[error("webhook {url}: {reason}")]
    Webhook {
        /// The URL, without credentials or query.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The webhook answered with a status other than 2xx.
    #[error("webhook {url} answered {status}{}", body_suffix(.body))]
    WebhookStatus {
        /// The URL, without credentials or query.
        url: String,
        /// The status code and reason, like "500 Internal Server Error".
        status: String,
        /// The start of the answer's body, on one line (may be empty).
        body: String,
    },
    /// The mail could not be built (a bad address, no recipient).
    #[error("email via {server}: {reason}")]
    EmailMessage {
        /// host:port of the SMTP server.
        server: String,
        /// What is wrong with the mail.
        reason: String,
    },
    /// The SMTP server could not be reached or refused the mail.
    #[error("email via {server}: {reason}")]
    Email {
        /// host:port of the SMTP server.
        server: String,
        /// What went wrong, with what the server said.
        reason: String,
    },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The URL for error messages: no user:password and no query (where tokens tend to live).
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            if had_query {
                format!("{u}?…")
            } else {
                u.to_string()
            }
        }
        Err(_) => url.to_string(),
    }
}

/// At most `max` characters of a text, on one line.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// POSTs the message's JSON to the URL (Content-Type application/json) with a 10 s timeout.
///
/// A non-2xx answer is an error naming the URL, the status and the start of the body. The URL in
/// errors loses any user:password and query; a token in its path (as Slack's) is kept. The
/// client is the caller's: with reqwest's `rustls-no-provider`, building one needs a rustls
/// crypto provider installed first, even for plain http.
pub async fn send_webhook(
    client: &reqwest::Client,
    url: &str,
    msg: &Message,
) -> Result<(), NotifyError> {
    let failed = |e: reqwest::Error| NotifyError::Webhook {
        url: display_url(url),
        reason: forge_snapshotter::error_text::one_line(&e.without_url()),
    };
    let body = serde_json::to_vec(&msg.json).expect("a serde_json::Value always serializes");
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(NotifyError::WebhookStatus {
        url: display_url(url),
        status: status.to_string(),
        body: one_line(&body, 200),
    })
}

/// Where and how to send email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// The SMTP server's host name or address.
    pub host: String,
    /// Its port (25 or 587 usually; plain SMTP either way).
    pub port: u16,
    /// The sender, like "forge <ci@example.com>".
    pub from: String,
    /// The recipients; at least one.
    pub to: Vec<String>,
    /// Login name, when the server wants AUTH (PLAIN or LOGIN).
    pub username: Option<String>,
    /// Password for `username`; empty when absent.
    pub password: Option<String>,
}

/// Sends a plain-text mail with the message's subject and text over plain SMTP.
///
/// TLS is not offered yet (no STARTTLS, no SMTPS): the server is assumed local or trusted, and a
/// username/password goes over the wire in the clear. Each SMTP step has a 10 s timeout. Errors
/// name host:port and what the server said.
pub async fn send_email(smtp: &Smtp, msg: &Message) -> Result<(), NotifyError> {
    let server = format!("{}:{}", smtp.host, smtp.port);
    let bad = |reason: String| NotifyError::EmailMessage {
        server: server.clone(),
        reason,
    };
    let mailbox = |text: &str| -> Result<Mailbox, NotifyError> {
        text.trim()
            .parse()
            .map_err(|e| bad(format!("bad address {text:?}: {e}")))
    };
    if smtp.to.is_empty() {
        return Err(bad("no recipient".into()));
    }
    let mut builder = lettre::Message::builder()
        .from(mailbox(&smtp.from)?)
        .subject(msg.subject.as_str())
        .header(ContentType::TEXT_PLAIN);
    for to in &smtp.to {
        builder = builder.to(mailbox(to)?);
    }
    let email = builder
        .body(msg.text.clone())
        .map_err(|e| bad(forge_snapshotter::error_text::one_line(&e)))?;

    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .timeout(Some(TIMEOUT));
    if let Some(user) = &smtp.username {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            smtp.password.clone().unwrap_or_default(),
        ));
    }
    transport
        .build()
        .send(email)
        .await
        .map_err(|e| NotifyError::Email {
            server: server.clone(),
            reason: forge_snapshotter::error_text::one_line(&e),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::{SmtpSink, WebhookReceiver};
    use crate::notify::{Outcome, message, sample_build};

    const WAIT: Duration = Duration::from_secs(5);

    fn client() -> reqwest::Client {
        // reqwest with rustls-no-provider panics building a Client without a provider.
        forge_snapshotter::registry::roots::install_crypto_provider();
        reqwest::Client::new()
    }

    fn msg() -> Message {
        message(&sample_build(), Outcome::Broken, "http://ci.test")
    }

    /// An address on 127.0.0.1 where nothing listens (bound, then released).
    async fn closed_port() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    fn smtp(addr: std::net::SocketAddr) -> Smtp {
        Smtp {
            host: addr.ip().to_string(),
            port: addr.port(),
            from: "forge CI <ci@example.com>".into(),
            to: vec!["dev@example.com".into(), "ops@example.com".into()],
            username: None,
            password: None,
        }
    }

    #[tokio::test]
    async fn webhook_posts_the_json() {
        let (_, hook) = WebhookReceiver::start().await;
        let m = msg();
        send_webhook(&client(), &hook.url("/hooks/forge"), &m)
            .await
            .unwrap();
        let got = hook.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1);
        let req = &got[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/hooks/forge");
        assert_eq!(req.header("Content-Type"), Some("application/json"));
        let body = req.json();
        assert_eq!(body["text"], m.text.as_str());
        assert_eq!(body["outcome"], "broken");
        assert_eq!(body, m.json);
        assert_eq!(hook.bodies(), vec![m.json.clone()]);
    }

    #[tokio::test]
    async fn webhook_non_2xx_is_an_error_naming_url_and_status() {
        let (addr, hook) = WebhookReceiver::start_with_status(500).await;
        let url = hook.url("/hook");
        let err = send_webhook(&client(), &url, &msg()).await.unwrap_err();
        assert!(matches!(err, NotifyError::WebhookStatus { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("http://{addr}/hook")), "{text}");
        assert!(text.contains("500"), "{text}");
        assert!(text.contains("status 500"), "body snippet missing: {text}");
        assert_eq!(hook.received().len(), 1);
    }

    #[tokio::test]
    async fn webhook_unreachable_names_the_url_without_secrets() {
        let addr = closed_port().await;
        let url = format!("http://user:pw@{addr}/hook?token=s3cret");
        let err = send_webhook(&client(), &url, &msg()).await.unwrap_err();
        assert!(matches!(err, NotifyError::Webhook { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("http://{addr}/hook")), "{text}");
        assert!(!text.contains("s3cret") && !text.contains("pw@"), "{text}");
    }

    #[test]
    fn urls_in_errors_lose_credentials_and_query() {
        assert_eq!(
            display_url("https://u:p@hooks.test/a/b?key=k#frag"),
            "https://hooks.test/a/b?…"
        );
        assert_eq!(display_url("http://hooks.test/x"), "http://hooks.test/x");
        assert_eq!(display_url("not a url"), "not a url");
    }

    #[tokio::test]
    async fn email_reaches_the_sink_with_headers_and_text() {
        let (addr, sink) = SmtpSink::start().await;
        let m = msg();
        send_email(&smtp(addr), &m).await.unwrap();
        let mails = sink.wait_for(1, WAIT).await;
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert_eq!(mail.from, "ci@example.com");
        assert_eq!(mail.to, ["dev@example.com", "ops@example.com"]);
        assert_eq!(mail.auth, None);
        let from = mail.header("From").unwrap();
        assert!(from.contains("ci@example.com"), "{from}");
        let to = mail.header("To").unwrap();
        assert!(
            to.contains("dev@example.com") && to.contains("ops@example.com"),
            "{to}"
        );
        assert_eq!(mail.header("Subject").unwrap(), m.subject);
        assert!(
            mail.header("Content-Type")
                .unwrap()
                .starts_with("text/plain")
        );
        // lettre ends DATA with one more CRLF than the text has.
        assert_eq!(mail.body().trim_end(), m.text.trim_end());
    }

    #[tokio::test]
    async fn email_logs_in_when_given_credentials() {
        let (addr, sink) = SmtpSink::start().await;
        let mut s = smtp(addr);
        s.username = Some("ci".into());
        s.password = Some("s3cret".into());
        send_email(&s, &msg()).await.unwrap();
        let mails = sink.wait_for(1, WAIT).await;
        assert_eq!(mails[0].auth, Some(("ci".into(), "s3cret".into())));
    }

    #[tokio::test]
    async fn email_with_non_ascii_and_long_lines_round_trips() {
        let (addr, sink) = SmtpSink::start().await;
        let mut b = sample_build();
        b.message = Some(format!("Corrige le cache — été {}", "x".repeat(120)));
        let m = message(&b, Outcome::StillFailing, "http://ci.test");
        send_email(&smtp(addr), &m).await.unwrap();
        let mails = sink.wait_for(1, WAIT).await;
        assert_eq!(mails[0].body().trim_end(), m.text.trim_end());
    }

    #[tokio::test]
    async fn email_refused_names_server_and_reply() {
        let (addr, _sink) = SmtpSink::start_rejecting_rcpt("550 5.1.1 no such user here").await;
        let err = send_email(&smtp(addr), &msg()).await.unwrap_err();
        assert!(matches!(err, NotifyError::Email { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("no such user here"), "{text}");
    }

    #[tokio::test]
    async fn email_unreachable_names_server() {
        let addr = closed_port().await;
        let err = send_email(&smtp(addr), &msg()).await.unwrap_err();
        assert!(matches!(err, NotifyError::Email { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn email_bad_addresses_are_refused_before_connecting() {
        let addr = closed_port().await;
        let mut s = smtp(addr);
        s.to = vec!["not an address".into()];
        let err = send_email(&s, &msg()).await.unwrap_err();
        assert!(matches!(err, NotifyError::EmailMessage { .. }), "{err:?}");
        assert!(err.to_string().contains("not an address"), "{err}");
        s.to.clear();
        let err = send_email(&s, &msg()).await.unwrap_err();
        assert!(err.to_string().contains("no recipient"), "{err}");
    }
}
