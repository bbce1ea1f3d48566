//! The noise against its exact distribution, for every Prio3 type and both mechanisms: many
//! noisy releases of one fixed batch (both aggregators' shares, each with its own dose), from a
//! fixed seed. Each release's noise per entry is the difference between the noisy and the clean
//! sum of the shares, which must follow the sum of two independent samples.
//!
//! The checks are deterministic (the seed is fixed); the bounds are set so that, were the seed
//! drawn at random, a correct sampler would fail each check with probability about 10^-6 (mean
//! and variance: 5 standard errors; goodness of fit: the chi-square statistic's 1 − 10^-6
//! quantile), so the whole test about 3 · 10 · 10^-6 = 3 · 10^-5.

use super::*;
use crate::dp::DpConfig;
use crate::vdaf::{AggregateShare, Measurement, Transition, Vdaf, VerifyKey};
use rand_0_10::SeedableRng;

/// Both aggregators' aggregate shares of `measurements`, by running the VDAF.
fn fixed_batch(vdaf: &Vdaf, measurements: &[Measurement]) -> (AggregateShare, AggregateShare) {
    let key = VerifyKey::random();
    let ctx = [7u8; 38];
    let (mut leader, mut helper) = (vdaf.aggregate_init(), vdaf.aggregate_init());
    for (i, m) in measurements.iter().enumerate() {
        let nonce = [i as u8; 16];
        let (public, [ls, hs]) = vdaf.shard(&ctx, m, &nonce).unwrap();
        let (state, msg) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
        let Transition::FinishedWithOutbound { out_share: h, outbound } =
            vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &msg).unwrap()
        else {
            panic!("Prio3 helpers finish at once")
        };
        let Transition::Finished { out_share: l } = vdaf.leader_continued(&ctx, state, &outbound).unwrap() else {
            panic!("Prio3 leaders finish on the helper's message")
        };
        leader.accumulate(&l).unwrap();
        helper.accumulate(&h).unwrap();
    }
    (leader, helper)
}

/// The distribution of the sum of two independent samples, over `[-bound, bound]`.
fn pmf_of_two(noise: &NoiseDistribution, bound: i64) -> Vec<f64> {
    let one = noise.pmf(bound);
    let mut two = vec![0.0; one.len()];
    for (i, p) in one.iter().enumerate() {
        for (j, q) in one.iter().enumerate() {
            let k = i as i64 + j as i64 - bound;
            if (0..one.len() as i64).contains(&k) {
                two[k as usize] += p * q;
            }
        }
    }
    two
}

/// The chi-square statistic of `samples` against `pmf` (over `[-bound, bound]`), in at most
/// `bins` bins (contiguous ranges of values, tails included) that each hold at least 1 / `bins`
/// of the probability, so that every bin expects many samples and the statistic follows the
/// chi-square distribution closely; and its degrees of freedom.
fn chi_square(samples: &[i128], pmf: &[f64], bound: i64, bins: usize) -> (f64, usize) {
    // A bin closes once it holds its share of the mass, unless less than a share would be left
    // for the last one (which then takes the rest: a point mass larger than a share makes a bin
    // of its own, and the tails join their neighbours rather than stand alone).
    let share = 1.0 / bins as f64;
    let mut upper = Vec::new();
    let (mut in_bin, mut left) = (0.0, pmf.iter().sum::<f64>());
    for (i, p) in pmf.iter().enumerate() {
        in_bin += p;
        left -= p;
        if in_bin >= share && left >= share {
            upper.push(i as i64 - bound);
            in_bin = 0.0;
        }
    }
    let bin_of = |x: i128| upper.iter().position(|u| x <= *u as i128).unwrap_or(upper.len());
    let mut expected = vec![0.0; upper.len() + 1];
    for (i, p) in pmf.iter().enumerate() {
        expected[bin_of(i as i128 - bound as i128)] += p;
    }
    // The mass outside [-bound, bound] (negligible) goes to the tails.
    let missing = 1.0 - expected.iter().sum::<f64>();
    let last = expected.len() - 1;
    expected[0] += missing / 2.0;
    expected[last] += missing / 2.0;
    let mut observed = vec![0.0; expected.len()];
    for s in samples {
        observed[bin_of(*s)] += 1.0;
    }
    let n = samples.len() as f64;
    let statistic = observed.iter().zip(&expected).map(|(o, e)| (o - n * e).powi(2) / (n * e)).sum();
    (statistic, expected.len() - 1)
}

