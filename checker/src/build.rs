//! Building an implementation with cargo, as a separate program: the checker never links the code
//! it grades, so a workbench that does not compile is a result to report, not a checker that
//! does not build.

use std::io::{BufRead as _, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// The workspace the checker belongs to: where `cargo build -p …` runs. `cargo run` (and so
/// `cargo kata`) and the test runners say where the checker's manifest is at run time; a binary
/// started directly falls back to where it was compiled.
pub fn workspace() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.ends_with("checker"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("checker/ has a parent").to_path_buf()
}

/// What a build produced.
pub enum Built {
    /// The binary, fresh.
    Binary(PathBuf),
    /// The compiler refused: its first error, as rustc rendered it (file:line, message, the
    /// offending line), in colour when the checker's output is a terminal.
    CompileError(String),
}

/// `cargo build -p <package>` in the checker's own profile (debug or release), so the build is a
/// no-op when nothing changed. Cargo's progress goes to stderr as usual.
pub fn build(package: &str) -> anyhow::Result<Built> {
    let colour = std::io::stderr().is_terminal();
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(["build", "-p", package, "--bin", package])
        .arg(if colour { "--message-format=json-diagnostic-rendered-ansi" } else { "--message-format=json" })
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let mut child = command.spawn().context("running cargo (is it on PATH?)")?;
    let (mut binary, mut first_error) = (None, None);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line?) else { continue };
        match message["reason"].as_str() {
            Some("compiler-artifact") if message["target"]["name"] == package => {
                binary = message["executable"].as_str().map(PathBuf::from).or(binary);
            }
            Some("compiler-message") if first_error.is_none() => {
                let diagnostic = &message["message"];
                // "aborting due to …" is an error without a place; the first real one has spans.
                let placed = diagnostic["spans"].as_array().is_some_and(|s| !s.is_empty());
                if diagnostic["level"] == "error" && placed {
                    first_error = diagnostic["rendered"].as_str().map(|r| r.trim_end().to_owned());
                }
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    match (status.success(), binary, first_error) {
        (true, Some(binary), _) => Ok(Built::Binary(binary)),
        (_, _, Some(error)) => Ok(Built::CompileError(error)),
        (success, _, None) => {
            anyhow::bail!(
                "`cargo build -p {package}` {} without a binary or a compiler error ({status})",
                if success { "finished" } else { "failed" }
            )
        }
    }
}

/// [`build`] on a blocking thread, for async callers: cargo can take minutes.
pub async fn build_async(package: &str) -> anyhow::Result<Built> {
    let package = package.to_owned();
    tokio::task::spawn_blocking(move || build(&package)).await?
}
