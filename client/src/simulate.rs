//! Simulated measurements and their aggregate computed in the clear: what `duet demo` (and the
//! end-to-end tests) compare a collected result against.

use duet_common::vdaf::{AggregateResult, Measurement, VdafConfig};
use rand::Rng;

/// About the square root of the measurement's encoded length, which balances proof size and
/// verification work for Prio3's chunked circuits.
pub fn default_chunk_length(encoded_len: u64) -> u32 {
    let root = (encoded_len as f64).sqrt().floor() as u64;
    u32::try_from(root.max(1)).unwrap_or(u32::MAX)
}

/// A random valid measurement for `config`. Histogram buckets follow a skewed distribution so
/// that a result is recognisable at a glance.
pub fn random_measurement(config: &VdafConfig, rng: &mut impl Rng) -> Measurement {
    match *config {
        VdafConfig::Prio3Count => Measurement::Count(rng.random_bool(0.3)),
        VdafConfig::Prio3Sum { max_measurement } => Measurement::Sum(rng.random_range(0..=max_measurement)),
        VdafConfig::Prio3SumVec { length, max_measurement, .. } => {
            Measurement::SumVec((0..length).map(|_| u128::from(rng.random_range(0..=max_measurement))).collect())
        }
        VdafConfig::Prio3Histogram { length, .. } => {
            // Roughly geometric: low buckets are common, high ones rare.
            let mut bucket = 0usize;
            while bucket + 1 < length as usize && rng.random_bool(0.6) {
                bucket += 1;
            }
            Measurement::Histogram(bucket)
        }
        VdafConfig::Prio3MultihotCountVec { length, max_weight, .. } => {
            let mut bits = vec![false; length as usize];
            let weight = rng.random_range(0..=max_weight.min(u64::from(length)));
            for _ in 0..weight {
                let i = rng.random_range(0..length as usize);
                bits[i] = true;
            }
            Measurement::MultihotCountVec(bits)
        }
        #[cfg(feature = "test-vdaf")]
        VdafConfig::Dummy { .. } => Measurement::Dummy(rng.random()),
    }
}

/// The aggregate of `measurements` computed in the clear.
pub fn clear_aggregate(config: &VdafConfig, measurements: &[Measurement]) -> AggregateResult {
    let vector_len = match *config {
        VdafConfig::Prio3Count | VdafConfig::Prio3Sum { .. } => None,
        #[cfg(feature = "test-vdaf")]
        VdafConfig::Dummy { .. } => None,
        VdafConfig::Prio3SumVec { length, .. }
        | VdafConfig::Prio3Histogram { length, .. }
        | VdafConfig::Prio3MultihotCountVec { length, .. } => Some(length as usize),
    };
    match vector_len {
        None => {
            let sum: u64 = measurements
                .iter()
                .map(|m| match m {
                    Measurement::Count(b) => u64::from(*b),
                    Measurement::Sum(v) => *v,
                    #[cfg(feature = "test-vdaf")]
                    Measurement::Dummy(v) => u64::from(*v),
                    _ => 0,
                })
                .sum();
            // The test VDAF adds modulo 256.
            #[cfg(feature = "test-vdaf")]
            let sum = if matches!(config, VdafConfig::Dummy { .. }) { sum % 256 } else { sum };
            AggregateResult::Scalar(sum)
        }
        Some(len) => {
            let mut out = vec![0u128; len];
            for m in measurements {
                match m {
                    Measurement::SumVec(v) => out.iter_mut().zip(v).for_each(|(o, x)| *o += x),
                    Measurement::Histogram(i) => out[*i] += 1,
                    Measurement::MultihotCountVec(bits) => {
                        out.iter_mut().zip(bits).for_each(|(o, b)| *o += u128::from(*b))
                    }
                    _ => {}
                }
            }
            AggregateResult::Vector(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::check_measurement;

    #[test]
    fn simulated_measurements_are_valid_and_sum_in_the_clear() {
        let configs = [
            VdafConfig::Prio3Count,
            VdafConfig::Prio3Sum { max_measurement: 100 },
            VdafConfig::Prio3SumVec { length: 4, max_measurement: 7, chunk_length: 2 },
            VdafConfig::Prio3Histogram { length: 5, chunk_length: 2 },
            VdafConfig::Prio3MultihotCountVec { length: 6, chunk_length: 2, max_weight: 3 },
        ];
        let mut rng = rand::rng();
        for config in &configs {
            let ms: Vec<_> = (0..50).map(|_| random_measurement(config, &mut rng)).collect();
            for m in &ms {
                check_measurement(config, m).unwrap();
            }
            let _ = clear_aggregate(config, &ms);
        }
        let hist = VdafConfig::Prio3Histogram { length: 3, chunk_length: 1 };
        let ms = [Measurement::Histogram(0), Measurement::Histogram(2), Measurement::Histogram(2)];
        assert_eq!(clear_aggregate(&hist, &ms), AggregateResult::Vector(vec![1, 0, 2]));
        let sum = VdafConfig::Prio3Sum { max_measurement: 9 };
        assert_eq!(clear_aggregate(&sum, &[Measurement::Sum(4), Measurement::Sum(9)]), AggregateResult::Scalar(13));
        let mh = VdafConfig::Prio3MultihotCountVec { length: 2, chunk_length: 1, max_weight: 2 };
        let ms = [Measurement::MultihotCountVec(vec![true, true]), Measurement::MultihotCountVec(vec![false, true])];
        assert_eq!(clear_aggregate(&mh, &ms), AggregateResult::Vector(vec![1, 2]));
    }
}