/// The chi-square distribution's 1 − 10^-6 quantile for `df` degrees of freedom
/// (Wilson–Hilferty, accurate to about 1% here).
fn chi_square_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.753; // the standard normal's 1 − 10^-6 quantile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Noisy releases of one batch until about `samples` entries were drawn, each aggregator's
/// share given its dose by `dose`; the noise of each entry.
fn release_noise(
    shares: &(AggregateShare, AggregateShare),
    samples: usize,
    mut dose: impl FnMut(&mut AggregateShare),
) -> Vec<i128> {
    let mut clean = shares.0.clone();
    clean.merge(&shares.1).unwrap();
    let clean = clean.signed_entries();
    let mut out = Vec::with_capacity(samples);
    while out.len() < samples {
        let (mut leader, mut helper) = (shares.0.clone(), shares.1.clone());
        dose(&mut leader);
        dose(&mut helper);
        leader.merge(&helper).unwrap();
        out.extend(leader.signed_entries().iter().zip(&clean).map(|(x, c)| x - c));
    }
    out
}

/// Releases with `noise` drawn straight from the samplers, seeded.
fn release_sampled(shares: &(AggregateShare, AggregateShare), noise: &NoiseDistribution, seed: u64) -> Vec<i128> {
    let mut rng = rand_0_10::rngs::StdRng::seed_from_u64(seed);
    release_noise(shares, 20_000, |share| share.add_noise_with(noise, &mut rng).unwrap())
}

/// The path the servers take: [`Vdaf::add_noise_from`] with the task's settings, checked
/// against the distribution [`DpConfig::noise`] says it draws from.
fn check(config: VdafConfig, measurements: Vec<Measurement>, dp: DpConfig, seed: u64) {
    let vdaf = Vdaf::new(&config).unwrap();
    let shares = fixed_batch(&vdaf, &measurements);
    let n = measurements.len() as u64;
    let mut rng = rand_0_10::rngs::StdRng::seed_from_u64(seed);
    let samples = release_noise(&shares, 20_000, |share| vdaf.add_noise_from(&dp, share, n, &mut rng).unwrap());
    let noise = dp.noise(&config).unwrap();
    check_samples(&samples, &noise, &format!("{config} with {dp:?} ({noise:?})"));
}

/// Mean, variance and goodness of fit of release noise against two doses of `noise`.
fn check_samples(samples: &[i128], noise: &NoiseDistribution, what: &str) {
    let n = samples.len() as f64;
    let mean = samples.iter().map(|x| *x as f64).sum::<f64>() / n;
    let var = samples.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    // Two independent doses: twice one sample's variance.
    let expected_var = 2.0 * noise.variance();
    assert!(mean.abs() < 5.0 * (expected_var / n).sqrt(), "{what}: mean {mean}, expected 0");
    // The sample variance's standard error is var · sqrt((κ − 1) / n) for kurtosis κ: at most
    // 6 for these sums (discrete Laplace alone has 6, a sum of two 4.5, Gaussians 3).
    let tolerance = 5.0 * expected_var * (5.0 / n).sqrt();
    assert!((var - expected_var).abs() < tolerance, "{what}: variance {var}, expected {expected_var} ± {tolerance}");
    let bound = samples.iter().map(|x| x.unsigned_abs()).max().unwrap() as i64 + 5;
    let pmf = pmf_of_two(noise, bound);
    let (statistic, df) = chi_square(samples, &pmf, bound, 30);
    let critical = chi_square_critical(df);
    assert!(statistic < critical, "{what}: chi-square {statistic} with {df} degrees of freedom, above {critical}");
    // And the noise is there: most releases differ from the truth.
    assert!(samples.iter().filter(|x| **x != 0).count() > samples.len() / 2, "{what}: no noise");
}

