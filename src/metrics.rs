//! `/metrics` in the Prometheus text format (version 0.0.4), written by `prometheus-client`'s encoder:
//! the server's per-query families ([`render_queries`]) and the helpers the collector agent's
//! families use too ([`encode`], [`family`]).
//!
//! Why collectors read the live counters at scrape time instead of registering metric families: a
//! query's counters are plain atomics in its [`Metrics`], shared with the micro-batch loop, the REPL
//! and `/v1/queries`, and they start again from 0 with the query. Queries come and go with the
//! session; a registry of families would have to mirror that list (and forget dropped queries),
//! where a collector built from the list on each scrape cannot disagree with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::query::Metrics;
use crate::session::RunningQuery;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything `collector` reports, as Prometheus text.
pub fn encode(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing to a String cannot fail, and the collectors here only fail when writing does.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// One family whose series differ by one label: `# HELP`, `# TYPE` and a sample per row. `name` is
/// without the `_total` the encoder appends to counters.
pub fn family<'r, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    rows: impl IntoIterator<Item = (&'r str, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, m) in rows {
        m.encode(metric.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// The Prometheus text for every continuous query (label `query`).
pub fn render_queries(queries: &[RunningQuery]) -> String {
    encode(QueryCollector {
        queries: queries
            .iter()
            .map(|q| QueryState {
                name: q.name.clone(),
                running: q.status() == "running",
                metrics: Arc::clone(&q.metrics),
            })
            .collect(),
        now_ms: crate::time::now_ms(),
    })
}

#[derive(Debug)]
struct QueryState {
    name: String,
    running: bool,
    metrics: Arc<Metrics>,
}

/// What one scrape reports: the queries as they were when it began, and the wall clock for the lag.
#[derive(Debug)]
struct QueryCollector {
    queries: Vec<QueryState>,
    now_ms: i64,
}

impl Collector for QueryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        type Counter = (&'static str, &'static str, fn(&Metrics) -> &AtomicU64);
        let counters: [Counter; 5] = [
            ("freshet_query_rows_in", "Rows read from the query's sources.", |m| {
                &m.rows_in
            }),
            ("freshet_query_rows_out", "Rows written to the query's sink.", |m| {
                &m.rows_out
            }),
            (
                "freshet_query_errors",
                "Records that could not be decoded (see _errors).",
                |m| &m.errors,
            ),
            ("freshet_query_late", "Rows behind the watermark (see _late).", |m| {
                &m.late
            }),
            ("freshet_query_batches", "Micro-batches run.", |m| &m.batches),
        ];
        for (name, help, field) in counters {
            let rows = self.queries.iter().map(|q| {
                (
                    q.name.as_str(),
                    ConstCounter::new(field(&q.metrics).load(Ordering::Relaxed)),
                )
            });
            family(&mut encoder, name, help, MetricType::Counter, "query", rows)?;
        }
        family(
            &mut encoder,
            "freshet_query_running",
            "1 while the query runs, 0 when paused, finished or failed.",
            MetricType::Gauge,
            "query",
            self.queries
                .iter()
                .map(|q| (q.name.as_str(), ConstGauge::new(i64::from(q.running)))),
        )?;
        // Only while there is a watermark: none yet is i64::MIN, a finished bounded query's is +∞.
        let watermarks: Vec<(&str, i64)> = self
            .queries
            .iter()
            .map(|q| (q.name.as_str(), q.metrics.watermark.load(Ordering::Relaxed)))
            .filter(|(_, wm)| *wm != i64::MIN && *wm != i64::MAX)
            .collect();
        family(
            &mut encoder,
            "freshet_query_watermark_ms",
            "The query's watermark, epoch milliseconds.",
            MetricType::Gauge,
            "query",
            watermarks.iter().map(|(q, wm)| (*q, ConstGauge::new(*wm))),
        )?;
        family(
            &mut encoder,
            "freshet_query_lag_ms",
            "Wall clock minus the watermark (event-time lag), milliseconds.",
            MetricType::Gauge,
            "query",
            watermarks
                .iter()
                .map(|(q, wm)| (*q, ConstGauge::new(self.now_ms.saturating_sub(*wm)))),
        )?;
        family(
            &mut encoder,
            "freshet_query_batch_seconds",
            "Time to run one micro-batch.",
            MetricType::Histogram,
            "query",
            self.queries
                .iter()
                .map(|q| (q.name.as_str(), Borrowed(q.metrics.batch_time.histogram()))),
        )
    }
}

