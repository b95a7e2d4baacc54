//! Latency histograms (HdrHistogram, microseconds) and the summaries the report keeps:
//! percentiles, a CDF for the plots, and median / min / max over repeated runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded: 10 minutes in µs (larger values are clamped to it).
const MAX_US: u64 = 600_000_000;

/// A histogram of microseconds, 1 µs to 10 min, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("these bounds are valid")
}

/// Records `us`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// Percentiles of a latency distribution, in µs, and its CDF.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// (latency µs, fraction of tasks at or below it), for plotting.
    pub cdf: Vec<(u64, f64)>,
}

impl HistSummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let mut cdf: Vec<(u64, f64)> = Vec::new();
        for v in h.iter_quantiles(4) {
            let point = (h.highest_equivalent(v.value_iterated_to()), v.quantile_iterated_to());
            // Several steps can land on one value: keep the highest fraction for it.
            match cdf.last_mut() {
                Some(last) if last.0 == point.0 => last.1 = last.1.max(point.1),
                _ => cdf.push(point),
            }
        }
        if !h.is_empty() {
            match cdf.last_mut() {
                Some(last) if last.0 >= h.max() => last.1 = 1.0,
                _ => cdf.push((h.max(), 1.0)),
            }
        }
        HistSummary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            cdf,
        }
    }
}

/// Median, minimum and maximum of a metric over runs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            runs: v.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_value() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn summaries_have_ordered_percentiles_and_a_cdf() {
        let mut h = histogram();
        for us in 1..=10_000 {
            record(&mut h, us);
        }
        record(&mut h, u64::MAX);
        let s = HistSummary::of(&h);
        assert_eq!(s.count, 10_001);
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.p999 && s.p999 <= s.max);
        assert!((4_990..=5_010).contains(&s.p50), "{}", s.p50);
        assert!(s.cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(s.cdf.last().unwrap().1, 1.0);
    }
}
