//! Percentiles and summaries of timing samples.

use serde::{Deserialize, Serialize};

/// The `p`-th percentile (0..=100) of `samples`, linearly interpolated between the closest
/// ranks (numpy's default, "type 7"). `None` for no samples or a `p` outside 0..=100; NaNs
/// are ignored.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// What a set of samples looks like (all in the samples' unit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` when there is nothing to summarise (never a summary of zeros).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let clean: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        let pct = |p| percentile(&clean, p);
        Some(Summary {
            n: clean.len(),
            min: pct(0.0)?,
            p25: pct(25.0)?,
            p50: pct(50.0)?,
            p75: pct(75.0)?,
            p90: pct(90.0)?,
            p99: pct(99.0)?,
            max: pct(100.0)?,
            mean: clean.iter().sum::<f64>() / clean.len() as f64,
        })
    }
}

/// `a / b`, or `None` when it means nothing (a zero or non-finite denominator).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = [15.0, 20.0, 35.0, 40.0, 50.0];
        // numpy.percentile([15,20,35,40,50], [0,25,40,50,90,100])
        assert!(close(percentile(&s, 0.0).unwrap(), 15.0));
        assert!(close(percentile(&s, 25.0).unwrap(), 20.0));
        assert!(close(percentile(&s, 40.0).unwrap(), 29.0));
        assert!(close(percentile(&s, 50.0).unwrap(), 35.0));
        assert!(close(percentile(&s, 90.0).unwrap(), 46.0));
        assert!(close(percentile(&s, 100.0).unwrap(), 50.0));
    }

    #[test]
    fn percentile_order_of_input_does_not_matter() {
        let a: Vec<f64> = (1..=100).map(f64::from).collect();
        let mut b = a.clone();
        b.reverse();
        for p in [1.0, 50.0, 90.0, 99.0] {
            assert_eq!(percentile(&a, p), percentile(&b, p));
        }
        // 1..=100: p99 = 1 + 0.99 * 99 = 99.01
        assert!(close(percentile(&a, 99.0).unwrap(), 99.01));
        assert!(close(percentile(&a, 50.0).unwrap(), 50.5));
    }

    #[test]
    fn one_sample_and_edge_cases() {
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(percentile(&[1.0], -1.0), None);
        assert_eq!(percentile(&[f64::NAN, 3.0], 50.0), Some(3.0));
    }

    #[test]
    fn summary_of_nothing_is_none_not_zeros() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.min, s.p50, s.max), (3, 1.0, 2.0, 3.0));
        assert!(close(s.mean, 2.0));
    }

    #[test]
    fn ratio_rejects_meaningless_denominators() {
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