/// The five Prio3 types, each with a small fixed batch (small parameters keep the exact
/// distributions cheap to compute; the calibration is the same at any size).
fn types() -> Vec<(VdafConfig, Vec<Measurement>)> {
    vec![
        (VdafConfig::Prio3Count, (0..6).map(|i| Measurement::Count(i % 2 == 0)).collect()),
        (VdafConfig::Prio3Sum { max_measurement: 10 }, (0..6).map(Measurement::Sum).collect()),
        (
            VdafConfig::Prio3SumVec { length: 3, max_measurement: 4, chunk_length: 2 },
            (0..4).map(|i| Measurement::SumVec(vec![i, 4 - i, 2])).collect(),
        ),
        (
            VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 },
            (0..6).map(|i| Measurement::Histogram(i % 4)).collect(),
        ),
        (
            VdafConfig::Prio3MultihotCountVec { length: 6, chunk_length: 2, max_weight: 2 },
            (0..4).map(|i| Measurement::MultihotCountVec((0..6).map(|j| (i + j) % 3 == 0).collect())).collect(),
        ),
    ]
}

#[test]
fn sensitivities_follow_each_measurements_bounds() {
    let s = |c: VdafConfig| sensitivity(&c).unwrap();
    assert_eq!(s(VdafConfig::Prio3Count), Sensitivity { l1: 1, l2_squared: Some(1) });
    assert_eq!(s(VdafConfig::Prio3Sum { max_measurement: 10 }), Sensitivity { l1: 10, l2_squared: Some(100) });
    let sum_vec = VdafConfig::Prio3SumVec { length: 3, max_measurement: 4, chunk_length: 2 };
    assert_eq!(s(sum_vec), Sensitivity { l1: 12, l2_squared: Some(48) });
    assert_eq!(
        s(VdafConfig::Prio3Histogram { length: 100, chunk_length: 10 }),
        Sensitivity { l1: 2, l2_squared: Some(2) }
    );
    let multihot = |length, max_weight| VdafConfig::Prio3MultihotCountVec { length, chunk_length: 2, max_weight };
    assert_eq!(s(multihot(6, 2)), Sensitivity { l1: 4, l2_squared: Some(4) });
    assert_eq!(s(multihot(3, 2)), Sensitivity { l1: 3, l2_squared: Some(3) }, "never more than the length");
    // A squared L2 norm past 2^128 is not rounded down (too little noise) but unknown, and
    // Gaussian noise for it is refused; Laplace noise needs only the L1 norm, which fits.
    let huge = VdafConfig::Prio3SumVec { length: 2, max_measurement: u64::MAX, chunk_length: 1 };
    assert_eq!(s(huge.clone()), Sensitivity { l1: 2 * u128::from(u64::MAX), l2_squared: None });
    assert!(NoiseDistribution::gaussian(&s(huge.clone()), (1, 1)).unwrap_err().0.contains("too large"));
    assert!(NoiseDistribution::laplace(&s(huge), (1, 1)).is_ok());
}

#[test]
fn mechanisms_are_calibrated_to_their_parameter() {
    let histogram = sensitivity(&VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 }).unwrap();
    // Laplace: t = Δ1 / ε = 2 / 0.5.
    assert_eq!(
        NoiseDistribution::laplace(&histogram, (1, 2)).unwrap(),
        NoiseDistribution::Laplace { scale: Ratio { numer: 4, denom: 1 } }
    );
    // Gaussian: σ = sqrt(Δ2² / 2ρ) = sqrt(2 / 1) for ρ = 0.5, rounded up at 10^-9.
    let NoiseDistribution::Gaussian { sigma } = NoiseDistribution::gaussian(&histogram, (1, 2)).unwrap() else {
        panic!()
    };
    assert_eq!(sigma.to_f64(), 1.414213563);
    assert!(sigma.to_f64() >= 2f64.sqrt(), "never below the exact σ");
    // σ exactly representable stays exact: Δ2² = 1, ρ = 1/2 gives σ = 1.
    let count = sensitivity(&VdafConfig::Prio3Count).unwrap();
    assert_eq!(
        NoiseDistribution::gaussian(&count, (1, 2)).unwrap(),
        NoiseDistribution::Gaussian { sigma: Ratio { numer: 1, denom: 1 } }
    );
    assert!(NoiseDistribution::laplace(&count, (0, 1)).is_err());
    assert!(NoiseDistribution::gaussian(&count, (1, 0)).is_err());
    // The variance formulas: discrete Laplace of scale 1 has 2e/(e − 1)², and a discrete
    // Gaussian of σ = 3 has variance σ² to many digits.
    let laplace = NoiseDistribution::Laplace { scale: Ratio { numer: 1, denom: 1 } };
    let e = std::f64::consts::E;
    assert!((laplace.variance() - 2.0 * e / (e - 1.0).powi(2)).abs() < 1e-12);
    let gaussian = NoiseDistribution::Gaussian { sigma: Ratio { numer: 3, denom: 1 } };
    assert!((gaussian.variance() - 9.0).abs() < 1e-9);
}

