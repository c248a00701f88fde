//! `forge run`'s services as GitLab's runner starts them: a service without a `ready:` probe is
//! waited for on the TCP ports its image EXPOSEs (or `HEALTHCHECK_TCP_PORT`), at most 30 s, before
//! the job's script runs. Real parts as in `pipeline_run.rs`: the loopback registry, the busybox
//! test image, the embedded runner as root.

mod common;

use std::fs;

use common::pipeline::{machine, run_ok, small_workspace};

/// `services: [postgres]` and a script that connects at once: GitLab's runner waits for the
/// service's exposed ports, forge started the script as the service started, and the first
/// connection was refused. Both services here listen only after 2 s; the job connects once.
#[test]
fn a_service_is_waited_for_on_its_exposed_or_named_port() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-service-wait",
        r#"  slow: {context: slow}
  named: {context: named}
jobs:
  t:
    image: app
    services:
      - slow
      - name: named
        variables: {HEALTHCHECK_TCP_PORT: "7002"}
    script:
      - wget -Y off -q -O- http://slow:7001/ | grep -qx served && echo exposed answered
      - wget -Y off -q -O- http://named:7002/ | grep -qx served && echo named answered
"#,
    );
    for (name, port, expose) in [
        ("slow", 7001, "EXPOSE 7001/tcp 9/udp\n"),
        ("named", 7002, ""),
    ] {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::write(
            dir.join(name).join("Dockerfile"),
            format!(
                "FROM {}\nRUN mkdir /www && echo served > /www/index.html\n{expose}\
                 CMD [\"sh\", \"-c\", \"sleep 2; exec httpd -f -p 127.0.0.1:{port} -h /www\"]\n",
                m.busybox
            ),
        )
        .unwrap();
    }
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(
        out.contains("[t] forge: waiting for service slow on 7001/tcp (at most 30 s"),
        "{out}"
    );
    assert!(
        out.contains("[t] forge: waiting for service named on 7002/tcp"),
        "{out}"
    );
    assert!(out.contains("[t] exposed answered"), "{out}");
    assert!(out.contains("[t] named answered"), "{out}");
}
