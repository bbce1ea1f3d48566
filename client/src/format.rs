//! How the `duet` CLI shows a collection result, as text or JSON. Every rendering carries the
//! privacy statement: an aggregate is only as private as the non-collusion of the two
//! aggregators and its batch size make it, and readers of a result must be told so.

use crate::collect::{Budget, CollectionResult, Guarantee};
use crate::timefmt::rfc3339;
use duet_common::dp::{epsilon_of_rho, BudgetUnit, STATED_DELTA};
use duet_common::task::TaskParameters;
use duet_common::vdaf::AggregateResult;
use serde::Serialize;
use std::fmt::Write;

/// The guarantee line printed under every result: batch size against the threshold, the trust
/// assumption, and the noise (mechanism, parameter, standard deviation) with the budget spent
/// and left.
pub fn privacy_line(g: &Guarantee) -> String {
    let noise = match &g.noise {
        None => "no differential-privacy noise was added.".to_string(),
        Some(noise) => {
            let budget = g.budget.map(budget_clause).unwrap_or_default();
            let values = if g.clamped {
                "noisy values were clamped into the range a true result can take (post-processing: the \
                 guarantee is unchanged, but values near the bounds are biased)"
            } else {
                "values are shown with their noise, unclamped, so they can fall below 0"
            };
            format!("{noise}; {values}{budget}.")
        }
    };
    format!(
        "Privacy: this aggregate covers {} reports (threshold min_batch_size = {}). \
         It is not anonymous by itself: it stays private only while the leader and the helper do not collude; {noise}",
        g.report_count, g.min_batch_size
    )
}

/// "; privacy budget: epsilon 1 of 2 spent, 1 left", with the (ε, δ) equivalent of the ρ
/// spent for zCDP.
fn budget_clause(b: Budget) -> String {
    let unit = b.unit.name();
    let mut clause = match b.total {
        Some(total) => format!(
            "; privacy budget: {unit} {} of {} spent, {} left",
            fmt_budget(b.spent),
            fmt_budget(total),
            fmt_budget((total - b.spent).max(0.0))
        ),
        None => format!("; {unit} {} spent so far, no budget limit set", fmt_budget(b.spent)),
    };
    if b.unit == BudgetUnit::Rho {
        clause.push_str(&format!(
            " (rho {} spent amounts to ({}, delta = {STATED_DELTA:e})-DP)",
            fmt_budget(b.spent),
            epsilon_of_rho(b.spent)
        ));
    }
    clause
}

/// A budget figure for people: up to six decimals, trailing zeros dropped.
fn fmt_budget(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A warning for a batch below the threshold, which a correct leader never releases.
fn below_threshold_warning(report_count: u64, min_batch_size: u64) -> Option<String> {
    (report_count < min_batch_size).then(|| {
        format!(
            "WARNING: {report_count} reports is below the task's min_batch_size of {min_batch_size}: \
             the leader did not enforce the threshold."
        )
    })
}

/// Width of the longest bar in a vector table, in terminal cells.
const BAR_WIDTH: usize = 40;

/// A vector result as a table: each entry, its share of the total, and a bar scaled to the
/// largest entry (drawn in eighths of a cell, so that close values stay distinguishable).
/// Entries are signed, for noisy results; a negative one has no bar and counts as 0 in the total.
fn vector_table(values: &[i128]) -> String {
    let mut out = String::new();
    let positive = |v: &i128| u128::try_from(*v).unwrap_or(0);
    let total: u128 = values.iter().fold(0u128, |a, v| a.saturating_add(positive(v)));
    let max = values.iter().map(positive).max().unwrap_or(0);
    let width = values.iter().map(|v| v.to_string().len()).max().unwrap_or(1).max("value".len());
    let index_width = values.len().saturating_sub(1).to_string().len().max("index".len());
    let _ = writeln!(out, "  {:>index_width$}  {:>width$}   share", "index", "value");
    for (i, v) in values.iter().enumerate() {
        let share = if total == 0 { 0.0 } else { *v as f64 * 100.0 / total as f64 };
        let _ = writeln!(out, "  {i:>index_width$}  {v:>width$}  {share:>5.1}%  {}", bar(positive(v), max, BAR_WIDTH));
    }
    out
}

/// A horizontal bar of `value / max` times `width` cells.
fn bar(value: u128, max: u128, width: usize) -> String {
    const PARTIAL: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if max == 0 || value == 0 {
        return String::new();
    }
    let eighths = ((value as f64 / max as f64) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTIAL[eighths % 8]);
    }
    if s.is_empty() {
        // A non-zero entry always shows.
        s.push('▏');
    }
    s
}