/// Histogram and SumVec take prio's own strategy for discrete Laplace noise, which draws from a
/// generator prio seeds from the operating system: those two checks are not seeded, and fail a
/// correct sampler with the probability stated above (about 3 · 10^-6 each).
#[test]
fn laplace_noise_has_its_exact_distribution_on_every_type() {
    for (i, (config, measurements)) in types().into_iter().enumerate() {
        check(config, measurements, DpConfig::laplace("1", None), 1000 + i as u64);
    }
}

#[test]
fn gaussian_noise_has_its_exact_distribution_on_every_type() {
    for (i, (config, measurements)) in types().into_iter().enumerate() {
        check(config, measurements, DpConfig::gaussian("0.5", None), 2000 + i as u64);
    }
}

/// prio's SumVec strategy is calibrated to every entry moving by 2^bits − 1 (7 for a maximum
/// of 4, in 3 bits), and that is the scale [`DpConfig::noise`] reports for it; the other types
/// take [`sensitivity`] as derived.
#[test]
fn the_reported_calibration_is_the_one_applied() {
    let laplace = DpConfig::laplace("1", None);
    let sum_vec = VdafConfig::Prio3SumVec { length: 3, max_measurement: 4, chunk_length: 2 };
    assert_eq!(laplace.noise(&sum_vec).unwrap(), NoiseDistribution::Laplace { scale: Ratio { numer: 21, denom: 1 } });
    assert_eq!(prio_sum_vec_l1(3, 7), 21, "equal to L·M when M is 2^bits − 1");
    assert_eq!(prio_sum_vec_l1(2, 1), 2);
    let histogram = VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 };
    assert_eq!(laplace.noise(&histogram).unwrap(), NoiseDistribution::Laplace { scale: Ratio { numer: 2, denom: 1 } });
    let gaussian = DpConfig::gaussian("0.5", None);
    assert_eq!(
        gaussian.noise(&sum_vec).unwrap(),
        NoiseDistribution::gaussian(&sensitivity(&sum_vec).unwrap(), (1, 2)).unwrap()
    );
}

/// A check that can fail: noise of the wrong scale is caught by the same checks.
#[test]
#[should_panic(expected = "variance")]
fn noise_of_the_wrong_scale_is_caught() {
    let config = VdafConfig::Prio3Sum { max_measurement: 10 };
    let vdaf = Vdaf::new(&config).unwrap();
    let shares = fixed_batch(&vdaf, &(0..6).map(Measurement::Sum).collect::<Vec<_>>());
    let drawn = NoiseDistribution::Laplace { scale: Ratio { numer: 12, denom: 1 } };
    let claimed = NoiseDistribution::Laplace { scale: Ratio { numer: 10, denom: 1 } };
    let samples = release_sampled(&shares, &drawn, 7);
    let n = samples.len() as f64;
    let var = samples.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n;
    let expected = 2.0 * claimed.variance();
    assert!((var - expected).abs() < 5.0 * expected * (5.0 / n).sqrt(), "variance {var}, expected {expected}");
}

/// The goodness of fit sees the shape, not only the moments: discrete Laplace noise with the
/// variance of a discrete Gaussian (scale 2.15 against σ = 3: 9.08 against 9) passes the mean
/// and variance checks, and fails the chi-square one.
#[test]
#[should_panic(expected = "chi-square")]
fn noise_of_the_wrong_shape_is_caught() {
    let config = VdafConfig::Prio3Count;
    let vdaf = Vdaf::new(&config).unwrap();
    let shares = fixed_batch(&vdaf, &[Measurement::Count(true), Measurement::Count(false)]);
    let drawn = NoiseDistribution::Laplace { scale: Ratio { numer: 43, denom: 20 } };
    let claimed = NoiseDistribution::Gaussian { sigma: Ratio { numer: 3, denom: 1 } };
    let samples = release_sampled(&shares, &drawn, 11);
    check_samples(&samples, &claimed, "Laplace noise checked as Gaussian");
}
