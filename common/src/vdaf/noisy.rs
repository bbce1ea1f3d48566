//! Differential-privacy noise on aggregate shares, and the noisy results it leaves: each
//! aggregator's dose ([`Vdaf::add_noise`]), results read as signed integers (noise can push an
//! entry below zero or above its natural bound, and hiding that would bias the result), and
//! clamping into range as explicit post-processing for readers who want it.

use super::{AggregateResult, AggregateShare, Instance, PrioAggregateShare, Vdaf, VdafConfig, VdafFailure};
use crate::dp::noise::{add_noise, NoiseDistribution};
use crate::dp::DpConfig;
use prio::field::FieldElementWithInteger;

impl AggregateShare {
    /// Adds an independent sample of `noise` to every entry, drawing from `rng`
    /// ([`crate::dp::noise`]).
    pub fn add_noise_with<R: rand_0_10::Rng + ?Sized>(
        &mut self,
        noise: &NoiseDistribution,
        rng: &mut R,
    ) -> Result<(), VdafFailure> {
        match self {
            AggregateShare::F64(a) => {
                let mut entries = a.as_ref().to_vec();
                add_noise(&mut entries, noise, rng);
                *a = PrioAggregateShare::from(entries);
            }
            AggregateShare::F128(a) => {
                let mut entries = a.as_ref().to_vec();
                add_noise(&mut entries, noise, rng);
                *a = PrioAggregateShare::from(entries);
            }
            #[cfg(feature = "test-vdaf")]
            AggregateShare::Dummy(_) => return Err(VdafFailure::BadConfig("no noise for the dummy VDAF".into())),
        }
        Ok(())
    }

    /// The entries read as signed integers (values past half the modulus are negative).
    pub fn signed_entries(&self) -> Vec<i128> {
        self.entries_around(0).unwrap_or_default()
    }

    /// The entries as [`read_noisy`] reads them for true values in `[0, top]`; `None` for the
    /// dummy VDAF, which has no field.
    fn entries_around(&self, top: u128) -> Option<Vec<i128>> {
        match self {
            AggregateShare::F64(a) => Some(a.as_ref().iter().map(|x| read_noisy(*x, top)).collect()),
            AggregateShare::F128(a) => Some(a.as_ref().iter().map(|x| read_noisy(*x, top)).collect()),
            #[cfg(feature = "test-vdaf")]
            AggregateShare::Dummy(_) => None,
        }
    }
}

impl Vdaf {
    /// Adds this aggregator's dose of `dp`'s noise to its aggregate share of `num_measurements`
    /// reports, from the operating system's generator (fresh randomness each call: call once per
    /// released share).
    pub fn add_noise(
        &self,
        dp: &DpConfig,
        share: &mut AggregateShare,
        num_measurements: u64,
    ) -> Result<(), VdafFailure> {
        self.add_noise_from(dp, share, num_measurements, &mut rand_0_10::rng())
    }

    /// [`Self::add_noise`] drawing from `rng`. Discrete Laplace noise on Histogram and SumVec goes
    /// through prio's own strategy (`AggregatorWithNoise`), which draws from a generator prio
    /// seeds itself, so `rng` is not used there; every other pairing samples the distribution
    /// [`DpConfig::noise`] calibrates, with prio's samplers, from `rng`.
    pub fn add_noise_from<R: rand_0_10::Rng + ?Sized>(
        &self,
        dp: &DpConfig,
        share: &mut AggregateShare,
        num_measurements: u64,
        rng: &mut R,
    ) -> Result<(), VdafFailure> {
        use prio::dp::distributions::PureDpDiscreteLaplace;
        use prio::dp::{DifferentialPrivacyStrategy, PureDpBudget, Rational};
        use prio::vdaf::AggregatorWithNoise;
        let bad = |e: String| VdafFailure::BadConfig(format!("differential privacy: {e}"));
        if let DpConfig::DiscreteLaplace { epsilon, .. } = dp {
            let prio_strategy = || {
                let (numer, denom) = crate::dp::parse_decimal(epsilon).map_err(|e| bad(e.to_string()))?;
                let epsilon = Rational::from_unsigned(numer, denom).map_err(|e| bad(e.to_string()))?;
                let budget = PureDpBudget::new(epsilon).map_err(|e| bad(e.to_string()))?;
                let n = usize::try_from(num_measurements).map_err(|_| bad("report count".into()))?;
                Ok::<_, VdafFailure>((PureDpDiscreteLaplace::from_budget(budget), n))
            };
            match (&self.instance, &mut *share) {
                (Instance::Histogram(v), AggregateShare::F128(a)) => {
                    let (strategy, n) = prio_strategy()?;
                    return Ok(v.add_noise_to_agg_share(&strategy, &(), a, n)?);
                }
                (Instance::SumVec(v), AggregateShare::F128(a)) => {
                    let (strategy, n) = prio_strategy()?;
                    return Ok(v.add_noise_to_agg_share(&strategy, &(), a, n)?);
                }
                _ => {}
            }
        }
        let noise = dp.noise(&self.config).map_err(|e| bad(e.0))?;
        share.add_noise_with(&noise, rng)
    }

