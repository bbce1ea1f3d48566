//! Differential privacy for a task's results: the settings both aggregators are provisioned with
//! (a mechanism and its parameter, and the task's total budget in the mechanism's own terms),
//! the noise each adds to its own aggregate share (so that a result stays private while either
//! aggregator is honest), and the privacy statement that goes with every noisy result.

pub mod accounting;
pub mod noise;

use crate::vdaf::VdafConfig;
use accounting::{released_std_dev, zcdp_to_epsilon};
use noise::{NoiseDistribution, Sensitivity};
use serde::{Deserialize, Serialize};

/// The δ at which a zCDP guarantee is also stated as (ε, δ)-DP, for people who think in ε.
pub const STATED_DELTA: f64 = 1e-9;

/// The two mechanisms a task can be created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpMechanism {
    /// Discrete Laplace noise calibrated to the type's L1 sensitivity: pure ε-DP.
    DiscreteLaplace,
    /// Discrete Gaussian noise calibrated to the type's L2 sensitivity: ρ-zero-concentrated DP.
    DiscreteGaussian,
}

impl DpMechanism {
    /// The name of the parameter the mechanism is tuned by, and its budget is counted in.
    pub fn unit(self) -> BudgetUnit {
        match self {
            DpMechanism::DiscreteLaplace => BudgetUnit::Epsilon,
            DpMechanism::DiscreteGaussian => BudgetUnit::Rho,
        }
    }
}

impl std::fmt::Display for DpMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpMechanism::DiscreteLaplace => "discrete Laplace",
            DpMechanism::DiscreteGaussian => "discrete Gaussian",
        })
    }
}

/// What a task's privacy budget is counted in: ε adds up under basic composition, ρ under zCDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetUnit {
    Epsilon,
    Rho,
}

impl BudgetUnit {
    pub fn name(self) -> &'static str {
        match self {
            BudgetUnit::Epsilon => "epsilon",
            BudgetUnit::Rho => "rho",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "epsilon" => Some(BudgetUnit::Epsilon),
            "rho" => Some(BudgetUnit::Rho),
            _ => None,
        }
    }
}

/// A task's differential-privacy settings, tagged by mechanism in JSON
/// (`{"mechanism": "discrete_gaussian", "rho": "0.1", "budget_rho": "1"}`). Decimal strings keep
/// the parameters exact (they become rationals for the samplers) and the settings comparable byte
/// for byte between the aggregators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mechanism", rename_all = "snake_case", deny_unknown_fields)]
pub enum DpConfig {
    DiscreteLaplace {
        /// ε spent by each collection, e.g. `"0.5"`.
        epsilon: String,
        /// Total ε the task may spend over all its collections (basic composition); unlimited
        /// if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_epsilon: Option<String>,
    },
    DiscreteGaussian {
        /// ρ spent by each collection (ρ-zCDP), e.g. `"0.05"`.
        rho: String,
        /// Total ρ the task may spend over all its collections (zCDP composes by adding ρ);
        /// unlimited if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_rho: Option<String>,
    },
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

fn decimal_f64(s: &str) -> f64 {
    parse_decimal(s).map(|(n, d)| n as f64 / d as f64).unwrap_or(f64::NAN)
}

impl DpConfig {
    /// Pure ε-DP with discrete Laplace noise.
    pub fn laplace(epsilon: &str, budget_epsilon: Option<&str>) -> Self {
        DpConfig::DiscreteLaplace { epsilon: epsilon.into(), budget_epsilon: budget_epsilon.map(Into::into) }
    }

    /// ρ-zCDP with discrete Gaussian noise.
    pub fn gaussian(rho: &str, budget_rho: Option<&str>) -> Self {
        DpConfig::DiscreteGaussian { rho: rho.into(), budget_rho: budget_rho.map(Into::into) }
    }

    pub fn mechanism(&self) -> DpMechanism {
        match self {
            DpConfig::DiscreteLaplace { .. } => DpMechanism::DiscreteLaplace,
            DpConfig::DiscreteGaussian { .. } => DpMechanism::DiscreteGaussian,
        }
    }

    pub fn unit(&self) -> BudgetUnit {
        self.mechanism().unit()
    }

    /// The per-collection parameter (ε or ρ) as written.
    pub fn parameter(&self) -> &str {
        match self {
            DpConfig::DiscreteLaplace { epsilon, .. } => epsilon,
            DpConfig::DiscreteGaussian { rho, .. } => rho,
        }
    }

    /// The task's total budget as written, in [`Self::unit`].
    pub fn budget(&self) -> Option<&str> {
        match self {
            DpConfig::DiscreteLaplace { budget_epsilon, .. } => budget_epsilon.as_deref(),
            DpConfig::DiscreteGaussian { budget_rho, .. } => budget_rho.as_deref(),
        }
    }

