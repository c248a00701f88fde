//! Forge payloads to [`Event`]s.

use serde_json::Value;

use crate::hooks::verify::header_value;
use crate::hooks::{Commit, Event, Forge, HookError, Push, TagPush};

fn bad(msg: impl Into<String>) -> HookError {
    HookError::BadPayload(msg.into())
}

/// Parses the body as a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<Value, HookError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(bad("body is not a JSON object"))
    }
}

/// The JSON of a delivery: the body itself, or, when the hook's content type is
/// `application/x-www-form-urlencoded` (GitHub's preselected one; Gitea and Gogs offer it too),
/// its `payload` field. The signature is of the body as sent, and was checked before this.
fn form_payload<'a>(
    header: &dyn Fn(&str) -> Option<String>,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, HookError> {
    let form = header_value(header, "content-type").is_some_and(|t| {
        t.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if !form {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned().into_bytes()))
        .ok_or_else(|| bad("a form-encoded delivery without a `payload` field"))
}

/// A required string field.
fn req_str<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, HookError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{what} has no string field `{key}`")))
}

/// An optional, non-empty string field.
fn opt_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A full git object id: 40 (SHA-1) or 64 (SHA-256) hex digits.
fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_zero_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// Which peeled-commit field a forge's push payload carries.
#[derive(Clone, Copy)]
enum Peel {
    /// `head_commit.id` (GitHub, Gitea, Gitee).
    HeadCommit,
    /// `checkout_sha` (GitLab).
    CheckoutSha,
}