    /// Combines two noisy aggregate shares of `report_count` reports into the result, entries
    /// as signed integers: the noise is left in, below 0 or above the largest true value as it
    /// fell. An entry is read as negative only past the middle of the gap between the largest
    /// true value and the modulus (noise that large is refused at task creation), so large true
    /// sums are never mistaken for negative ones.
    pub fn unshard_noisy(
        &self,
        leader: &AggregateShare,
        helper: &AggregateShare,
        report_count: u64,
    ) -> Result<AggregateResult, VdafFailure> {
        let mut sum = leader.clone();
        sum.merge(helper)?;
        let top = largest_true_value(&self.config, report_count);
        let entries =
            sum.entries_around(top).ok_or_else(|| VdafFailure::BadConfig("no noise for the dummy VDAF".into()))?;
        Ok(match &self.instance {
            Instance::Count(_) | Instance::Sum(_) => match entries.as_slice() {
                [value] => AggregateResult::NoisyScalar(*value),
                _ => return Err(VdafFailure::BadConfig("a scalar aggregate share has one entry".into())),
            },
            _ => AggregateResult::NoisyVector(entries),
        })
    }
}

/// The largest value an entry of a true result of `report_count` reports can take: the count
/// for Count, Histogram and MultihotCountVec entries, count × maximum for Sum and SumVec.
fn largest_true_value(vdaf: &VdafConfig, report_count: u64) -> u128 {
    let n = u128::from(report_count);
    match *vdaf {
        VdafConfig::Prio3Sum { max_measurement } | VdafConfig::Prio3SumVec { max_measurement, .. } => {
            n.saturating_mul(u128::from(max_measurement))
        }
        _ => n,
    }
}

/// A noisy entry whose true value lies in `[0, top]`, as a signed integer: negative past the
/// middle of the gap between `top` and the modulus (past half the modulus for `top` 0).
fn read_noisy<F>(x: F, top: u128) -> i128
where
    F: FieldElementWithInteger,
    F::Integer: Into<u128>,
{
    let (v, p): (u128, u128) = (F::Integer::from(x).into(), F::modulus().into());
    let wrap = top.saturating_add(p.saturating_sub(top) / 2);
    if v > wrap {
        -i128::try_from(p - v).unwrap_or(i128::MAX)
    } else {
        i128::try_from(v).unwrap_or(i128::MAX)
    }
}

impl AggregateResult {
    /// A noisy result clamped into the range a true result of `report_count` reports can take
    /// (from 0 to the count for Count, Histogram and MultihotCountVec entries, to count × maximum
    /// for Sum and SumVec). Clamping is post-processing: it leaves the privacy guarantee as it
    /// is, but it biases entries near the bounds (a true 0 never comes out below 0, so its
    /// clamped mean is above 0), so it is only done when asked for. Results without noise come
    /// back unchanged.
    pub fn clamped(&self, vdaf: &VdafConfig, report_count: u64) -> AggregateResult {
        let top = largest_true_value(vdaf, report_count);
        let clamp = |x: i128| (x.max(0) as u128).min(top);
        match self {
            AggregateResult::NoisyScalar(x) => AggregateResult::Scalar(u64::try_from(clamp(*x)).unwrap_or(u64::MAX)),
            AggregateResult::NoisyVector(v) => AggregateResult::Vector(v.iter().map(|x| clamp(*x)).collect()),
            exact => exact.clone(),
        }
    }

    /// Whether the result carries differential-privacy noise (and may be off its range).
    pub fn is_noisy(&self) -> bool {
        matches!(self, AggregateResult::NoisyScalar(_) | AggregateResult::NoisyVector(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping_is_into_each_types_range() {
        let noisy = AggregateResult::NoisyVector(vec![-3, 0, 7, 12]);
        let histogram = VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 };
        assert_eq!(noisy.clamped(&histogram, 10), AggregateResult::Vector(vec![0, 0, 7, 10]));
        let sum_vec = VdafConfig::Prio3SumVec { length: 4, max_measurement: 3, chunk_length: 2 };
        assert_eq!(noisy.clamped(&sum_vec, 2), AggregateResult::Vector(vec![0, 0, 6, 6]));
        let sum = VdafConfig::Prio3Sum { max_measurement: 100 };
        assert_eq!(AggregateResult::NoisyScalar(-40).clamped(&sum, 5), AggregateResult::Scalar(0));
        assert_eq!(AggregateResult::NoisyScalar(541).clamped(&sum, 5), AggregateResult::Scalar(500));
        assert_eq!(AggregateResult::NoisyScalar(11).clamped(&VdafConfig::Prio3Count, 10), AggregateResult::Scalar(10));
        // Exact results are never touched.
        assert_eq!(AggregateResult::Scalar(12).clamped(&VdafConfig::Prio3Count, 10), AggregateResult::Scalar(12));
        assert!(noisy.is_noisy() && !AggregateResult::Scalar(1).is_noisy());
    }

    /// A true sum past half the field is read as itself, and a value just below 0 as negative.
    #[test]
    fn large_noisy_sums_are_not_read_as_negative() {
        use prio::field::Field64;
        let p = u128::from(Field64::modulus());
        let top = p * 3 / 4; // e.g. 10^7 reports of values up to 1.4 · 10^12
        let field = |v: u128| Field64::from(u64::try_from(v).unwrap());
        assert_eq!(read_noisy(field(p * 2 / 3), top), (p * 2 / 3) as i128);
        assert_eq!(read_noisy(field(top + 5), top), (top + 5) as i128, "noise above the largest true value");
        assert_eq!(read_noisy(field(p - 3), top), -3);
        // With a small top, the symmetric reading.
        assert_eq!(read_noisy(field(p - 3), 10), -3);
        assert_eq!(read_noisy(field(12), 10), 12);
    }
}
