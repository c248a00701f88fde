//! End-to-end tests over fixtures written in each sender's documented payload shape.

use std::collections::HashMap;

use base64::Engine as _;
use forge_server::hooks::{
    Commit, Event, Forge, HookError, Push, RegistryPush, delivery_id, has_keyword, parse,
    parse_registry, verify,
};
use sha2::{Digest, Sha256};

const SECRET: &[u8] = b"s3cr3t-forge-hook-key";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../testdata/serve/hooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A header lookup over lowercase names, as the caller is expected to provide.
fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

/// HMAC-SHA256 written out from RFC 2104 over plain SHA-256, independent of the `hmac` crate.
fn rfc2104_hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    outer.into()
}

fn github_sig(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(rfc2104_hmac_sha256(secret, body)))
}

fn gitee_sig(secret: &[u8], timestamp: &str) -> String {
    let mut msg = timestamp.as_bytes().to_vec();
    msg.push(b'\n');
    msg.extend_from_slice(secret);
    base64::engine::general_purpose::STANDARD.encode(rfc2104_hmac_sha256(secret, &msg))
}

fn flip_one_byte(body: &[u8]) -> Vec<u8> {
    let mut changed = body.to_vec();
    // Change one digit inside the first commit id so the JSON stays valid.
    let at = changed.windows(7).position(|w| w == b"\"after\"").unwrap() + 12;
    changed[at] = if changed[at] == b'1' { b'2' } else { b'1' };
    assert_ne!(changed, body);
    changed
}

// ---------------------------------------------------------------- signatures

#[test]
fn github_documented_vector() {
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        github_sig(b"It's a Secret to Everybody", b"Hello, World!"),
        expected
    );
    let h = headers(&[("x-hub-signature-256", expected)]);
    assert_eq!(
        verify(
            Forge::GitHub,
            &h,
            b"Hello, World!",
            b"It's a Secret to Everybody"
        ),
        Ok(())
    );
    assert_eq!(
        verify(
            Forge::GitHub,
            &h,
            b"Hello, World?",
            b"It's a Secret to Everybody"
        ),
        Err(HookError::BadSignature)
    );
}

#[test]
fn github_signature() {
    let body = fixture("github_push.json");
    let sig = github_sig(SECRET, &body);
    let h = headers(&[("x-hub-signature-256", &sig)]);
    assert_eq!(verify(Forge::GitHub, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::GitHub, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::GitHub, &h, &flip_one_byte(&body), SECRET),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::GitHub, &headers(&[]), &body, SECRET),
        Err(HookError::Unsigned)
    );
    // The legacy SHA-1 header alone is not accepted as a signature.
    let sha1_only = headers(&[(
        "x-hub-signature",
        "sha1=0123456789abcdef0123456789abcdef01234567",
    )]);
    assert_eq!(
        verify(Forge::GitHub, &sha1_only, &body, SECRET),
        Err(HookError::Unsigned)
    );
    // Malformed values are wrong signatures, not crashes.
    let bare_hex = sig.trim_start_matches("sha256=").to_string();
    for bad in [bare_hex.as_str(), "sha256=zz", "sha256=", "sha1=abcd"] {
        let h = headers(&[("x-hub-signature-256", bad)]);
        assert_eq!(
            verify(Forge::GitHub, &h, &body, SECRET),
            Err(HookError::BadSignature),
            "{bad}"
        );
    }
}

