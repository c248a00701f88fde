//! The solver against a mock executor that records its calls, sleeps and fails on demand: what
//! runs, how many at once, what the cache spares, and how a failure stops the rest.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forge_builder::graph::{
    ExecOp, Graph, GraphBuilder, ImageConfig, Mount, MountKind, NetworkMode, NodeRef, Op, Output,
    Platform, SecurityMode, SourceOp, Vertex,
};
use forge_builder::solver::{
    CacheStore, CancellationToken, ContentDigest, DiskCache, Event, Executor, MemoryCache,
    SolveError, SolveOptions, Solver,
};

#[derive(Debug, thiserror::Error)]
enum MockError {
    #[error("exit status {status}: {last_lines}")]
    Exit { status: i32, last_lines: String },
    #[error("cancelled")]
    Cancelled,
    #[error("input {0} is unusable")]
    Lost(usize),
}

/// Keyed by vertex description.
#[derive(Default)]
struct Mock {
    calls: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    sleep: HashMap<String, Duration>,
    fail: HashSet<String>,
    content: Mutex<HashMap<String, ContentDigest>>,
    /// Steps whose output is left unsettled (as a layer written behind the steps after it) and
    /// settled after this long, or failing to (`settle_fail`).
    settle: HashMap<String, Duration>,
    settle_fail: HashSet<String>,
    /// What happened, in order: `start NAME`, `settled NAME`.
    log: Mutex<Vec<String>>,
}

/// The prefix of an output still to be settled.
const UNSETTLED: &[u8] = b"unsettled:";

impl Mock {
    fn calls(&self) -> BTreeSet<String> {
        self.calls.lock().unwrap().iter().cloned().collect()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Executor for Mock {
    type Output = Vec<u8>;
    type Error = MockError;

    fn lost_inputs(&self, error: &MockError, _inputs: &[Vec<u8>]) -> Vec<usize> {
        match error {
            MockError::Lost(i) => vec![*i],
            _ => Vec::new(),
        }
    }

    async fn cache_inputs(
        &self,
        vertex: &Vertex,
        _inputs: &[Vec<u8>],
    ) -> Result<Option<ContentDigest>, MockError> {
        Ok(self
            .content
            .lock()
            .unwrap()
            .get(&vertex.description)
            .copied())
    }

    async fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[Vec<u8>],
        cancel: CancellationToken,
    ) -> Result<Vec<u8>, MockError> {
        let name = vertex.description.clone();
        self.calls.lock().unwrap().push(name.clone());
        self.log.lock().unwrap().push(format!("start {name}"));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let sleep = self.sleep.get(&name).copied().unwrap_or_default();
        let outcome = tokio::select! {
            () = tokio::time::sleep(sleep) => Ok(()),
            () = cancel.cancelled() => Err(()),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        if outcome.is_err() {
            self.cancelled.lock().unwrap().push(name);
            return Err(MockError::Cancelled);
        }
        // A result marked unusable (a cache record whose blobs turned out bad, in the real
        // executor) is found only when the vertex reading it runs.
        if let Some(i) = inputs.iter().position(|i| i == b"poisoned") {
            return Err(MockError::Lost(i));
        }
        if self.fail.contains(&name) {
            return Err(MockError::Exit {
                status: 2,
                last_lines: format!("{name}: make: *** [all] Error 2"),
            });
        }
        // The output shows what it was computed from, so stale inputs would be visible.
        let mut out = Vec::new();
        if self.settle.contains_key(&name) {
            out.extend_from_slice(UNSETTLED);
        }
        out.extend_from_slice(name.as_bytes());
        for i in inputs {
            out.push(b'(');
            out.extend_from_slice(i);
            out.push(b')');
        }
        Ok(out)
    }

    fn settle(
        &self,
        output: &Vec<u8>,
    ) -> Option<impl Future<Output = Result<Vec<u8>, MockError>> + Send> {
        let rest = output.strip_prefix(UNSETTLED)?.to_vec();
        let name = self
            .settle
            .keys()
            .find(|n| rest.starts_with(n.as_bytes()))?
            .clone();
        Some(async move {
            tokio::time::sleep(self.settle[&name]).await;
            if self.settle_fail.contains(&name) {
                return Err(MockError::Exit {
                    status: 1,
                    last_lines: format!("{name}: no space left on device"),
                });
            }
            self.log.lock().unwrap().push(format!("settled {name}"));
            Ok(rest)
        })
    }
}

/// An exec vertex described `[stage] RUN cmd` whose root is `inputs[0]` and which mounts the rest.
fn run(b: &mut GraphBuilder, stage: &str, cmd: &str, line: usize, inputs: &[NodeRef]) -> NodeRef {
    let mut mounts: Vec<Mount> = inputs
        .iter()
        .enumerate()
        .map(|(i, r)| Mount {
            target: if i == 0 {
                "/".into()
            } else {
                format!("/in{i}")
            },
            kind: MountKind::Bind {
                input: Some(*r),
                source_path: "/".into(),
                readonly: i != 0,
                output: i == 0,
            },
        })
        .collect();
    if mounts.is_empty() {
        mounts.push(Mount {
            target: "/".into(),
            kind: MountKind::Bind {
                input: None,
                source_path: "/".into(),
                readonly: false,
                output: true,
            },
        });
    }
    b.add_in_stage(
        stage,
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            platform: Platform::host(),
            mounts,
            test: None,
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
        }),
        format!("[{stage}] RUN {cmd}"),
        Some(line),
    )
}

