//! A registry's failed answer in words, for pull and push errors: its HTTP status and the codes
//! and messages of its error envelope, instead of the client library's debug-like text.

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};

/// The HTTP status of a failed request. oci-client keeps it for most answers but not for a 4xx
/// whose body is an error envelope; there the status is the one the distribution spec gives the
/// envelope's code (a code the spec does not pin down gives none).
pub(crate) fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        OciDistributionError::RegistryError { envelope, .. } => envelope_status(envelope),
        _ => None,
    }
}

/// The status the distribution spec's error-code table gives the envelope's first code.
fn envelope_status(envelope: &OciEnvelope) -> Option<u16> {
    use OciErrorCode as C;
    match &envelope.errors.first()?.code {
        C::BlobUnknown
        | C::BlobUploadUnknown
        | C::ManifestUnknown
        | C::NameUnknown
        | C::NotFound
        | C::ManifestBlobUnknown => Some(404),
        C::Unauthorized => Some(401),
        C::Denied => Some(403),
        C::Toomanyrequests => Some(429),
        C::Unsupported => Some(405),
        _ => None,
    }
}

/// The answer in words: "status 404 from URL: MANIFEST_UNKNOWN: manifest unknown", or the
/// library's text for an error that is not an answer (a connection that failed, a bad digest).
pub(crate) fn answer_text(e: &OciDistributionError) -> String {
    let status = |s: Option<u16>| match s {
        Some(s) => format!("status {s}"),
        None => "an error".to_string(),
    };
    match e {
        OciDistributionError::RegistryError { envelope, url } => {
            format!(
                "{} from {url}: {}",
                status(envelope_status(envelope)),
                envelope_words(envelope)
            )
        }
        OciDistributionError::ServerError { code, url, message } => {
            if let Ok(envelope) = serde_json::from_str::<OciEnvelope>(message) {
                return format!("status {code} from {url}: {}", envelope_words(&envelope));
            }
            // A body that is not an envelope is often an HTML error page: its first line,
            // bounded, says enough.
            let first = message.trim().lines().next().unwrap_or("").trim();
            let mut said: String = first.chars().take(200).collect();
            if said.len() < first.len() {
                said.push('…');
            }
            if said.is_empty() {
                format!("status {code} from {url}")
            } else {
                format!("status {code} from {url}: {said}")
            }
        }
        OciDistributionError::UnauthorizedError { url } => format!("status 401 from {url}"),
        // No answer at all: reqwest's own text is "error sending request for url (...)"; why
        // (refused, reset, a name that does not resolve, a TLS failure) is in its causes.
        OciDistributionError::RequestError(r) => crate::error_text::one_line(r),
        other => other.to_string(),
    }
}

/// "CODE: message; CODE: message" for each error of an envelope (an empty message is left out).
fn envelope_words(envelope: &OciEnvelope) -> String {
    if envelope.errors.is_empty() {
        return "an empty error list".to_string();
    }
    envelope
        .errors
        .iter()
        .map(|e| {
            let code = match &e.code {
                OciErrorCode::Other(other) => other.clone(),
                known => serde_json::to_value(known)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{known:?}")),
            };
            let message = e.message.trim();
            if message.is_empty() {
                code
            } else {
                format!("{code}: {message}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(body).expect("envelope"),
            url: "http://127.0.0.1:5000/v2/team/app/manifests/1.0".into(),
        }
    }

    #[test]
    fn an_envelope_says_its_codes_and_the_status_the_spec_gives_them() {
        // Distribution's answer to a tag it does not hold.
        let e = envelope(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1.0"}}]}"#,
        );
        assert_eq!(status_of(&e), Some(404));

        assert_eq!(
            answer_text(&e),
            "status 404 from http://127.0.0.1:5000/v2/team/app/manifests/1.0: MANIFEST_UNKNOWN: manifest unknown"
        );
        let denied = envelope(
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
        );
        assert_eq!(status_of(&denied), Some(403));

        // A code the spec does not tie to one status gives none, and its own name.
        let odd = envelope(r#"{"errors":[{"code":"ARTIFACT_LOCKED","message":""}]}"#);
        assert_eq!(status_of(&odd), None);
        assert!(answer_text(&odd).starts_with("an error from "));
        assert!(answer_text(&odd).ends_with(": ARTIFACT_LOCKED"));
    }

    #[test]
    fn an_envelope_with_its_status_keeps_the_status() {
        // forge's own requests keep the status a 4xx came with, and its envelope as the body.
        let e = OciDistributionError::ServerError {
            code: 404,
            url: "http://127.0.0.1:5000/v2/a/blobs/sha256:ab".into(),
            message: r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#.into(),
        };
        assert_eq!(status_of(&e), Some(404));
        assert_eq!(
            answer_text(&e),
            "status 404 from http://127.0.0.1:5000/v2/a/blobs/sha256:ab: BLOB_UNKNOWN: blob unknown to registry"
        );
    }

    #[test]
    fn a_plain_answer_gives_its_status_and_first_line() {
        let e = OciDistributionError::ServerError {
            code: 502,
            url: "http://127.0.0.1:5000/v2/".into(),
            message: "<html>\n<body>Bad Gateway</body></html>".into(),
        };
        assert_eq!(status_of(&e), Some(502));
        assert_eq!(
            answer_text(&e),
            "status 502 from http://127.0.0.1:5000/v2/: <html>"
        );
        let long = OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: "x".repeat(500),
        };
        assert_eq!(status_of(&long), Some(404));
        assert!(answer_text(&long).ends_with('…'));
        assert!(answer_text(&long).len() < 260);
    }
}
