//! Order statistics of measurements: nearest-rank percentiles and median runs.

/// The nearest-rank percentile `q` (0..=1) of `v`.
pub(crate) fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The run with the median value of `f` (the lower middle for an even count).
pub(crate) fn median_by<T: Clone>(runs: &[T], f: impl Fn(&T) -> f64) -> Option<T> {
    let mut v: Vec<&T> = runs.iter().collect();
    v.sort_by(|a, b| f(a).partial_cmp(&f(b)).unwrap_or(std::cmp::Ordering::Equal));
    v.get((v.len().saturating_sub(1)) / 2).map(|r| (*r).clone())
}
