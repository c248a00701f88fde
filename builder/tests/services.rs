//! Services beside a job (`Session::start_service`, `Session::wait_ready`) with real parts: the busybox
//! image from the test registry, the session's snapshotter, and the embedded runner (containerd's
//! too when it answers), as root. Two shared networks each hold an httpd on port 7000 at once; a
//! step in each reaches its own; stopping leaves no process in the namespace and no writable
//! snapshot. Skips without root, the registry or containerd (fails under FORGE_E2E=require).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_builder::api::{RunnerChoice, ServiceSpec, Session, SessionOptions};
use forge_builder::events::{BuildId, Events};
use forge_builder::source::{BaseImage, pull_base};
use forge_runner::{CancellationToken, SharedNetwork};
use forge_snapshotter::snapshot::{Kind, Snapshotter};

const PORT: u16 = 7000;

fn session(root: &Path, runner: RunnerChoice) -> Session {
    Session::open(SessionOptions {
        root: root.to_path_buf(),
        insecure_registries: Vec::new(),
        runner,
        ..SessionOptions::default()
    })
    .expect("session opens")
}

async fn busybox(session: &Session, reference: &str) -> BaseImage {
    pull_base(
        session.store(),
        session.registry(),
        &Events::new(BuildId::new(), None),
        reference,
        forge_builder::source::PullPolicy::Missing,
        forge_builder::source::BaseFetch::Whole,
        None,
    )
    .await
    .expect("busybox pulls from the test registry")
}

/// Processes (pids) whose network namespace is `net`'s.
fn processes_in(net: &SharedNetwork) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(meta) = std::fs::metadata(entry.path().join("ns/net"))
            && meta.ino() == net.inode()
        {
            pids.push(pid);
        }
    }
    pids
}

fn active_snapshots(session: &Session) -> Vec<String> {
    session
        .snapshots()
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == Kind::Active)
        .map(|i| i.key)
        .collect()
}

/// An httpd answering `body` on 127.0.0.1:7000.
fn httpd(name: &str, image: &BaseImage, net: &SharedNetwork, body: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: image.clone(),
        entrypoint: None,
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "mkdir -p /www && echo \"$BODY\" > /www/index.html && \
                 exec httpd -f -v -p 127.0.0.1:{PORT} -h /www"
            ),
        ],
        env: vec![("BODY".into(), body.into())],
        secrets: Vec::new(),
        network: net.clone(),
    }
}

/// A probe's view of a service: busybox in `net`, no secrets.
fn in_net(image: &BaseImage, net: &SharedNetwork) -> ServiceSpec {
    ServiceSpec {
        name: "probe".into(),
        image: image.clone(),
        entrypoint: None,
        command: Vec::new(),
        env: Vec::new(),
        secrets: Vec::new(),
        network: net.clone(),
    }
}

/// A probe that succeeds when 127.0.0.1:7000 answers `body` (busybox wget ignores NO_PROXY: the
/// proxy is turned off for it).
fn fetches(body: &str) -> String {
    format!("wget -Y off -q -O- http://127.0.0.1:{PORT}/ | grep -qx {body}")
}

