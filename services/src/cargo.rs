//! Building the workspace's programs with cargo, as separate programs: the checker and the load
//! test never link the code they measure, so an implementation that does not compile is a result
//! to report, not a tool that does not build.
//!
//! Everything is read from cargo's JSON messages (`--message-format=json`, parsed by
//! `cargo_metadata`), never from its human output: which executable a build produced, whether it
//! compiled anything, and the compiler's first error as rustc rendered it.

use std::collections::BTreeMap;
use std::io::{BufReader, IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Context as _;
use cargo_metadata::Message;
use cargo_metadata::diagnostic::DiagnosticLevel;

/// The workspace root: where `cargo build -p …` runs. `cargo run` (and so `cargo kata`) and the
/// test runners say at run time where the running crate's manifest is, and a crate at the top of
/// this workspace (`checker/`, `loadtest/`, `services/`) has the root as its parent: that is
/// the root of the copy being run. A binary started directly falls back to where this crate was
/// compiled.
pub fn workspace() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|manifest| manifest.parent().map(Path::to_path_buf))
        .filter(|root| root.join("services/Cargo.toml").is_file() && root.join("Cargo.toml").is_file())
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("services/ has a parent").to_path_buf()
        })
}

/// What a build of one program produced.
#[derive(Debug)]
pub enum Built {
    /// The binary, fresh.
    Binary(PathBuf),
    /// The compiler refused: its first error, as rustc rendered it (file:line, message, the
    /// offending line), in colour when our stderr is a terminal.
    CompileError(String),
}

/// `cargo build -p <package> --bin <package>` in the caller's own profile (debug or release), so
/// the build is a no-op when nothing changed. Cargo's progress goes to stderr as usual.
pub fn build(package: &str) -> anyhow::Result<Built> {
    build_with(package, false)
}

/// [`build`]; `quiet`: cargo's own output kept off the terminal, for a caller that prints only
/// the outcome (the compiler's first error is in [`Built::CompileError`] either way).
fn build_with(package: &str, quiet: bool) -> anyhow::Result<Built> {
    let build = Build::new([package]).bin(package);
    let build = if quiet { build.quiet() } else { build }.run(|_| {})?;
    match (build.status.success(), build.executables.get(package), build.first_error) {
        (true, Some(binary), _) => Ok(Built::Binary(binary.clone())),
        (_, _, Some(error)) => Ok(Built::CompileError(error)),
        (success, _, None) => {
            anyhow::bail!(
                "`cargo build -p {package}` {} without a binary or a compiler error ({})",
                if success { "finished" } else { "failed" },
                build.status
            )
        }
    }
}

/// [`build`] on a blocking thread, for async callers: cargo can take minutes. `quiet`: cargo's
/// own output kept off the terminal (the compiler's first error is in the result either way).
pub async fn build_async(package: &str, quiet: bool) -> anyhow::Result<Built> {
    let package = package.to_owned();
    tokio::task::spawn_blocking(move || build_with(&package, quiet)).await?
}

/// One `cargo build` of several packages at once (their features unified, as cargo does for
/// one invocation), before it runs. [`build`] is the common case: one program.
#[derive(Debug, Clone)]
pub struct Build {
    packages: Vec<String>,
    bins: Vec<String>,
    /// Keep cargo's own output (stderr) instead of showing it, for a caller that shows progress
    /// of its own; it is in [`Finished::stderr`].
    quiet: bool,
}

/// What cargo said about a build, once it is over.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The executables built, or found up to date, by target name.
    pub executables: BTreeMap<String, PathBuf>,
    /// How many crates this build compiled, a package's library and binary each counting as
    /// one (0: everything was up to date).
    pub compiled: usize,
    /// The compiler's first error with a place in the code, as rustc rendered it.
    pub first_error: Option<String>,
    /// Cargo's own output, when the build was [`Build::quiet`] (empty otherwise).
    pub stderr: String,
}

impl Build {
    pub fn new<S: Into<String>>(packages: impl IntoIterator<Item = S>) -> Self {
        Self { packages: packages.into_iter().map(Into::into).collect(), bins: Vec::new(), quiet: false }
    }

    /// Build only this binary target (`--bin`), not every target of the packages.
    pub fn bin(mut self, name: impl Into<String>) -> Self {
        self.bins.push(name.into());
        self
    }

    /// Keep cargo's output off the terminal (see [`Finished::stderr`]).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The arguments after `cargo`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        for package in &self.packages {
            args.extend(["-p".to_owned(), package.clone()]);
        }
        for bin in &self.bins {
            args.extend(["--bin".to_owned(), bin.clone()]);
        }
        if !cfg!(debug_assertions) {
            args.push("--release".into());
        }
        args
    }

    /// Run cargo in the [`workspace`] and read its messages; `on_compiled` is told the name of
    /// each crate as it finishes compiling (crates that were up to date are not compiled).
    pub fn run(&self, mut on_compiled: impl FnMut(&str)) -> anyhow::Result<Finished> {
        let colour = !self.quiet && std::io::stderr().is_terminal();
        let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(self.args())
            .arg(if colour { "--message-format=json-diagnostic-rendered-ansi" } else { "--message-format=json" })
            .current_dir(workspace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.quiet { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .context("running cargo (is it on PATH?)")?;
        // Read stderr beside stdout, or a chatty cargo would fill the pipe and wait forever.
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        let (mut executables, mut compiled, mut first_error) = (BTreeMap::new(), 0, None);
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        for message in Message::parse_stream(stdout) {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    // A message we cannot read: cargo is not left building behind our back.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("reading cargo's messages");
                }
            };
            match message {
                Message::CompilerArtifact(artifact) => {
                    // A build script's own compilation is not a crate of the build.
                    let build_script = artifact.target.kind.iter().any(|k| k.to_string() == "custom-build");
                    if !artifact.fresh && !build_script {
                        compiled += 1;
                        on_compiled(&artifact.target.name);
                    }
                    if let Some(executable) = artifact.executable {
                        executables.insert(artifact.target.name.clone(), executable.into_std_path_buf());
                    }
                }
                // "aborting due to …" is an error without a place; the first real one has spans.
                Message::CompilerMessage(message)
                    if first_error.is_none()
                        && message.message.level == DiagnosticLevel::Error
                        && !message.message.spans.is_empty() =>
                {
                    first_error = message.message.rendered.map(|r| r.trim_end().to_owned());
                }
                _ => {}
            }
        }
        let status = child.wait()?;
        let stderr = stderr.map(|reader| reader.join().unwrap_or_default()).unwrap_or_default();
        Ok(Finished { status, executables, compiled, first_error, stderr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_is_the_folder_above_services() {
        let root = workspace();
        assert!(root.join("services/Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("checker/Cargo.toml").is_file(), "{}", root.display());
    }

    #[test]
    fn a_build_names_its_packages_and_binaries_in_this_profile() {
        let args = Build::new(["loadtest", "stage-2"]).bin("stage-2").args();
        let mut expected = vec!["build", "-p", "loadtest", "-p", "stage-2", "--bin", "stage-2"];
        if !cfg!(debug_assertions) {
            expected.push("--release");
        }
        assert_eq!(args, expected);
    }
}