fn output(b: &mut GraphBuilder, name: &str, root: NodeRef, gates: Vec<NodeRef>) {
    b.add_output(Output {
        name: name.into(),
        root,
        image: ImageConfig::default(),
        gates,
    });
}

fn options(jobs: usize) -> SolveOptions {
    SolveOptions {
        jobs,
        ..SolveOptions::default()
    }
}

fn solver(mock: &Arc<Mock>, cache: Arc<dyn CacheStore>, options: SolveOptions) -> Solver<Mock> {
    Solver::new(mock.clone(), cache, options)
}

/// `n` independent 100 ms steps joined by a final one.
fn wide(n: usize) -> (Graph, Mock) {
    let mut b = GraphBuilder::new();
    let mut mock = Mock::default();
    let leaves: Vec<NodeRef> = (0..n)
        .map(|i| {
            mock.sleep
                .insert(format!("[s{i}] RUN leaf{i}"), Duration::from_millis(100));
            run(&mut b, &format!("s{i}"), &format!("leaf{i}"), i + 1, &[])
        })
        .collect();
    let top = run(&mut b, "final", "join", 99, &leaves);
    output(&mut b, "final", top, Vec::new());
    (b.finish(), mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelism_is_bounded_by_jobs() {
    for jobs in [1, 2, 4] {
        let (graph, mock) = wide(6);
        let mock = Arc::new(mock);
        let started = Instant::now();
        let solution = solver(&mock, Arc::new(MemoryCache::new()), options(jobs))
            .solve(Arc::new(graph), &[0])
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(mock.call_count(), 7);
        assert_eq!(solution.executed(), 7);
        // Exactly `jobs`: never more, and the scheduler does fill every slot it has.
        assert_eq!(mock.max_running.load(Ordering::SeqCst), jobs, "jobs={jobs}");
        // Six 100 ms leaves in ceil(6/jobs) waves.
        let waves = 6_usize.div_ceil(jobs) as u32;
        assert!(
            elapsed >= Duration::from_millis(100) * waves,
            "jobs={jobs}: {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn shared_vertex_runs_once_even_under_two_references() {
    let mut b = GraphBuilder::new();
    let shared = run(&mut b, "base", "apt-get install", 2, &[]);
    let one = run(&mut b, "one", "make one", 5, &[shared]);
    let two = run(&mut b, "two", "make two", 8, &[shared]);
    output(&mut b, "one", one, Vec::new());
    output(&mut b, "two", two, Vec::new());
    let mut graph = b.finish();
    assert_eq!(graph.vertices.len(), 3, "the builder merged identical ops");

    // A second reference to the same identity (as a graph stitched from two frontends could
    // hold): [shared, shared', one -> shared, two -> shared'].
    let copy = graph.vertices[shared.0].clone();
    graph.vertices.insert(1, copy);
    let two_idx = NodeRef(3);
    if let Op::Exec(e) = &mut graph.vertices[two_idx.0].op
        && let MountKind::Bind { input, .. } = &mut e.mounts[0].kind
    {
        *input = Some(NodeRef(1));
    }
    graph.outputs[0].root = NodeRef(2);
    graph.outputs[1].root = two_idx;

    let mock = Arc::new(Mock::default());
    let solution = solver(&mock, Arc::new(MemoryCache::new()), options(4))
        .solve(Arc::new(graph), &[0, 1])
        .await
        .unwrap();
    let calls = mock.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| c.contains("apt-get")).count(),
        1,
        "{calls:?}"
    );
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        solution.get(NodeRef(0)).unwrap().output,
        solution.get(NodeRef(1)).unwrap().output
    );
    assert_eq!(
        solution.get(two_idx).unwrap().output,
        b"[two] RUN make two([base] RUN apt-get install)".to_vec()
    );
}

#[tokio::test]
async fn unreachable_vertices_never_run() {
    let mut b = GraphBuilder::new();
    let base = run(&mut b, "base", "base", 1, &[]);
    let app = run(&mut b, "app", "build app", 3, &[base]);
    let test = run(&mut b, "app", "test app", 4, &[app]);
    let other = run(&mut b, "unused", "exit 1", 7, &[base]);
    output(&mut b, "app", app, vec![test]);
    output(&mut b, "unused", other, Vec::new());
    let graph = Arc::new(b.finish());

    let mock = Arc::new(Mock::default());
    solver(&mock, Arc::new(MemoryCache::new()), options(4))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();
    let expected: BTreeSet<String> = [
        "[base] RUN base",
        "[app] RUN build app",
        "[app] RUN test app",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        mock.calls(),
        expected,
        "the gate runs, the unused stage does not"
    );

    let err = solver(&mock, Arc::new(MemoryCache::new()), options(4))
        .solve(graph, &[2])
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, SolveError::NoSuchOutput { index: 2, count: 2 }),
        "{err:?}"
    );
}

