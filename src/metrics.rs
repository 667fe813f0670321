//! `/metrics` in the Prometheus text format (version 0.0.4), written by `prometheus-client`'s encoder:
//! the server's per-query families ([`render_queries`]) and the helpers the collector agent's
//! families use too ([`encode`], [`family`]); [`parse`] reads it back strictly, for the tests.
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

pub mod parse;

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
    render_states(
        queries
            .iter()
            .map(|q| QueryState {
                name: q.name.clone(),
                running: q.status() == "running",
                metrics: Arc::clone(&q.metrics),
            })
            .collect(),
    )
}

/// [`render_queries`] from what the server keeps of each query between requests.
pub fn render_states(queries: Vec<QueryState>) -> String {
    encode(QueryCollector {
        queries,
        now_ms: crate::time::now_ms(),
    })
}

/// One query as `/metrics` reports it: its name, whether it runs, its live counters.
#[derive(Debug)]
pub struct QueryState {
    pub name: String,
    pub running: bool,
    pub metrics: Arc<Metrics>,
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
        let q = "a\"b\\c";
        let a = state(q, true);
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
        let e = parse::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let kinds: Vec<(&str, &str)> = e.types.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
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
        let at = |name: &str, query: &str| e.value(name, &[("query", query)]);
        let bucket = |le: &str| e.value("freshet_query_batch_seconds_bucket", &[("query", q), ("le", le)]);
        assert_eq!(at("freshet_query_rows_in_total", q), Some(7.0));
        assert_eq!(at("freshet_query_running", q), Some(1.0));
        assert_eq!(at("freshet_query_running", "idle"), Some(0.0));
        assert_eq!(at("freshet_query_watermark_ms", q), Some(1_000.0));
        assert_eq!(at("freshet_query_lag_ms", q), Some(500.0));
        assert_eq!(at("freshet_query_lag_ms", "idle"), None, "no watermark, no lag");
        // The bucket bounds as before (Go's float format: `1`, not `1.0`).
        assert_eq!(bucket("0.001"), Some(0.0));
        assert_eq!(bucket("0.005"), Some(1.0));
        assert_eq!(bucket("1"), Some(1.0));
        assert_eq!(bucket("5"), Some(1.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
        assert_eq!(at("freshet_query_batch_seconds_count", q), Some(2.0));
        let sum = at("freshet_query_batch_seconds_sum", q).expect("sum");
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
        let e = parse::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!((e.types.len(), e.samples.len()), (9, 0), "{text}");
    }
}
