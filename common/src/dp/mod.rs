//! Differential privacy for a task's results, on prio's `dp` module: the settings both
//! aggregators are provisioned with, the noise each adds to its own aggregate share (so that a
//! result stays ε-DP while either aggregator is honest), and the per-task budget the leader
//! spends one collection at a time.

pub mod accounting;
pub mod noise;

use crate::vdaf::VdafConfig;
use serde::{Deserialize, Serialize};

/// The mechanisms prio 0.18.1 offers for Prio3 types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpMechanism {
    /// Discrete Laplace noise calibrated to the type's L1 sensitivity (substitution neighbours):
    /// pure ε-DP. prio implements it for Prio3Histogram and Prio3SumVec.
    DiscreteLaplace,
}

/// A task's differential-privacy settings. Decimal strings keep ε exact (it becomes a rational
/// for prio's samplers) and the settings comparable byte for byte between the aggregators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpConfig {
    pub mechanism: DpMechanism,
    /// ε spent by each collection, e.g. `"0.5"`.
    pub epsilon: String,
    /// Total ε the task may spend over all its collections (basic composition); unlimited if
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_epsilon: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("differential privacy: {0}")]
pub struct DpConfigError(pub String);

/// A positive decimal `"I.F"` as an exact fraction (numerator, 10^digits).
pub fn parse_decimal(s: &str) -> Result<(u64, u64), DpConfigError> {
    let bad = || DpConfigError(format!("{s:?} is not a positive decimal number"));
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 9
        || !(int.chars().chain(frac.chars())).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let denom = 10u64.pow(frac.len() as u32);
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let frac: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    let numer = int.checked_mul(denom).and_then(|n| n.checked_add(frac)).ok_or_else(bad)?;
    if numer == 0 {
        return Err(bad());
    }
    Ok((numer, denom))
}

impl DpConfig {
    pub fn epsilon_f64(&self) -> f64 {
        parse_decimal(&self.epsilon).map(|(n, d)| n as f64 / d as f64).unwrap_or(f64::NAN)
    }

    pub fn budget_f64(&self) -> Option<f64> {
        self.budget_epsilon.as_deref().and_then(|b| parse_decimal(b).ok()).map(|(n, d)| n as f64 / d as f64)
    }

    /// Checks the settings and that prio can add this noise to this VDAF's shares.
    pub fn validate(&self, vdaf: &VdafConfig) -> Result<(), DpConfigError> {
        parse_decimal(&self.epsilon)?;
        if let Some(b) = &self.budget_epsilon {
            parse_decimal(b)?;
            if self.budget_f64() < Some(self.epsilon_f64()) {
                return Err(DpConfigError("the budget is smaller than one collection's epsilon".into()));
            }
        }
        match vdaf {
            VdafConfig::Prio3Histogram { .. } | VdafConfig::Prio3SumVec { .. } => Ok(()),
            other => Err(DpConfigError(format!(
                "prio 0.18.1 adds noise to Prio3Histogram and Prio3SumVec only, not to {other}"
            ))),
        }
    }

