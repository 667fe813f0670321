//! Event-time latency to an upsert sink, as an HDR histogram: wall clock when the sink took a batch
//! minus each row's event time, in milliseconds. Read by `freshet run`'s summary (p50, p99).

use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Latencies above this (5 minutes) are recorded as this; `freshet run` prints nothing when p99 gets
/// there, as event time is then plainly not the wall clock.
pub const LATENCY_MAX_MS: u64 = 300_000;

/// Three significant digits: exact up to 2 047 ms, within 0.1 % above (about 80 KB of counters, allocated on first use, where
/// the exact per-millisecond array it replaced took 2.4 MB per query).
const SIGNIFICANT_DIGITS: u8 = 3;

/// Empty until the first record, so queries that never measure latency allocate nothing.
#[derive(Debug, Default)]
pub struct LatencyHistogram(Mutex<Option<Histogram<u64>>>);

impl LatencyHistogram {
    pub fn record(&self, now_ms: i64, event_times: &[i64]) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let h = match &mut *guard {
            Some(h) => h,
            None => match Histogram::new_with_bounds(1, LATENCY_MAX_MS, SIGNIFICANT_DIGITS) {
                Ok(h) => guard.insert(h),
                // Fixed, valid bounds: this cannot happen, and a metric is not worth a panic.
                Err(_) => return,
            },
        };
        for t in event_times {
            // Event times ahead of the clock count as 0 ms; beyond the top as the top.
            let ms = now_ms.saturating_sub(*t).clamp(0, LATENCY_MAX_MS as i64) as u64;
            h.saturating_record(ms);
        }
    }

    pub fn count(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Histogram::len)
    }

    /// The `q` quantile (0..=1) in ms, if anything was recorded: the smallest latency that at least
    /// `ceil(q × count)` rows had, to the histogram's precision (the top of its bucket).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!((h.count(), h.quantile(0.5)), (0, None));
    }

    #[test]
    fn exact_below_two_seconds() {
        let h = LatencyHistogram::default();
        let now = 1_000_000;
        // Latencies 1..=1000 ms, as the per-millisecond array counted them.
        let times: Vec<i64> = (1..=1000).map(|ms| now - ms).collect();
        h.record(now, &times);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.quantile(0.5), Some(500));
        assert_eq!(h.quantile(0.99), Some(990));
        assert_eq!(h.quantile(1.0), Some(1000));
        assert_eq!(h.quantile(0.0), Some(1), "at least the first row");
    }

    #[test]
    fn within_a_tenth_of_a_percent_above() {
        let h = LatencyHistogram::default();
        h.record(10_000, &[10_000 - 5_380; 100]);
        let p99 = h.quantile(0.99).expect("recorded");
        assert!((5_380..=5_386).contains(&p99), "{p99}");
    }

    #[test]
    fn quantiles_match_exact_ones_to_the_precision() {
        // A spread over the whole range (a fixed LCG, no dependency): each quantile is within 0.1 % of
        // the exact one the per-millisecond array gave (the ceil(q × count)-th smallest latency).
        let mut x: u64 = 12_345;
        let mut lat: Vec<i64> = (0..20_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 33) % 300_000) as i64
            })
            .collect();
        let h = LatencyHistogram::default();
        let now = 1_000_000;
        h.record(now, &lat.iter().map(|l| now - l).collect::<Vec<_>>());
        lat.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = lat[((lat.len() as f64 * q).ceil() as usize).max(1) - 1] as u64;
            let got = h.quantile(q).expect("recorded");
            assert!(
                got >= exact && got - exact <= exact / 1000 + 1,
                "q {q}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn clamps_to_zero_and_the_top() {
        let h = LatencyHistogram::default();
        h.record(1_000, &[2_000]);
        assert_eq!(h.quantile(1.0), Some(0), "event time ahead of the clock");
        let h = LatencyHistogram::default();
        h.record(i64::MAX, &[i64::MIN, 0]);
        let top = h.quantile(1.0).expect("recorded");
        assert!(top >= LATENCY_MAX_MS, "{top}: `freshet run` hides p99 from here");
        assert_eq!(h.count(), 2);
    }
}
