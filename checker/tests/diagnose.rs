//! `checker diagnose` grades a diagnosis against what it measures, not against stored answers:
//! the right diagnosis of stage-0 passes, a wrong one fails with the measurement that refutes
//! each answer, and stage-0's diagnosis is wrong for stage-1, whose measurement differs.

use checker::diagnose::{Diagnosis, TimeIn, grade, measure};
use checker::{EnvOptions, Implementation, KataEnv};
use feed_core::seed::Profile;

fn stage_0_diagnosis() -> Diagnosis {
    // On the small profile (the posts table is 196 pages) the 21 round trips outweigh the Seq
    // Scan; on medium the posts query does (see docs/walkthrough/stage-0.md).
    Diagnosis { statements_per_request: 21.0, per_row: "users".into(), posts_index: false, time_in: TimeIn::RoundTrips }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diagnosis_is_graded_by_measurement() {
    let env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start");

    let stage_0 = measure(&env, Implementation::Stage0).await.expect("stage-0 measured");
    let (report, all_right) = grade(Implementation::Stage0, Profile::Small, &stage_0_diagnosis(), &stage_0);
    assert!(all_right, "{report}");
    assert_eq!(report.matches("RIGHT").count(), 4, "{report}");
    assert!(report.contains("docs/walkthrough/stage-0.md"), "the walkthrough is offered once right:\n{report}");

    let wrong = Diagnosis {
        statements_per_request: 2.0,
        per_row: "posts".into(),
        posts_index: true,
        time_in: TimeIn::PostsQuery,
    };
    let (report, all_right) = grade(Implementation::Stage0, Profile::Small, &wrong, &stage_0);
    assert!(!all_right);
    assert_eq!(report.matches("WRONG").count(), 4, "{report}");
    for evidence in ["measured 21.0", "it reads users", "Seq Scan on posts", "round-trips"] {
        assert!(report.contains(evidence), "{evidence:?} missing:\n{report}");
    }
    assert!(!report.contains("walkthrough"), "no solution before the diagnosis is right:\n{report}");

    // Stage-1 runs one statement through its index: stage-0's right answers are now wrong,
    // except where the time goes (still the round trip).
    let stage_1 = measure(&env, Implementation::Stage1).await.expect("stage-1 measured");
    let (report, _) = grade(Implementation::Stage1, Profile::Small, &stage_0_diagnosis(), &stage_1);
    assert_eq!(report.matches("WRONG").count(), 3, "{report}");
    let right_for_stage_1 = Diagnosis {
        statements_per_request: 1.0,
        per_row: "none".into(),
        posts_index: true,
        time_in: TimeIn::RoundTrips,
    };
    let (report, all_right) = grade(Implementation::Stage1, Profile::Small, &right_for_stage_1, &stage_1);
    assert!(all_right, "{report}");
}
