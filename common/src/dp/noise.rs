//! The noise an aggregator adds to its own aggregate share before the share leaves it, for every
//! Prio3 type: how far one report can move a result ([`sensitivity`]), the noise distribution a
//! mechanism and its parameter call for ([`NoiseDistribution::for_mechanism`]), and the sampling
//! itself, with prio's exact samplers (discrete Laplace and discrete Gaussian, [CKS20]) over the
//! integers, reduced into the field ([`add_noise`]).
//!
//! Each aggregator adds a full dose: the sum of the two shares then carries two independent
//! samples per entry, and the result keeps the guarantee of either dose alone (adding the other
//! aggregator's noise is post-processing), so it holds while either aggregator is honest. The
//! price is twice the variance of a single trusted curator's noise.
//!
//! Reducing a sample modulo the field's prime before adding it is the same as adding it over
//! the integers and reducing the noisy result, which is post-processing too.
//!
//! [CKS20]: https://arxiv.org/abs/2004.00010

use crate::vdaf::VdafConfig;
use num_bigint::{BigInt, BigUint};
use num_integer::Integer;
use prio::dp::distributions::{DiscreteGaussian, DiscreteLaplace};
use prio::dp::Rational;
use prio::field::FieldElementWithInteger;
use rand_0_10::distr::Distribution;

/// How far one report can move a VDAF's aggregate, under substitution (a batch with one report
/// replaced by another of the same batch size: the neighbouring relation of prio's strategies,
/// and the one under which `report_count`, released exactly, reveals nothing about who is in).
///
/// Derivations, for measurements `x` and `x'` a substitution swaps:
/// - **Count**: `x, x' ∈ {0, 1}`: the count moves by at most 1. L1 = 1, L2² = 1.
/// - **Sum** (`max_measurement` M): `x, x' ∈ [0, M]`: |x − x'| ≤ M. L1 = M, L2² = M².
/// - **SumVec** (`length` L, M): each of the L entries moves by at most M. L1 = L·M, L2² = L·M².
/// - **Histogram** (`length` L): one bucket loses 1 and another gains 1 (or nothing moves).
///   L1 = 2, L2² = 2.
/// - **MultihotCountVec** (`length` L, `max_weight` w): each vector has at most w ones (and at
///   most L), so at most 2w entries change, by 1 each, and never more than L. L1 = L2² =
///   min(2w, L).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sensitivity {
    /// The L1 norm of the largest change: what discrete Laplace noise is scaled to.
    pub l1: BigSensitivity,
    /// The square of the L2 norm (an integer, so kept exact): what discrete Gaussian noise is
    /// scaled to. `None` when it does not fit a [`BigSensitivity`].
    pub l2_squared: Option<BigSensitivity>,
}

/// A sensitivity. `u128` holds the L1 norm of every VDAF duet takes (at most 2^32 entries of at
/// most 2^64 − 1) but not every squared L2 norm (up to 2^160): Gaussian noise for settings whose
/// square does not fit is refused rather than calibrated to a rounded value, since a smaller
/// sensitivity would mean too little noise.
pub type BigSensitivity = u128;

/// The VDAF's [`Sensitivity`]; an error for test VDAFs, which have none.
pub fn sensitivity(config: &VdafConfig) -> Result<Sensitivity, NoiseError> {
    let (l1, l2_squared) = match *config {
        VdafConfig::Prio3Count => (1, Some(1)),
        VdafConfig::Prio3Sum { max_measurement } => {
            let m = u128::from(max_measurement);
            (m, m.checked_mul(m))
        }
        VdafConfig::Prio3SumVec { length, max_measurement, .. } => {
            let (l, m) = (u128::from(length), u128::from(max_measurement));
            // At most (2^32 − 1) · (2^64 − 1): no overflow.
            (l * m, m.checked_mul(m).and_then(|m2| m2.checked_mul(l)))
        }
        VdafConfig::Prio3Histogram { .. } => (2, Some(2)),
        VdafConfig::Prio3MultihotCountVec { length, max_weight, .. } => {
            let changed = u128::from(max_weight).saturating_mul(2).min(u128::from(length));
            (changed, Some(changed))
        }
        #[cfg(feature = "test-vdaf")]
        VdafConfig::Dummy { .. } => {
            return Err(NoiseError(format!("{config} has no sensitivity to calibrate noise to")))
        }
    };
    Ok(Sensitivity { l1, l2_squared })
}