/// A metric that lives elsewhere (a query's histogram), for [`family`], which otherwise takes values
/// made for the scrape.
struct Borrowed<'a, M>(&'a M);

impl<M: EncodeMetric> EncodeMetric for Borrowed<'_, M> {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// A strict reader of the Prometheus text format for the tests of both `/metrics` renderers.
#[cfg(test)]
pub mod parse {
    use std::collections::BTreeMap;

    /// One sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub value: f64,
    }

    /// Families (name → type) and samples, panicking on anything the format does not allow: a sample
    /// outside the family of the `# TYPE` line before it (families are contiguous), `# HELP` after
    /// `# TYPE` or twice, a family twice, a series twice, a bad name, escape or value, no newline at
    /// the end, or a histogram whose buckets are not cumulative up to `+Inf` == `_count`.
    pub fn prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        assert!(text.is_empty() || text.ends_with('\n'), "no final newline");
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
        };
        let mut types = BTreeMap::new();
        let mut helped = Vec::new();
        let mut current: Option<(String, String)> = None;
        let mut samples: Vec<Sample> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(valid_name(name), "{line}");
                assert!(!types.contains_key(name), "HELP after TYPE or a family twice: {line}");
                assert!(!helped.contains(&name.to_string()), "HELP twice: {line}");
                helped.push(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
                assert!(valid_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {line}"
                );
                current = Some((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let sample = sample(line, &valid_name);
            let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("no TYPE before {line}"));
            let belongs = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.name.strip_suffix(s) == Some(family)),
                _ => sample.name == *family,
            };
            assert!(
                belongs,
                "{line} is not in the family {family} of the TYPE line before it"
            );
            assert!(
                !samples
                    .iter()
                    .any(|s| s.name == sample.name && s.labels == sample.labels),
                "series twice: {line}"
            );
            samples.push(sample);
        }
        check_histograms(&types, &samples);
        (types, samples)
    }

    fn sample(line: &str, valid_name: &dyn Fn(&str) -> bool) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "metric name in {line}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let end = loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed labels: {line}"));
                match c {
                    '}' => break i,
                    ',' => continue,
                    _ => {}
                }
                let eq = loop {
                    match chars.next() {
                        Some((j, '=')) => break j,
                        Some(_) => {}
                        None => panic!("label without '=': {line}"),
                    }
                };
                let key = &inner[i..eq];
                assert!(valid_name(key), "label name {key:?} in {line}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value quoted: {line}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => panic!("unclosed label value: {line}"),
                    }
                }
                assert!(labels.insert(key.to_string(), value).is_none(), "label twice: {line}");
            };
            rest = &inner[end + 1..];
        }
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("one space before the value: {line}"));
        let mut fields = rest.split(' ');
        let value = match fields.next().unwrap_or_default() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value {v:?} is not a float: {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| panic!("timestamp: {line}"));
        }
        assert!(fields.next().is_none(), "trailing text: {line}");
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    /// Every histogram series: buckets in increasing `le`, cumulative, ending in `+Inf` == `_count`.
    fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) {
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
                let le = s.labels.get("le").unwrap_or_else(|| panic!("bucket without le: {s:?}"));
                let le: f64 = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().unwrap_or_else(|_| panic!("le {le:?}")),
                };
                let mut labels = s.labels.clone();
                labels.remove("le");
                series.entry(labels).or_default().push((le, s.value));
            }
            for (labels, buckets) in &series {
                assert!(
                    buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{family}{labels:?}: buckets not increasing and cumulative: {buckets:?}"
                );
                let find = |suffix: &str| {
                    samples
                        .iter()
                        .find(|s| s.name == format!("{family}{suffix}") && s.labels == *labels)
                        .unwrap_or_else(|| panic!("{family}{suffix}{labels:?} missing"))
                        .value
                };
                assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{family}{labels:?}");
                assert_eq!(buckets.last().map(|b| b.1), Some(find("_count")), "{family}{labels:?}");
                assert!(find("_sum") >= 0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn state(name: &str, running: bool) -> QueryState {
        QueryState {
            name: name.into(),
            running,
            metrics: Arc::new(Metrics::default()),
        }
    }

    #[test]
    fn query_families_names_types_and_values() {
        let a = state("a\"b\\c", true);
        a.metrics.rows_in.store(7, Ordering::Relaxed);
        a.metrics.watermark.store(1_000, Ordering::Relaxed);
        a.metrics.batch_time.record(Duration::from_millis(3));
        a.metrics.batch_time.record(Duration::from_secs(9));
        let b = state("idle", false);
        b.metrics.watermark.store(i64::MIN, Ordering::Relaxed);
        let text = encode(QueryCollector {
            queries: vec![a, b],
            now_ms: 1_500,
        });
        let (types, samples) = parse::prometheus(&text);
        let kinds: Vec<(&str, &str)> = types.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("freshet_query_batch_seconds", "histogram"),
                ("freshet_query_batches_total", "counter"),
                ("freshet_query_errors_total", "counter"),
                ("freshet_query_lag_ms", "gauge"),
                ("freshet_query_late_total", "counter"),
                ("freshet_query_rows_in_total", "counter"),
                ("freshet_query_rows_out_total", "counter"),
                ("freshet_query_running", "gauge"),
                ("freshet_query_watermark_ms", "gauge"),
            ]
        );
        for help in [
            "# HELP freshet_query_rows_in_total Rows read from the query's sources.\n",
            "# HELP freshet_query_running 1 while the query runs, 0 when paused, finished or failed.\n",
            "# HELP freshet_query_lag_ms Wall clock minus the watermark (event-time lag), milliseconds.\n",
            "# HELP freshet_query_batch_seconds Time to run one micro-batch.\n",
        ] {
            assert!(text.contains(help), "{help} in\n{text}");
        }
        let at = |name: &str, query: &str, le: Option<&str>| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.get("query").map(String::as_str) == Some(query)
                        && s.labels.get("le").map(String::as_str) == le
                })
                .map(|s| s.value)
        };
        assert_eq!(at("freshet_query_rows_in_total", "a\"b\\c", None), Some(7.0));
        assert_eq!(at("freshet_query_running", "a\"b\\c", None), Some(1.0));
        assert_eq!(at("freshet_query_running", "idle", None), Some(0.0));
        assert_eq!(at("freshet_query_watermark_ms", "a\"b\\c", None), Some(1_000.0));
        assert_eq!(at("freshet_query_lag_ms", "a\"b\\c", None), Some(500.0));
        assert_eq!(at("freshet_query_lag_ms", "idle", None), None, "no watermark, no lag");
        // The bucket bounds as before (Go's float format: `1`, not `1.0`).
        assert_eq!(
            at("freshet_query_batch_seconds_bucket", "a\"b\\c", Some("0.001")),
            Some(0.0)
        );
        assert_eq!(
            at("freshet_query_batch_seconds_bucket", "a\"b\\c", Some("0.005")),
            Some(1.0)
        );
        assert_eq!(
            at("freshet_query_batch_seconds_bucket", "a\"b\\c", Some("5")),
            Some(1.0)
        );
        assert_eq!(
            at("freshet_query_batch_seconds_bucket", "a\"b\\c", Some("+Inf")),
            Some(2.0)
        );
        assert_eq!(at("freshet_query_batch_seconds_count", "a\"b\\c", None), Some(2.0));
        let sum = at("freshet_query_batch_seconds_sum", "a\"b\\c", None).expect("sum");
        assert!((sum - 9.003).abs() < 1e-9, "{sum}");
        assert!(
            text.contains("freshet_query_rows_in_total{query=\"a\\\"b\\\\c\"} 7\n"),
            "{text}"
        );
    }

    #[test]
    fn no_queries_still_describes_every_family() {
        let text = encode(QueryCollector {
            queries: vec![],
            now_ms: 0,
        });
        let (types, samples) = parse::prometheus(&text);
        assert_eq!((types.len(), samples.len()), (9, 0), "{text}");
    }

    #[test]
    #[should_panic(expected = "not in the family")]
    fn the_parser_refuses_interleaved_families() {
        // What the hand-written renderer wrote for watermark and lag: both headers, then the samples.
        parse::prometheus("# TYPE w gauge\n# TYPE l gauge\nw{query=\"q\"} 1\nl{query=\"q\"} 2\n");
    }
}
