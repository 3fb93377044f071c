//! Small statistics for repetitions: mean, 95 % confidence interval (Student t) and Welch's
//! two-sample t-test at the 5 % level.

use serde::{Deserialize, Serialize};

/// Mean and spread of one figure over repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Number of values (repetitions).
    pub n: u32,
    /// Arithmetic mean of the values.
    pub mean: f64,
    /// Sample standard deviation; `None` for n < 2.
    pub std: Option<f64>,
    /// Bounds of the 95 % confidence interval of the mean; `None` for n < 2.
    pub ci95_low: Option<f64>,
    /// Upper bound of that interval; `None` for n < 2.
    pub ci95_high: Option<f64>,
}

/// Two-sided 97.5 % quantiles of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (conservative: a
/// fractional `df` is rounded down).
pub fn t975(df: f64) -> f64 {
    if !df.is_finite() || df < 1.0 {
        return T975[0];
    }
    let d = df.floor() as usize;
    match d {
        1..=30 => T975[d - 1],
        31..=40 => 2.021,
        41..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// Mean and 95 % CI of the finite values; `None` when there are none.
pub fn estimate(values: &[f64]) -> Option<Estimate> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return Some(Estimate {
            n: 1,
            mean,
            std: None,
            ci95_low: None,
            ci95_high: None,
        });
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    let half = t975(n - 1.0) * std / n.sqrt();
    Some(Estimate {
        n: v.len() as u32,
        mean,
        std: Some(std),
        ci95_low: Some(mean - half),
        ci95_high: Some(mean + half),
    })
}

/// Whether two estimates differ beyond the noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Significance {
    /// Welch's t-test rejects equal means at the 5 % level.
    Significant,
    /// The difference is within the noise.
    WithinNoise,
    /// Fewer than two repetitions on a side: the noise is unknown.
    Unknown,
}

/// Welch's t-test (two-sided, 5 %) between two estimates.
pub fn welch(a: &Estimate, b: &Estimate) -> Significance {
    let (Some(sa), Some(sb)) = (a.std, b.std) else {
        return Significance::Unknown;
    };
    let (na, nb) = (f64::from(a.n), f64::from(b.n));
    let va = sa * sa / na;
    let vb = sb * sb / nb;
    let se = (va + vb).sqrt();
    let diff = (a.mean - b.mean).abs();
    if se == 0.0 {
        return if diff > 0.0 {
            Significance::Significant
        } else {
            Significance::WithinNoise
        };
    }
    let df = (va + vb).powi(2) / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    if diff / se > t975(df) {
        Significance::Significant
    } else {
        Significance::WithinNoise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_of_known_sample() {
        let e = estimate(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(e.mean, 3.0);
        let std = 2.5f64.sqrt();
        assert!((e.std.unwrap() - std).abs() < 1e-12);
        let half = 2.776 * std / 5f64.sqrt();
        assert!((e.ci95_high.unwrap() - (3.0 + half)).abs() < 1e-9);
        let single = estimate(&[7.0, f64::NAN]).unwrap();
        assert_eq!((single.n, single.std), (1, None));
        assert!(estimate(&[]).is_none());
    }

    #[test]
    fn welch_separates_signal_from_noise() {
        let a = estimate(&[10.0, 10.5, 9.5, 10.2]).unwrap();
        let b = estimate(&[20.0, 19.5, 20.5, 20.1]).unwrap();
        let c = estimate(&[10.1, 9.8, 10.4, 9.9]).unwrap();
        assert_eq!(welch(&a, &b), Significance::Significant);
        assert_eq!(welch(&a, &c), Significance::WithinNoise);
        let one = estimate(&[1.0]).unwrap();
        assert_eq!(welch(&a, &one), Significance::Unknown);
    }
}
