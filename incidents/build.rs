//! Each incident twice, for `src/main.rs` to include: its code as on-call finds it
//! (`code/NAME.rs`), and repaired (that code with `repairs/NAME.diff` applied). The repair is kept
//! as a diff so it reads as the pull request that fixed the incident, and cannot drift from it.

use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=code");
    println!("cargo:rerun-if-changed=repairs");
    let mut names: Vec<String> = std::fs::read_dir("code")
        .expect("incidents/code exists")
        .filter_map(|entry| entry.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    for name in &names {
        let code = std::fs::read_to_string(format!("code/{name}.rs")).expect("readable code");
        let diff = std::fs::read_to_string(format!("repairs/{name}.diff"))
            .unwrap_or_else(|_| panic!("incidents/repairs/{name}.diff: every incident has a repair"));
        let patch = diffy::Patch::from_str(&diff).unwrap_or_else(|e| panic!("repairs/{name}.diff: {e}"));
        let repaired =
            diffy::apply(&code, &patch).unwrap_or_else(|e| panic!("repairs/{name}.diff does not apply: {e}"));
        // Included into a module: a file's inner doc comments (`//!`) cannot be.
        let strip = |text: &str| text.lines().filter(|l| !l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        std::fs::write(Path::new(&out).join(format!("{name}.rs")), strip(&code)).expect("writable OUT_DIR");
        std::fs::write(Path::new(&out).join(format!("{name}_repaired.rs")), strip(&repaired))
            .expect("writable OUT_DIR");
    }
}
