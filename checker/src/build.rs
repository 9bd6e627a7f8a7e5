//! Building an implementation with cargo, as a separate program: the checker never links the code
//! it grades, so a workbench that does not compile is a result to report, not a checker that
//! does not build. The load test builds the same way: both use [`kata_services::cargo`].

pub use kata_services::cargo::{Built, build, build_async, workspace};