/// The result for people: counts, interval, the value (a table for vectors), and the privacy
/// line.
pub fn render_text(task: &TaskParameters, result: &CollectionResult) -> String {
    let mut out = String::new();
    let (start, end) = result.interval_seconds;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "Task:      {}", task.task_id);
    let _ = writeln!(out, "VDAF:      {}", task.vdaf);
    let _ = writeln!(out, "Reports:   {}", result.report_count);
    let _ = writeln!(out, "Interval:  {} to {} (end excluded)", rfc3339(start), rfc3339(end));
    match &result.result {
        AggregateResult::Scalar(v) => {
            let _ = writeln!(out, "Result:    {v}");
        }
        AggregateResult::NoisyScalar(v) => {
            let _ = writeln!(out, "Result:    {v} (with noise)");
        }
        AggregateResult::Vector(values) => {
            let _ = writeln!(out, "Result:");
            // Entries are counts far below 2^127; one that is not shows as the largest.
            let signed: Vec<i128> = values.iter().map(|v| i128::try_from(*v).unwrap_or(i128::MAX)).collect();
            out.push_str(&vector_table(&signed));
        }
        AggregateResult::NoisyVector(values) => {
            let _ = writeln!(out, "Result (with noise):");
            out.push_str(&vector_table(values));
        }
    }
    if let Some(warning) = below_threshold_warning(result.report_count, task.min_batch_size) {
        let _ = writeln!(out, "{warning}");
    }
    let _ = writeln!(out, "{}", privacy_line(&result.guarantee));
    out
}

#[derive(Serialize)]
struct JsonInterval {
    start: String,
    end: String,
    start_seconds: u64,
    end_seconds: u64,
}

#[derive(Serialize)]
struct JsonPrivacy {
    report_count: u64,
    min_batch_size: u64,
    meets_min_batch_size: bool,
    requires_non_collusion: bool,
    differential_privacy: bool,
    noise: Option<String>,
    /// "epsilon" or "rho": what the budget figures count.
    budget_unit: Option<&'static str>,
    budget_spent: Option<f64>,
    budget_total: Option<f64>,
    /// The same figures for epsilon budgets, as before rho existed.
    epsilon_spent: Option<f64>,
    epsilon_budget: Option<f64>,
    /// Whether noisy values were clamped into range (post-processing).
    clamped: bool,
    statement: String,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    task_id: String,
    vdaf: &'a duet_common::vdaf::VdafConfig,
    report_count: u64,
    interval: JsonInterval,
    result: &'a AggregateResult,
    privacy: JsonPrivacy,
}

