//! Sender authentication and delivery ids.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::hooks::{Forge, HookError};

type HmacSha256 = Hmac<Sha256>;

/// A header value, trimmed, or `None` when absent or blank.
pub(crate) fn header_value(header: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    header(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// Checks a hex HMAC-SHA256 of `body` in constant time.
fn check_hex_hmac(secret: &[u8], body: &[u8], hex_sig: &str) -> Result<(), HookError> {
    let given = hex::decode(hex_sig).map_err(|_| HookError::BadSignature)?;
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&given).map_err(|_| HookError::BadSignature)
}

/// Compares two secrets in constant time, hiding their lengths by comparing their SHA-256 digests.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    bool::from(da.as_slice().ct_eq(db.as_slice()))
}

/// Decodes `%XX` escapes (Gitee's docs say the signature is URL-encoded; in practice it arrives plain).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Gitee's signature-mode token: base64(HMAC-SHA256(key = secret, msg = timestamp + "\n" + secret)).
fn gitee_sign(secret: &[u8], timestamp: &str) -> String {
    let mut m = mac(secret);
    m.update(timestamp.as_bytes());
    m.update(b"\n");
    m.update(secret);
    BASE64.encode(m.finalize().into_bytes())
}

/// Checks the request was sent by someone holding `secret`, with constant-time comparisons only.
///
/// * GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`. The legacy
///   SHA-1 `X-Hub-Signature` alone is treated as unsigned.
/// * GitLab: `X-Gitlab-Token` must equal the secret (GitLab does not sign the body).
/// * Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>` (Gogs: `X-Gogs-Signature`), or,
///   when that header is absent, the GitHub-style `X-Hub-Signature-256` that Gitea also sends.
/// * Gitee: `X-Gitee-Token` is either the plain WebHook password, or (signature mode) the
///   base64 HMAC-SHA256 of `X-Gitee-Timestamp + "\n" + secret` keyed by the secret; a
///   URL-encoded value is decoded first. Gitee's signature does not cover the body and its
///   timestamp is not checked here (no clock): refuse repeats with [`delivery_id`] and check
///   the timestamp's age (Gitee allows one hour) in the caller.
///
/// An empty `secret` never verifies (a missing header still reports [`HookError::Unsigned`]).
pub fn verify(
    forge: Forge,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), HookError> {
    match forge {
        Forge::GitHub => {
            let sig = header_value(header, "x-hub-signature-256").ok_or(HookError::Unsigned)?;
            reject_empty(secret)?;
            let hex_sig = sig.strip_prefix("sha256=").ok_or(HookError::BadSignature)?;
            check_hex_hmac(secret, body, hex_sig)
        }
        Forge::Gitea => {
            // Gogs (and a Gitea or Forgejo hook of the "Gogs" type) signs with the same HMAC under
            // its own name.
            if let Some(sig) = header_value(header, "x-gitea-signature")
                .or_else(|| header_value(header, "x-gogs-signature"))
            {
                reject_empty(secret)?;
                check_hex_hmac(secret, body, &sig)
            } else if let Some(sig) = header_value(header, "x-hub-signature-256") {
                reject_empty(secret)?;
                let hex_sig = sig.strip_prefix("sha256=").ok_or(HookError::BadSignature)?;
                check_hex_hmac(secret, body, hex_sig)
            } else {
                Err(HookError::Unsigned)
            }
        }
        Forge::GitLab => {
            let token = header_value(header, "x-gitlab-token").ok_or(HookError::Unsigned)?;
            reject_empty(secret)?;
            if same_secret(token.as_bytes(), secret) {
                Ok(())
            } else {
                Err(HookError::BadSignature)
            }
        }
        Forge::Gitee => {
            let token = header_value(header, "x-gitee-token").ok_or(HookError::Unsigned)?;
            reject_empty(secret)?;
            // Password mode: the token is the password itself.
            let password_ok = same_secret(token.as_bytes(), secret);
            // Signature mode: needs the timestamp the signature was made over.
            let signature_ok = match header_value(header, "x-gitee-timestamp") {
                Some(ts) => {
                    let expected = gitee_sign(secret, &ts);
                    let given = percent_decode(&token).unwrap_or_default();
                    bool::from(given.as_slice().ct_eq(expected.as_bytes()))
                }
                None => false,
            };
            if password_ok | signature_ok {
                Ok(())
            } else {
                Err(HookError::BadSignature)
            }
        }
    }
}

fn reject_empty(secret: &[u8]) -> Result<(), HookError> {
    if secret.is_empty() {
        Err(HookError::BadSignature)
    } else {
        Ok(())
    }
}

/// The id the sender gives this delivery, prefixed with the forge name (`"github:…"`), for refusing replays.
///
/// * GitHub: `X-GitHub-Delivery` (a GUID; a redelivery from the UI reuses it).
/// * Gitea: `X-Gitea-Delivery` (falls back to `X-Gogs-Delivery`, which Gitea sends with the same value).
/// * GitLab: `Idempotency-Key` (GitLab 17.4+, the same across retries of one delivery), else
///   `X-Gitlab-Event-UUID` (GitLab 14.8+). `X-Gitlab-Webhook-UUID` is not used: GitLab's docs
///   describe it as one id per webhook, so it would repeat on every delivery of that hook.
/// * Gitee: Gitee documents no delivery-id header, so the id is built from `X-Gitee-Timestamp`
///   (milliseconds) and a SHA-256 fingerprint of `X-Gitee-Token` (never the token itself, which in
///   password mode is the secret): `"gitee:<timestamp>:<16 hex>"`. Two deliveries of one hook in
///   the same millisecond would share it.
pub fn delivery_id(forge: Forge, header: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let raw = match forge {
        Forge::GitHub => header_value(header, "x-github-delivery")?,
        Forge::Gitea => header_value(header, "x-gitea-delivery")
            .or_else(|| header_value(header, "x-gogs-delivery"))?,
        Forge::GitLab => header_value(header, "idempotency-key")
            .or_else(|| header_value(header, "x-gitlab-event-uuid"))?,
        Forge::Gitee => {
            let ts = header_value(header, "x-gitee-timestamp")?;
            let token = header_value(header, "x-gitee-token")?;
            let fp = hex::encode(&Sha256::digest(token.as_bytes())[..8]);
            format!("{ts}:{fp}")
        }
    };
    if raw.chars().any(char::is_control) {
        return None;
    }
    Some(format!("{}:{raw}", forge.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb%3D").unwrap(), b"a+b=");
        assert_eq!(percent_decode("plain+/=").unwrap(), b"plain+/=");
        assert!(percent_decode("bad%2").is_none());
        assert!(percent_decode("bad%zz").is_none());
    }
}
