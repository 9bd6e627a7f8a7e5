//! Building with cargo is read from cargo's messages: the executable it produced, and whether it
//! compiled anything at all.

use kata_services::cargo::{self, Built};

#[test]
fn a_stage_builds_to_its_binary_and_a_second_build_compiles_nothing() {
    let binary = match cargo::build("stage-0").expect("cargo runs") {
        Built::Binary(binary) => binary,
        Built::CompileError(error) => panic!("stage-0 does not compile:\n{error}"),
    };
    assert!(binary.is_file(), "{}", binary.display());
    assert_eq!(binary.file_name().unwrap(), "stage-0");

    let again = cargo::Build::new(["stage-0"]).bin("stage-0").quiet().run(|krate| panic!("{krate} compiled again"));
    let again = again.expect("cargo runs");
    assert!(again.status.success(), "{}", again.stderr);
    assert_eq!(again.compiled, 0);
    assert_eq!(again.executables.get("stage-0"), Some(&binary));
    assert_eq!(again.first_error, None);
}
