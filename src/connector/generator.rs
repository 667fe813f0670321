//! The built-in generator of course-page views on an online-education site.
//!
//! Deterministic per seed: the same seed and options give the same events. Course popularity is
//! Zipf-like, most events come from users seen recently (returning users, who often view the same
//! course again: the "hesitating shopper"), each user lives in one region, a few percent of views are
//! purchases. Event time advances one nominal step per event (1 ms without a rate, `1000 / rate` ms with
//! one); each event is then pulled back by up to `out_of_order_ms`, and a `late_ratio` share is pulled
//! back a further 30–60 s so that it arrives behind any reasonable watermark.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::time;

pub const REGIONS: [&str; 7] = [
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "ap-south",
    "ap-northeast",
    "sa-east",
];
const REGION_WEIGHTS: [u32; 7] = [26, 18, 17, 12, 13, 9, 5];
pub const COURSES: usize = 500;
pub const USERS: u64 = 50_000;
/// 2026-01-01T00:00:00Z: where synthetic (unpaced) event time starts.
pub const EPOCH_2026_MS: i64 = 1_767_225_600_000;

/// Options shared by `freshet generate courses` and `connector = 'generator'`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub seed: u64,
    /// Total events; `None` is unbounded.
    pub events: Option<u64>,
    /// Events per second on the wall clock; `None` generates as fast as possible on synthetic time.
    pub rate: Option<f64>,
    pub out_of_order_ms: u64,
    pub late_ratio: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 42,
            events: None,
            rate: None,
            out_of_order_ms: 2000,
            late_ratio: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CourseEvent {
    pub user_id: i64,
    pub course_id: i64,
    pub region: &'static str,
    pub purchased: bool,
    pub event_time_ms: i64,
}

impl CourseEvent {
    pub fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            r#"{{"user_id":{},"course_id":{},"region":"{}","purchased":{},"event_time":""#,
            self.user_id, self.course_id, self.region, self.purchased
        );
        time::write_ms(out, self.event_time_ms);
        out.push_str("\"}\n");
    }

    pub fn write_csv(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{},{},{},{},",
            self.user_id, self.course_id, self.region, self.purchased
        );
        time::write_ms(out, self.event_time_ms);
        out.push('\n');
    }
}

pub const CSV_HEADER: &str = "user_id,course_id,region,purchased,event_time\n";

pub fn course_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("course_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("purchased", DataType::Boolean, true),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]))
}

/// SplitMix64: tiny, fast, and stable forever, so a seed means the same data in every version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

pub struct CourseGenerator {
    opts: GenOptions,
    rng: Rng,
    produced: u64,
    start_ms: i64,
    step_ms: f64,
    course_cdf: Vec<f64>,
    /// Recently active (user, course) pairs: where returning users come from.
    recent: Vec<(i64, i64)>,
}

impl CourseGenerator {
    /// `start_ms` anchors event time: `EPOCH_2026_MS` for synthetic time, the wall clock when paced.
    pub fn new(opts: GenOptions, start_ms: i64) -> Self {
        let mut cdf = Vec::with_capacity(COURSES);
        let mut acc = 0.0;
        for k in 1..=COURSES {
            acc += 1.0 / (k as f64).powf(1.07);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let step_ms = match opts.rate {
            Some(r) if r > 0.0 => 1000.0 / r,
            _ => 1.0,
        };
        CourseGenerator {
            rng: Rng::new(opts.seed),
            opts,
            produced: 0,
            start_ms,
            step_ms,
            course_cdf: cdf,
            recent: Vec::new(),
        }
    }

    pub fn produced(&self) -> u64 {
        self.produced
    }

    pub fn exhausted(&self) -> bool {
        self.opts.events.is_some_and(|n| self.produced >= n)
    }

    /// The nominal (in-order) time of the next event; paced sources wait for the wall clock to reach it.
    pub fn next_nominal_ms(&self) -> i64 {
        self.start_ms + (self.produced as f64 * self.step_ms) as i64
    }

    fn region_of(user_id: i64) -> &'static str {
        // A fixed region per user, from a hash of the id, with skewed weights.
        let mut h = Rng::new(user_id as u64 ^ 0xA5A5).next_u64() % 100;
        for (i, w) in REGION_WEIGHTS.iter().enumerate() {
            if h < *w as u64 {
                return REGIONS[i];
            }
            h -= *w as u64;
        }
        REGIONS[0]
    }

