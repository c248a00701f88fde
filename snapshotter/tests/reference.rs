//! Image reference parsing against the normalisation Docker applies (cases taken from the behaviour
//! distribution/reference's tests pin down: Docker Hub defaults, host detection, tags, digests,
//! invalid names).

use forge_snapshotter::reference::{Reference, ReferenceErrorKind};

const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// (input, normalised string, registry, repository, tag or "" for none); a digest is expected when
/// the normalised string has one.
#[rustfmt::skip]
const VALID: &[(&str, &str, &str, &str, &str)] = &[
    // Docker Hub defaults: registry, library/ prefix, latest tag.
    ("busybox", "docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36"),
    ("library/debian", "docker.io/library/debian:latest", "docker.io", "library/debian", "latest"),
    ("docker/docker", "docker.io/docker/docker:latest", "docker.io", "docker/docker", "latest"),
    ("docker.io/debian", "docker.io/library/debian:latest", "docker.io", "library/debian", "latest"),
    ("docker.io/library/debian", "docker.io/library/debian:latest", "docker.io", "library/debian", "latest"),
    ("index.docker.io/debian", "docker.io/library/debian:latest", "docker.io", "library/debian", "latest"),
    ("index.docker.io/docker/docker", "docker.io/docker/docker:latest", "docker.io", "docker/docker", "latest"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "docker.io", "library/foo/bar", "latest"),
    ("store/foo/bar", "docker.io/store/foo/bar:latest", "docker.io", "store/foo/bar", "latest"),
    ("other/library", "docker.io/other/library:latest", "docker.io", "other/library", "latest"),
    ("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base:latest", "docker.io", "library/ubuntu-12.04-base", "latest"),
    ("test_com/foo", "docker.io/test_com/foo:latest", "docker.io", "test_com/foo", "latest"),
    ("docker-rules/docker", "docker.io/docker-rules/docker:latest", "docker.io", "docker-rules/docker", "latest"),
    ("docker---rules/docker", "docker.io/docker---rules/docker:latest", "docker.io", "docker---rules/docker", "latest"),
    ("dock__er/docker", "docker.io/dock__er/docker:latest", "docker.io", "dock__er/docker", "latest"),
    ("d/docker", "docker.io/d/docker:latest", "docker.io", "d/docker", "latest"),
    ("jess/t", "docker.io/jess/t:latest", "docker.io", "jess/t", "latest"),
    ("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase"),
    // 64 characters that are not all hex make a name, not an image id.
    ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
     "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
     "docker.io", "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "latest"),
    ("docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
     "docker.io/library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a:latest",
     "docker.io", "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "latest"),
    // A single component with a dot or a port is still a Docker Hub name (and maybe a tag).
    ("192.168.0.1", "docker.io/library/192.168.0.1:latest", "docker.io", "library/192.168.0.1", "latest"),
    ("192.168.0.1:80", "docker.io/library/192.168.0.1:80", "docker.io", "library/192.168.0.1", "80"),
    ("test.com:5000", "docker.io/library/test.com:5000", "docker.io", "library/test.com", "5000"),
    ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080"),
    // Registry hosts: a dot, a port, localhost, IPv6, or uppercase in the first component.
    ("127.0.0.1:5000/docker/docker", "127.0.0.1:5000/docker/docker:latest", "127.0.0.1:5000", "docker/docker", "latest"),
    ("127.0.0.1:5000/debian", "127.0.0.1:5000/debian:latest", "127.0.0.1:5000", "debian", "latest"),
    ("127.0.0.1:5000/forge-test/busybox:latest", "127.0.0.1:5000/forge-test/busybox:latest", "127.0.0.1:5000", "forge-test/busybox", "latest"),
    ("192.168.0.1:8/debian", "192.168.0.1:8/debian:latest", "192.168.0.1:8", "debian", "latest"),
    ("192.168.1.1/repo", "192.168.1.1/repo:latest", "192.168.1.1", "repo", "latest"),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050"),
    ("localhost/x", "localhost/x:latest", "localhost", "x", "latest"),
    ("localhost:5000/x/y:t", "localhost:5000/x/y:t", "localhost:5000", "x/y", "t"),
    ("example.com/privatebase", "example.com/privatebase:latest", "example.com", "privatebase", "latest"),
    ("example.com:8000/private/moonbase", "example.com:8000/private/moonbase:latest", "example.com:8000", "private/moonbase", "latest"),
    ("test:5000/repo", "test:5000/repo:latest", "test:5000", "repo", "latest"),
    ("test-com:8080/foo", "test-com:8080/foo:latest", "test-com:8080", "foo", "latest"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080", "foo", "latest"),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", "some-long-tag"),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app", "test.example.com"),
    ("Foo/bar", "Foo/bar:latest", "Foo", "bar", "latest"),
    ("DOCKER/docker", "DOCKER/docker:latest", "DOCKER", "docker", "latest"),
    ("[fc00::1]:5000/docker", "[fc00::1]:5000/docker:latest", "[fc00::1]:5000", "docker", "latest"),
    ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest", "[fc00:1:2:3:4:5:6:7]:5000", "library/debian", "latest"),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest", "[2001:db8::1]", "repo", "latest"),
    ("[::1]:5000/repo:tag", "[::1]:5000/repo:tag", "[::1]:5000", "repo", "tag"),
    // Digests: alone (no default tag), and with a tag (both kept).
    ("busybox@sha256:FFF", "docker.io/library/busybox@sha256:FFF", "docker.io", "library/busybox", ""),
    ("busybox:latest@sha256:FFF", "docker.io/library/busybox:latest@sha256:FFF", "docker.io", "library/busybox", "latest"),
    ("test:5000/repo@sha256:FFF", "test:5000/repo@sha256:FFF", "test:5000", "repo", ""),
    ("[2001:db8::1]:5000/repo:tag@sha256:FFF", "[2001:db8::1]:5000/repo:tag@sha256:FFF", "[2001:db8::1]:5000", "repo", "tag"),
];