/// The result as pretty JSON with the same fields and a `privacy` object. Serialised straight
/// to text, since vector entries can exceed what a JSON value tree holds (u128).
pub fn render_json(task: &TaskParameters, result: &CollectionResult) -> Result<String, serde_json::Error> {
    let (start, end) = result.interval_seconds;
    let budget = result.guarantee.budget;
    let epsilon = budget.filter(|b| b.unit == BudgetUnit::Epsilon);
    let doc = JsonResult {
        task_id: task.task_id.to_string(),
        vdaf: &task.vdaf,
        report_count: result.report_count,
        interval: JsonInterval { start: rfc3339(start), end: rfc3339(end), start_seconds: start, end_seconds: end },
        result: &result.result,
        privacy: JsonPrivacy {
            report_count: result.report_count,
            min_batch_size: task.min_batch_size,
            meets_min_batch_size: result.report_count >= task.min_batch_size,
            requires_non_collusion: true,
            differential_privacy: result.guarantee.noise.is_some(),
            noise: result.guarantee.noise.clone(),
            budget_unit: budget.map(|b| b.unit.name()),
            budget_spent: budget.map(|b| b.spent),
            budget_total: budget.and_then(|b| b.total),
            epsilon_spent: epsilon.map(|b| b.spent),
            epsilon_budget: epsilon.and_then(|b| b.total),
            clamped: result.guarantee.clamped,
            statement: privacy_line(&result.guarantee),
        },
    };
    serde_json::to_string_pretty(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::messages::{BatchMode, TaskId};
    use duet_common::time::{Duration, Interval, Time};
    use duet_common::vdaf::VdafConfig;

    const PRIVACY_120_100: &str = "Privacy: this aggregate covers 120 reports (threshold min_batch_size = 100). \
        It is not anonymous by itself: it stays private only while the leader and the helper do not collude; \
        no differential-privacy noise was added.";

    fn task(vdaf: VdafConfig) -> TaskParameters {
        TaskParameters {
            task_id: TaskId::from_bytes([0; 32]),
            task_info: "t".into(),
            leader_endpoint: "https://l/".into(),
            helper_endpoint: "https://h/".into(),
            time_precision: 3600,
            min_batch_size: 100,
            batch_mode: BatchMode::TimeInterval,
            vdaf,
            task_interval_seconds: None,
            dp: None,
        }
    }

    fn result(report_count: u64, value: AggregateResult) -> CollectionResult {
        CollectionResult {
            report_count,
            interval: Interval::new(Time::from_units(472222), Duration::from_units(2)),
            interval_seconds: (1_699_999_200, 1_700_006_400),
            result: value,
            guarantee: plain(report_count),
        }
    }

    fn plain(report_count: u64) -> Guarantee {
        Guarantee { report_count, min_batch_size: 100, noise: None, budget: None, clamped: false }
    }

    #[test]
    fn privacy_line_is_exact() {
        assert_eq!(privacy_line(&plain(120)), PRIVACY_120_100);
        let noisy = Guarantee {
            noise: Some("discrete Laplace noise (pure DP, epsilon = 0.5 per collection)".into()),
            budget: Some(Budget { spent: 1.5, total: Some(5.0), unit: BudgetUnit::Epsilon }),
            ..plain(120)
        };
        assert_eq!(
            privacy_line(&noisy),
            "Privacy: this aggregate covers 120 reports (threshold min_batch_size = 100). It is not anonymous by \
             itself: it stays private only while the leader and the helper do not collude; discrete Laplace noise \
             (pure DP, epsilon = 0.5 per collection); values are shown with their noise, unclamped, so they can \
             fall below 0; privacy budget: epsilon 1.5 of 5 spent, 3.5 left."
        );
        let unlimited =
            Guarantee { budget: Some(Budget { spent: 2.0, total: None, ..noisy.budget.unwrap() }), ..noisy.clone() };
        assert!(privacy_line(&unlimited).ends_with("epsilon 2 spent so far, no budget limit set."));
        // zCDP: the rho spent, and what it amounts to in (epsilon, delta): 0.3 + 2·sqrt(0.3·ln 10^9) = 5.29.
        let zcdp = Guarantee {
            budget: Some(Budget { spent: 0.3, total: Some(1.0), unit: BudgetUnit::Rho }),
            clamped: true,
            ..noisy
        };
        assert!(
            privacy_line(&zcdp).ends_with(
                "noisy values were clamped into the range a true result can take (post-processing: the guarantee \
                 is unchanged, but values near the bounds are biased); privacy budget: rho 0.3 of 1 spent, 0.7 \
                 left (rho 0.3 spent amounts to (epsilon = 5.29, delta = 1e-9)-DP)."
            ),
            "{}",
            privacy_line(&zcdp)
        );
    }

    #[test]
    fn noisy_results_show_their_sign_until_clamped() {
        let t = task(VdafConfig::Prio3Histogram { length: 3, chunk_length: 1 });
        let mut noisy = result(120, AggregateResult::NoisyVector(vec![-2, 90, 32]));
        noisy.guarantee.noise = Some("some noise".into());
        let text = render_text(&t, &noisy);
        assert!(text.contains("Result (with noise):\n  index  value   share\n      0     -2   -1.6%  \n"), "{text}");
        assert!(text.contains("can fall below 0"), "{text}");
        let clamped = noisy.clone().clamped(&t.vdaf);
        assert_eq!(clamped.result, AggregateResult::Vector(vec![0, 90, 32]));
        assert!(clamped.guarantee.clamped);
        let json: serde_json::Value = serde_json::from_str(&render_json(&t, &noisy).unwrap()).unwrap();
        assert_eq!(json["result"], serde_json::json!([-2, 90, 32]));
        assert_eq!(json["privacy"]["clamped"], false);
        let count = task(VdafConfig::Prio3Count);
        let scalar = render_text(&count, &result(120, AggregateResult::NoisyScalar(-1)));
        assert!(scalar.contains("Result:    -1 (with noise)\n"), "{scalar}");
    }

    #[test]
    fn text_scalar() {
        let text = render_text(&task(VdafConfig::Prio3Count), &result(120, AggregateResult::Scalar(77)));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "Task:      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "VDAF:      Prio3Count",
                "Reports:   120",
                "Interval:  2023-11-14T22:00:00Z to 2023-11-15T00:00:00Z (end excluded)",
                "Result:    77",
                PRIVACY_120_100,
            ]
        );
    }

    #[test]
    fn text_vector_is_a_table_and_warns_below_threshold() {
        let t = task(VdafConfig::Prio3Histogram { length: 3, chunk_length: 1 });
        let text = render_text(&t, &result(120, AggregateResult::Vector(vec![5, 1234567, 0])));
        let full = "█".repeat(40);
        assert!(
            text.contains(&format!(
                "Result:\n  index    value   share\n      0        5    0.0%  ▏\n      1  1234567  100.0%  {full}\n      2        0    0.0%  \n"
            )),
            "{text}"
        );
        assert!(text.ends_with(&format!("{PRIVACY_120_100}\n")));
        assert!(!text.contains("WARNING"));
        let small = render_text(&t, &result(3, AggregateResult::Vector(vec![1, 1, 1])));
        assert!(small.contains("WARNING: 3 reports is below the task's min_batch_size of 100"), "{small}");
        assert!(small.contains(&privacy_line(&plain(3))));
    }

    #[test]
    fn bars_are_scaled_to_the_largest_entry() {
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(1, 16, 4), "▎"); // 2 eighths of a cell
        assert_eq!(bar(3, 16, 4), "▊"); // 6 eighths
        assert_eq!(bar(0, 16, 4), "");
        assert_eq!(bar(1, 1_000_000, 4), "▏");
        let table = vector_table(&[3, 1]);
        assert_eq!(table.lines().nth(1).unwrap(), format!("      0      3   75.0%  {}", "█".repeat(40)));
        assert_eq!(table.lines().nth(2).unwrap(), format!("      1      1   25.0%  {}▍", "█".repeat(13)));
    }

    #[test]
    fn json_has_the_same_fields_and_privacy() {
        let t = task(VdafConfig::Prio3SumVec { length: 2, max_measurement: 1, chunk_length: 1 });
        let big = u128::from(u64::MAX) + 10;
        let json = render_json(&t, &result(120, AggregateResult::Vector(vec![big, 3]))).unwrap();
        // u128 entries are written as plain JSON numbers.
        assert!(json.contains("18446744073709551625"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json.replace("18446744073709551625", "0")).unwrap();
        assert_eq!(v["report_count"], 120);
        assert_eq!(v["task_id"], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(v["vdaf"]["type"], "Prio3SumVec");
        assert_eq!(v["interval"]["start"], "2023-11-14T22:00:00Z");
        assert_eq!(v["interval"]["end_seconds"], 1_700_006_400u64);
        assert_eq!(v["result"], serde_json::json!([0, 3]));
        assert_eq!(v["privacy"]["statement"], PRIVACY_120_100);
        assert_eq!(v["privacy"]["min_batch_size"], 100);
        assert_eq!(v["privacy"]["meets_min_batch_size"], true);
        assert_eq!(v["privacy"]["requires_non_collusion"], true);
        assert_eq!(v["privacy"]["differential_privacy"], false);
        let scalar = render_json(&task(VdafConfig::Prio3Count), &result(7, AggregateResult::Scalar(4))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&scalar).unwrap();
        assert_eq!(v["result"], 4);
        assert_eq!(v["privacy"]["meets_min_batch_size"], false);
    }
}
