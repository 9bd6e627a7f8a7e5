//! What `verify` prints: one line per check, and for each failure what was expected, what was
//! measured, the evidence, and where to read next.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::StageId;
use crate::registry::{CheckId, registry};

/// What became of one check. Only `Pass` counts towards a bar; nothing else is a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Its premise is absent (no cached timeline to invalidate, no cache to lose): it proves
    /// nothing either way, and the summary says why.
    NotApplicable,
    /// It cannot be measured against this kind of target (a service somebody else started: the
    /// checker cannot stop its Redis or start a second instance).
    NotProven,
    /// An earlier failure (it does not compile, it never became ready) stopped the run.
    NotRun,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NotApplicable => "N/A",
            Self::NotProven => "UNPROVEN",
            Self::NotRun => "NOT RUN",
        }
    }
}

/// The bar's outcome, and `verify`'s exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed (exit 0).
    Pass,
    /// At least one check failed (exit 1).
    Fail,
    /// Nothing failed, but not every check could be run or applied (exit 3): not a pass.
    NotProven,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Pass => 0,
            Self::Fail => 1,
            Self::NotProven => 3,
        }
    }
}

/// What a measured number must be. A check's verdict and the `expected` it prints both come from
/// this one value, so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expectation {
    Exactly(f64),
    AtMost(f64),
    AtLeast(f64),
    /// Inclusive at both ends.
    Between(f64, f64),
}

impl Expectation {
    pub fn holds(self, measured: f64) -> bool {
        match self {
            Self::Exactly(x) => measured == x,
            Self::AtMost(x) => measured <= x,
            Self::AtLeast(x) => measured >= x,
            Self::Between(low, high) => (low..=high).contains(&measured),
        }
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |x: f64| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x}") };
        match *self {
            Self::Exactly(x) => write!(f, "{}", n(x)),
            Self::AtMost(x) => write!(f, "at most {}", n(x)),
            Self::AtLeast(x) => write!(f, "at least {}", n(x)),
            Self::Between(low, high) => write!(f, "{}..={}", n(low), n(high)),
        }
    }
}

impl Serialize for Expectation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    #[serde(rename = "name")]
    pub id: CheckId,
    /// The promises it enforces (registry.toml), so a failure says which one is broken.
    pub promises: &'static [String],
    pub status: Status,
    pub measured: Value,
    pub expected: Value,
    /// One line a learner reads first.
    pub summary: String,
    /// The raw evidence (statements and calls, headers seen, counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Where to read when it fails: the registry's page for it, unless the check knows better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// How long the check took, in ms (what a slow target costs, check by check).
    pub elapsed_ms: u64,
}