struct Case {
    input: String,
    normalised: String,
    registry: String,
    repository: String,
    tag: Option<String>,
}

fn valid_cases() -> Vec<Case> {
    let fill = |s: &str| s.replace("sha256:FFF", D);
    let mut cases: Vec<Case> = VALID
        .iter()
        .map(|(input, norm, registry, repo, tag)| Case {
            input: fill(input),
            normalised: fill(norm),
            registry: registry.to_string(),
            repository: repo.to_string(),
            tag: (!tag.is_empty()).then(|| tag.to_string()),
        })
        .collect();
    // 255 characters of repository path is the limit, and this is exactly it.
    let long = format!("{}a", "a/".repeat(127));
    cases.push(Case {
        input: format!("{long}:tag-puts-this-over-max"),
        normalised: format!("docker.io/{long}:tag-puts-this-over-max"),
        registry: "docker.io".into(),
        repository: long,
        tag: Some("tag-puts-this-over-max".into()),
    });
    cases
}

#[test]
fn normalises_like_docker() {
    let mut failures = Vec::new();
    let cases = valid_cases();
    for case in &cases {
        match Reference::parse(&case.input) {
            Ok(r) => {
                let got = (
                    r.to_string(),
                    r.registry().to_string(),
                    r.repository().to_string(),
                    r.tag().map(str::to_string),
                    r.digest().map(str::to_string),
                );
                let want = (
                    case.normalised.clone(),
                    case.registry.clone(),
                    case.repository.clone(),
                    case.tag.clone(),
                    case.normalised.split_once('@').map(|(_, d)| d.to_string()),
                );
                if got != want {
                    failures.push(format!("{}: got {got:?}, want {want:?}", case.input));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.input)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

type KindCheck = fn(&ReferenceErrorKind) -> bool;

#[test]
fn refuses_invalid_references_naming_them() {
    let too_long_namespace = format!("{}/docker", "this_is_not_a_valid_namespace_".repeat(9));
    let too_long = format!("{}a:tag", "a/".repeat(128));
    let cases: Vec<(String, KindCheck)> = vec![
        ("".into(), |k| matches!(k, ReferenceErrorKind::Empty)),
        ("https://github.com/docker/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("docker/Docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Uppercase(_))
        }),
        ("docker.io/docker/Docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Uppercase(_))
        }),
        ("test:5000/Uppercase/lowercase:tag".into(), |k| {
            matches!(k, ReferenceErrorKind::Uppercase(_))
        }),
        ("Uppercase:tag".into(), |k| {
            matches!(k, ReferenceErrorKind::Uppercase(_))
        }),
        ("-docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("-docker/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("-docker.io/docker/docker".into(), |k| {
            matches!(
                k,
                ReferenceErrorKind::Format | ReferenceErrorKind::Registry(_)
            )
        }),
        ("docker-/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("docker///docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("docker.io/docker///docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("____/____".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("_docker/_docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("dock..er/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("dock_.er/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("dock-.er/docker".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("docker/".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        (":justtag".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        (format!("@{D}"), |k| matches!(k, ReferenceErrorKind::Format)),
        ("aa/asdf$$^/aa".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("[fc00::1]".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("[fc00::1]:5000".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("[2001:db8::1]:tag".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        ("fc00::1:5000/debian".into(), |k| {
            matches!(
                k,
                ReferenceErrorKind::Format | ReferenceErrorKind::Registry(_)
            )
        }),
        ("[fe80::1%eth0]:5000/debian".into(), |k| {
            matches!(
                k,
                ReferenceErrorKind::Format | ReferenceErrorKind::Registry(_)
            )
        }),
        ("[2001:db8:3:4::192.0.2.33]:5000/debian".into(), |k| {
            matches!(
                k,
                ReferenceErrorKind::Format | ReferenceErrorKind::Registry(_)
            )
        }),
        (
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(),
            |k| matches!(k, ReferenceErrorKind::HexIdentifier),
        ),
        (
            "repo@sha256:ffffffffffffffffffffffffffffffffff".into(),
            |k| matches!(k, ReferenceErrorKind::DigestLength(_)),
        ),
        (format!("validname@invaliddigest:{}", "f".repeat(64)), |k| {
            matches!(k, ReferenceErrorKind::DigestAlgorithm(_))
        }),
        (format!("busybox@sha256:{}", "F".repeat(64)), |k| {
            matches!(k, ReferenceErrorKind::DigestFormat(_))
        }),
        ("busybox:-tag".into(), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        (format!("busybox:{}", "t".repeat(129)), |k| {
            matches!(k, ReferenceErrorKind::Format)
        }),
        (too_long_namespace, |k| {
            matches!(
                k,
                ReferenceErrorKind::NameTooLong | ReferenceErrorKind::Format
            )
        }),
        (too_long, |k| matches!(k, ReferenceErrorKind::NameTooLong)),
        // A first component that looks like a host but is not a valid one.
        ("foo_bar.com/x".into(), |k| {
            matches!(k, ReferenceErrorKind::Registry(_))
        }),
    ];
    let mut failures = Vec::new();
    for (input, expect) in &cases {
        match Reference::parse(input) {
            Ok(r) => failures.push(format!("{input:?}: accepted as {r}")),
            Err(e) => {
                if !expect(&e.reason) {
                    failures.push(format!("{input:?}: wrong kind {:?}", e.reason));
                }
                if e.reference != *input || !e.to_string().contains(&format!("{input:?}")) {
                    failures.push(format!("{input:?}: error does not name the reference: {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn familiar_form_drops_docker_hub_defaults() {
    for (input, familiar) in [
        ("busybox", "busybox:latest"),
        ("docker.io/library/busybox:1", "busybox:1"),
        ("docker.io/user/app", "user/app:latest"),
        ("docker.io/library/foo/bar", "library/foo/bar:latest"),
        ("127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"),
    ] {
        assert_eq!(
            Reference::parse(input).unwrap().familiar(),
            familiar,
            "{input}"
        );
    }
}

#[test]
fn normalised_form_parses_to_itself() {
    for case in valid_cases() {
        let once = Reference::parse(&case.input).unwrap();
        let twice = Reference::parse(&once.to_string()).unwrap();
        assert_eq!(once, twice, "{} -> {}", case.input, case.normalised);
    }
}

#[test]
fn serde_goes_through_the_string_form() {
    let r = Reference::parse("busybox").unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, "\"docker.io/library/busybox:latest\"");
    let back: Reference = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert!(serde_json::from_str::<Reference>("\"Bad/Name\"").is_err());
}

/// Issue 11.7: `-t 127.0.0.1:99999/x` built, then failed at push with "could not clone request
/// builder". A port out of range is refused when the name is read.
#[test]
fn a_registry_port_out_of_range_is_refused_with_the_reason() {
    for bad in ["127.0.0.1:99999/x", "localhost:0/x:1", "[::1]:65536/a/b"] {
        let e = Reference::parse(bad).unwrap_err();
        assert!(
            matches!(e.reason, ReferenceErrorKind::Port(_)),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("1 to 65535"), "{bad}: {e}");
    }
    for good in [
        "127.0.0.1:65535/x",
        "localhost:1/x",
        "[::1]:5000/a",
        "[::1]/a",
        "example.com/a",
    ] {
        Reference::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}