/// The L1 sensitivity prio's discrete Laplace strategy for SumVec calibrates to: every entry
/// moving by `2^bits − 1`, the largest value of the bits a measurement is encoded in. That is at
/// least [`sensitivity`]'s `L·M` (equal when `M` is one less than a power of two), so prio's
/// noise is sometimes larger than needed, never smaller.
pub fn prio_sum_vec_l1(length: u32, max_measurement: u64) -> BigSensitivity {
    let bits = max_measurement.checked_ilog2().map_or(1, |b| b + 1);
    let top = 1u128.checked_shl(bits).map_or(u128::MAX, |v| v - 1);
    top.saturating_mul(u128::from(length))
}

/// A positive rational `numer / denom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    pub numer: u128,
    pub denom: u128,
}

impl Ratio {
    pub fn to_f64(self) -> f64 {
        self.numer as f64 / self.denom as f64
    }

    fn to_prio(self) -> Rational {
        Rational::from_unsigned(self.numer, self.denom).expect("a positive denominator")
    }
}

/// The digits kept of a discrete Gaussian's σ, which is rounded up to them (more noise, never
/// less): 10^-9.
const SIGMA_SCALE: u128 = 1_000_000_000;

/// The noise of one aggregator's share, per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseDistribution {
    /// Discrete Laplace of scale `t`: P(x) ∝ exp(−|x| / t).
    Laplace { scale: Ratio },
    /// Discrete Gaussian of parameter `σ`: P(x) ∝ exp(−x² / 2σ²).
    Gaussian { sigma: Ratio },
}

/// Why a mechanism cannot be calibrated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("differential privacy: {0}")]
pub struct NoiseError(pub String);

impl NoiseDistribution {
    /// Pure ε-DP (discrete Laplace): scale t = Δ1 / ε, with ε = `epsilon` (numerator,
    /// denominator). The discrete Laplace mechanism of scale Δ1/ε is ε-DP for an integer query
    /// of L1 sensitivity Δ1 ([CKS20], Theorem 13 with its Laplace analogue; prio's
    /// `PureDpDiscreteLaplace` calibrates the same way).
    pub fn laplace(sensitivity: &Sensitivity, epsilon: (u64, u64)) -> Result<Self, NoiseError> {
        let (n, d) = epsilon;
        if n == 0 || d == 0 {
            return Err(NoiseError("epsilon must be positive".into()));
        }
        let numer = sensitivity
            .l1
            .checked_mul(u128::from(d))
            .ok_or_else(|| NoiseError("the noise's scale is too large to represent".into()))?;
        Ok(NoiseDistribution::Laplace { scale: reduce(numer, u128::from(n)) })
    }

    /// ρ-zCDP (discrete Gaussian): σ = sqrt(Δ2² / 2ρ), with ρ = `rho` (numerator,
    /// denominator), rounded up to [`SIGMA_SCALE`]. Adding discrete Gaussian noise of parameter
    /// σ to an integer query of L2 sensitivity Δ2 is (Δ2² / 2σ²)-zCDP ([CKS20], Theorem 4), so
    /// this σ (or a larger one) gives ρ.
    pub fn gaussian(sensitivity: &Sensitivity, rho: (u64, u64)) -> Result<Self, NoiseError> {
        let (n, d) = rho;
        if n == 0 || d == 0 {
            return Err(NoiseError("rho must be positive".into()));
        }
        let l2_squared = sensitivity.l2_squared.ok_or_else(|| {
            NoiseError("the measurement bound is too large to calibrate discrete Gaussian noise to".into())
        })?;
        // (σ · SCALE)² = Δ2² · d · SCALE² / (2n), rounded up, then its square root rounded up.
        let scaled = BigUint::from(l2_squared) * BigUint::from(d) * BigUint::from(SIGMA_SCALE).pow(2u32);
        let divisor = BigUint::from(2 * u128::from(n));
        let (quotient, remainder) = scaled.div_rem(&divisor);
        let square = if remainder == BigUint::ZERO { quotient } else { quotient + 1u32 };
        let mut root = square.sqrt();
        if &root * &root < square {
            root += 1u32;
        }
        let numer = u128::try_from(root).map_err(|_| NoiseError("the noise's σ is too large to represent".into()))?;
        if numer == 0 {
            return Err(NoiseError("the noise's σ rounds to zero".into()));
        }
        Ok(NoiseDistribution::Gaussian { sigma: reduce(numer, SIGMA_SCALE) })
    }

