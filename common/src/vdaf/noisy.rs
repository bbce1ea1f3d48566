//! Differential-privacy noise on aggregate shares, and the noisy results it leaves: each
//! aggregator's dose ([`Vdaf::add_noise`]), results read as signed integers (noise can push an
//! entry below zero or above its natural bound, and hiding that would bias the result), and
//! clamping into range as explicit post-processing for readers who want it.

use super::{AggregateResult, AggregateShare, Instance, PrioAggregateShare, Vdaf, VdafConfig, VdafFailure};
use crate::dp::noise::{add_noise, signed, NoiseDistribution};
use crate::dp::DpConfig;

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
        match self {
            AggregateShare::F64(a) => a.as_ref().iter().map(|x| signed(*x)).collect(),
            AggregateShare::F128(a) => a.as_ref().iter().map(|x| signed(*x)).collect(),
            #[cfg(feature = "test-vdaf")]
            AggregateShare::Dummy(_) => Vec::new(),
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

    /// Combines two noisy aggregate shares into the result, entries as signed integers: the
    /// noise is left in, negative or above the natural bound as it falls.
    pub fn unshard_noisy(
        &self,
        leader: &AggregateShare,
        helper: &AggregateShare,
    ) -> Result<AggregateResult, VdafFailure> {
        let mut sum = leader.clone();
        sum.merge(helper)?;
        let entries = sum.signed_entries();
        Ok(match &self.instance {
            Instance::Count(_) | Instance::Sum(_) => match entries.as_slice() {
                [value] => AggregateResult::NoisyScalar(*value),
                _ => return Err(VdafFailure::BadConfig("a scalar aggregate share has one entry".into())),
            },
            _ => AggregateResult::NoisyVector(entries),
        })
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
        let n = u128::from(report_count);
        let top = match *vdaf {
            VdafConfig::Prio3Sum { max_measurement } | VdafConfig::Prio3SumVec { max_measurement, .. } => {
                n.saturating_mul(u128::from(max_measurement))
            }
            _ => n,
        };
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
}