impl Check {
    pub fn new(
        id: CheckId,
        passed: bool,
        measured: impl Serialize,
        expected: impl Serialize,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            id,
            promises: &id.def().promises,
            status: if passed { Status::Pass } else { Status::Fail },
            measured: serde_json::to_value(measured).unwrap_or(Value::Null),
            expected: serde_json::to_value(expected).unwrap_or(Value::Null),
            summary: summary.into(),
            evidence: None,
            doc: (!passed).then(|| id.doc().to_owned()),
            elapsed_ms: 0,
        }
    }

    /// A number held against its expectation: passes exactly when the expectation holds.
    pub fn measure(id: CheckId, measured: f64, expected: Expectation, summary: impl Into<String>) -> Self {
        Self::new(id, expected.holds(measured), measured, expected, summary)
    }

    fn with_status(id: CheckId, status: Status, why: impl Into<String>) -> Self {
        Self { status, doc: None, ..Self::new(id, false, Value::Null, Value::Null, why) }
    }

    /// Cannot be measured against this target; `why` says what would prove it.
    pub fn not_proven(id: CheckId, why: impl Into<String>) -> Self {
        Self::with_status(id, Status::NotProven, why)
    }

    /// Its premise is absent; `why` names what is missing.
    pub fn not_applicable(id: CheckId, why: impl Into<String>) -> Self {
        Self::with_status(id, Status::NotApplicable, why)
    }

    pub fn not_run(id: CheckId, why: impl Into<String>) -> Self {
        Self::with_status(id, Status::NotRun, why)
    }

    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }

    /// A check that could not be measured because something went wrong on the way.
    pub fn errored(id: CheckId, error: &anyhow::Error) -> Self {
        Self::new(id, false, Value::Null, Value::Null, format!("could not measure: {error:#}"))
    }

    /// Evidence is kept for failed checks only: a pass needs none, and a failure needs all of it.
    pub fn evidence(mut self, evidence: impl Into<String>) -> Self {
        if self.status == Status::Fail {
            self.evidence = Some(evidence.into());
        }
        self
    }

    /// Read this instead of the registry's page, when it fails. Hints are not printed with a
    /// failure; the learner asks for them, one at a time (`cargo kata hint <check>`).
    pub fn on_failure(mut self, doc: &str) -> Self {
        if self.status == Status::Fail {
            self.doc = Some(doc.to_owned());
        }
        self
    }

    /// The name a learner reads.
    pub fn name(&self) -> &'static str {
        self.id.name()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The bar: `verify stage-N` runs the checks of stages 0..=N.
    pub stage: StageId,
    pub target: String,
    /// How the target was named on the command line (`--target stage-1`, `--cmd "…"`, `--url …`).
    pub invocation: String,
    pub verdict: Verdict,
    /// True only when every check passed.
    pub passed: bool,
    pub checks: Vec<Check>,
    pub metrics: BTreeMap<String, Value>,
    /// The setting every latency in this report was measured with.
    pub environment: BTreeMap<String, Value>,
    /// Diagnosis a senior would show: top statements, plans.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnosis: Vec<String>,
    /// Only some checks of the bar ran (`verify --only`): never a verdict on the bar.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl Report {
    pub fn new(stage: StageId, target: &str, invocation: &str) -> Self {
        Self {
            stage,
            target: target.to_owned(),
            invocation: invocation.to_owned(),
            verdict: Verdict::Fail,
            passed: false,
            checks: Vec::new(),
            metrics: BTreeMap::new(),
            environment: BTreeMap::new(),
            diagnosis: Vec::new(),
            partial: false,
        }
    }

    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
        self.verdict = if self.checks.iter().any(|c| c.status == Status::Fail) {
            Verdict::Fail
        } else if self.checks.iter().all(Check::passed) && !self.partial {
            Verdict::Pass
        } else {
            Verdict::NotProven
        };
        self.passed = self.verdict == Verdict::Pass;
    }

    pub fn metric(&mut self, name: &str, value: impl Serialize) {
        self.metrics.insert(name.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// Checks neither passed nor failed: not applicable, not proven, not run.
    pub fn unresolved(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !matches!(c.status, Status::Pass | Status::Fail))
    }

    /// The promises a failed check breaks at this bar: of those it enforces, the ones of the
    /// highest bar up to this one (stage-1's "at most 2 statements" is not stage-0's to break,
    /// and stage-0's "the incident reproduces" is kept by the code stage-1 fails).
    fn broken(&self, check: &Check) -> Vec<&'static crate::registry::Promise> {
        let promises: Vec<_> =
            check.promises.iter().filter_map(|id| registry().promise(id)).filter(|p| p.bar <= self.stage).collect();
        let highest = promises.iter().map(|p| p.bar).max();
        promises.into_iter().filter(|p| Some(p.bar) == highest).collect()
    }

    /// The text a learner reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let env: Vec<String> = self.environment.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
        let _ = writeln!(out, "cargo kata verify {} {}   ({})", self.stage, self.invocation, env.join(", "));
        out.push('\n');
        for check in &self.checks {
            let _ = writeln!(out, "  {:<8}  {:<30} {}", check.status.mark(), check.name(), check.summary);
            if check.status == Status::Fail {
                if let Some(evidence) = &check.evidence {
                    for line in evidence.lines() {
                        let _ = writeln!(out, "          | {line}");
                    }
                }
                for promise in self.broken(check) {
                    let _ = writeln!(out, "          broken: {} {}", promise.id, promise.text);
                }
                if let Some(doc) = &check.doc {
                    let _ = writeln!(out, "          read: {doc}   hints: `cargo kata hint {}`", check.name());
                }
            }
        }
        if !self.metrics.is_empty() {
            out.push_str("\nmeasured:\n");
            for (name, value) in &self.metrics {
                let _ = writeln!(out, "  {name:<34} {}", plain(value));
            }
        }
        for block in &self.diagnosis {
            out.push('\n');
            out.push_str(block);
            if !block.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push('\n');
        let failed = self.failed().count();
        let unresolved = self.unresolved().count();
        let total = self.checks.len();
        if self.partial {
            let _ = writeln!(
                out,
                "{}: {} of the {total} checks run passed, {failed} failed. Only some of the bar's checks ran (--only): \
                 run without it for the bar's verdict.",
                self.stage,
                total - failed - unresolved,
            );
            return out;
        }
        match self.verdict {
            Verdict::Pass => {
                let _ = writeln!(out, "{}: all {total} checks passed. {}", self.stage, after_pass(self.stage));
            }
            Verdict::Fail => {
                let first_failed = self.failed().next();
                let check = first_failed.map_or("", Check::name);
                let read =
                    first_failed.and_then(|c| c.doc.as_deref()).map_or(String::new(), |doc| format!("read {doc}, or "));
                let others =
                    if unresolved > 0 { format!(" ({unresolved} not run or not applicable)") } else { String::new() };
                let _ = writeln!(
                    out,
                    "{}: {failed} of {total} checks failed{others}. Next: {read}run `cargo kata hint {check}` for a nudge.",
                    self.stage
                );
            }
            Verdict::NotProven => {
                let _ = writeln!(
                    out,
                    "{}: NOT PROVEN. {} of {total} checks passed and none failed, but {unresolved} could not be \
                     measured or did not apply; each says why above, and what would prove it.",
                    self.stage,
                    total - unresolved,
                );
            }
        }
        out
    }
}

/// What a learner gets once a bar passes: the walkthrough of the reference fix, which no brief
/// links to before (the solution is offered, not shown on the way). Stage-0's bar is the shipped
/// service, which passes from the start: its next step is a diagnosis, not an answer.
pub fn after_pass(bar: StageId) -> String {
    match bar.previous() {
        None => "Next: say why it is slow, `cargo kata diagnose --help` (docs/stage-0.md).".to_owned(),
        Some(before) => format!(
            "The reference fix, explained: docs/walkthrough/{bar}.md; its code: `diff -r stages/{before} stages/{bar}`."
        ),
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            n.as_f64().filter(|f| f.fract() != 0.0).map_or_else(|| n.to_string(), |f| format!("{f:.3}"))
        }
        other => other.to_string(),
    }
}