    /// The variance of one sample (one aggregator's noise on one entry). Discrete Laplace of
    /// scale t: with q = e^(−1/t), 2q / (1 − q)². Discrete Gaussian: Σ x² P(x), summed
    /// (slightly below σ² for small σ, σ² to many digits from σ ≈ 1 on).
    pub fn variance(&self) -> f64 {
        match self {
            NoiseDistribution::Laplace { scale } => {
                let q = (-1.0 / scale.to_f64()).exp();
                2.0 * q / (1.0 - q).powi(2)
            }
            NoiseDistribution::Gaussian { sigma } => {
                let s = sigma.to_f64();
                if s > 1e4 {
                    return s * s;
                }
                let bound = (s * 40.0).ceil() as i64 + 10;
                let (mut mass, mut moment) = (0.0, 0.0);
                for x in -bound..=bound {
                    let p = (-((x * x) as f64) / (2.0 * s * s)).exp();
                    mass += p;
                    moment += (x * x) as f64 * p;
                }
                moment / mass
            }
        }
    }

    /// The probability of each value of one sample in `[-bound, bound]` (index `x + bound`),
    /// for tests of the samplers against the exact distribution.
    pub fn pmf(&self, bound: i64) -> Vec<f64> {
        let weight = |x: i64| match self {
            NoiseDistribution::Laplace { scale } => (-(x.unsigned_abs() as f64) / scale.to_f64()).exp(),
            NoiseDistribution::Gaussian { sigma } => {
                let s = sigma.to_f64();
                (-((x * x) as f64) / (2.0 * s * s)).exp()
            }
        };
        // Normalised over a range wide enough that the mass outside is negligible.
        let wide = bound.max(match self {
            NoiseDistribution::Laplace { scale } => (scale.to_f64() * 60.0) as i64 + 10,
            NoiseDistribution::Gaussian { sigma } => (sigma.to_f64() * 40.0) as i64 + 10,
        });
        let total: f64 = (-wide..=wide).map(weight).sum();
        (-bound..=bound).map(|x| weight(x) / total).collect()
    }

    fn sample<R: rand_0_10::Rng + ?Sized>(&self, rng: &mut R) -> BigInt {
        match self {
            NoiseDistribution::Laplace { scale } => {
                DiscreteLaplace::new(scale.to_prio()).expect("a positive scale").sample(rng)
            }
            NoiseDistribution::Gaussian { sigma } => {
                DiscreteGaussian::new(sigma.to_prio()).expect("a positive σ").sample(rng)
            }
        }
    }
}

/// `numer / denom` in lowest terms.
fn reduce(numer: u128, denom: u128) -> Ratio {
    let g = numer.gcd(&denom).max(1);
    Ratio { numer: numer / g, denom: denom / g }
}

/// Adds an independent sample of `noise` to every entry of an aggregate share (its field
/// elements), drawing from `rng`: the operating system's generator in the servers, a seeded
/// one in tests.
pub fn add_noise<F, R>(share: &mut [F], noise: &NoiseDistribution, rng: &mut R)
where
    F: FieldElementWithInteger,
    F::Integer: TryFrom<u128> + Into<u128>,
    R: rand_0_10::Rng + ?Sized,
{
    let modulus = BigInt::from(F::modulus().into());
    for entry in share.iter_mut() {
        let wrapped = noise.sample(rng).mod_floor(&modulus);
        let value = u128::try_from(wrapped).expect("reduced below the modulus");
        let integer = F::Integer::try_from(value).ok().expect("reduced below the modulus");
        *entry += F::from(integer);
    }
}

#[cfg(test)]
mod tests;
