//! The registry: every promise, every check and every proven mistake, registered once in
//! `checker/registry.toml` (read at build time). A check's identity is [`CheckId`]; its name, bar,
//! promises, the line the briefs show, its hints and the mistakes that must fail it are data.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::{StageId, Topology};

macro_rules! check_ids {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)+) => {
        /// Every check the checker can report. The registry gives each its data; `checks::run`
        /// gives each its measurement (an exhaustive `match`: a new check without one does not
        /// compile).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum CheckId {
            $($(#[$doc])* $variant,)+
        }

        impl CheckId {
            pub const ALL: &'static [CheckId] = &[$(CheckId::$variant,)+];

            /// The name a learner reads and types (`cargo kata hint cache.stampede`).
            pub fn name(self) -> &'static str {
                match self {
                    $(CheckId::$variant => $name,)+
                }
            }
        }
    };
}

check_ids! {
    /// `cargo build` of a workspace target.
    Builds = "builds",
    /// The process answers `GET /ready`.
    Starts = "starts",
    FeedMatchesOracle = "feed.matches_oracle",
    ErrorsProblemJson = "errors.problem_json",
    PostsReadBack = "posts.read_back",
    QueriesPerRequest = "queries_per_request",
    PlanUsesTimelineIndex = "plan.uses_timeline_index",
    FeedOrderIsTotal = "feed.order_is_total",
    EquivalenceStage0 = "equivalence.stage_0",
    CacheHitRatio = "cache.hit_ratio",
    CacheTtlJitter = "cache.ttl_jitter",
    CacheTtlNotExtended = "cache.ttl_not_extended",
    CacheWarmReadStatements = "cache.warm_read_statements",
    CacheInvalidation = "cache.invalidation",
    CacheRaceFillVsPost = "cache.race_fill_vs_post",
    CacheRaceReadDuringPost = "cache.race_read_during_post",
    CacheStampede = "cache.stampede",
    CacheColdReadLatency = "cache.cold_read_latency",
    RatelimitBurst = "ratelimit.burst",
    RatelimitAcrossInstances = "ratelimit.across_instances",
    RatelimitIsolation = "ratelimit.isolation",
    RatelimitSpoofedHeaders = "ratelimit.spoofed_headers",
    RatelimitReissuedTokens = "ratelimit.reissued_tokens",
    RatelimitSourceAddresses = "ratelimit.source_addresses",
    RatelimitEveryRoute = "ratelimit.every_route",
    RatelimitUnauthenticatedFree = "ratelimit.unauthenticated_free",
    RatelimitHeaders = "ratelimit.headers",
    RatelimitProbesUnlimited = "ratelimit.probes_unlimited",
    RatelimitRefill = "ratelimit.refill",
    RatelimitSteadyClient = "ratelimit.steady_client",
    ClusterFailover = "cluster.failover",
    RedisHung = "redis_hung",
    RedisDown = "redis_down",
    RatelimitFailClosed = "ratelimit.fail_closed",
    PostgresDown = "postgres_down",
}

impl CheckId {
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|id| id.name() == name)
    }

    /// Its entry in the registry.
    pub fn def(self) -> &'static CheckDef {
        &registry().checks[registry().index[&self]]
    }

    /// Hints from a nudge to the fix.
    pub fn hints(self) -> &'static [String] {
        &self.def().hints
    }

    /// What to read when it fails.
    pub fn doc(self) -> &'static str {
        self.def().doc.as_deref().unwrap_or_else(|| self.def().bar.brief())
    }
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CheckId {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|id| id.name()).collect();
            format!("no check `{name}`; the checks are: {}", names.join(", "))
        })
    }
}

impl Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for CheckId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Something a user of the service can observe, as a brief promises it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promise {
    /// `S2.1`: stage 2, promise 1 (`X.1`: the scaled-out topology).
    pub id: String,
    pub bar: StageId,
    pub topology: Option<Topology>,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    pub name: CheckId,
    /// The lowest bar that runs it.
    pub bar: StageId,
    /// Runs only on this topology (`None`: on both).
    pub topology: Option<Topology>,
    pub promises: Vec<String>,
    /// What it measures, as the briefs' bar tables say it.
    pub measures: String,
    /// What to read when it fails (default: its bar's brief).
    pub doc: Option<String>,
    /// The test that shows it failing, for a check no mistake can fail (`builds`, `starts`).
    pub proven_by: Option<String>,
    pub hints: Vec<String>,
}

impl CheckDef {
    fn runs_on(&self, topology: Topology) -> bool {
        self.topology.is_none_or(|t| t == topology)
    }
}

