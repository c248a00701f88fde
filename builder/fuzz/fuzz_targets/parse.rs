//! Fuzz target for the Dockerfile parser: any input must parse or fail cleanly, the dump and the
//! error rendering must not panic, and a tree's dump re-parsed must not panic either.
#![no_main]

use forge_builder::frontend::dockerfile::{dump, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    match parse(&source) {
        Ok(df) => {
            let text = dump(&df);
            // The dump is not Dockerfile syntax, but it is text the parser must survive.
            let _ = parse(&text);
            for node in &df.children {
                let _ = node.keyword();
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