/// `A1 -> A2 -> A3`, `B1 -> B2`, and `final` over A3 and B2; A1 reads content from outside.
fn two_chains() -> Graph {
    let mut b = GraphBuilder::new();
    let a1 = run(&mut b, "a", "copy src", 1, &[]);
    let a2 = run(&mut b, "a", "compile", 2, &[a1]);
    let a3 = run(&mut b, "a", "link", 3, &[a2]);
    let b1 = run(&mut b, "b", "fetch deps", 5, &[]);
    let b2 = run(&mut b, "b", "build deps", 6, &[b1]);
    let top = run(&mut b, "final", "assemble", 8, &[a3, b2]);
    output(&mut b, "final", top, Vec::new());
    b.finish()
}

fn chain_mock(digest: u8) -> Arc<Mock> {
    let mock = Mock::default();
    mock.content
        .lock()
        .unwrap()
        .insert("[a] RUN copy src".into(), [digest; 32]);
    Arc::new(mock)
}

fn all_steps() -> BTreeSet<String> {
    [
        "[a] RUN copy src",
        "[a] RUN compile",
        "[a] RUN link",
        "[b] RUN fetch deps",
        "[b] RUN build deps",
        "[final] RUN assemble",
    ]
    .map(String::from)
    .into()
}

#[tokio::test]
async fn second_solve_with_the_same_disk_cache_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let graph = Arc::new(two_chains());

    let first = chain_mock(1);
    let cache = Arc::new(DiskCache::open(dir.path()).unwrap());
    let one = solver(&first, cache, options(2))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();
    assert_eq!(first.calls(), all_steps());
    assert_eq!((one.executed(), one.cached()), (6, 0));

    // A new process: a fresh executor and a fresh handle on the same directory.
    let second = chain_mock(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cache = Arc::new(DiskCache::open(dir.path()).unwrap());
    let two = solver(
        &second,
        cache,
        SolveOptions {
            events: Some(tx),
            ..options(2)
        },
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap();
    assert_eq!(second.call_count(), 0, "ran: {:?}", second.calls());
    assert_eq!((two.executed(), two.cached()), (0, 6));
    let root = graph.outputs[0].root;
    assert_eq!(one.get(root).unwrap().output, two.get(root).unwrap().output);
    assert_eq!(one.get(root).unwrap().key, two.get(root).unwrap().key);

    let mut cached = BTreeSet::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Cached { description, .. } => {
                cached.insert(description);
            }
            other => panic!("only cache hits expected, got {other:?}"),
        }
    }
    assert_eq!(cached, all_steps());
}