/// Which kind of promise a mistake attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Query,
    Contract,
    Identity,
    Freshness,
    Lifecycle,
    Concurrency,
    Fairness,
}

/// Where a mistake comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// One step of the reference's own design, switched.
    Reference,
    /// A design of its own, written from a brief's promises by an adversary of them.
    Brief,
}

/// A wrong solution in `mistakes/`, graded at one bar and topology.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MistakeCase {
    pub name: String,
    pub bar: StageId,
    #[serde(default)]
    pub topology: Topology,
    pub family: Family,
    pub origin: Origin,
    /// The checks it fails, every time.
    pub fails: Vec<CheckId>,
    /// Checks it may fail or not, depending on timing (the registry says why): never a check
    /// that proves it.
    #[serde(default)]
    pub may_fail: Vec<CheckId>,
    pub symptom: Symptom,
    /// A correct alternative: it must pass its bar.
    #[serde(default)]
    pub correct: bool,
}

/// What the learner reads for a mistake: the summary of `check` matches `pattern`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symptom {
    pub check: CheckId,
    pub pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(rename = "promise")]
    pub promises: Vec<Promise>,
    /// In the order `verify` runs them.
    #[serde(rename = "check")]
    pub checks: Vec<CheckDef>,
    #[serde(rename = "mistake")]
    pub mistakes: Vec<MistakeCase>,
    #[serde(skip)]
    index: BTreeMap<CheckId, usize>,
}

impl Registry {
    fn parse(text: &str) -> Result<Self, String> {
        let mut registry: Registry = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, def) in registry.checks.iter().enumerate() {
            if registry.index.insert(def.name, i).is_some() {
                return Err(format!("check {} is registered twice", def.name));
            }
        }
        if let Some(missing) = CheckId::ALL.iter().find(|id| !registry.index.contains_key(id)) {
            return Err(format!("check {missing} has no entry"));
        }
        Ok(registry)
    }

    pub fn promise(&self, id: &str) -> Option<&Promise> {
        self.promises.iter().find(|p| p.id == id)
    }

    /// The checks that enforce `promise`.
    pub fn enforcing(&self, promise: &str) -> Vec<CheckId> {
        self.checks.iter().filter(|c| c.promises.iter().any(|p| p == promise)).map(|c| c.name).collect()
    }

    /// The mistakes that must fail `check`.
    pub fn failing(&self, check: CheckId) -> Vec<&MistakeCase> {
        self.mistakes.iter().filter(|m| m.fails.contains(&check)).collect()
    }
}

/// The registry, read from `checker/registry.toml` when the checker was built.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        Registry::parse(include_str!("../registry.toml"))
            .unwrap_or_else(|e| panic!("checker/registry.toml is not a valid registry: {e}"))
    });
    &REGISTRY
}

/// The checks of a bar, in the order they run (after `builds` and `starts`): those of every bar
/// up to `bar`, on `topology`.
pub fn planned(bar: StageId, topology: Topology) -> Vec<CheckId> {
    registry()
        .checks
        .iter()
        .filter(|c| c.bar <= bar && c.runs_on(topology) && !matches!(c.name, CheckId::Builds | CheckId::Starts))
        .map(|c| c.name)
        .collect()
}

/// Which part of the registry `cargo kata checks` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The promises, and the checks enforcing each.
    Promises,
    /// The checks, each with what it measures.
    Checks,
    /// The wrong solutions that prove the checks, each with what it must fail.
    Mistakes,
    All,
}

/// The promises of `bar` (every bar: `None`) on `topology`, in registry order.
fn promises_of(bar: Option<StageId>, topology: Topology) -> impl Iterator<Item = &'static Promise> {
    registry()
        .promises
        .iter()
        .filter(move |p| bar.is_none_or(|b| p.bar == b) && p.topology.is_none_or(|t| t == topology))
}

/// The checks that enforce a promise of `bar` on `topology`, in the order they run.
fn checks_of(bar: Option<StageId>, topology: Topology) -> Vec<&'static CheckDef> {
    let promises: Vec<&str> = promises_of(bar, topology).map(|p| p.id.as_str()).collect();
    registry()
        .checks
        .iter()
        .filter(|c| c.runs_on(topology) && c.promises.iter().any(|p| promises.contains(&p.as_str())))
        .filter(|c| !matches!(c.name, CheckId::Builds | CheckId::Starts) || bar.is_none_or(|b| b == StageId::Stage0))
        .collect()
}

