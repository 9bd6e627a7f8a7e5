//! What is being verified: a stage or the workbench (built and started by the checker), any
//! command (started by the checker), or a service somebody else runs (by URL).

/// The reference stages, and the bars named after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum StageId {
    #[value(name = "stage-0", alias = "0")]
    #[serde(rename = "stage-0")]
    Stage0,
    #[value(name = "stage-1", alias = "1")]
    #[serde(rename = "stage-1")]
    Stage1,
    #[value(name = "stage-2", alias = "2")]
    #[serde(rename = "stage-2")]
    Stage2,
    #[value(name = "stage-3", alias = "3")]
    #[serde(rename = "stage-3")]
    Stage3,
}

impl StageId {
    pub const ALL: [StageId; 4] = [Self::Stage0, Self::Stage1, Self::Stage2, Self::Stage3];

    pub fn name(self) -> &'static str {
        ["stage-0", "stage-1", "stage-2", "stage-3"][self as usize]
    }

    /// The brief of this bar.
    pub fn brief(self) -> &'static str {
        ["docs/stage-0.md", "docs/stage-1.md", "docs/stage-2.md", "docs/stage-3.md"][self as usize]
    }

    /// The bar below, whose reference this bar's fix starts from (`None` for stage-0).
    pub fn previous(self) -> Option<Self> {
        (self as usize).checked_sub(1).map(|n| Self::ALL[n])
    }
}

/// Where the implementation's instances run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// The instances share one Redis.
    #[default]
    Single,
    /// Three instances behind HAProxy, on a Redis Cluster.
    Cluster,
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An implementation in this workspace (a stage or the workbench), one type for the checker and
/// the load test.
pub use kata_services::Implementation;

/// A bar by its number: [`Implementation::reference`] of it is the bar's reference stage.
impl From<StageId> for usize {
    fn from(stage: StageId) -> usize {
        stage as usize
    }
}

/// The implementation under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// Built with cargo from this workspace and started by the checker.
    Implementation(Implementation),
    /// Any program (any language), started by the checker with `sh -c`: the full suite runs,
    /// because the checker owns the process and the services around it.
    Cmd(String),
    /// Implementations somebody else started, at these base URLs, sharing the checker's
    /// `DATABASE_URL` and `REDIS_URL`. What needs the process or the services in hand (a second
    /// instance, stopping Redis, a race held in the database proxy) cannot be proven this way.
    Urls(Vec<String>),
}

impl Target {
    /// What the report calls it.
    pub fn label(&self) -> String {
        match self {
            Self::Implementation(implementation) => implementation.name().to_owned(),
            Self::Cmd(command) => command.clone(),
            Self::Urls(urls) => urls.join(","),
        }
    }

    /// The command-line words that name it.
    pub fn invocation(&self) -> String {
        match self {
            Self::Implementation(implementation) => format!("--target {}", implementation.name()),
            Self::Cmd(command) => format!("--cmd {command:?}"),
            Self::Urls(urls) => urls.iter().map(|u| format!("--url {u}")).collect::<Vec<_>>().join(" "),
        }
    }

    /// "stage-1", or "the target" for anything outside the workspace.
    pub fn short_name(&self) -> &str {
        match self {
            Self::Implementation(implementation) => implementation.name(),
            _ => "the target",
        }
    }
}
