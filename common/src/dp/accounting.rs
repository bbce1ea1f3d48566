//! The privacy accountant's arithmetic, in each mechanism's own terms: pure ε-DP composes by
//! adding ε (basic composition), ρ-zCDP by adding ρ; a zCDP guarantee converts to (ε, δ)-DP for
//! any δ > 0. And the accuracy each choice buys, as a table made from the calibration in
//! [`super::noise`] and printed in PRIVACY.md (a test holds the two equal), so that it cannot
//! drift from it.

use super::noise::{sensitivity, NoiseDistribution};
use crate::vdaf::VdafConfig;

/// The (ε, δ)-DP guarantee that ρ-zCDP implies for `delta`: ε = ρ + 2·sqrt(ρ·ln(1/δ)) (Bun and
/// Steinke, "Concentrated Differential Privacy", Proposition 1.3).
pub fn zcdp_to_epsilon(rho: f64, delta: f64) -> f64 {
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// What a task has spent of its budget, in its mechanism's terms, and what is left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetUse {
    /// ε (pure DP) or ρ (zCDP) spent by the collections so far.
    pub spent: f64,
    /// The task's total, if it has one.
    pub total: Option<f64>,
}

impl BudgetUse {
    /// Whether a collection costing `cost` fits (basic composition for ε, additivity for ρ, both
    /// plain sums), with room for the rounding of decimal parameters: a billionth of the total,
    /// far above a sum of doubles' rounding and far below the smallest parameter (10^-9 of 1).
    pub fn allows(&self, cost: f64) -> bool {
        self.total.is_none_or(|total| self.spent + cost <= total * (1.0 + 1e-9))
    }

    pub fn left(&self) -> Option<f64> {
        self.total.map(|t| (t - self.spent).max(0.0))
    }
}

/// The standard deviation of each entry of a released result: both aggregators' doses of
/// `noise`, independent, so twice one dose's variance.
pub fn released_std_dev(noise: &NoiseDistribution) -> f64 {
    (2.0 * noise.variance()).sqrt()
}

/// The accuracy table for PRIVACY.md: for a Count task, each mechanism and
/// parameter, the noise's standard deviation on the released count, the (ε, δ = 10^-9)
/// guarantee a ρ gives, and that standard deviation relative to true counts of 10^3 to 10^6.
pub fn accuracy_table() -> String {
    let count = sensitivity(&VdafConfig::Prio3Count).expect("Count has a sensitivity");
    let populations = [1_000f64, 10_000.0, 100_000.0, 1_000_000.0];
    let mut out = String::from(
        "| Mechanism | Per collection | SD of a released count | SD relative to a count of 10^3 | 10^4 | 10^5 | 10^6 |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut row = |mechanism: &str, parameter: String, noise: NoiseDistribution| {
        let sd = released_std_dev(&noise);
        let errors: Vec<String> = populations.iter().map(|n| percent(100.0 * sd / n)).collect();
        out.push_str(&format!("| {mechanism} | {parameter} | {sd:.2} | {} |\n", errors.join(" | ")));
    };
    for (n, d) in [(1u64, 10u64), (1, 2), (1, 1), (2, 1)] {
        let noise = NoiseDistribution::laplace(&count, (n, d)).expect("a positive epsilon");
        row("discrete Laplace", format!("ε = {}", n as f64 / d as f64), noise);
    }
    for (n, d) in [(1u64, 100u64), (1, 20), (1, 8), (1, 2)] {
        let rho = n as f64 / d as f64;
        let noise = NoiseDistribution::gaussian(&count, (n, d)).expect("a positive rho");
        row("discrete Gaussian", format!("ρ = {rho} (ε = {:.2} at δ = 10^-9)", zcdp_to_epsilon(rho, 1e-9)), noise);
    }
    out
}

/// A percentage to two significant digits.
fn percent(value: f64) -> String {
    let decimals = (1.0 - value.log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{value:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zcdp_converts_to_approximate_dp() {
        // ρ = 0.5, δ = 10^-6: 0.5 + 2·sqrt(0.5·ln(10^6)) = 0.5 + 2·sqrt(6.9078) = 5.7565.
        assert!((zcdp_to_epsilon(0.5, 1e-6) - 5.75652).abs() < 1e-4);
        // Smaller ρ, smaller ε; smaller δ, larger ε.
        assert!(zcdp_to_epsilon(0.1, 1e-6) < zcdp_to_epsilon(0.5, 1e-6));
        assert!(zcdp_to_epsilon(0.5, 1e-9) > zcdp_to_epsilon(0.5, 1e-6));
    }

    #[test]
    fn budgets_add_up_and_refuse_what_exceeds_them() {
        let used = BudgetUse { spent: 1.5, total: Some(2.0) };
        assert!(used.allows(0.5));
        assert!(!used.allows(0.6));
        assert_eq!(used.left(), Some(0.5));
        // Three collections of 0.1 (as decimals, 0.30000000000000004) fit a budget of 0.3.
        let decimals = BudgetUse { spent: 0.1 + 0.1, total: Some(0.3) };
        assert!(decimals.allows(0.1));
        assert!(BudgetUse { spent: 1e9, total: None }.allows(1.0));
        // The smallest parameters are not rounded away: a budget of one collection of 10^-9
        // allows exactly one.
        assert!(BudgetUse { spent: 0.0, total: Some(1e-9) }.allows(1e-9));
        assert!(!BudgetUse { spent: 1e-9, total: Some(1e-9) }.allows(1e-9));
    }

    #[test]
    fn a_released_count_has_twice_one_doses_variance() {
        let count = sensitivity(&VdafConfig::Prio3Count).unwrap();
        // Gaussian of σ = 1 (ρ = 1/2): each dose has variance 1 to many digits, the result 2.
        let noise = NoiseDistribution::gaussian(&count, (1, 2)).unwrap();
        assert!((released_std_dev(&noise) - 2f64.sqrt()).abs() < 1e-6);
    }

    /// The table's figures follow the calibration: a Count's Laplace noise at ε = 1 has scale
    /// 1, so each dose has variance 2e/(e − 1)² and the release sqrt(2) times its SD; Gaussian
    /// noise at ρ = 1/2 has σ = 1 per dose.
    #[test]
    fn the_accuracy_table_follows_the_calibration() {
        let table = accuracy_table();
        let e = std::f64::consts::E;
        let laplace_sd = (2.0 * 2.0 * e / (e - 1.0).powi(2)).sqrt();
        let row = |prefix: &str| table.lines().find(|l| l.starts_with(prefix)).unwrap().to_string();
        assert!(row("| discrete Laplace | ε = 1 |").contains(&format!("| {laplace_sd:.2} |")), "{table}");
        assert!(row("| discrete Gaussian | ρ = 0.5 ").contains("| 1.41 |"), "{table}");
        // Relative errors shrink tenfold with each tenfold population.
        assert!(row("| discrete Laplace | ε = 0.1 |").ends_with("| 2.0% | 0.20% | 0.020% | 0.0020% |"), "{table}");
    }

    /// PRIVACY.md prints the table this code computes, verbatim.
    #[test]
    fn privacy_md_holds_the_accuracy_table() {
        let privacy = include_str!("../../../PRIVACY.md");
        assert!(
            privacy.contains(&accuracy_table()),
            "PRIVACY.md must contain the accuracy table as computed:\n{}",
            accuracy_table()
        );
    }
}
