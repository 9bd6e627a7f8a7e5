//! What `verify` prints: one line per check, and for each failure what was expected, what was
//! measured, the evidence, a hint and where to read next.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// Not run (for example: it needs a second instance, or a Redis the checker owns).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    pub measured: Value,
    pub expected: Value,
    /// One line a learner reads first.
    pub summary: String,
    /// The raw evidence (statements and calls, headers seen, counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

impl Check {
    pub fn new(
        name: &str,
        passed: bool,
        measured: impl Serialize,
        expected: impl Serialize,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            passed,
            skipped: false,
            measured: serde_json::to_value(measured).unwrap_or(Value::Null),
            expected: serde_json::to_value(expected).unwrap_or(Value::Null),
            summary: summary.into(),
            evidence: None,
            hint: None,
            doc: None,
        }
    }

    pub fn skipped(name: &str, why: impl Into<String>) -> Self {
        Self { skipped: true, passed: true, ..Self::new(name, true, Value::Null, Value::Null, why) }
    }

    /// A check that could not be measured because something went wrong on the way.
    pub fn errored(name: &str, error: &anyhow::Error) -> Self {
        Self::new(name, false, Value::Null, Value::Null, format!("could not measure: {error:#}"))
    }

    /// Evidence is kept for failed checks only: a pass needs none, and a failure needs all of it.
    pub fn evidence(mut self, evidence: impl Into<String>) -> Self {
        if !self.passed {
            self.evidence = Some(evidence.into());
        }
        self
    }

    /// Hint and doc are shown only when the check fails.
    pub fn on_failure(mut self, hint: &str, doc: &str) -> Self {
        if !self.passed {
            self.hint = Some(hint.to_owned());
            self.doc = Some(doc.to_owned());
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The bar: `verify stage-N` runs the checks of stages 0..=N.
    pub stage: String,
    pub target: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub metrics: BTreeMap<String, Value>,
    /// The setting every latency in this report was measured with.
    pub environment: BTreeMap<String, Value>,
    /// Diagnosis a senior would show: top statements, plans.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnosis: Vec<String>,
}

impl Report {
    pub fn new(stage: &str, target: &str) -> Self {
        Self {
            stage: stage.to_owned(),
            target: target.to_owned(),
            passed: false,
            checks: Vec::new(),
            metrics: BTreeMap::new(),
            environment: BTreeMap::new(),
            diagnosis: Vec::new(),
        }
    }

    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
        self.passed = self.checks.iter().all(|c| c.passed);
    }

    pub fn metric(&mut self, name: &str, value: impl Serialize) {
        self.metrics.insert(name.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// The text a learner reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let env: Vec<String> = self.environment.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
        let _ = writeln!(out, "checker verify {} --target {}   ({})", self.stage, self.target, env.join(", "));
        out.push('\n');
        for check in &self.checks {
            let mark = if check.skipped {
                "SKIP"
            } else if check.passed {
                "PASS"
            } else {
                "FAIL"
            };
            let _ = writeln!(out, "  {mark}  {:<30} {}", check.name, check.summary);
            if !check.passed || check.skipped {
                if let Some(evidence) = &check.evidence {
                    for line in evidence.lines() {
                        let _ = writeln!(out, "          | {line}");
                    }
                }
                if let Some(hint) = &check.hint {
                    let _ = writeln!(out, "          hint: {hint}");
                }
                if let Some(doc) = &check.doc {
                    let _ = writeln!(out, "          read: {doc}");
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
        let skipped = self.checks.iter().filter(|c| c.skipped).count();
        if failed == 0 && skipped > 0 {
            let _ = writeln!(
                out,
                "{}: {} checks passed, {skipped} skipped (not measured; see SKIP above).",
                self.stage,
                self.checks.len() - skipped
            );
        } else if failed == 0 {
            let _ = writeln!(out, "{}: all {} checks passed.", self.stage, self.checks.len());
        } else {
            let first = self.failed().next().and_then(|c| c.doc.clone()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{}: {failed} of {} checks failed. Next: read {first}, or run `checker hint {}` for a nudge.",
                self.stage,
                self.checks.len(),
                self.stage
            );
        }
        out
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