    /// For people: what noise a result carries.
    pub fn describe(&self) -> String {
        match self.mechanism {
            DpMechanism::DiscreteLaplace => format!(
                "discrete Laplace noise for epsilon = {} per collection (pure DP), added by each aggregator to its share (negative noisy counts shown as 0)",
                self.epsilon
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("0.5").unwrap(), (5, 10));
        assert_eq!(parse_decimal("2").unwrap(), (2, 1));
        assert_eq!(parse_decimal(".25").unwrap(), (25, 100));
        for bad in ["", "0", "0.0", "-1", "1e3", "a", "1.2.3", "0.0000000001"] {
            assert!(parse_decimal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_types_prio_can_noise() {
        let dp =
            DpConfig { mechanism: DpMechanism::DiscreteLaplace, epsilon: "1".into(), budget_epsilon: Some("3".into()) };
        assert!(dp.validate(&VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 }).is_ok());
        assert!(dp.validate(&VdafConfig::Prio3SumVec { length: 4, max_measurement: 1, chunk_length: 2 }).is_ok());
        assert!(dp
            .validate(&VdafConfig::Prio3Count)
            .unwrap_err()
            .to_string()
            .contains("Prio3Histogram and Prio3SumVec"));
        let small = DpConfig { budget_epsilon: Some("0.5".into()), ..dp };
        assert!(small.validate(&VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 }).is_err());
        let json = serde_json::to_value(&small).unwrap();
        assert_eq!(json["mechanism"], "discrete_laplace");
    }

    /// Both aggregators' shares of one fixed batch of histogram reports.
    fn fixed_batch(
        vdaf: &crate::vdaf::Vdaf,
        reports: &[usize],
    ) -> (crate::vdaf::AggregateShare, crate::vdaf::AggregateShare) {
        use crate::vdaf::{Measurement, Transition, VerifyKey};
        let key = VerifyKey::random();
        let ctx = [7u8; 38];
        let (mut leader, mut helper) = (vdaf.aggregate_init(), vdaf.aggregate_init());
        for (i, bucket) in reports.iter().enumerate() {
            let nonce = [i as u8; 16];
            let (public, [ls, hs]) = vdaf.shard(&ctx, &Measurement::Histogram(*bucket), &nonce).unwrap();
            let (state, msg) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
            let Transition::FinishedWithOutbound { out_share: h, outbound } =
                vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &msg).unwrap()
            else {
                panic!()
            };
            let Transition::Finished { out_share: l } = vdaf.leader_continued(&ctx, state, &outbound).unwrap() else {
                panic!()
            };
            leader.accumulate(&l).unwrap();
            helper.accumulate(&h).unwrap();
        }
        (leader, helper)
    }

    /// The statistical check: many noisy releases of one fixed batch. Each aggregator adds
    /// discrete Laplace noise of scale t = sensitivity / epsilon = 2 / epsilon (prio's histogram
    /// sensitivity under substitution is 2), so each result entry is off by the sum of two
    /// independent such samples: mean 0, variance 2 * 2e^(-1/t) / (1 - e^(-1/t))^2. The sample
    /// mean and variance must match within 5 standard errors for this sample size.
    #[test]
    fn noise_has_the_configured_distribution() {
        use crate::vdaf::{AggregateResult, Vdaf};
        use prio::field::{Field128, FieldElementWithInteger};
        let config = VdafConfig::Prio3Histogram { length: 10, chunk_length: 3 };
        let vdaf = Vdaf::new(&config).unwrap();
        let reports: Vec<usize> = (0..20).map(|i| (i * 7) % 10).collect();
        let (leader, helper) = fixed_batch(&vdaf, &reports);
        let AggregateResult::Vector(truth) = vdaf.unshard(&leader, &helper, 20).unwrap() else { panic!() };
        let dp = DpConfig { mechanism: DpMechanism::DiscreteLaplace, epsilon: "1".into(), budget_epsilon: None };
        let p = Field128::modulus();
        let mut samples = Vec::new();
        let trials = 400;
        for _ in 0..trials {
            let (mut l, mut h) = (leader.clone(), helper.clone());
            vdaf.add_noise(&dp, &mut l, 20).unwrap();
            vdaf.add_noise(&dp, &mut h, 20).unwrap();
            let AggregateResult::Vector(noisy) = vdaf.unshard(&l, &h, 20).unwrap() else { panic!() };
            for (x, t) in noisy.iter().zip(&truth) {
                // Back from the field: values past p/2 are negative.
                let x = if *x > p / 2 { -((p - x) as i128) } else { *x as i128 };
                samples.push((x - *t as i128) as f64);
            }
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let t = 2.0f64; // sensitivity 2 / epsilon 1
        let q = (-1.0 / t).exp();
        let expected_var = 2.0 * (2.0 * q / (1.0 - q).powi(2));
        let mean_tolerance = 5.0 * (expected_var / n).sqrt();
        // The sum of two discrete Laplace samples has kurtosis about 4.5, so the sample variance
        // has standard error about expected_var * sqrt(3.5 / n).
        let var_tolerance = 5.0 * expected_var * (3.5 / n).sqrt();
        assert!(mean.abs() < mean_tolerance, "mean {mean} outside ±{mean_tolerance}");
        assert!(
            (var - expected_var).abs() < var_tolerance,
            "variance {var}, expected {expected_var} ± {var_tolerance}"
        );
        // And the noise is really there: results differ from the truth.
        assert!(samples.iter().filter(|x| **x != 0.0).count() > samples.len() / 2);
    }
}