    fn zipf_course(&mut self) -> i64 {
        let u = self.rng.next_f64();
        let idx = self.course_cdf.partition_point(|c| *c < u);
        idx.min(COURSES - 1) as i64 + 1
    }

    pub fn next_event(&mut self) -> Option<CourseEvent> {
        if self.exhausted() {
            return None;
        }
        let nominal = self.next_nominal_ms();
        self.produced += 1;
        let returning = !self.recent.is_empty() && self.rng.next_f64() < 0.7;
        let (user_id, course_id, repeat) = if returning {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            let (user, last_course) = self.recent[i];
            if self.rng.next_f64() < 0.5 {
                (user, last_course, true)
            } else {
                (user, self.zipf_course(), false)
            }
        } else {
            (self.rng.below(USERS) as i64 + 1, self.zipf_course(), false)
        };
        let p_buy = if repeat { 0.06 } else { 0.02 };
        let purchased = self.rng.next_f64() < p_buy;
        let mut event_time_ms = nominal;
        if self.opts.out_of_order_ms > 0 {
            event_time_ms -= self.rng.below(self.opts.out_of_order_ms + 1) as i64;
        }
        if self.opts.late_ratio > 0.0 && self.rng.next_f64() < self.opts.late_ratio {
            event_time_ms -= self.opts.out_of_order_ms as i64 + 30_000 + self.rng.below(30_000) as i64;
        }
        if self.recent.len() < 512 {
            self.recent.push((user_id, course_id));
        } else {
            let i = self.rng.below(512) as usize;
            self.recent[i] = (user_id, course_id);
        }
        Some(CourseEvent {
            user_id,
            course_id,
            region: Self::region_of(user_id),
            purchased,
            event_time_ms,
        })
    }

    /// Up to `max` events as one Arrow batch (`None` once exhausted).
    pub fn next_batch(&mut self, max: usize) -> Option<RecordBatch> {
        let mut users = Int64Builder::with_capacity(max);
        let mut courses = Int64Builder::with_capacity(max);
        let mut regions = StringBuilder::with_capacity(max, max * 8);
        let mut purchased = BooleanBuilder::with_capacity(max);
        let mut times = TimestampMillisecondBuilder::with_capacity(max);
        let mut n = 0;
        while n < max {
            let Some(e) = self.next_event() else { break };
            users.append_value(e.user_id);
            courses.append_value(e.course_id);
            regions.append_value(e.region);
            purchased.append_value(e.purchased);
            times.append_value(e.event_time_ms);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(users.finish()),
            Arc::new(courses.finish()),
            Arc::new(regions.finish()),
            Arc::new(purchased.finish()),
            Arc::new(times.finish()),
        ];
        RecordBatch::try_new(course_schema(), cols).ok()
    }
}

/// `connector = 'generator'`: the generator as a source, paced on the wall clock when `rate` is set.
pub struct GeneratorSource {
    generator: CourseGenerator,
    schema: SchemaRef,
    paced: Option<std::time::Instant>,
}

impl GeneratorSource {
    pub fn new(opts: GenOptions, schema: SchemaRef) -> Self {
        let (start, paced) = if opts.rate.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(EPOCH_2026_MS);
            (now, Some(std::time::Instant::now()))
        } else {
            (EPOCH_2026_MS, None)
        };
        GeneratorSource {
            generator: CourseGenerator::new(opts, start),
            schema,
            paced,
        }
    }
}

impl crate::connector::Source for GeneratorSource {
    fn poll(&mut self, max: usize) -> crate::error::Result<crate::connector::Poll> {
        use crate::connector::Poll;
        if self.generator.exhausted() {
            return Ok(Poll::Exhausted);
        }
        let mut n = max;
        if let Some(t0) = self.paced {
            let rate = self.generator.opts.rate.unwrap_or(1.0);
            let due = (t0.elapsed().as_secs_f64() * rate) as u64;
            let ready = due.saturating_sub(self.generator.produced()) as usize;
            if ready == 0 {
                return Ok(Poll::Pending);
            }
            n = n.min(ready);
        }
        match self.generator.next_batch(n) {
            None => Ok(Poll::Exhausted),
            Some(b) => Ok(Poll::Ready(Some(crate::connector::conform(&b, &self.schema)?), vec![])),
        }
    }