#[test]
fn gitea_signature_both_headers() {
    let body = fixture("gitea_push.json");
    let sig = github_sig(SECRET, &body);
    let bare = sig.trim_start_matches("sha256=").to_string();

    let h = headers(&[("x-gitea-signature", &bare)]);
    assert_eq!(verify(Forge::Gitea, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitea, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::Gitea, &h, &flip_one_byte(&body), SECRET),
        Err(HookError::BadSignature)
    );

    let hub = headers(&[("x-hub-signature-256", &sig)]);
    assert_eq!(verify(Forge::Gitea, &hub, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitea, &hub, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );

    // As Gitea really sends them: both at once.
    let both = headers(&[("x-gitea-signature", &bare), ("x-hub-signature-256", &sig)]);
    assert_eq!(verify(Forge::Gitea, &both, &body, SECRET), Ok(()));

    assert_eq!(
        verify(Forge::Gitea, &headers(&[]), &body, SECRET),
        Err(HookError::Unsigned)
    );
}

#[test]
fn gitlab_token() {
    let body = fixture("gitlab_push.json");
    let secret = std::str::from_utf8(SECRET).unwrap();
    let h = headers(&[("x-gitlab-token", secret)]);
    assert_eq!(verify(Forge::GitLab, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::GitLab, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );
    let near = headers(&[("x-gitlab-token", "s3cr3t-forge-hook-kez")]);
    assert_eq!(
        verify(Forge::GitLab, &near, &body, SECRET),
        Err(HookError::BadSignature)
    );
    let prefix = headers(&[("x-gitlab-token", "s3cr3t")]);
    assert_eq!(
        verify(Forge::GitLab, &prefix, &body, SECRET),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::GitLab, &headers(&[]), &body, SECRET),
        Err(HookError::Unsigned)
    );
}

#[test]
fn gitee_password_and_signature_modes() {
    let body = fixture("gitee_push.json");
    let ts = "1764820922371";
    let password = std::str::from_utf8(SECRET).unwrap();

    // Password mode.
    let h = headers(&[("x-gitee-token", password), ("x-gitee-timestamp", ts)]);
    assert_eq!(verify(Forge::Gitee, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitee, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );

    // Signature mode, plain base64 as Gitee sends it.
    let sign = gitee_sig(SECRET, ts);
    let h = headers(&[("x-gitee-token", &sign), ("x-gitee-timestamp", ts)]);
    assert_eq!(verify(Forge::Gitee, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitee, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );

    // Signature mode, URL-encoded as Gitee's docs describe the final step.
    let encoded = sign
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let h = headers(&[("x-gitee-token", &encoded), ("x-gitee-timestamp", ts)]);
    assert_eq!(verify(Forge::Gitee, &h, &body, SECRET), Ok(()));

    // A signature made for another timestamp, or with no timestamp, is refused.
    let h = headers(&[
        ("x-gitee-token", &sign),
        ("x-gitee-timestamp", "1764820922372"),
    ]);
    assert_eq!(
        verify(Forge::Gitee, &h, &body, SECRET),
        Err(HookError::BadSignature)
    );
    let h = headers(&[("x-gitee-token", &sign)]);
    assert_eq!(
        verify(Forge::Gitee, &h, &body, SECRET),
        Err(HookError::BadSignature)
    );

    assert_eq!(
        verify(
            Forge::Gitee,
            &headers(&[("x-gitee-timestamp", ts)]),
            &body,
            SECRET
        ),
        Err(HookError::Unsigned)
    );
}

#[test]
fn empty_secret_never_verifies() {
    let body = fixture("github_push.json");
    let h = headers(&[
        ("x-hub-signature-256", &github_sig(b"", &body)),
        ("x-gitlab-token", ""),
        ("x-gitee-token", "x"),
    ]);
    assert_eq!(
        verify(Forge::GitHub, &h, &body, b""),
        Err(HookError::BadSignature)
    );
    // A blank token header counts as no header.
    assert_eq!(
        verify(Forge::GitLab, &h, &body, b""),
        Err(HookError::Unsigned)
    );
    assert_eq!(
        verify(Forge::Gitee, &h, &body, b""),
        Err(HookError::BadSignature)
    );
}

// ---------------------------------------------------------------- parsing

fn ev(forge: Forge, event_header: (&str, &str), file: &str) -> Result<Event, HookError> {
    parse(forge, &headers(&[event_header]), &fixture(file))
}

fn expect_push(event: Result<Event, HookError>) -> Push {
    match event {
        Ok(Event::Push(p)) => p,
        other => panic!("expected a push, got {other:?}"),
    }
}

#[test]
fn github_push_and_tag() {
    let p = expect_push(ev(
        Forge::GitHub,
        ("x-github-event", "push"),
        "github_push.json",
    ));
    assert_eq!(p.branch, "main");
    assert_eq!(p.after, "164619398564e61f53bb5689112cb1be8d98567f");
    assert_eq!(p.commits.len(), 2);
    assert_eq!(
        p.commits[0],
        Commit {
            id: "4bcd59207db9fd1fb722f6347cf6c162fbc88483".into(),
            message: "Pin busybox to 1.37.0".into()
        }
    );
    assert_eq!(
        p.clone_urls,
        vec![
            "https://github.com/forge-test/busybox-image.git",
            "git@github.com:forge-test/busybox-image.git"
        ]
    );

    // Annotated tag: `after` is the tag object, head_commit the commit it names.
    match ev(Forge::GitHub, ("x-github-event", "push"), "github_tag.json") {
        Ok(Event::Tag(t)) => {
            assert_eq!(t.tag, "v1.2.0");
            assert_eq!(t.commit, "164619398564e61f53bb5689112cb1be8d98567f");
        }
        other => panic!("{other:?}"),
    }
}

/// `payload=<JSON>` as a form encodes it: every byte but letters and digits as `%XX` (a valid
/// encoding, written here rather than taken from the decoder's crate).
fn form_encoded(json: &[u8]) -> Vec<u8> {
    let mut out = b"payload=".to_vec();
    for &b in json {
        if b.is_ascii_alphanumeric() {
            out.push(b);
        } else {
            out.extend(format!("%{b:02X}").bytes());
        }
    }
    out
}

/// A hook whose content type is `application/x-www-form-urlencoded` (GitHub's preselected one;
/// Gitea offers it too) sends the JSON as the form's `payload` field, signed as sent.
#[test]
fn form_encoded_deliveries_are_read_from_their_payload_field() {
    const FORM: &str = "application/x-www-form-urlencoded";
    let json = fixture("github_push.json");
    let body = form_encoded(&json);
    let sig = github_sig(SECRET, &body);
    let h = headers(&[
        ("x-github-event", "push"),
        ("content-type", FORM),
        ("x-hub-signature-256", &sig),
    ]);
    assert_eq!(verify(Forge::GitHub, &h, &body, SECRET), Ok(()));
    let from_form = expect_push(parse(Forge::GitHub, &h, &body));
    let from_json = expect_push(ev(
        Forge::GitHub,
        ("x-github-event", "push"),
        "github_push.json",
    ));
    assert_eq!(from_form, from_json);
    let ping = form_encoded(&fixture("github_ping.json"));
    let h = headers(&[("x-github-event", "ping"), ("content-type", FORM)]);
    assert_eq!(parse(Forge::GitHub, &h, &ping), Ok(Event::Ping));
    let gitea = form_encoded(&fixture("gitea_push.json"));
    let h = headers(&[("x-gitea-event", "push"), ("content-type", FORM)]);
    let from_form = expect_push(parse(Forge::Gitea, &h, &gitea));
    let from_json = expect_push(ev(
        Forge::Gitea,
        ("x-gitea-event", "push"),
        "gitea_push.json",
    ));
    assert_eq!(from_form, from_json);
    // A form without the field says so.
    let h = headers(&[("x-github-event", "push"), ("content-type", FORM)]);
    match parse(Forge::GitHub, &h, b"other=1") {
        Err(HookError::BadPayload(m)) => assert!(m.contains("payload"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn github_ping_deletion_and_other_events() {
    assert_eq!(
        ev(
            Forge::GitHub,
            ("x-github-event", "ping"),
            "github_ping.json"
        ),
        Ok(Event::Ping)
    );
    assert_eq!(
        ev(
            Forge::GitHub,
            ("x-github-event", "push"),
            "github_branch_delete.json"
        ),
        Ok(Event::Ignored("branch deleted".into()))
    );
    assert_eq!(
        ev(
            Forge::GitHub,
            ("x-github-event", "issues"),
            "github_ping.json"
        ),
        Ok(Event::Ignored("issues".into()))
    );
    // A deleted tag: the tag payload with deleted=true and a zero `after`.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("github_tag.json")).unwrap();
    v["deleted"] = true.into();
    v["after"] = "0000000000000000000000000000000000000000".into();
    v["head_commit"] = serde_json::Value::Null;
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        parse(
            Forge::GitHub,
            &headers(&[("x-github-event", "push")]),
            &body
        ),
        Ok(Event::Ignored("tag deleted".into()))
    );
}

#[test]
fn gitlab_push_and_tag() {
    let p = expect_push(ev(
        Forge::GitLab,
        ("x-gitlab-event", "Push Hook"),
        "gitlab_push.json",
    ));
    assert_eq!(p.branch, "release/2.x");
    assert_eq!(p.after, "3a60d4075f22dcfda12167067e1559155c9a74e0");
    assert_eq!(p.commits.len(), 2);
    assert_eq!(p.commits[0].id, "8344c72bf7398f0b01f466d715fb9d26e5cf0165");
    assert_eq!(p.commits[0].message, "Bump debian to trixie-20261120\n");
    assert_eq!(
        p.clone_urls,
        vec![
            "https://gitlab.example.org/platform/base-images.git",
            "git@gitlab.example.org:platform/base-images.git"
        ]
    );

    match ev(
        Forge::GitLab,
        ("x-gitlab-event", "Tag Push Hook"),
        "gitlab_tag.json",
    ) {
        Ok(Event::Tag(t)) => {
            assert_eq!(t.tag, "v2.4.1");
            // checkout_sha (the commit), not `after` (the annotated tag object).
            assert_eq!(t.commit, "3a60d4075f22dcfda12167067e1559155c9a74e0");
        }
        other => panic!("{other:?}"),
    }

    // A system hook carrying a push is parsed like a push.
    let p = expect_push(ev(
        Forge::GitLab,
        ("x-gitlab-event", "System Hook"),
        "gitlab_push.json",
    ));
    assert_eq!(p.branch, "release/2.x");

    assert_eq!(
        ev(
            Forge::GitLab,
            ("x-gitlab-event", "Merge Request Hook"),
            "gitlab_push.json"
        ),
        Ok(Event::Ignored("Merge Request Hook".into()))
    );

    // Branch deletion as GitLab sends it: zero `after`, null checkout_sha.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("gitlab_push.json")).unwrap();
    v["after"] = "0000000000000000000000000000000000000000".into();
    v["checkout_sha"] = serde_json::Value::Null;
    v["commits"] = serde_json::json!([]);
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        parse(
            Forge::GitLab,
            &headers(&[("x-gitlab-event", "Push Hook")]),
            &body
        ),
        Ok(Event::Ignored("branch deleted".into()))
    );
}

#[test]
fn gitea_push_tag_test_delivery_and_create() {
    let p = expect_push(ev(
        Forge::Gitea,
        ("x-gitea-event", "push"),
        "gitea_push.json",
    ));
    assert_eq!(p.branch, "main");
    assert_eq!(p.after, "b6f6a6ff5bec159b08bae02ea44d5930834ac7fd");
    assert_eq!(p.commits.len(), 1);
    assert_eq!(
        p.commits[0].message,
        "Add jq and yq to the toolbox @deploy\n"
    );
    assert_eq!(
        p.clone_urls,
        vec![
            "https://git.example.net/ops/alpine-tools.git",
            "ssh://git@git.example.net:2222/ops/alpine-tools.git"
        ]
    );

    match ev(Forge::Gitea, ("x-gitea-event", "push"), "gitea_tag.json") {
        Ok(Event::Tag(t)) => {
            assert_eq!(t.tag, "v0.9.0");
            assert_eq!(t.commit, "b6f6a6ff5bec159b08bae02ea44d5930834ac7fd");
        }
        other => panic!("{other:?}"),
    }

    // "Test Delivery": before == after.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("gitea_push.json")).unwrap();
    v["before"] = v["after"].clone();
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        parse(Forge::Gitea, &headers(&[("x-gitea-event", "push")]), &body),
        Ok(Event::Ping)
    );

    assert_eq!(
        ev(Forge::Gitea, ("x-gitea-event", "create"), "gitea_tag.json"),
        Ok(Event::Ignored("create".into()))
    );
}

#[test]
fn gitee_push_and_tag() {
    let p = expect_push(ev(
        Forge::Gitee,
        ("x-gitee-event", "Push Hook"),
        "gitee_push.json",
    ));
    assert_eq!(p.branch, "master");
    assert_eq!(p.after, "40f9f2bdf32606e3b87e69fd205506f1f626f8fb");
    assert_eq!(p.commits.len(), 1);
    assert_eq!(p.commits[0].message, "更新 nginx 到 1.27.3，[@deploy]");
    assert_eq!(
        p.clone_urls,
        vec![
            "https://gitee.com/zhoulei/nginx-image.git",
            "git@gitee.com:zhoulei/nginx-image.git"
        ]
    );

    match ev(
        Forge::Gitee,
        ("x-gitee-event", "Tag Push Hook"),
        "gitee_tag.json",
    ) {
        Ok(Event::Tag(t)) => {
            assert_eq!(t.tag, "v1.27.3");
            assert_eq!(t.commit, "40f9f2bdf32606e3b87e69fd205506f1f626f8fb");
        }
        other => panic!("{other:?}"),
    }

    // Without the header, the body's hook_name decides.
    let p = expect_push(parse(
        Forge::Gitee,
        &headers(&[]),
        &fixture("gitee_push.json"),
    ));
    assert_eq!(p.branch, "master");

    assert_eq!(
        ev(
            Forge::Gitee,
            ("x-gitee-event", "Issue Hook"),
            "gitee_push.json"
        ),
        Ok(Event::Ignored("Issue Hook".into()))
    );

    let mut v: serde_json::Value = serde_json::from_slice(&fixture("gitee_push.json")).unwrap();
    v["deleted"] = true.into();
    v["after"] = "0000000000000000000000000000000000000000".into();
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        parse(
            Forge::Gitee,
            &headers(&[("x-gitee-event", "Push Hook")]),
            &body
        ),
        Ok(Event::Ignored("branch deleted".into()))
    );
}

#[test]
fn bad_payloads_name_what_is_missing() {
    let push = headers(&[("x-github-event", "push")]);
    let err = |r: Result<Event, HookError>| match r {
        Err(HookError::BadPayload(m)) => m,
        other => panic!("expected BadPayload, got {other:?}"),
    };
    assert!(err(parse(Forge::GitHub, &push, b"not json")).contains("not JSON"));
    assert!(err(parse(Forge::GitHub, &push, b"[1,2]")).contains("not a JSON object"));
    assert!(err(parse(Forge::GitHub, &push, br#"{"after":"x"}"#)).contains("`ref`"));
    assert!(err(parse(Forge::GitHub, &push, br#"{"ref":"refs/heads/main"}"#)).contains("`after`"));
    assert!(
        err(parse(
            Forge::GitHub,
            &push,
            br#"{"ref":"refs/heads/main","after":"HEAD"}"#
        ))
        .contains("not a full commit id")
    );
    let no_message = format!(
        r#"{{"ref":"refs/heads/main","after":"{}","commits":[{{"id":"{}"}}]}}"#,
        "a".repeat(40),
        "a".repeat(40)
    );
    assert!(err(parse(Forge::GitHub, &push, no_message.as_bytes())).contains("commits[0]"));
    assert!(err(parse(Forge::GitHub, &headers(&[]), b"{}")).contains("X-GitHub-Event"));
    assert!(err(parse(Forge::GitLab, &headers(&[]), b"{}")).contains("X-Gitlab-Event"));
}

// ---------------------------------------------------------------- keywords

#[test]
fn keywords_in_fixture_pushes() {
    let gh = expect_push(ev(
        Forge::GitHub,
        ("x-github-event", "push"),
        "github_push.json",
    ));
    assert!(has_keyword(&gh, "@deploy"));
    // GitLab's push only says "@deployer".
    let gl = expect_push(ev(
        Forge::GitLab,
        ("x-gitlab-event", "Push Hook"),
        "gitlab_push.json",
    ));
    assert!(!has_keyword(&gl, "@deploy"));
    assert!(has_keyword(&gl, "@deployer"));
    let gt = expect_push(ev(
        Forge::Gitea,
        ("x-gitea-event", "push"),
        "gitea_push.json",
    ));
    assert!(has_keyword(&gt, "@deploy"));
    let ge = expect_push(ev(
        Forge::Gitee,
        ("x-gitee-event", "Push Hook"),
        "gitee_push.json",
    ));
    assert!(has_keyword(&ge, "@deploy"));
}

#[test]
fn keyword_word_boundaries() {
    let push = |msgs: &[&str]| Push {
        branch: "main".into(),
        after: "a".repeat(40),
        commits: msgs
            .iter()
            .map(|m| Commit {
                id: "b".repeat(40),
                message: (*m).into(),
            })
            .collect(),
        clone_urls: vec![],
    };
    for yes in [
        "@deploy",
        "ship it @deploy",
        "@deploy!",
        "x\n@deploy\ny",
        "(@deploy)",
        "@deploy, please",
        "\t@deploy.",
    ] {
        assert!(has_keyword(&push(&[yes]), "@deploy"), "{yes:?}");
    }
    for no in [
        "@deployer",
        "@deploy_all",
        "@deploy2",
        "user@deploy",
        "no keyword",
        "@Deploy",
    ] {
        assert!(!has_keyword(&push(&[no]), "@deploy"), "{no:?}");
    }
    assert!(has_keyword(&push(&["nothing", "later @deploy"]), "@deploy"));
    assert!(!has_keyword(&push(&[]), "@deploy"));
    assert!(!has_keyword(&push(&["@deploy"]), ""));
}

// ---------------------------------------------------------------- delivery ids

#[test]
fn delivery_ids() {
    let h = headers(&[("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
    assert_eq!(
        delivery_id(Forge::GitHub, &h).as_deref(),
        Some("github:72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );

    let h = headers(&[
        ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("x-github-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
    ]);
    assert_eq!(
        delivery_id(Forge::Gitea, &h).as_deref(),
        Some("gitea:f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );

    // GitLab 17.4+: Idempotency-Key wins; older: X-Gitlab-Event-UUID; never the per-hook UUID.
    let new = headers(&[
        ("idempotency-key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        (
            "x-gitlab-event-uuid",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
        (
            "x-gitlab-webhook-uuid",
            "02affd2d-2cba-4033-917d-ec22d5dc4b38",
        ),
    ]);
    assert_eq!(
        delivery_id(Forge::GitLab, &new).as_deref(),
        Some("gitlab:f5e5f430-f57b-4e6e-9fac-d9128cd7232f")
    );
    let old = headers(&[(
        "x-gitlab-event-uuid",
        "13792a34-cac6-4fda-95a8-c58e00a3954e",
    )]);
    assert_eq!(
        delivery_id(Forge::GitLab, &old).as_deref(),
        Some("gitlab:13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    let hook_only = headers(&[(
        "x-gitlab-webhook-uuid",
        "02affd2d-2cba-4033-917d-ec22d5dc4b38",
    )]);
    assert_eq!(delivery_id(Forge::GitLab, &hook_only), None);

    // Gitee: timestamp plus a fingerprint of the token, never the token itself.
    let h = headers(&[
        ("x-gitee-timestamp", "1764820922371"),
        ("x-gitee-token", "my-password"),
    ]);
    let id = delivery_id(Forge::Gitee, &h).unwrap();
    assert!(id.starts_with("gitee:1764820922371:"), "{id}");
    assert!(!id.contains("my-password"));
    let other_ts = headers(&[
        ("x-gitee-timestamp", "1764820922372"),
        ("x-gitee-token", "my-password"),
    ]);
    assert_ne!(delivery_id(Forge::Gitee, &other_ts).unwrap(), id);
    assert_eq!(
        delivery_id(Forge::Gitee, &headers(&[("x-gitee-timestamp", "1")])),
        None
    );

    // The same raw id from two forges never collides; a missing id is None.
    let same = headers(&[("x-github-delivery", "abc"), ("x-gitea-delivery", "abc")]);
    assert_ne!(
        delivery_id(Forge::GitHub, &same),
        delivery_id(Forge::Gitea, &same)
    );
    for forge in [Forge::GitHub, Forge::GitLab, Forge::Gitea, Forge::Gitee] {
        assert_eq!(delivery_id(forge, &headers(&[])), None);
    }
}

#[test]
fn path_segments() {
    assert_eq!(Forge::from_path_segment("github"), Some(Forge::GitHub));
    assert_eq!(Forge::from_path_segment("gitlab"), Some(Forge::GitLab));
    assert_eq!(Forge::from_path_segment("gitea"), Some(Forge::Gitea));
    assert_eq!(Forge::from_path_segment("gitee"), Some(Forge::Gitee));
    assert_eq!(Forge::from_path_segment("GitHub"), None);
    assert_eq!(Forge::from_path_segment("bitbucket"), None);
}

// ---------------------------------------------------------------- registries

#[test]
fn distribution_envelope_counts_manifest_pushes_only() {
    let pushes = parse_registry(&fixture("distribution_events.json")).unwrap();
    assert_eq!(
        pushes,
        vec![RegistryPush {
            repository: "forge-test/busybox".into(),
            host: Some("127.0.0.1:5000".into()),
            tag: Some("1.37.0".into()),
            digest: Some(
                "sha256:787ef550715e5bd549f6e1eb2919fa99e8feca879149a3d9ec485b1af794a76f".into()
            ),
        }]
    );
}

#[test]
fn distribution_push_by_digest_and_unknown_manifest_type() {
    let body = br#"{"events":[
      {"id":"1","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","digest":"sha256:aa","repository":"library/debian","url":"https://r.example/v2/library/debian/manifests/sha256:aa"},"request":{"host":"r.example"}},
      {"id":"2","action":"push","target":{"mediaType":"application/vnd.example.custom.manifest+json","digest":"sha256:bb","repository":"x/y","url":"https://r.example/v2/x/y/manifests/sha256:bb"}},
      {"id":"3","action":"push","target":{"mediaType":"application/octet-stream","digest":"sha256:cc","repository":"x/y","url":"https://r.example/v2/x/y/blobs/sha256:cc"}},
      {"id":"4","action":"mount","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:dd","repository":"x/y"}}
    ]}"#;
    let pushes = parse_registry(body).unwrap();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0].repository, "library/debian");
    assert_eq!(pushes[0].host.as_deref(), Some("r.example"));
    assert_eq!(pushes[0].tag, None);
    assert_eq!(pushes[1].repository, "x/y");
    assert_eq!(pushes[1].host, None);
}

#[test]
fn docker_hub_push() {
    let pushes = parse_registry(&fixture("dockerhub_push.json")).unwrap();
    assert_eq!(
        pushes,
        vec![RegistryPush {
            repository: "forgetest/busybox".into(),
            host: Some("docker.io".into()),
            tag: Some("1.37.0".into()),
            digest: None,
        }]
    );
}

#[test]
fn registry_bad_payloads() {
    for body in [
        &b"nope"[..],
        b"{}",
        br#"{"events":{}}"#,
        br#"{"push_data":{"tag":"x"}}"#,
    ] {
        assert!(
            matches!(parse_registry(body), Err(HookError::BadPayload(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let no_repo = br#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa"}}]}"#;
    match parse_registry(no_repo) {
        Err(HookError::BadPayload(m)) => assert!(m.contains("repository"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_registry(br#"{"events":[]}"#), Ok(vec![]));
}

/// GitHub's push fixture changed by `edit`, parsed.
fn github_push_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Event, HookError> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("github_push.json")).unwrap();
    edit(&mut v);
    let body = serde_json::to_vec(&v).unwrap();
    parse(
        Forge::GitHub,
        &headers(&[("x-github-event", "push")]),
        &body,
    )
}

/// GitHub's push of a branch made at an existing commit (`created: true`, or a reset back to one)
/// lists no `commits` but still gives the head in `head_commit`: its message is what `[skip ci]`
/// and the keyword are read from.
#[test]
fn a_push_listing_no_commits_is_read_by_its_head_commit() {
    let p = expect_push(github_push_edited(|v| {
        v["created"] = true.into();
        v["commits"] = serde_json::json!([]);
        v["head_commit"]["message"] = "Release notes only [skip ci] @deploy".into();
    }));
    assert_eq!(
        p.commits,
        vec![Commit {
            id: "164619398564e61f53bb5689112cb1be8d98567f".into(),
            message: "Release notes only [skip ci] @deploy".into()
        }]
    );
    assert!(forge_server::hooks::skips_ci(&p));
    assert!(has_keyword(&p, "@deploy"));
    // Listed already: not twice.
    assert_eq!(expect_push(github_push_edited(|_| {})).commits.len(), 2);
}

/// A ref git would refuse (`git check-ref-format`) comes from no real sender: a control character
/// in a branch would reach the server's log as a line of its own.
#[test]
fn a_ref_name_git_refuses_is_a_bad_payload() {
    for bad in [
        "refs/heads/x\npassed app #999",
        "refs/heads/a\u{1b}[2Jb",
        "refs/heads/../../etc",
        "refs/heads/a..b",
        "refs/tags/v1\u{0}",
        "refs/heads/a b:c",
    ] {
        match github_push_edited(|v| v["ref"] = bad.into()) {
            Err(HookError::BadPayload(m)) => assert!(m.contains("not a name git allows"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Names git takes stay taken.
    for good in [
        "refs/heads/feature/x-1_2",
        "refs/tags/v1.2.0-rc.1",
        "refs/heads/ünï",
    ] {
        let event = github_push_edited(|v| v["ref"] = good.into());
        assert!(
            matches!(event, Ok(Event::Push(_) | Event::Tag(_))),
            "{good}: {event:?}"
        );
    }
}

/// Gogs (and a Gitea or Forgejo hook of the "Gogs" type) signs with `X-Gogs-Signature`, the same
/// hex HMAC-SHA256 of the body.
#[test]
fn gogs_signature() {
    let body = fixture("gitea_push.json");
    let bare = github_sig(SECRET, &body)
        .trim_start_matches("sha256=")
        .to_string();
    let h = headers(&[("x-gogs-event", "push"), ("x-gogs-signature", &bare)]);
    assert_eq!(verify(Forge::Gitea, &h, &body, SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitea, &h, &body, b"wrong-secret"),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::Gitea, &h, &flip_one_byte(&body), SECRET),
        Err(HookError::BadSignature)
    );
}