/// `cargo kata checks`: the promises and checks of a bar (or of all), as text or as the
/// Markdown the briefs show.
pub fn describe(bar: Option<StageId>, topology: Topology, part: Part, markdown: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let code = |name: &str| if markdown { format!("`{name}`") } else { name.to_owned() };
    if part != Part::Checks {
        if !markdown {
            out.push_str("promises (what a user can observe) and the checks that enforce them:\n");
        }
        for promise in promises_of(bar, topology) {
            let checks: Vec<String> = registry().enforcing(&promise.id).iter().map(|c| code(c.name())).collect();
            let _ = if markdown {
                writeln!(out, "- **{}** {} ({})", promise.id, promise.text, checks.join(", "))
            } else {
                writeln!(out, "  {:<5} {}\n        checked by: {}", promise.id, promise.text, checks.join(", "))
            };
        }
    }
    if part == Part::All {
        out.push('\n');
    }
    if part == Part::Mistakes {
        return mistakes_table(bar, topology, markdown);
    }
    if part != Part::Promises {
        if markdown {
            out.push_str("| check | promise | what it measures |\n|---|---|---|\n");
        } else {
            out.push_str("checks, in the order verify runs them:\n");
        }
        for check in checks_of(bar, topology) {
            let _ = if markdown {
                writeln!(out, "| `{}` | {} | {} |", check.name, check.promises.join(", "), check.measures)
            } else {
                writeln!(out, "  {:<30} {:<9} {}", check.name.name(), check.promises.join(","), check.measures)
            };
        }
    }
    out
}

/// The mistakes graded at `bar` (or every bar) on `topology`: what each attacks, where it comes
/// from, what it must fail, and the symptom its failure must state.
fn mistakes_table(bar: Option<StageId>, topology: Topology, markdown: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if markdown {
        out.push_str(
            "| mistake | bar | attacks | written from | must fail | its summary matches |\n|---|---|---|---|---|---|\n",
        );
    }
    let cases = registry().mistakes.iter().filter(|m| bar.is_none_or(|b| m.bar == b) && m.topology == topology);
    for case in cases {
        let fails = if case.correct {
            "nothing: a correct alternative, it must pass".to_owned()
        } else {
            case.fails
                .iter()
                .map(|c| if markdown { format!("`{c}`") } else { c.name().to_owned() })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let origin = match case.origin {
            Origin::Reference => "the reference's design",
            Origin::Brief => "the brief, another design",
        };
        let family =
            serde_json::to_value(case.family).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = if markdown {
            writeln!(
                out,
                "| `{}` | {} | {family} | {origin} | {fails} | `{}`: {} |",
                case.name,
                case.bar,
                case.symptom.check,
                code_span(&case.symptom.pattern.replace('|', "\\|"))
            )
        } else {
            writeln!(out, "  {:<28} {} {:<11} fails {fails}", case.name, case.bar, family)
        };
    }
    out
}

/// `text` as a Markdown code span: fenced with two backticks (and spaces) when it holds one.
fn code_span(text: &str) -> String {
    if text.contains('`') { format!("`` {text} ``") } else { format!("`{text}`") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_parses_and_names_every_check_once() {
        let registry = registry();
        assert_eq!(registry.checks.len(), CheckId::ALL.len());
        for id in CheckId::ALL {
            assert_eq!(id.def().name, *id);
            assert_eq!(id.name().parse::<CheckId>(), Ok(*id));
        }
    }

    #[test]
    fn a_check_entry_missing_from_the_file_is_an_error() {
        let text = include_str!("../registry.toml");
        let start = text.find("[[check]]\nname = \"cache.stampede\"").expect("stampede's entry");
        let end = start + 1 + text[start + 1..].find("\n[[").expect("an entry after it");
        let without = format!("{}{}", &text[..start], &text[end + 1..]);
        let error = Registry::parse(&without).unwrap_err();
        assert!(error.contains("cache.stampede has no entry"), "{error}");
    }

    #[test]
    fn a_check_entry_written_twice_is_an_error() {
        let text = include_str!("../registry.toml");
        let twice = text.replacen("name = \"cache.stampede\"", "name = \"cache.hit_ratio\"", 1);
        let error = Registry::parse(&twice).unwrap_err();
        assert!(error.contains("registered twice"), "{error}");
    }

    #[test]
    fn every_stage_bar_runs_the_checks_of_the_bars_below_it() {
        let one = planned(StageId::Stage1, Topology::Single);
        let three = planned(StageId::Stage3, Topology::Single);
        assert!(one.iter().all(|c| three.contains(c)));
        assert_eq!(three.last(), Some(&CheckId::PostgresDown), "postgres_down runs last: it restarts Postgres");
        assert!(!three.contains(&CheckId::ClusterFailover));
        assert!(planned(StageId::Stage3, Topology::Cluster).contains(&CheckId::ClusterFailover));
    }
}
