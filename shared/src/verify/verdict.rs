//! The verdict on an applied change: a pure function of what the checks measured before
//! and after it (and, for a restart, of the rollout), the thresholds and the margin.
//!
//! - `worse`: some measure is above its threshold and more than the margin above its value
//!   before the change (or the restart's rollout is stuck);
//! - `verified`: every measure is at or below its threshold (and the rollout complete);
//! - `not recovered`: anything else.

use serde::{Deserialize, Serialize};

/// One check's evidence: the query, its value at the action's time and now, its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// The check's name.
    pub check: String,
    /// The PromQL evaluated.
    pub query: String,
    /// Its value at the time of the action.
    pub before: f64,
    /// Its value now.
    pub now: f64,
    /// Recovered at or below this.
    pub threshold: f64,
}

/// Where a restarted Deployment's rollout stands (from its status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Rollout {
    /// Every replica updated and available.
    Complete,
    /// Still rolling (replicas not yet updated or available).
    InProgress(String),
    /// Stuck: past its progress deadline (crash-looping or unschedulable pods).
    Stuck(String),
}

/// The three verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Recovered.
    Verified,
    /// Not recovered, not worse.
    NotRecovered,
    /// Worse than before by more than the margin.
    Worse,
}

impl Verdict {
    /// The name in records, reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::NotRecovered => "not-recovered",
            Verdict::Worse => "worse",
        }
    }
}

/// A verdict and the words for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Which measures decided it, e.g. `error_ratio 0.2 > 0.005 (was 0.01)`.
    pub why: String,
}

/// Whether one measure is worse than before: above its threshold and above its value
/// before by more than `margin` (relative; a measure that was 0 is worse at any value
/// above the threshold).
pub fn is_worse(m: &Measurement, margin: f64) -> bool {
    m.now > m.threshold && m.now > m.before * (1.0 + margin)
}

/// Whether one measure recovered.
pub fn is_recovered(m: &Measurement) -> bool {
    m.now <= m.threshold
}

/// The verdict on `measurements` (and `rollout`, for a restart) with a relative `margin`.
pub fn judge(measurements: &[Measurement], rollout: Option<&Rollout>, margin: f64) -> Judgement {
    let describe = |m: &Measurement, relation: &str| {
        format!(
            "{} {} {relation} {} (was {})",
            m.check,
            number(m.now),
            number(m.threshold),
            number(m.before)
        )
    };
    let mut worse: Vec<String> = measurements
        .iter()
        .filter(|m| is_worse(m, margin))
        .map(|m| describe(m, ">"))
        .collect();
    if let Some(Rollout::Stuck(why)) = rollout {
        worse.push(format!("rollout stuck: {why}"));
    }
    if !worse.is_empty() {
        return Judgement {
            verdict: Verdict::Worse,
            why: format!(
                "worse than before the change (by more than {}%): {}",
                number(margin * 100.0),
                worse.join("; ")
            ),
        };
    }
    let mut unrecovered: Vec<String> = measurements
        .iter()
        .filter(|m| !is_recovered(m))
        .map(|m| describe(m, ">"))
        .collect();
    if let Some(Rollout::InProgress(why)) = rollout {
        unrecovered.push(format!("rollout not complete: {why}"));
    }
    if !unrecovered.is_empty() {
        return Judgement {
            verdict: Verdict::NotRecovered,
            why: format!("not recovered: {}", unrecovered.join("; ")),
        };
    }
    let mut held: Vec<String> = measurements.iter().map(|m| describe(m, "<=")).collect();
    if rollout == Some(&Rollout::Complete) {
        held.push("rollout complete".into());
    }
    Judgement {
        verdict: Verdict::Verified,
        why: format!("recovered: {}", held.join("; ")),
    }
}