    fn bounded(&self) -> bool {
        self.generator.opts.events.is_some()
    }

    /// Events made so far and the time the first was anchored at: the generator is deterministic,
    /// so seeking makes (and drops) that many events again from the same seed.
    fn position(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "produced": self.generator.produced(),
            "start_ms": self.generator.start_ms,
        }))
    }

    fn seek(&mut self, position: &serde_json::Value) -> crate::error::Result<()> {
        let field = |k: &str| {
            position
                .get(k)
                .ok_or_else(|| crate::error::Error::External(format!("generator source position {position}: no '{k}'")))
        };
        let produced = field("produced")?
            .as_u64()
            .ok_or_else(|| crate::error::Error::External(format!("generator position {position}: bad 'produced'")))?;
        let start_ms = field("start_ms")?
            .as_i64()
            .ok_or_else(|| crate::error::Error::External(format!("generator position {position}: bad 'start_ms'")))?;
        let mut g = CourseGenerator::new(self.generator.opts.clone(), start_ms);
        while g.produced() < produced && g.next_event().is_some() {}
        if self.paced.is_some() {
            // Paced: events stay due at their wall-clock times, as if the run had not stopped; those
            // due while it was down come at once, as a backlog in Kafka would.
            let behind = std::time::Duration::from_millis((crate::time::now_ms() - start_ms).max(0) as u64);
            self.paced = Some(
                std::time::Instant::now()
                    .checked_sub(behind)
                    .unwrap_or_else(std::time::Instant::now),
            );
        }
        self.generator = g;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(opts: GenOptions) -> Vec<CourseEvent> {
        let mut g = CourseGenerator::new(opts, EPOCH_2026_MS);
        std::iter::from_fn(|| g.next_event()).collect()
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let o = GenOptions {
            events: Some(2000),
            ..Default::default()
        };
        assert_eq!(events(o.clone()), events(o.clone()));
        assert_ne!(events(o.clone()), events(GenOptions { seed: 7, ..o }));
    }

    #[test]
    fn shape_is_realistic() {
        let ev = events(GenOptions {
            events: Some(50_000),
            ..Default::default()
        });
        assert_eq!(ev.len(), 50_000);
        let buys = ev.iter().filter(|e| e.purchased).count() as f64 / ev.len() as f64;
        assert!((0.01..0.08).contains(&buys), "purchase share {buys}");
        let top = ev.iter().filter(|e| e.course_id == 1).count();
        let mid = ev.iter().filter(|e| e.course_id == 250).count();
        assert!(top > 20 * mid.max(1), "course 1: {top}, course 250: {mid}");
        let distinct_users: std::collections::HashSet<_> = ev.iter().map(|e| e.user_id).collect();
        assert!(
            distinct_users.len() < ev.len() / 2,
            "users return: {} distinct",
            distinct_users.len()
        );
        for e in &ev {
            assert_eq!(e.region, CourseGenerator::region_of(e.user_id));
        }
    }

    #[test]
    fn disorder_is_bounded_and_late_events_are_late() {
        let ev = events(GenOptions {
            events: Some(20_000),
            out_of_order_ms: 2000,
            ..Default::default()
        });
        let mut max = i64::MIN;
        for e in &ev {
            assert!(e.event_time_ms >= max.saturating_sub(2000), "disorder beyond bound");
            max = max.max(e.event_time_ms);
        }
        let ev = events(GenOptions {
            events: Some(20_000),
            late_ratio: 0.01,
            ..Default::default()
        });
        let mut max = i64::MIN;
        let mut late = 0;
        for e in &ev {
            if e.event_time_ms < max.saturating_sub(30_000) {
                late += 1;
            }
            max = max.max(e.event_time_ms);
        }
        assert!((100..400).contains(&late), "late events: {late}");
    }

    #[test]
    fn json_line_shape() {
        let e = CourseEvent {
            user_id: 123,
            course_id: 45,
            region: "us-west",
            purchased: false,
            event_time_ms: EPOCH_2026_MS + 123,
        };
        let mut s = String::new();
        e.write_json(&mut s);
        assert_eq!(
            s,
            "{\"user_id\":123,\"course_id\":45,\"region\":\"us-west\",\"purchased\":false,\"event_time\":\"2026-01-01T00:00:00.123Z\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid json");
        assert_eq!(v["course_id"], 45);
    }
}