    /// What one collection spends of the budget, in [`Self::unit`].
    pub fn cost(&self) -> f64 {
        decimal_f64(self.parameter())
    }

    pub fn budget_f64(&self) -> Option<f64> {
        self.budget().map(decimal_f64)
    }

    /// Checks the settings, and that noise can be calibrated for this VDAF.
    pub fn validate(&self, vdaf: &VdafConfig) -> Result<(), DpConfigError> {
        let unit = self.unit().name();
        parse_decimal(self.parameter()).map_err(|e| DpConfigError(format!("{unit}: {}", e.0)))?;
        if let Some(b) = self.budget() {
            parse_decimal(b).map_err(|e| DpConfigError(format!("budget: {}", e.0)))?;
            if self.budget_f64() < Some(self.cost()) {
                return Err(DpConfigError(format!("the budget is smaller than one collection's {unit}")));
            }
        }
        self.noise(vdaf).map(|_| ())
    }

    /// The noise each aggregator adds to every entry of its aggregate share for this VDAF. For
    /// discrete Laplace on Histogram and SumVec this is the calibration of prio's own strategy,
    /// which duet uses there ([`crate::vdaf::Vdaf::add_noise`]).
    pub fn noise(&self, vdaf: &VdafConfig) -> Result<NoiseDistribution, DpConfigError> {
        let mut sensitivity = noise::sensitivity(vdaf).map_err(|e| DpConfigError(e.0))?;
        let parameter = parse_decimal(self.parameter())?;
        let calibrated = match self {
            DpConfig::DiscreteLaplace { .. } => {
                if let VdafConfig::Prio3SumVec { length, max_measurement, .. } = *vdaf {
                    sensitivity = Sensitivity { l1: noise::prio_sum_vec_l1(length, max_measurement), ..sensitivity };
                }
                NoiseDistribution::laplace(&sensitivity, parameter)
            }
            DpConfig::DiscreteGaussian { .. } => NoiseDistribution::gaussian(&sensitivity, parameter),
        };
        let noise = calibrated.map_err(|e| DpConfigError(e.0))?;
        // Noise comparable to the field's size would wrap around it, and the result could not
        // be read back (nor its standard deviation mean anything).
        let half = (vdaf_modulus(vdaf) / 2) as f64;
        if released_std_dev(&noise) * MODULUS_MARGIN >= half {
            return Err(DpConfigError(format!(
                "the noise for {vdaf} at {} = {} would be too large for the VDAF's field; choose a larger {0}",
                self.unit().name(),
                self.parameter()
            )));
        }
        Ok(noise)
    }

    /// The privacy statement of a result of this VDAF: mechanism, parameter, what it implies,
    /// and the noise's standard deviation per entry of the result.
    pub fn describe(&self, vdaf: &VdafConfig) -> String {
        let sd = match self.noise(vdaf) {
            Ok(noise) => {
                format!("standard deviation {} per entry of the result", significant(released_std_dev(&noise)))
            }
            Err(e) => format!("noise of unknown size ({e})"),
        };
        let guarantee = match self {
            DpConfig::DiscreteLaplace { epsilon, .. } => format!("pure DP, epsilon = {epsilon} per collection"),
            DpConfig::DiscreteGaussian { rho, .. } => format!(
                "zero-concentrated DP, rho = {rho} per collection, i.e. ({}, delta = {STATED_DELTA:e})-DP",
                epsilon_of_rho(self.cost())
            ),
        };
        format!("{} noise ({guarantee}), added by each aggregator to its share: {sd}", self.mechanism())
    }
}

/// How many of the released noise's standard deviations must fit in half the field: noise
/// beyond that many would wrap a result around the modulus (a chance far below 10^-100).
const MODULUS_MARGIN: f64 = 65536.0;

/// The modulus of the field a VDAF's aggregate lives in: Field64 for Count and Sum, Field128
/// for the vector types.
fn vdaf_modulus(vdaf: &VdafConfig) -> u128 {
    use prio::field::{Field128, Field64, FieldElementWithInteger};
    match vdaf {
        VdafConfig::Prio3Count | VdafConfig::Prio3Sum { .. } => u128::from(Field64::modulus()),
        _ => Field128::modulus(),
    }
}

/// "epsilon = 1.23": ρ-zCDP stated as (ε, δ)-DP at [`STATED_DELTA`].
pub fn epsilon_of_rho(rho: f64) -> String {
    format!("epsilon = {}", significant(zcdp_to_epsilon(rho, STATED_DELTA)))
}

/// A figure for people: three significant digits (whole numbers above 100).
pub fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
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

