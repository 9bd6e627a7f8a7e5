//! Which implementation of the feed service: a reference stage or the learner's workbench, each
//! a cargo package of this workspace whose binary has the same name. The checker grades one and
//! the load test measures one; both build it with [`crate::cargo`] and start it as its own process
//! ([`crate::AppProcess`]).

/// An implementation in this workspace, built with cargo and started as its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
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
    #[serde(rename = "workbench")]
    Workbench,
}

impl Implementation {
    /// The reference stages, in order: `STAGES[n]` is stage-n.
    pub const STAGES: [Self; 4] = [Self::Stage0, Self::Stage1, Self::Stage2, Self::Stage3];

    /// Its cargo package, which is also the name of its binary.
    pub fn name(self) -> &'static str {
        ["stage-0", "stage-1", "stage-2", "stage-3", "workbench"][self as usize]
    }

    /// The reference implementation of bar `n` (0 to 3): stage-n.
    pub fn reference(bar: impl Into<usize>) -> Self {
        Self::STAGES[bar.into()]
    }
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn an_implementation_is_named_by_its_package_or_a_stage_by_its_number() {
        let parse = |s| Implementation::from_str(s, false);
        assert_eq!(parse("2"), Ok(Implementation::Stage2));
        assert_eq!(parse("stage-3"), Ok(Implementation::Stage3));
        assert_eq!(parse("workbench"), Ok(Implementation::Workbench));
        assert!(parse("4").is_err() && parse("stage-x").is_err());
        for implementation in Implementation::value_variants() {
            assert_eq!(parse(implementation.name()), Ok(*implementation));
            assert_eq!(implementation.to_string(), implementation.name());
            assert_eq!(serde_json::to_value(implementation).unwrap(), implementation.name());
        }
        assert_eq!(Implementation::reference(1usize), Implementation::Stage1);
        assert_eq!(format!("{:<10}|", Implementation::Stage0), "stage-0   |");
    }
}
