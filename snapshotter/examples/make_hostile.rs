//! Writes the hostile layer corpus into testdata/hostile/ (`cargo run -p forge-snapshotter
//! --example make_hostile`). The test `hostile_corpus_is_what_the_generator_makes` keeps the
//! committed files and this generator in step.

#[path = "../tests/common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/hostile");
    std::fs::create_dir_all(&dir)?;
    for case in hostile::cases() {
        for (i, layer) in case.layers.iter().enumerate() {
            std::fs::write(dir.join(format!("{}.{}.tar", case.name, i + 1)), layer)?;
        }
    }
    Ok(())
}