    fn all_types() -> Vec<VdafConfig> {
        vec![
            VdafConfig::Prio3Count,
            VdafConfig::Prio3Sum { max_measurement: 100 },
            VdafConfig::Prio3SumVec { length: 4, max_measurement: 1, chunk_length: 2 },
            VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 },
            VdafConfig::Prio3MultihotCountVec { length: 4, chunk_length: 2, max_weight: 2 },
        ]
    }

    #[test]
    fn every_prio3_type_takes_either_mechanism() {
        for vdaf in all_types() {
            assert_eq!(DpConfig::laplace("1", Some("3")).validate(&vdaf), Ok(()), "{vdaf}");
            assert_eq!(DpConfig::gaussian("0.1", None).validate(&vdaf), Ok(()), "{vdaf}");
        }
        let count = VdafConfig::Prio3Count;
        let err = DpConfig::laplace("1", Some("0.5")).validate(&count).unwrap_err();
        assert_eq!(err.to_string(), "differential privacy: the budget is smaller than one collection's epsilon");
        let err = DpConfig::gaussian("-0.1", None).validate(&count).unwrap_err();
        assert_eq!(err.to_string(), "differential privacy: rho: \"-0.1\" is not a positive decimal number");
        let err = DpConfig::gaussian("0.1", Some("x")).validate(&count).unwrap_err();
        assert!(err.to_string().contains("budget: \"x\""), "{err}");
        // Noise that would wrap around the field (a Sum's Field64), or whose sensitivity does not
        // fit, is refused rather than released unreadable or too small.
        let huge_sum = VdafConfig::Prio3Sum { max_measurement: 1 << 62 };
        let err = DpConfig::laplace("0.1", None).validate(&huge_sum).unwrap_err();
        assert!(err.to_string().contains("too large for the VDAF's field"), "{err}");
        assert_eq!(DpConfig::laplace("0.1", None).validate(&VdafConfig::Prio3Sum { max_measurement: 1 << 40 }), Ok(()));
        let huge_vec = VdafConfig::Prio3SumVec { length: 1024, max_measurement: 1 << 60, chunk_length: 100 };
        let err = DpConfig::gaussian("1", None).validate(&huge_vec).unwrap_err();
        assert!(err.to_string().contains("too large to calibrate discrete Gaussian noise"), "{err}");
    }

    #[test]
    fn the_json_is_tagged_by_mechanism_and_reads_older_tasks() {
        // The form tasks were stored in before the Gaussian mechanism existed.
        let old: DpConfig =
            serde_json::from_str(r#"{"mechanism":"discrete_laplace","epsilon":"1","budget_epsilon":"2"}"#).unwrap();
        assert_eq!(old, DpConfig::laplace("1", Some("2")));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"mechanism":"discrete_laplace","epsilon":"1","budget_epsilon":"2"}"#
        );
        let zcdp = DpConfig::gaussian("0.05", None);
        assert_eq!(serde_json::to_string(&zcdp).unwrap(), r#"{"mechanism":"discrete_gaussian","rho":"0.05"}"#);
        assert_eq!((zcdp.unit(), zcdp.cost(), zcdp.budget_f64()), (BudgetUnit::Rho, 0.05, None));
        // A parameter of the other mechanism is an error, not silently ignored.
        assert!(serde_json::from_str::<DpConfig>(r#"{"mechanism":"discrete_gaussian","epsilon":"1"}"#).is_err());
        assert!(
            serde_json::from_str::<DpConfig>(r#"{"mechanism":"discrete_laplace","epsilon":"1","rho":"1"}"#).is_err()
        );
    }

    /// The statement's figures come from the calibration: a Count at ε = 1 has discrete Laplace
    /// noise of scale 1 per dose (variance 2e/(e − 1)² = 1.84, twice that in the result, SD
    /// 1.92); a Sum of maximum 10 at ρ = 0.5 has σ = 10 per dose (SD 14.1 in the result).
    #[test]
    fn statements_name_the_mechanism_and_the_noise() {
        assert_eq!(
            DpConfig::laplace("1", None).describe(&VdafConfig::Prio3Count),
            "discrete Laplace noise (pure DP, epsilon = 1 per collection), added by each aggregator to its \
             share: standard deviation 1.92 per entry of the result"
        );
        assert_eq!(
            DpConfig::gaussian("0.5", None).describe(&VdafConfig::Prio3Sum { max_measurement: 10 }),
            "discrete Gaussian noise (zero-concentrated DP, rho = 0.5 per collection, i.e. (epsilon = 6.94, \
             delta = 1e-9)-DP), added by each aggregator to its share: standard deviation 14.1 per entry of the \
             result"
        );
    }

    #[test]
    fn figures_keep_three_significant_digits() {
        assert_eq!(significant(1.9183), "1.92");
        assert_eq!(significant(14.142), "14.1");
        assert_eq!(significant(1414.2), "1414");
        assert_eq!(significant(0.012345), "0.0123");
        assert_eq!(significant(2.0), "2");
    }
}
