//! Response times as moments: mean, variance and a floor, combined along the call graph.
//!
//! A full distribution per endpoint would need convolutions; two moments and a lower bound
//! are enough for the figures the report shows (mean and p99) and keep the model
//! evaluable thousands of times a second (the budget search calls it per candidate).
//! Maxima (parallel call groups, `minimumTotal` delays) use Clark's approximation of the
//! maximum of two normal variables, the standard one in statistical timing analysis.

/// A random duration in seconds, described by its mean, variance and smallest value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub mean: f64,
    pub variance: f64,
    /// A value it never goes below (sum of the fixed parts on its path).
    pub floor: f64,
}

/// z-score of the 99th percentile of a standard normal distribution.
const Z99: f64 = 2.326_347_874_040_841;

impl Moments {
    /// Zero time.
    pub const ZERO: Moments = Moments {
        mean: 0.0,
        variance: 0.0,
        floor: 0.0,
    };

    /// A constant duration.
    pub fn fixed(seconds: f64) -> Moments {
        Moments {
            mean: seconds,
            variance: 0.0,
            floor: seconds,
        }
    }

    /// Sum of two independent durations (one after the other).
    pub fn then(self, other: Moments) -> Moments {
        Moments {
            mean: self.mean + other.mean,
            variance: self.variance + other.variance,
            floor: self.floor + other.floor,
        }
    }

    /// A call made with probability `p`, `repeat` times in sequence, each taking `self`.
    pub fn call(self, p: f64, repeat: u32) -> Moments {
        let n = f64::from(repeat);
        // Bernoulli(p) × X: E = pμ, Var = pσ² + p(1−p)μ².
        let mean = p * self.mean;
        let variance = p * self.variance + p * (1.0 - p) * self.mean * self.mean;
        Moments {
            mean: n * mean,
            variance: n * variance,
            floor: if p >= 1.0 { n * self.floor } else { 0.0 },
        }
    }

    /// Maximum of two independent durations (Clark, 1961: exact for normal inputs).
    pub fn max(self, other: Moments) -> Moments {
        let a2 = self.variance + other.variance;
        let floor = self.floor.max(other.floor);
        if a2 <= f64::EPSILON * (self.mean * self.mean + other.mean * other.mean) {
            return Moments {
                mean: self.mean.max(other.mean),
                variance: if self.mean >= other.mean {
                    self.variance
                } else {
                    other.variance
                },
                floor,
            };
        }
        let a = a2.sqrt();
        let alpha = (self.mean - other.mean) / a;
        let (cdf, cdf_neg, pdf) = (phi(alpha), phi(-alpha), density(alpha));
        let mean = self.mean * cdf + other.mean * cdf_neg + a * pdf;
        let second = (self.mean * self.mean + self.variance) * cdf
            + (other.mean * other.mean + other.variance) * cdf_neg
            + (self.mean + other.mean) * a * pdf;
        Moments {
            mean: mean.max(floor),
            variance: (second - mean * mean).max(0.0),
            floor,
        }
    }

    /// The 99th percentile: the floor plus a log-normal fitted to the rest's mean and
    /// variance (queueing and delay tails are right-skewed, never below the floor).
    pub fn p99(self) -> f64 {
        let rest = self.mean - self.floor;
        if rest <= 0.0 || self.variance <= 0.0 {
            return self.mean;
        }
        let s2 = (1.0 + self.variance / (rest * rest)).ln();
        let mu = rest.ln() - s2 / 2.0;
        self.floor + (mu + Z99 * s2.sqrt()).exp()
    }
}

/// Standard normal cumulative distribution.
fn phi(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Standard normal density.
fn density(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(mean: f64) -> Moments {
        Moments {
            mean,
            variance: mean * mean,
            floor: 0.0,
        }
    }

    #[test]
    fn the_max_of_two_identical_normals_is_mean_plus_sigma_over_root_pi() {
        let n = Moments {
            mean: 10.0,
            variance: 4.0,
            floor: 0.0,
        };
        let m = n.max(n);
        // E[max(X1, X2)] = μ + σ/√π for i.i.d. normals.
        assert!((m.mean - (10.0 + 2.0 / std::f64::consts::PI.sqrt())).abs() < 1e-9);
        // Var = σ²(1 − 1/π).
        assert!((m.variance - 4.0 * (1.0 - 1.0 / std::f64::consts::PI)).abs() < 1e-9);
    }

    #[test]
    fn the_max_of_constants_is_the_larger_one() {
        let m = Moments::fixed(3.0).max(Moments::fixed(5.0));
        assert_eq!(m, Moments::fixed(5.0));
        // A fixed minimum under a much longer random part does not change it.
        let m = Moments::fixed(0.001).max(exp(1.0).then(Moments::fixed(10.0)));
        assert!((m.mean - 11.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn two_exponential_branches_wait_longer_than_either_mean() {
        // True E[max] of two Exp(1) is 1.5; Clark's normal approximation gives 1 + √2·φ(0) ≈ 1.56.
        let m = exp(1.0).max(exp(1.0));
        assert!(m.mean > 1.3 && m.mean < 1.6, "{m:?}");
    }

    #[test]
    fn a_probable_call_mixes_its_time_with_zero() {
        let m = Moments::fixed(10.0).call(0.5, 2);
        assert!((m.mean - 10.0).abs() < 1e-12);
        // Each: Var = 0.5·0.5·100 = 25; two in sequence: 50.
        assert!((m.variance - 50.0).abs() < 1e-12);
        assert_eq!(m.floor, 0.0);
        assert_eq!(Moments::fixed(2.0).call(1.0, 3), Moments::fixed(6.0));
    }

    #[test]
    fn p99_of_an_exponential_is_near_its_true_value_and_a_constant_is_itself() {
        // Exp(mean 1) has p99 = ln(100) ≈ 4.61; the log-normal fit gives ≈ 4.9.
        let p = exp(1.0).p99();
        assert!(p > 4.0 && p < 5.5, "{p}");
        assert_eq!(Moments::fixed(7.0).p99(), 7.0);
        // A fixed part shifts the percentile.
        let p = Moments::fixed(12.0).then(exp(2.0)).p99();
        assert!(p > 12.0 + 8.0 && p < 12.0 + 11.0, "{p}");
    }
}
