//! `checker diagnose` grades a diagnosis against what it measures, not against stored answers:
//! the right diagnosis of stage-0 passes; a count off by one is wrong and the message holds no
//! measured value; stage-0's diagnosis is wrong for stage-1, whose measurement differs.

use checker::diagnose::{Diagnosis, Measured, grade, measure};
use checker::{EnvOptions, Implementation, KataEnv};

/// The answers a learner who measured `measured` with the tools would give.
fn measured_answers(measured: &Measured) -> Diagnosis {
    let [round_trip_ms, posts_ms, repeated_ms] = measured.times();
    Diagnosis {
        statements_per_request: measured.per_request() as u32,
        repeated: measured.repeated().map_or_else(|| "none".to_owned(), |s| s.query.clone()),
        repeated_calls: measured.repeated_calls() as u32,
        posts_node: measured.posts_node().unwrap_or("none").to_owned(),
        // As read off the tools, to a tenth of a millisecond.
        round_trip_ms: (round_trip_ms * 10.0).round() / 10.0,
        posts_ms: (posts_ms * 10.0).round() / 10.0,
        repeated_ms: (repeated_ms * 10.0).round() / 10.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diagnosis_is_graded_by_measurement() {
    let env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start");

    let stage_0 = measure(&env, Implementation::Stage0).await.expect("stage-0 measured");
    assert_eq!(stage_0.per_request(), 21.0);
    // As a learner would write it, not as pg_stat_statements stores it.
    let right = Diagnosis { repeated: "SELECT * FROM users WHERE id = 42".into(), ..measured_answers(&stage_0) };
    let (report, all_right) = grade(Implementation::Stage0, &right, &stage_0, false);
    assert!(all_right, "{report}");
    assert_eq!(report.matches("RIGHT").count(), 7, "{report}");
    assert!(report.contains("docs/walkthrough/stage-0.md"), "the walkthrough is offered once right:\n{report}");
    assert!(report.contains("21 statements per request"), "the measurement is shown once right:\n{report}");

    // The classic off-by-one of this diagnosis: the statements that repeat, without the one before them.
    let off_by_one = Diagnosis { statements_per_request: 20, ..right.clone() };
    let (report, all_right) = grade(Implementation::Stage0, &off_by_one, &stage_0, false);
    assert!(!all_right);
    assert_eq!(report.matches("WRONG").count(), 1, "{report}");
    // Where to look, never how close the count was.
    assert!(report.contains("sum `calls` over every statement"), "{report}");
    assert!(
        !report.contains("21 statements") && !report.contains("per request: ") && !report.contains("measured:"),
        "a wrong answer is not handed the measured one:\n{report}"
    );
    assert!(!report.contains("walkthrough"), "no solution before the diagnosis is right:\n{report}");
    // Unless asked for.
    let (revealed, _) = grade(Implementation::Stage0, &off_by_one, &stage_0, true);
    assert!(revealed.contains("21 statements per request"), "{revealed}");

    let wrong = Diagnosis {
        statements_per_request: 2,
        repeated: "select * from posts where user_id = $1".into(),
        repeated_calls: 1,
        posts_node: "Index Scan".into(),
        round_trip_ms: 500.0,
        posts_ms: 500.0,
        repeated_ms: 500.0,
    };
    let (report, _) = grade(Implementation::Stage0, &wrong, &stage_0, false);
    assert_eq!(report.matches("WRONG").count(), 7, "{report}");

    // Stage-1 runs one statement through its index: stage-0's right answers are now wrong.
    let stage_1 = measure(&env, Implementation::Stage1).await.expect("stage-1 measured");
    let (report, _) = grade(Implementation::Stage1, &right, &stage_1, false);
    assert!(report.matches("WRONG").count() >= 4, "{report}");
    let (report, all_right) = grade(Implementation::Stage1, &measured_answers(&stage_1), &stage_1, false);
    assert!(all_right, "{report}");
    assert_eq!(measured_answers(&stage_1).repeated, "none");
}
