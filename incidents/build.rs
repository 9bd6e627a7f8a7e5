//! Each incident twice, for `src/main.rs` to include: as on-call finds it, and repaired. An
//! incident is a release gone wrong: `releases/NAME.diff` is that release, a diff of one of the
//! healthy services in `base/` (the one its `---` line names). Applied, it gives the incident's
//! code; its repair is the base itself, so the reference repair is the release reverted. A base
//! is itself a file (`base/sql.rs`) or a diff of another base (`base/cached.diff`: the cache
//! over `sql.rs`), so no code is written twice.

use std::path::Path;

fn main() {
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).to_owned();
    println!("cargo:rerun-if-changed=base");
    println!("cargo:rerun-if-changed=releases");
    let mut names: Vec<String> = std::fs::read_dir("releases")
        .expect("incidents/releases exists")
        .filter_map(|entry| entry.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    for name in &names {
        let diff = std::fs::read_to_string(format!("releases/{name}.diff")).expect("readable release");
        let patch = diffy::Patch::from_str(&diff).unwrap_or_else(|e| panic!("releases/{name}.diff: {e}"));
        let base_name = patch
            .original()
            .and_then(|path| path.strip_prefix("a/"))
            .unwrap_or_else(|| panic!("releases/{name}.diff: its `--- a/BASE.rs` line names no base"));
        let base = base(base_name);
        let code = diffy::apply(&base, &patch).unwrap_or_else(|e| panic!("releases/{name}.diff does not apply: {e}"));
        // What `incident fix` puts in the workbench, whole.
        std::fs::write(out.join(format!("{name}.lib.rs")), &code).expect("writable OUT_DIR");
        // Included into a module: a file's inner doc comments (`//!`) cannot be.
        let strip = |text: &str| text.lines().filter(|l| !l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        std::fs::write(out.join(format!("{name}.rs")), strip(&code)).expect("writable OUT_DIR");
        std::fs::write(out.join(format!("{name}_repaired.rs")), strip(&base)).expect("writable OUT_DIR");
    }
}

/// The healthy service `base/NAME` (`cached.rs`): the file itself, or `base/STEM.diff` applied to
/// the base its `---` line names.
fn base(name: &str) -> String {
    let path = Path::new("base").join(name);
    if path.exists() {
        return std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("base/{name}: {e}"));
    }
    let stem = name.trim_end_matches(".rs");
    let diff = std::fs::read_to_string(format!("base/{stem}.diff"))
        .unwrap_or_else(|e| panic!("base/{name}: neither a file nor base/{stem}.diff: {e}"));
    let patch = diffy::Patch::from_str(&diff).unwrap_or_else(|e| panic!("base/{stem}.diff: {e}"));
    let parent = patch
        .original()
        .and_then(|path| path.strip_prefix("a/"))
        .unwrap_or_else(|| panic!("base/{stem}.diff: its `--- a/BASE.rs` line names no base"));
    diffy::apply(&base(parent), &patch).unwrap_or_else(|e| panic!("base/{stem}.diff does not apply: {e}"))
}