/// Which event the delivery carries; see the crate docs for each forge's header.
///
/// * A push of `refs/heads/*` is [`Event::Push`]; of `refs/tags/*` is [`Event::Tag`]; a push
///   that deletes its ref (`deleted: true` or `after` all zeros) is `Ignored("branch deleted")`
///   or `Ignored("tag deleted")`; pushes to other refs are `Ignored("push to <ref>")`.
/// * GitHub `X-GitHub-Event`: `ping` is [`Event::Ping`], `push` as above, others ignored
///   (including `create`, which GitHub sends besides the push of a new tag).
/// * GitLab `X-Gitlab-Event`: `Push Hook`, `Tag Push Hook`, and `System Hook` whose
///   `object_kind` is `push`/`tag_push`; others ignored.
/// * Gitea `X-Gitea-Event`: `push` (a tag push also arrives as `push` with `refs/tags/*`; the
///   extra `create` event is ignored so a tag builds once). A push whose `before` equals its
///   non-zero `after` is the "Test Delivery" button (real pushes always move the ref): [`Event::Ping`].
/// * Gitee `X-Gitee-Event`: `Push Hook`, `Tag Push Hook`; others ignored.
pub fn parse(
    forge: Forge,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<Event, HookError> {
    match forge {
        Forge::GitHub => {
            let body = &form_payload(header, body)?;
            let event = header_value(header, "x-github-event")
                .ok_or_else(|| bad("missing X-GitHub-Event header"))?;
            match event.as_str() {
                "ping" => {
                    json_object(body)?;
                    Ok(Event::Ping)
                }
                "push" => push_event(&json_object(body)?, Peel::HeadCommit),
                other => Ok(Event::Ignored(other.to_string())),
            }
        }
        Forge::Gitea => {
            let body = &form_payload(header, body)?;
            let event = header_value(header, "x-gitea-event")
                .or_else(|| header_value(header, "x-gogs-event"))
                .ok_or_else(|| bad("missing X-Gitea-Event header"))?;
            match event.as_str() {
                "push" => {
                    let v = json_object(body)?;
                    let before = opt_str(&v, "before").unwrap_or_default();
                    let after = opt_str(&v, "after").unwrap_or_default();
                    if before == after && !after.is_empty() && !is_zero_id(after) {
                        return Ok(Event::Ping);
                    }
                    push_event(&v, Peel::HeadCommit)
                }
                other => Ok(Event::Ignored(other.to_string())),
            }
        }
        Forge::GitLab => {
            let v = json_object(body)?;
            let event = match header_value(header, "x-gitlab-event") {
                Some(e) => e,
                None => opt_str(&v, "object_kind")
                    .map(str::to_string)
                    .ok_or_else(|| bad("missing X-Gitlab-Event header and `object_kind`"))?,
            };
            match event.as_str() {
                "Push Hook" | "Tag Push Hook" | "push" | "tag_push" => {
                    push_event(&v, Peel::CheckoutSha)
                }
                "System Hook" => {
                    let kind = opt_str(&v, "object_kind")
                        .or_else(|| opt_str(&v, "event_name"))
                        .ok_or_else(|| bad("System Hook body has no `object_kind`"))?;
                    match kind {
                        "push" | "tag_push" => push_event(&v, Peel::CheckoutSha),
                        other => Ok(Event::Ignored(format!("System Hook: {other}"))),
                    }
                }
                other => Ok(Event::Ignored(other.to_string())),
            }
        }
        Forge::Gitee => {
            let v = json_object(body)?;
            let event = match header_value(header, "x-gitee-event") {
                Some(e) => e,
                None => match opt_str(&v, "hook_name") {
                    Some("push_hooks") => "Push Hook".to_string(),
                    Some("tag_push_hooks") => "Tag Push Hook".to_string(),
                    Some(other) => other.to_string(),
                    None => return Err(bad("missing X-Gitee-Event header and `hook_name`")),
                },
            };
            match event.as_str() {
                "Push Hook" | "Tag Push Hook" => push_event(&v, Peel::HeadCommit),
                other => Ok(Event::Ignored(other.to_string())),
            }
        }
    }
}

/// The push shape shared by all four forges: `ref`, `before`, `after`, `commits`, repository URLs.
fn push_event(v: &Value, peel: Peel) -> Result<Event, HookError> {
    let git_ref = req_str(v, "ref", "push payload")?;
    let after = req_str(v, "after", "push payload")?;
    if !is_object_id(after) {
        return Err(bad(format!("`after` is not a full commit id: {after:?}")));
    }
    let deleted = v.get("deleted").and_then(Value::as_bool) == Some(true) || is_zero_id(after);

    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        if tag.is_empty() {
            return Err(bad("`ref` names no tag"));
        }
        valid_ref(git_ref)?;
        if deleted {
            return Ok(Event::Ignored("tag deleted".to_string()));
        }
        let peeled = match peel {
            Peel::HeadCommit => v.get("head_commit").and_then(|c| opt_str(c, "id")),
            Peel::CheckoutSha => opt_str(v, "checkout_sha"),
        };
        let commit = match peeled {
            Some(c) if is_object_id(c) => c,
            Some(c) => return Err(bad(format!("peeled tag commit is not a commit id: {c:?}"))),
            None => after,
        };
        return Ok(Event::Tag(TagPush {
            tag: tag.to_string(),
            commit: commit.to_string(),
        }));
    }

    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return Ok(Event::Ignored(format!("push to {git_ref}")));
    };
    if branch.is_empty() {
        return Err(bad("`ref` names no branch"));
    }
    valid_ref(git_ref)?;
    if deleted {
        return Ok(Event::Ignored("branch deleted".to_string()));
    }

    let mut commits = match v.get("commits") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, c)| commit(c, &format!("commits[{i}]")))
            .collect::<Result<Vec<_>, HookError>>()?,
        Some(_) => return Err(bad("`commits` is not an array")),
    };
    // A branch pushed at a commit it did not make (a new branch from an existing one, a reset)
    // lists no commits, while GitHub, Gitea and Gitee still give the head in `head_commit`: its
    // message is what `[skip ci]` and the keyword are read from, and the build's title.
    if let Peel::HeadCommit = peel
        && let Some(head) = v.get("head_commit").filter(|h| h.is_object())
    {
        let head = commit(head, "head_commit")?;
        if !commits.iter().any(|c| c.id == head.id) {
            commits.push(head);
        }
    }

    Ok(Event::Push(Push {
        branch: branch.to_string(),
        after: after.to_string(),
        commits,
        clone_urls: clone_urls(v),
    }))
}

/// One commit of the payload: its `id` and `message`.
fn commit(c: &Value, what: &str) -> Result<Commit, HookError> {
    Ok(Commit {
        id: req_str(c, "id", what)?.to_string(),
        message: req_str(c, "message", what)?.to_string(),
    })
}

/// Refuses a ref name git itself refuses (`git check-ref-format`: control characters, `..`,
/// `~^:?*[\\`, a component starting with `.` or ending with `.lock`, ...): no real sender pushes
/// one, and its name would reach the server's log and the build's variables as given.
fn valid_ref(git_ref: &str) -> Result<(), HookError> {
    gix::validate::reference::name(git_ref.as_bytes().into())
        .map(|_| ())
        .map_err(|e| bad(format!("`ref` is not a name git allows ({e}): {git_ref:?}")))
}

/// Clone URLs from `repository` (all forges) and `project` (GitLab, Gitee), http first, deduplicated.
fn clone_urls(v: &Value) -> Vec<String> {
    const KEYS: [&str; 4] = ["clone_url", "git_http_url", "ssh_url", "git_ssh_url"];
    let mut out: Vec<String> = Vec::new();
    for holder in ["repository", "project"] {
        let Some(obj) = v.get(holder) else { continue };
        for key in KEYS {
            if let Some(url) = opt_str(obj, key)
                && !out.iter().any(|u| u == url)
            {
                out.push(url.to_string());
            }
        }
    }
    out
}
