//! Per-step overhead of the containerd backend: runs `true` N times (default 50) on a busybox overlay
//! rootfs and prints the median, p90, min and max wall time of `ContainerdRunner::run`.
//!
//!     CONTAINERD_ADDRESS=/run/forge-ci/containerd/containerd.sock \
//!         cargo run --release -p forge-runner --example containerd_step -- 50

use std::path::Path;
use std::time::{Duration, Instant};

use forge_runner::containerd::{ContainerdConfig, ContainerdRunner};
use forge_runner::{Command, NetworkMode, StepSpec, User};
use forge_snapshotter::Mount;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(50), |a| a.parse())?;
    let mut config = ContainerdConfig::from_env().ok_or("set CONTAINERD_ADDRESS")?;
    let dir = tempfile::tempdir()?;
    config.state_dir = dir.path().join("state");
    config.cache_root = dir.path().join("cache");
    let lower = dir.path().join("lower");
    for sub in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(lower.join(sub))?;
    }
    std::fs::copy("/bin/busybox", lower.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", lower.join("bin/true"))?;
    std::fs::write(lower.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(lower.join("etc/group"), "root:x:0:\n")?;

    let runner = ContainerdRunner::connect(config).await?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let upper = dir.path().join(format!("upper-{i}"));
        let work = dir.path().join(format!("work-{i}"));
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let spec = step(&lower, &upper, &work);
        let started = Instant::now();
        let outcome = runner
            .run(&spec, &mut |_, _| {}, &CancellationToken::new())
            .await?;
        times.push(started.elapsed());
        if !outcome.success() {
            return Err(format!("`true` exited {}", outcome.exit_code).into());
        }
    }
    runner.close().await?;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "containerd backend, `true` x{runs}: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(times[runs / 2]),
        ms(times[runs * 9 / 10]),
        ms(times[0]),
        ms(times[runs - 1]),
    );
    Ok(())
}

fn step(lower: &Path, upper: &Path, work: &Path) -> StepSpec {
    StepSpec {
        command: Command::Exec(vec!["/bin/true".into()]),
        env: vec![],
        cwd: "/".into(),
        user: User::default(),
        hostname: "bench".into(),
        network: NetworkMode::Host,
        join_network: None,
        extra_hosts: Vec::new(),
        proxy_upstream: None,
        rootfs: vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower.display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
        }],
        mounts: vec![],
        secret_env: vec![],
        security: Default::default(),
        limits: Default::default(),
        ulimits: Vec::new(),
        shm_size: None,
    }
}
