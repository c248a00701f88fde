//! The `forge` binary: argument parsing, progress display and error rendering. Thin by design.

fn main() {
    println!("forge {}", env!("CARGO_PKG_VERSION"));
}