/// A value as people read it: up to four significant decimals, no trailing zeros.
pub fn number(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(before: f64, now: f64, threshold: f64) -> Measurement {
        Measurement {
            check: "c".into(),
            query: "q".into(),
            before,
            now,
            threshold,
        }
    }

    const MARGIN: f64 = 0.2;

    #[test]
    fn one_measure_at_every_boundary() {
        // (before, now, threshold) -> verdict
        for (before, now, expected) in [
            (10.0, 0.0, Verdict::Verified),
            (10.0, 5.0, Verdict::Verified), // exactly the threshold: recovered
            (10.0, 5.0001, Verdict::NotRecovered),
            (10.0, 10.0, Verdict::NotRecovered), // no change
            (10.0, 12.0, Verdict::NotRecovered), // exactly the margin: not worse
            (10.0, 12.0001, Verdict::Worse),
            (0.0, 5.0, Verdict::Verified), // was 0, at the threshold
            (0.0, 5.0001, Verdict::Worse), // was 0, now above the threshold
            (2.0, 4.0, Verdict::Verified), // doubled, still under the threshold
            (1.0, 100.0, Verdict::Worse),
        ] {
            let judged = judge(&[m(before, now, 5.0)], None, MARGIN);
            assert_eq!(
                judged.verdict, expected,
                "before {before} now {now}: {}",
                judged.why
            );
        }
    }

    #[test]
    fn the_worst_measure_decides() {
        let fine = m(10.0, 1.0, 5.0);
        let flat = m(10.0, 10.0, 5.0);
        let worse = m(10.0, 50.0, 5.0);
        assert_eq!(
            judge(&[fine.clone(), flat.clone()], None, MARGIN).verdict,
            Verdict::NotRecovered
        );
        assert_eq!(
            judge(&[fine.clone(), worse.clone()], None, MARGIN).verdict,
            Verdict::Worse
        );
        assert_eq!(
            judge(&[flat, worse, fine], None, MARGIN).verdict,
            Verdict::Worse
        );
    }

    #[test]
    fn the_rollout_of_a_restart_counts() {
        let fine = [m(900.0, 100.0, 500.0)];
        let complete = Rollout::Complete;
        let rolling = Rollout::InProgress("1 of 3 replicas updated".into());
        let stuck = Rollout::Stuck("ProgressDeadlineExceeded".into());
        assert_eq!(
            judge(&fine, Some(&complete), MARGIN).verdict,
            Verdict::Verified
        );
        assert_eq!(
            judge(&fine, Some(&rolling), MARGIN).verdict,
            Verdict::NotRecovered
        );
        let judged = judge(&fine, Some(&stuck), MARGIN);
        assert_eq!(judged.verdict, Verdict::Worse);
        assert!(
            judged
                .why
                .contains("rollout stuck: ProgressDeadlineExceeded"),
            "{}",
            judged.why
        );
    }

    #[test]
    fn the_words_carry_the_evidence() {
        let judged = judge(&[m(0.01, 0.2, 0.005)], None, MARGIN);
        assert_eq!(
            judged.why,
            "worse than before the change (by more than 20%): c 0.2 > 0.005 (was 0.01)"
        );
        let judged = judge(&[m(900.0, 120.5, 500.0)], None, MARGIN);
        assert_eq!(judged.why, "recovered: c 120.5 <= 500 (was 900)");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e-6), "0");
    }

    fn measure() -> impl Strategy<Value = Measurement> {
        (0.0..1000.0f64, 0.0..1000.0f64, 0.0..1000.0f64).prop_map(|(b, n, t)| m(b, n, t))
    }

    proptest! {
        /// The verdict is exactly the rule in the module's documentation.
        #[test]
        fn verdict_follows_the_rule(measures in proptest::collection::vec(measure(), 1..5)) {
            let verdict = judge(&measures, None, MARGIN).verdict;
            let any_worse = measures.iter().any(|x| x.now > x.threshold && x.now > x.before * 1.2);
            let all_recovered = measures.iter().all(|x| x.now <= x.threshold);
            let expected = if any_worse { Verdict::Worse } else if all_recovered { Verdict::Verified } else { Verdict::NotRecovered };
            prop_assert_eq!(verdict, expected);
        }

        /// Lower values now never give a harsher verdict.
        #[test]
        fn lower_is_never_judged_harsher(measures in proptest::collection::vec(measure(), 1..5), index in 0usize..5, cut in 0.0..1.0f64) {
            let verdict = judge(&measures, None, MARGIN).verdict;
            let mut better = measures.clone();
            let i = index % better.len();
            better[i].now *= cut;
            prop_assert!(judge(&better, None, MARGIN).verdict <= verdict);
        }

        /// A verified verdict means every measure is at or under its threshold, and a worse
        /// one names a measure above its threshold.
        #[test]
        fn verdicts_are_backed_by_their_measures(measures in proptest::collection::vec(measure(), 1..5)) {
            let judged = judge(&measures, None, MARGIN);
            match judged.verdict {
                Verdict::Verified => prop_assert!(measures.iter().all(is_recovered)),
                Verdict::Worse => prop_assert!(measures.iter().any(|x| x.now > x.threshold)),
                Verdict::NotRecovered => prop_assert!(measures.iter().any(|x| !is_recovered(x))),
            }
        }
    }
}