#[tokio::test]
async fn changed_content_reruns_exactly_the_dependent_chain() {
    let graph = Arc::new(two_chains());
    let cache: Arc<dyn CacheStore> = Arc::new(MemoryCache::new());
    let first = chain_mock(1);
    solver(&first, cache.clone(), options(2))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();

    let second = chain_mock(2);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let solution = solver(
        &second,
        cache.clone(),
        SolveOptions {
            events: Some(tx),
            ..options(2)
        },
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap();
    let expected: BTreeSet<String> = [
        "[a] RUN copy src",
        "[a] RUN compile",
        "[a] RUN link",
        "[final] RUN assemble",
    ]
    .map(String::from)
    .into();
    assert_eq!(second.calls(), expected);
    assert_eq!((solution.executed(), solution.cached()), (4, 2));

    let (mut started, mut done, mut cached) = (0, 0, BTreeSet::new());
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Started { .. } => started += 1,
            Event::Done { duration, .. } => {
                assert!(duration < Duration::from_secs(5));
                done += 1;
            }
            Event::Cached { description, .. } => {
                cached.insert(description);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((started, done), (4, 4));
    assert_eq!(
        cached,
        ["[b] RUN fetch deps", "[b] RUN build deps"]
            .map(String::from)
            .into()
    );

    // And back: the first content's records are still there.
    let third = chain_mock(1);
    solver(&third, cache, options(2))
        .solve(graph, &[0])
        .await
        .unwrap();
    assert_eq!(third.call_count(), 0);
}

#[tokio::test]
async fn no_cache_and_no_cache_filter_force_runs() {
    let graph = Arc::new(two_chains());
    let cache: Arc<dyn CacheStore> = Arc::new(MemoryCache::new());
    solver(&chain_mock(1), cache.clone(), options(2))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();

    let all = chain_mock(1);
    let solution = solver(
        &all,
        cache.clone(),
        SolveOptions {
            no_cache: true,
            ..options(2)
        },
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap();
    assert_eq!(all.calls(), all_steps());
    assert_eq!(solution.cached(), 0);

    // Stage b and what is computed from it; stage a stays cached.
    let filtered = chain_mock(1);
    solver(
        &filtered,
        cache,
        SolveOptions {
            no_cache_filter: vec!["b".into()],
            ..options(2)
        },
    )
    .solve(graph, &[0])
    .await
    .unwrap();
    let expected: BTreeSet<String> = [
        "[b] RUN fetch deps",
        "[b] RUN build deps",
        "[final] RUN assemble",
    ]
    .map(String::from)
    .into();
    assert_eq!(filtered.calls(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_cancels_running_siblings_and_names_the_step() {
    let mut b = GraphBuilder::new();
    let slow1 = run(&mut b, "slow", "sleep 30", 2, &[]);
    let slow2 = run(&mut b, "slower", "sleep 60", 4, &[]);
    let bad = run(&mut b, "build", "make all", 7, &[]);
    let after = run(&mut b, "build", "make install", 8, &[bad]);
    let top = run(&mut b, "final", "assemble", 10, &[slow1, slow2, after]);
    output(&mut b, "final", top, Vec::new());
    let graph = Arc::new(b.finish());

    let mut mock = Mock::default();
    mock.sleep
        .insert("[slow] RUN sleep 30".into(), Duration::from_secs(30));
    mock.sleep
        .insert("[slower] RUN sleep 60".into(), Duration::from_secs(60));
    mock.sleep
        .insert("[build] RUN make all".into(), Duration::from_millis(100));
    mock.fail.insert("[build] RUN make all".into());
    let mock = Arc::new(mock);
    let cache = Arc::new(MemoryCache::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let err = solver(
        &mock,
        cache.clone(),
        SolveOptions {
            events: Some(tx),
            ..options(3)
        },
    )
    .solve(graph, &[0])
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "siblings were not cancelled"
    );
    assert!(err.solved.is_empty(), "nothing finished before the failure");
    let err = err.error;

    match &err {
        SolveError::Step {
            description, line, ..
        } => {
            assert_eq!(description, "[build] RUN make all");
            assert_eq!(*line, Some(7));
        }
        other => panic!("expected a step error, got {other:?}"),
    }
    assert_eq!(err.to_string(), "step [build] RUN make all (line 7) failed");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(
        source,
        "exit status 2: [build] RUN make all: make: *** [all] Error 2"
    );

    let cancelled: BTreeSet<String> = mock.cancelled.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        cancelled,
        ["[slow] RUN sleep 30", "[slower] RUN sleep 60"]
            .map(String::from)
            .into(),
        "running siblings observed the cancellation and were awaited"
    );
    assert_eq!(
        mock.running.load(Ordering::SeqCst),
        0,
        "nothing left running"
    );
    assert!(!mock.calls().contains("[build] RUN make install"));
    assert!(!mock.calls().contains("[final] RUN assemble"));
    assert!(cache.is_empty(), "nothing failed or cancelled is recorded");

    let mut failed = Vec::new();
    let mut cancelled_events = BTreeSet::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Failed {
                description, error, ..
            } => failed.push((description, error)),
            Event::Cancelled { description, .. } => {
                cancelled_events.insert(description);
            }
            _ => {}
        }
    }
    assert_eq!(
        failed,
        vec![(
            "[build] RUN make all".to_string(),
            "exit status 2: [build] RUN make all: make: *** [all] Error 2".to_string()
        )]
    );
    assert_eq!(cancelled_events, cancelled);
}

#[tokio::test]
async fn caller_cancellation_stops_the_solve() {
    let (graph, mut mock) = wide(2);
    for d in mock.sleep.values_mut() {
        *d = Duration::from_secs(60);
    }
    let mock = Arc::new(mock);
    let cancel = CancellationToken::new();
    let s = solver(
        &mock,
        Arc::new(MemoryCache::new()),
        SolveOptions {
            cancel: cancel.clone(),
            ..options(2)
        },
    );
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let err = s.solve(Arc::new(graph), &[0]).await.unwrap_err().error;
    canceller.await.unwrap();
    assert!(matches!(err, SolveError::Cancelled), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(mock.cancelled.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn damaged_disk_records_are_misses_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let graph = Arc::new(two_chains());
    let first = chain_mock(1);
    let one = solver(
        &first,
        Arc::new(DiskCache::open(dir.path()).unwrap()),
        options(2),
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap();

    // Truncate some records, fill the others with garbage.
    let mut records: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    records.sort();
    assert_eq!(records.len(), 6);
    for (i, p) in records.iter().enumerate() {
        if i % 2 == 0 {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
        } else {
            std::fs::write(p, b"\0garbage\xff").unwrap();
        }
    }

    let second = chain_mock(1);
    let two = solver(
        &second,
        Arc::new(DiskCache::open(dir.path()).unwrap()),
        options(2),
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap();
    assert_eq!(second.calls(), all_steps());
    let root = graph.outputs[0].root;
    assert_eq!(one.get(root).unwrap().output, two.get(root).unwrap().output);

    // The re-run wrote whole records again.
    let third = chain_mock(1);
    solver(
        &third,
        Arc::new(DiskCache::open(dir.path()).unwrap()),
        options(2),
    )
    .solve(graph, &[0])
    .await
    .unwrap();
    assert_eq!(third.call_count(), 0);
}

#[tokio::test]
async fn source_vertices_take_part_like_any_other() {
    // A local-context source whose content digest the executor reports: a change moves every key
    // computed from it.
    let mut b = GraphBuilder::new();
    let ctx = b.add(
        Op::Source(SourceOp::Local {
            name: "context".into(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
        }),
        "[internal] load build context",
        None,
    );
    let step = run(&mut b, "app", "make", 3, &[ctx]);
    output(&mut b, "app", step, Vec::new());
    let graph = Arc::new(b.finish());
    let cache: Arc<dyn CacheStore> = Arc::new(MemoryCache::new());
    let mut keys = Vec::new();
    for digest in [1u8, 1, 2] {
        let mock = Mock::default();
        mock.content
            .lock()
            .unwrap()
            .insert("[internal] load build context".into(), [digest; 32]);
        let mock = Arc::new(mock);
        let s = solver(&mock, cache.clone(), options(1))
            .solve(graph.clone(), &[0])
            .await
            .unwrap();
        keys.push((s.get(step).unwrap().key, mock.call_count()));
    }
    assert_eq!(keys[0], (keys[1].0, 2));
    assert_eq!(keys[1].1, 0);
    assert_ne!(keys[0].0, keys[2].0);
    assert_eq!(keys[2].1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_solvers_on_one_disk_cache_compute_each_key_once() {
    // Two handles on one directory stand for two forge processes: the per-key file lock is an
    // flock, which excludes another open file just as it excludes another process.
    let dir = tempfile::tempdir().unwrap();
    let graph = Arc::new(two_chains());
    let slow = || {
        let mut mock = Mock::default();
        for step in all_steps() {
            mock.sleep.insert(step, Duration::from_millis(50));
        }
        mock.content
            .lock()
            .unwrap()
            .insert("[a] RUN copy src".into(), [1; 32]);
        Arc::new(mock)
    };
    let (first, second) = (slow(), slow());
    let s1 = solver(
        &first,
        Arc::new(DiskCache::open(dir.path()).unwrap()),
        options(2),
    );
    let s2 = solver(
        &second,
        Arc::new(DiskCache::open(dir.path()).unwrap()),
        options(2),
    );
    let (r1, r2) = tokio::join!(s1.solve(graph.clone(), &[0]), s2.solve(graph.clone(), &[0]));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    let root = graph.outputs[0].root;
    assert_eq!(r1.get(root).unwrap().output, r2.get(root).unwrap().output);
    let (c1, c2) = (first.calls(), second.calls());
    assert!(
        c1.is_disjoint(&c2),
        "both computed {:?}",
        c1.intersection(&c2).collect::<Vec<_>>()
    );
    assert_eq!(c1.union(&c2).cloned().collect::<BTreeSet<_>>(), all_steps());
    assert_eq!(first.call_count() + second.call_count(), 6);
}

/// `base` under three branches: `ok1 -> ok2`, `bad1 -> after1`, and `bad2 -> after2`; `top` joins
/// the first two. Every vertex is needed: `top` is the output, `after2` its gate.
fn branches_with_two_failures() -> (Graph, Mock) {
    let mut b = GraphBuilder::new();
    let base = run(&mut b, "base", "base", 1, &[]);
    let ok1 = run(&mut b, "ok", "ok one", 2, &[base]);
    let ok2 = run(&mut b, "ok", "ok two", 3, &[ok1]);
    let bad1 = run(&mut b, "unit", "unit tests", 4, &[base]);
    let after1 = run(&mut b, "unit", "unit report", 5, &[bad1]);
    let bad2 = run(&mut b, "lint", "lint", 6, &[base]);
    let after2 = run(&mut b, "lint", "lint report", 7, &[bad2]);
    let top = run(&mut b, "final", "assemble", 8, &[ok2, after1]);
    output(&mut b, "final", top, vec![after2]);
    let mut mock = Mock::default();
    mock.fail.insert("[unit] RUN unit tests".into());
    mock.fail.insert("[lint] RUN lint".into());
    // The slow branch still finishes after both failures.
    mock.sleep
        .insert("[ok] RUN ok two".into(), Duration::from_millis(200));
    (b.finish(), mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_going_finishes_independent_branches_and_reports_every_failure() {
    let (graph, mock) = branches_with_two_failures();
    let graph = Arc::new(graph);
    let mock = Arc::new(mock);
    let cache = Arc::new(MemoryCache::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let failure = solver(
        &mock,
        cache.clone(),
        SolveOptions {
            keep_going: true,
            events: Some(tx),
            ..options(4)
        },
    )
    .solve(graph.clone(), &[0])
    .await
    .unwrap_err();

    let ran: BTreeSet<String> = [
        "[base] RUN base",
        "[ok] RUN ok one",
        "[ok] RUN ok two",
        "[unit] RUN unit tests",
        "[lint] RUN lint",
    ]
    .map(String::from)
    .into();
    assert_eq!(mock.calls(), ran, "the independent branch went on");
    assert!(
        mock.cancelled.lock().unwrap().is_empty(),
        "nothing was cancelled"
    );

    let SolveError::Failed { failures, skipped } = &failure.error else {
        panic!("expected every failure, got {:?}", failure.error);
    };
    let failed: BTreeSet<String> = failures
        .iter()
        .map(|f| match f {
            SolveError::Step { description, .. } => description.clone(),
            other => panic!("expected step errors, got {other:?}"),
        })
        .collect();
    assert_eq!(
        failed,
        ["[unit] RUN unit tests", "[lint] RUN lint"]
            .map(String::from)
            .into()
    );
    let by_name = |d: &str| {
        NodeRef(
            graph
                .vertices
                .iter()
                .position(|v| v.description == d)
                .unwrap(),
        )
    };
    let skips: Vec<(String, NodeRef)> = skipped
        .iter()
        .map(|s| (s.description.clone(), s.failed))
        .collect();
    assert_eq!(
        skips,
        vec![
            (
                "[unit] RUN unit report".to_string(),
                by_name("[unit] RUN unit tests")
            ),
            (
                "[lint] RUN lint report".to_string(),
                by_name("[lint] RUN lint")
            ),
            (
                "[final] RUN assemble".to_string(),
                by_name("[unit] RUN unit tests")
            ),
        ],
        "in graph order, each with the failure it waited for"
    );
    let message = failure.to_string();
    assert!(
        message.starts_with("2 steps failed (3 skipped): step "),
        "{message}"
    );
    assert!(
        message.contains("step [unit] RUN unit tests (line 4) failed: exit status 2"),
        "{message}"
    );

    // Announced as they were found, with their cause.
    let mut events = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    let mut announced = Vec::new();
    for ev in &events {
        if let Event::Skipped {
            description,
            failed_description,
            ..
        } = ev
        {
            announced.push((description.clone(), failed_description.clone()));
        }
    }
    announced.sort();
    assert_eq!(
        announced,
        vec![
            (
                "[final] RUN assemble".to_string(),
                "[unit] RUN unit tests".to_string()
            ),
            (
                "[lint] RUN lint report".to_string(),
                "[lint] RUN lint".to_string()
            ),
            (
                "[unit] RUN unit report".to_string(),
                "[unit] RUN unit tests".to_string()
            ),
        ]
    );
    let mut failed_events = 0;
    for ev in events {
        match ev {
            Event::Failed { .. } => failed_events += 1,
            Event::Cancelled { description, .. } => panic!("{description} was cancelled"),
            _ => {}
        }
    }
    assert_eq!(failed_events, 2);

    // What succeeded is in the partial solution, with keys, and recorded.
    let solved: BTreeSet<String> = failure
        .solved
        .iter()
        .map(|(r, s)| {
            assert!(!s.cached);
            graph.vertex(r).description.clone()
        })
        .collect();
    assert_eq!(
        solved,
        ["[base] RUN base", "[ok] RUN ok one", "[ok] RUN ok two"]
            .map(String::from)
            .into()
    );
    assert_eq!(cache.len(), 3);

    // The default stops at the first failure instead: the slow branch is cancelled.
    let (graph2, mock2) = branches_with_two_failures();
    let mock2 = Arc::new(mock2);
    let graph2 = Arc::new(graph2);
    let err = solver(&mock2, Arc::new(MemoryCache::new()), options(4))
        .solve(graph2.clone(), &[0])
        .await
        .unwrap_err();
    assert!(
        matches!(err.error, SolveError::Step { .. }),
        "{:?}",
        err.error
    );
    assert!(
        err.solved
            .iter()
            .all(|(r, _)| graph2.vertex(r).description != "[ok] RUN ok two"),
        "the slow branch never finished"
    );
}

#[tokio::test]
async fn a_failed_solve_returns_what_it_solved_and_a_rerun_finds_it_cached() {
    // One job, so the order is fixed: `a1` (ready first) runs, then `b1` fails.
    let graph = Arc::new(two_chains());
    let cache: Arc<dyn CacheStore> = Arc::new(MemoryCache::new());
    let failing = || {
        let mut mock = Mock::default();
        mock.fail.insert("[b] RUN fetch deps".into());
        Arc::new(mock)
    };
    let first = solver(&failing(), cache.clone(), options(1))
        .solve(graph.clone(), &[0])
        .await
        .unwrap_err();
    assert!(matches!(first.error, SolveError::Step { .. }));
    let solved: Vec<(String, bool)> = first
        .solved
        .iter()
        .map(|(r, s)| (graph.vertex(r).description.clone(), s.cached))
        .collect();
    assert_eq!(solved, vec![("[a] RUN copy src".to_string(), false)]);

    let again = solver(&failing(), cache, options(1))
        .solve(graph.clone(), &[0])
        .await
        .unwrap_err();
    let a1 = graph
        .vertices
        .iter()
        .position(|v| v.description == "[a] RUN copy src")
        .map(NodeRef)
        .unwrap();
    let s = again.solved.get(a1).expect("solved again");
    assert!(s.cached, "served from the first failed solve's record");
    assert_eq!(s.key, first.solved.get(a1).unwrap().key);
    assert_eq!(s.output, first.solved.get(a1).unwrap().output);
}

#[tokio::test]
async fn a_cached_input_found_unusable_is_computed_again_and_its_reader_rerun() {
    let graph = Arc::new(two_chains());
    let cache = Arc::new(MemoryCache::new());
    let first = chain_mock(1);
    let one = solver(&first, cache.clone(), options(2))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();
    // `link`'s record now holds what its reader will find unusable; `assemble` must run (its
    // other input changes), `link` is served from the cache.
    let link = graph
        .vertices
        .iter()
        .position(|v| v.description == "[a] RUN link")
        .map(NodeRef)
        .unwrap();
    cache.put(&one.get(link).unwrap().key, b"poisoned").unwrap();
    let second = chain_mock(1);
    second
        .content
        .lock()
        .unwrap()
        .insert("[b] RUN fetch deps".into(), [9; 32]);
    let two = solver(&second, cache.clone(), options(2))
        .solve(graph.clone(), &[0])
        .await
        .unwrap();
    let calls = second.calls.lock().unwrap().clone();
    let count = |n: &str| calls.iter().filter(|c| *c == n).count();
    assert_eq!(count("[a] RUN link"), 1, "{calls:?}");
    assert_eq!(count("[final] RUN assemble"), 2, "{calls:?}");
    assert_eq!(
        count("[a] RUN compile"),
        0,
        "only the lost input runs: {calls:?}"
    );
    let root = two.get(graph.outputs[0].root).unwrap();
    assert!(
        !String::from_utf8_lossy(&root.output).contains("poisoned"),
        "{}",
        String::from_utf8_lossy(&root.output)
    );
    // The record is replaced by the recomputed result.
    assert_ne!(
        cache.get(&one.get(link).unwrap().key).unwrap().unwrap(),
        b"poisoned"
    );
}

/// `[a] RUN first` and `[a] RUN second` on it; `first`'s output settles 300 ms after it runs.
fn settling_chain() -> (Graph, Mock, NodeRef, NodeRef) {
    let mut b = GraphBuilder::new();
    let first = run(&mut b, "a", "first", 1, &[]);
    let second = run(&mut b, "a", "second", 2, &[first]);
    output(&mut b, "a", second, Vec::new());
    let mut mock = Mock::default();
    mock.settle
        .insert("[a] RUN first".into(), Duration::from_millis(300));
    (b.finish(), mock, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_start_on_an_unsettled_output_and_the_cache_gets_it_settled() {
    let (graph, mock, first, second) = settling_chain();
    let mock = Arc::new(mock);
    let cache = Arc::new(MemoryCache::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // One job: a vertex settling its output takes no slot, or the second could not start.
    let solution = solver(
        &mock,
        cache.clone(),
        SolveOptions {
            events: Some(tx),
            ..options(1)
        },
    )
    .solve(Arc::new(graph.clone()), &[0])
    .await
    .unwrap();
    // The second step ran on what the first left unsettled, before it was settled.
    let log = mock.log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "start [a] RUN first",
            "start [a] RUN second",
            "settled [a] RUN first"
        ],
    );
    assert_eq!(
        solution.get(second).unwrap().output,
        b"[a] RUN second(unsettled:[a] RUN first)"
    );
    // The solution and the cache hold the first step's settled output.
    let first_solved = solution.get(first).unwrap();
    assert_eq!(first_solved.output, b"[a] RUN first");
    assert_eq!(
        cache.get(&first_solved.key).unwrap().as_deref(),
        Some(&b"[a] RUN first"[..])
    );
    // It is reported done once settled: after the second step started.
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let at = |want: &dyn Fn(&Event) -> bool| events.iter().position(want).unwrap();
    let first_done = at(&|e| matches!(e, Event::Done { vertex, .. } if *vertex == first));
    let second_started = at(&|e| matches!(e, Event::Started { vertex, .. } if *vertex == second));
    assert!(second_started < first_done, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_fails_to_settle_fails_its_step_and_is_not_recorded() {
    let (graph, mut mock, first, _) = settling_chain();
    mock.settle_fail.insert("[a] RUN first".into());
    // Still running on the unsettled output when the settling fails: it is cancelled.
    mock.sleep
        .insert("[a] RUN second".into(), Duration::from_secs(30));
    let mock = Arc::new(mock);
    let started = Instant::now();
    let cache = Arc::new(MemoryCache::new());
    let failure = solver(&mock, cache.clone(), options(2))
        .solve(Arc::new(graph), &[0])
        .await
        .unwrap_err();
    match &failure.error {
        SolveError::Step {
            description,
            source,
            ..
        } => {
            assert_eq!(description, "[a] RUN first");
            assert!(source.to_string().contains("no space left"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second step was stopped"
    );
    assert_eq!(*mock.cancelled.lock().unwrap(), ["[a] RUN second"]);
    // The step that failed to settle is neither solved nor recorded; nothing else was finished.
    assert!(failure.solved.get(first).is_none());
    assert!(cache.is_empty());
}
