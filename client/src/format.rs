//! How the `duet` CLI shows a collection result, as text or JSON. Every rendering carries the
//! privacy statement: an aggregate is only as private as the non-collusion of the two
//! aggregators and its batch size make it, and readers of a result must be told so.

use crate::collect::{CollectionResult, Guarantee};
use crate::timefmt::rfc3339;
use duet_common::task::TaskParameters;
use duet_common::vdaf::AggregateResult;
use serde::Serialize;
use std::fmt::Write;

/// The guarantee line printed under every result: batch size against the threshold, the trust
/// assumption, and the noise with the budget spent and left.
pub fn privacy_line(g: &Guarantee) -> String {
    let noise = match (&g.noise, g.budget) {
        (None, _) => "no differential-privacy noise was added.".to_string(),
        (Some(noise), None) => format!("{noise}."),
        (Some(noise), Some(b)) => match b.total {
            Some(total) => format!(
                "{noise}; privacy budget: epsilon {} of {} spent, {} left.",
                fmt_eps(b.spent),
                fmt_eps(total),
                fmt_eps((total - b.spent).max(0.0))
            ),
            None => format!("{noise}; epsilon {} spent so far, no budget limit set.", fmt_eps(b.spent)),
        },
    };
    format!(
        "Privacy: this aggregate covers {} reports (threshold min_batch_size = {}). \
         It is not anonymous by itself: it stays private only while the leader and the helper do not collude; {noise}",
        g.report_count, g.min_batch_size
    )
}

/// Epsilon for people: up to six decimals, trailing zeros dropped.
fn fmt_eps(x: f64) -> String {
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
fn vector_table(values: &[u128]) -> String {
    let mut out = String::new();
    let total: u128 = values.iter().fold(0u128, |a, v| a.saturating_add(*v));
    let max = values.iter().copied().max().unwrap_or(0);
    let width = values.iter().map(|v| v.to_string().len()).max().unwrap_or(1).max("value".len());
    let index_width = values.len().saturating_sub(1).to_string().len().max("index".len());
    let _ = writeln!(out, "  {:>index_width$}  {:>width$}   share", "index", "value");
    for (i, v) in values.iter().enumerate() {
        let share = if total == 0 { 0.0 } else { *v as f64 * 100.0 / total as f64 };
        let _ = writeln!(out, "  {i:>index_width$}  {v:>width$}  {share:>5.1}%  {}", bar(*v, max, BAR_WIDTH));
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
        AggregateResult::Vector(values) => {
            let _ = writeln!(out, "Result:");
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
    epsilon_spent: Option<f64>,
    epsilon_budget: Option<f64>,
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
            epsilon_spent: result.guarantee.budget.map(|b| b.spent),
            epsilon_budget: result.guarantee.budget.and_then(|b| b.total),
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
        Guarantee { report_count, min_batch_size: 100, noise: None, budget: None }
    }

    #[test]
    fn privacy_line_is_exact() {
        assert_eq!(privacy_line(&plain(120)), PRIVACY_120_100);
        let noisy = Guarantee {
            noise: Some("discrete Laplace noise for epsilon = 0.5".into()),
            budget: Some(crate::collect::Budget { spent: 1.5, total: Some(5.0) }),
            ..plain(120)
        };
        assert_eq!(
            privacy_line(&noisy),
            "Privacy: this aggregate covers 120 reports (threshold min_batch_size = 100). It is not anonymous by \
             itself: it stays private only while the leader and the helper do not collude; discrete Laplace noise \
             for epsilon = 0.5; privacy budget: epsilon 1.5 of 5 spent, 3.5 left."
        );
        let unlimited = Guarantee { budget: Some(crate::collect::Budget { spent: 2.0, total: None }), ..noisy };
        assert!(privacy_line(&unlimited).ends_with("epsilon 2 spent so far, no budget limit set."));
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
