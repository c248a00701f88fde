//! Benchmark: parse + lower a generated 2,000-line multi-stage Dockerfile (std::time, no harness).
//!
//! `cargo bench -p forge-builder --bench parse_lower` prints per-phase timings;
//! `... -- --write PATH` only writes the generated Dockerfile (benches/parse.sh feeds it to hyperfine).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use forge_builder::frontend::dockerfile::lower::{LowerOptions, lower};
use forge_builder::frontend::dockerfile::parser;
use forge_builder::graph::Platform;

/// A Dockerfile of about `lines` lines: 20 stages using every instruction kind, stage references,
/// cache/secret/bind mounts, heredocs and variables, so both parse and lower are exercised.
fn generate(lines: usize) -> String {
    let mut s =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\nARG VERSION=1.0\n");
    let stages = 20;
    let per_stage = lines / stages;
    for st in 0..stages {
        let base = if st % 4 == 0 {
            "${BASE}".to_string()
        } else {
            format!("s{}", st - 1)
        };
        let _ = writeln!(s, "FROM {base} AS s{st}");
        let _ = writeln!(s, "ARG VERSION");
        let mut n = 2;
        let mut i = 0;
        while n < per_stage {
            match i % 10 {
                0 => {
                    let _ = writeln!(s, "ENV VAR_{st}_{i}=value-{i} PATH_{i}=/opt/{st}/$VERSION");
                }
                1 => {
                    let _ = writeln!(
                        s,
                        "RUN --mount=type=cache,target=/var/cache/{st}/{i},sharing=locked \\\n    --mount=type=secret,id=tok{i},env=TOKEN \\\n    echo step {i} && make -j4 target-{i}"
                    );
                    n += 2;
                }
                2 => {
                    let _ = writeln!(s, "WORKDIR /work/s{st}/$VAR_{st}_{}", i - 2);
                }
                3 => {
                    let _ = writeln!(s, "COPY --chown=1000:1000 src/{st}/{i}/ ./dir{i}/");
                }
                4 => {
                    let _ = writeln!(
                        s,
                        "LABEL stage.{st}.item.{i}=\"value {i}\" version=$VERSION"
                    );
                }
                5 => {
                    let _ = writeln!(s, "RUN <<EOF\nset -e\necho heredoc {i}\ntouch /f{i}\nEOF");
                    n += 4;
                }
                6 if st > 0 => {
                    let _ = writeln!(s, "COPY --from=s{} /work /from-prev/{i}", st - 1);
                }
                7 => {
                    let _ = writeln!(s, "EXPOSE {}/tcp", 8000 + i);
                }
                8 => {
                    let _ = writeln!(s, "ARG OPT_{i}=default-{i}");
                }
                _ => {
                    let _ = writeln!(s, "RUN [\"/bin/echo\", \"exec form {i}\"]");
                }
            }
            n += 1;
            i += 1;
        }
    }
    s.push_str("CMD [\"/bin/app\"]\n");
    s
}

fn options() -> LowerOptions<'static> {
    LowerOptions {
        target_platform: Platform::parse("linux/amd64").expect("valid platform"),
        build_platform: Platform::parse("linux/amd64").expect("valid platform"),
        ..LowerOptions::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let src = generate(2000);
    if let Some(i) = args.iter().position(|a| a == "--write") {
        let path = args.get(i + 1).expect("--write PATH");
        std::fs::write(path, &src).expect("write the generated Dockerfile");
        return;
    }
    let opts = options();
    // Check once that it lowers, and say what is measured.
    let df = parser::parse(&src).expect("the generated Dockerfile parses");
    let lowered = lower(&df, &opts).expect("the generated Dockerfile lowers");
    println!(
        "input: {} lines, {} instructions -> {} vertices",
        src.lines().count(),
        df.children.len(),
        lowered.graph.vertices.len()
    );
    let iters = 50;
    let mut parse_t = Vec::new();
    let mut lower_t = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let df = black_box(parser::parse(black_box(&src)).expect("parses"));
        parse_t.push(t.elapsed());
        let t = Instant::now();
        black_box(lower(&df, &opts).expect("lowers"));
        lower_t.push(t.elapsed());
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        (v[0], v[v.len() / 2], mean)
    };
    let (pmin, pmed, pmean) = stats(&mut parse_t);
    let (lmin, lmed, lmean) = stats(&mut lower_t);
    println!("parse: min {pmin:?}  median {pmed:?}  mean {pmean:?}  ({iters} runs)");
    println!("lower: min {lmin:?}  median {lmed:?}  mean {lmean:?}  ({iters} runs)");
    println!("parse+lower median: {:?}", pmed + lmed);
}
