//! Lock-free histogram with fixed exponential buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds (seconds) of the finite histogram buckets: a 1-2.5-5 series
/// from 10µs to 60s, suited to pool checkout waits. Anything slower lands in
/// the implicit `+Inf` bucket.
pub const BUCKET_BOUNDS_SECONDS: [f64; 21] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The same bounds in nanoseconds, for comparisons without floating point.
const BUCKET_BOUNDS_NANOS: [u64; 21] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Number of stored buckets: the finite ones plus the overflow (`+Inf`) one.
const SLOTS: usize = BUCKET_BOUNDS_NANOS.len() + 1;

/// A lock-free latency histogram (e.g. time a client waited for a server
/// connection). Recording is a couple of relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; SLOTS],
    /// Sum of all recorded durations, in nanoseconds (saturating per sample).
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// Creates an empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn record(&self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let slot = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Takes a point-in-time copy. Buckets are read one by one, so under
    /// concurrent recording the copy may be off by in-flight samples, but it is
    /// always internally consistent (`count` equals the `+Inf` bucket).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(BUCKET_BOUNDS_SECONDS.len());
        for (i, slot) in self.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(slot.load(Ordering::Relaxed));
            if let Some(&bound) = BUCKET_BOUNDS_SECONDS.get(i) {
                buckets.push((bound, cumulative));
            }
        }
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A copy of a [`Histogram`] at one moment, in Prometheus shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// `(upper_bound_seconds, cumulative_count)` for each finite bucket, in
    /// increasing bound order. The implicit `+Inf` bucket equals `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Total number of observations.
    pub count: u64,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Estimates the `q`-quantile (`q` in `0..=1`, clamped) in seconds, the
    /// way Prometheus' `histogram_quantile` does: find the bucket holding rank
    /// `q * count` and interpolate linearly inside it (the first bucket starts
    /// at 0). Observations past the last finite bound yield that bound.
    /// Returns 0 for an empty histogram.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = q * self.count as f64;
        let mut prev_bound = 0.0;
        let mut prev_count = 0u64;
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank && cumulative > prev_count {
                let in_bucket = (cumulative - prev_count) as f64;
                let fraction = ((rank - prev_count as f64) / in_bucket).clamp(0.0, 1.0);
                return prev_bound + (bound - prev_bound) * fraction;
            }
            prev_bound = bound;
            prev_count = cumulative;
        }
        prev_bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (s, n) in BUCKET_BOUNDS_SECONDS.iter().zip(BUCKET_BOUNDS_NANOS) {
            assert!((s * 1e9 - n as f64).abs() < 1.0, "{s} vs {n}");
        }
        assert!(BUCKET_BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn empty_snapshot() {
        let snap = Histogram::new().snapshot();
        assert_eq!(snap.count, 0);
        assert_eq!(snap.buckets.len(), BUCKET_BOUNDS_SECONDS.len());
        assert!(snap.buckets.iter().all(|&(_, c)| c == 0));
        assert_eq!(snap.quantile(0.5), 0.0);
    }

    #[test]
    fn records_into_right_buckets() {
        let h = Histogram::new();
        h.record(Duration::from_micros(10)); // exactly on the first bound
        h.record(Duration::from_micros(11)); // second bucket
        h.record(Duration::from_millis(3)); // (2.5ms, 5ms]
        h.record(Duration::from_secs(120)); // +Inf
        let snap = h.snapshot();
        assert_eq!(snap.count, 4);
        assert_eq!(snap.buckets[0], (0.000_01, 1));
        assert_eq!(snap.buckets[1], (0.000_025, 2));
        assert_eq!(snap.buckets[7].1, 2); // 2.5ms
        assert_eq!(snap.buckets[8].1, 3); // 5ms
        assert_eq!(snap.buckets.last().map(|b| b.1), Some(3));
        let expected = 0.000_01 + 0.000_011 + 0.003 + 120.0;
        assert!((snap.sum_seconds - expected).abs() < 1e-9);
        assert!(snap.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn quantile_interpolates() {
        let h = Histogram::new();
        // 100 samples, all in (0.5s, 1s].
        for _ in 0..100 {
            h.record(Duration::from_millis(800));
        }
        let snap = h.snapshot();
        assert!((snap.quantile(0.5) - 0.75).abs() < 1e-9);
        assert!((snap.quantile(1.0) - 1.0).abs() < 1e-9);
        assert!((snap.quantile(0.0) - 0.5).abs() < 1e-9);
        // Out-of-range q is clamped.
        assert!((snap.quantile(7.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn quantile_spread_and_overflow() {
        let h = Histogram::new();
        for _ in 0..90 {
            h.record(Duration::from_micros(5));
        }
        for _ in 0..10 {
            h.record(Duration::from_secs(100));
        }
        let snap = h.snapshot();
        assert!(snap.quantile(0.5) <= 0.000_01);
        assert!(snap.quantile(0.5) > 0.0);
        // p99 falls in +Inf: reported as the highest finite bound.
        assert_eq!(snap.quantile(0.99), 60.0);
    }

    #[test]
    fn concurrent_recording() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        h.record(Duration::from_micros(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(h.snapshot().count, 4000);
    }
}
