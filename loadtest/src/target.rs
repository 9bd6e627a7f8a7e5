//! What a run measures: one of the reference stages, or the learner's workbench, each a cargo
//! package built and started as its own process.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `stages/stage-N`, a reference answer.
    Stage(u8),
    /// `workbench/`, the learner's own fix.
    Workbench,
}

impl Target {
    /// The cargo package, which is also the binary's name.
    pub fn package(self) -> String {
        match self {
            Self::Stage(n) => format!("stage-{n}"),
            Self::Workbench => "workbench".into(),
        }
    }

    /// Stage-3 is where the rate limiter lives: a run of it brings the abuser along by default.
    pub fn default_abuser(self) -> bool {
        self == Self::Stage(3)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.package())
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.package())
    }
}

impl FromStr for Target {
    type Err = String;

    /// `0`..`3`, `stage-0`..`stage-3`, or `workbench`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "workbench" {
            return Ok(Self::Workbench);
        }
        match s.strip_prefix("stage-").unwrap_or(s).parse::<u8>() {
            Ok(n) if n <= 3 => Ok(Self::Stage(n)),
            _ => Err(format!("`{s}` is not a target: 0, 1, 2, 3 (or stage-N), or workbench")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_number_by_package_and_workbench() {
        assert_eq!("2".parse(), Ok(Target::Stage(2)));
        assert_eq!("stage-3".parse(), Ok(Target::Stage(3)));
        assert_eq!("workbench".parse(), Ok(Target::Workbench));
        assert!("4".parse::<Target>().is_err());
        assert!("stage-x".parse::<Target>().is_err());
        assert_eq!(Target::Workbench.package(), "workbench");
        assert!(Target::Stage(3).default_abuser() && !Target::Stage(2).default_abuser());
    }
}