async fn two_services_on_one_port(runner: RunnerChoice) {
    let Some(reference) = forge_testsupport::busybox_image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let session = session(tmp.path(), runner);
    let image = busybox(&session, &reference).await;
    let net_a = SharedNetwork::new().await.unwrap();
    let net_b = SharedNetwork::new().await.unwrap();
    assert_ne!(net_a, net_b);
    assert_eq!(net_a, net_a.clone());
    assert_ne!(net_a.inode(), net_b.inode());

    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = lines.clone();
        Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_string()))
    };
    let a = session
        .start_service(httpd("web-a", &image, &net_a, "pong-a"), sink.clone())
        .await
        .expect("service a starts");
    let ready = |net: &SharedNetwork, body: &str| {
        let (session, image, net, probe) = (&session, &image, net.clone(), fetches(body));
        async move {
            session
                .wait_ready(
                    &in_net(image, &net),
                    &probe,
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    &CancellationToken::new(),
                )
                .await
        }
    };
    ready(&net_a, "pong-a").await.expect("service a answers");
    // The same port in another network, while the first still listens.
    let b = session
        .start_service(httpd("web-b", &image, &net_b, "pong-b"), sink.clone())
        .await
        .expect("service b starts");
    ready(&net_b, "pong-b").await.expect("service b answers");
    assert!(a.is_running() && b.is_running());
    // Each network's step reaches its own service, never the other's.
    ready(&net_a, "pong-a").await.expect("a is still a");
    let crossed = session
        .wait_ready(
            &in_net(&image, &net_b),
            &fetches("pong-a"),
            Duration::from_secs(1),
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await;
    assert!(crossed.is_err(), "a step in b's network got a's page");
    // A network without a service: the probe fails, with its output in the error.
    let empty = SharedNetwork::new().await.unwrap();
    let err = session
        .wait_ready(
            &in_net(&image, &empty),
            &format!("echo probing; wget -Y off -q -O- http://127.0.0.1:{PORT}/"),
            Duration::from_millis(800),
            Duration::from_millis(200),
            &CancellationToken::new(),
        )
        .await
        .expect_err("nothing listens in an empty network");
    assert!(err.to_string().contains("probing"), "{err}");
    // A step in a shared network is a sandboxed one: it has the proxy, and the variables say so.
    session
        .wait_ready(
            &in_net(&image, &net_a),
            "test \"$HTTP_PROXY\" = http://127.0.0.1:3128 && test \"$no_proxy\" = localhost,127.0.0.1,::1",
            Duration::from_secs(5),
            Duration::from_millis(200), &CancellationToken::new())
        .await
    .expect("the proxy variables are set");

    assert!(
        !processes_in(&net_a).is_empty(),
        "httpd runs in a's network"
    );
    assert!(!active_snapshots(&session).is_empty());
    // Both ran until stopped: nothing to report.
    assert_eq!(a.stop().await.expect("a stops"), None);
    assert_eq!(b.stop().await.expect("b stops"), None);
    assert_eq!(processes_in(&net_a), Vec::<u32>::new(), "a left processes");
    assert_eq!(processes_in(&net_b), Vec::<u32>::new(), "b left processes");
    assert_eq!(active_snapshots(&session), Vec::<String>::new());
    let run_dir = tmp.path().join("run");
    if run_dir.exists() {
        let left: Vec<_> = std::fs::read_dir(&run_dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "step directories left: {left:?}");
    }
    // Dropping a handle stops its service as well.
    let c = session
        .start_service(httpd("web-c", &image, &net_a, "pong-c"), sink.clone())
        .await
        .unwrap();
    ready(&net_a, "pong-c").await.expect("service c answers");
    drop(c);
    let mut gone = false;
    for _ in 0..100 {
        if processes_in(&net_a).is_empty() && active_snapshots(&session).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a dropped service was not cleaned up");

    // A service that exits on its own, or whose command is not there, is reported when stopped.
    for (name, command, says) in [
        ("quits", "echo going away; exit 7", "status 7"),
        ("missing", "exec /no/such/binary", "status 127"),
    ] {
        let spec = ServiceSpec {
            name: name.into(),
            image: image.clone(),
            entrypoint: None,
            command: vec!["sh".into(), "-c".into(), command.into()],
            env: Vec::new(),
            secrets: Vec::new(),
            network: net_a.clone(),
        };
        let h = session.start_service(spec, sink.clone()).await.unwrap();
        for _ in 0..300 {
            if !h.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let note = h.stop().await.expect("stops").expect("reported");
        assert!(
            note.starts_with(&format!("service {name} exited on its own, {says}")),
            "{note}"
        );
    }
    assert!(
        lines.lock().unwrap().iter().any(|l| l == "going away"),
        "{:?}",
        lines.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn services_share_a_network_with_steps_embedded() {
    if !forge_testsupport::root("services with the embedded runner") {
        return;
    }
    two_services_on_one_port(RunnerChoice::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_share_a_network_with_steps_containerd() {
    if !forge_testsupport::root("services with the containerd runner") {
        return;
    }
    let Some(address) = forge_testsupport::containerd() else {
        return;
    };
    two_services_on_one_port(RunnerChoice::Containerd {
        address: Some(address),
    })
    .await;
}
