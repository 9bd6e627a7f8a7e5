//! What is being verified: a reference stage run in-process, or any implementation by URL.

/// The reference stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
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
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An implementation the checker can start in-process: a reference stage, or your workbench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Implementation {
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
    /// `workbench/`: your own fix.
    Workbench,
}

impl Implementation {
    pub fn name(self) -> &'static str {
        ["stage-0", "stage-1", "stage-2", "stage-3", "workbench"][self as usize]
    }

    /// The reference implementation of a bar.
    pub fn reference(stage: StageId) -> Self {
        [Self::Stage0, Self::Stage1, Self::Stage2, Self::Stage3][stage as usize]
    }

    /// Build the app with its default settings.
    pub async fn build(self, ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
        match self {
            Self::Stage0 => stage_0::stage(ctx).await,
            Self::Stage1 => stage_1::stage(ctx).await,
            Self::Stage2 => stage_2::stage(ctx, stage_2::CacheConfig::default()).await,
            Self::Stage3 => {
                stage_3::stage(ctx, stage_2::CacheConfig::default(), stage_3::RateLimitConfig::default()).await
            }
            Self::Workbench => workbench::stage(ctx).await,
        }
    }
}

/// The implementation under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// Started in this process against the checker's services.
    Local(Implementation),
    /// Running implementations (any language) at these base URLs, sharing the checker's
    /// `DATABASE_URL` and `REDIS_URL`. A second URL enables the two-instance rate-limit check.
    Urls(Vec<String>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(implementation) => f.write_str(implementation.name()),
            Self::Urls(urls) => f.write_str(&urls.join(",")),
        }
    }
}
