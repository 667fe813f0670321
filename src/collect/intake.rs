//! What sits between sources and sinks: channels (disk or memory) behind one handle, the [`Intake`]
//! through which a source hands over its events (interceptors, dead letters, backpressure), and the
//! agent's metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::channel::{self, DiskChannel, Event, NewEvent};
use super::interceptor::Chain;
use crate::error::{Error, Result};

/// What a channel must do for the agent: transactional takes, all-or-nothing puts, backpressure.
pub trait Channel: Send {
    fn put_batch(&mut self, events: &[NewEvent]) -> channel::Result<Vec<u64>>;
    fn take(&mut self, max: usize) -> channel::Result<Vec<Event>>;
    fn commit(&mut self) -> channel::Result<()>;
    fn rollback(&mut self);
    /// Unacknowledged events (taken-but-uncommitted ones included).
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn capacity(&self) -> u64;
    /// Called from a timer (interval fsync).
    fn tick(&mut self) -> channel::Result<()> {
        Ok(())
    }
}

impl Channel for DiskChannel {
    fn put_batch(&mut self, events: &[NewEvent]) -> channel::Result<Vec<u64>> {
        DiskChannel::put_batch(self, events)
    }
    fn take(&mut self, max: usize) -> channel::Result<Vec<Event>> {
        DiskChannel::take(self, max)
    }
    fn commit(&mut self) -> channel::Result<()> {
        DiskChannel::commit(self)
    }
    fn rollback(&mut self) {
        DiskChannel::rollback(self)
    }
    fn len(&self) -> u64 {
        DiskChannel::len(self)
    }
    fn capacity(&self) -> u64 {
        self.options().capacity_events
    }
    fn tick(&mut self) -> channel::Result<()> {
        self.sync_if_due()
    }
}

/// A channel in memory, for those who accept losing what it holds when the agent stops or dies. Same
/// transactions and backpressure as the disk channel; ids restart at 1 with the agent.
pub struct MemoryChannel {
    events: VecDeque<Event>,
    /// Events at the front of `events` that are taken but not committed.
    taken: usize,
    next_id: u64,
    capacity: u64,
}

impl MemoryChannel {
    pub fn new(capacity: u64) -> MemoryChannel {
        MemoryChannel {
            events: VecDeque::new(),
            taken: 0,
            next_id: 1,
            capacity,
        }
    }
}

impl Channel for MemoryChannel {
    fn put_batch(&mut self, events: &[NewEvent]) -> channel::Result<Vec<u64>> {
        let n = events.len() as u64;
        channel::check_room(self.len(), n, self.capacity)?;
        let first = self.next_id;
        self.next_id += n;
        self.events
            .extend(events.iter().zip(first..).map(|((body, headers), id)| Event {
                id,
                body: body.clone(),
                headers: headers.clone(),
            }));
        Ok((first..first + n).collect())
    }

    fn take(&mut self, max: usize) -> channel::Result<Vec<Event>> {
        let end = (self.taken + max).min(self.events.len());
        let out = self.events.range(self.taken..end).cloned().collect();
        self.taken = end;
        Ok(out)
    }

    fn commit(&mut self) -> channel::Result<()> {
        self.events.drain(..self.taken);
        self.taken = 0;
        Ok(())
    }

    fn rollback(&mut self) {
        self.taken = 0;
    }

    fn len(&self) -> u64 {
        self.events.len() as u64
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// A named channel shared by the sources that put into it and the one sink that takes from it.
pub struct ChannelHandle {
    pub name: String,
    inner: Mutex<Box<dyn Channel>>,
    /// Signalled after every put, so a waiting sink wakes at once.
    ready: Condvar,
}

impl ChannelHandle {
    pub fn new(name: &str, channel: Box<dyn Channel>) -> Arc<ChannelHandle> {
        Arc::new(ChannelHandle {
            name: name.to_string(),
            inner: Mutex::new(channel),
            ready: Condvar::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Box<dyn Channel>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: channel::Error) -> Error {
        Error::External(format!("channel '{}': {e}", self.name))
    }

    /// Put `events`, waiting while the channel is full (backpressure on the source) unless `stop` is set.
    /// Returns once the events are as durable as the channel promises.
    pub fn put(&self, events: &[NewEvent], stop: &AtomicBool) -> Result<()> {
        self.put_until(events, stop, None).map(|_| ())
    }

    /// As [`ChannelHandle::put`], but give up (returning false, nothing put) if the channel is still full
    /// at `deadline`.
    pub fn put_until(&self, events: &[NewEvent], stop: &AtomicBool, deadline: Option<Instant>) -> Result<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        loop {
            let result = self.lock().put_batch(events);
            match result {
                Ok(_) => {
                    self.ready.notify_all();
                    return Ok(true);
                }
                Err(e) if e.is_full() && !stop.load(Ordering::Relaxed) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Up to `max` events, waiting up to `wait` for the first one.
    pub fn take(&self, max: usize, wait: Duration) -> Result<Vec<Event>> {
        let mut guard = self.lock();
        let events = guard.take(max).map_err(|e| self.err(e))?;
        if !events.is_empty() || wait.is_zero() {
            return Ok(events);
        }
        let (mut guard, _) = self.ready.wait_timeout(guard, wait).unwrap_or_else(|p| p.into_inner());
        guard.take(max).map_err(|e| self.err(e))
    }

    pub fn commit(&self) -> Result<()> {
        self.lock().commit().map_err(|e| self.err(e))
    }

    pub fn rollback(&self) {
        self.lock().rollback()
    }

    pub fn len(&self) -> u64 {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> u64 {
        self.lock().capacity()
    }

    pub fn tick(&self) -> Result<()> {
        self.lock().tick().map_err(|e| self.err(e))
    }
}

/// Counters of one source.
#[derive(Default)]
pub struct SourceMetrics {
    /// Events read, before interceptors.
    pub received: AtomicU64,
    /// Put into the channel.
    pub accepted: AtomicU64,
    /// Rejected (oversized, invalid, failed an interceptor): sent to the dead-letter channel, or dropped
    /// with a log line when the source has none.
    pub rejected: AtomicU64,
    /// Dropped on purpose by a filter interceptor.
    pub filtered: AtomicU64,
}

/// Counters of one sink.
#[derive(Default)]
pub struct SinkMetrics {
    /// Events the destination acknowledged.
    pub sent: AtomicU64,
    /// Events in deliveries that failed (they stay in the channel and are retried).
    pub failed: AtomicU64,
}

/// Everything `/metrics` shows, in the Prometheus text format.
#[derive(Default, Clone)]
pub struct Metrics {
    pub sources: Vec<(String, Arc<SourceMetrics>)>,
    pub channels: Vec<Arc<ChannelHandle>>,
    pub sinks: Vec<(String, Arc<SinkMetrics>)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("sources", &self.sources.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("channels", &self.channels.iter().map(|c| &c.name).collect::<Vec<_>>())
            .field("sinks", &self.sinks.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        // A copy of the lists (the counters themselves are shared), read when the scrape encodes it.
        crate::metrics::encode(self.clone())
    }
}

/// Read at scrape time, as the query metrics are (see [`crate::metrics`] for why).
impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::family;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        type SourceCounter = (&'static str, &'static str, fn(&SourceMetrics) -> &AtomicU64);
        let sources: [SourceCounter; 4] = [
            (
                "freshet_collector_source_received",
                "Events read by a source, before interceptors.",
                |m| &m.received,
            ),
            (
                "freshet_collector_source_accepted",
                "Events a source put into its channel.",
                |m| &m.accepted,
            ),
            (
                "freshet_collector_source_rejected",
                "Events rejected (oversized, invalid, failed an interceptor), sent to the dead-letter channel.",
                |m| &m.rejected,
            ),
            (
                "freshet_collector_source_filtered",
                "Events dropped by a filter interceptor.",
                |m| &m.filtered,
            ),
        ];
        for (name, help, field) in sources {
            let rows = self
                .sources
                .iter()
                .map(|(n, m)| (n.as_str(), ConstCounter::new(field(m).load(Ordering::Relaxed))));
            family(&mut encoder, name, help, Counter, "source", rows)?;
        }
        type ChannelGauge = (&'static str, &'static str, fn(&ChannelHandle) -> u64);
        let channels: [ChannelGauge; 2] = [
            (
                "freshet_collector_channel_size",
                "Events in a channel not yet acknowledged by its sink.",
                ChannelHandle::len,
            ),
            (
                "freshet_collector_channel_capacity",
                "Events a channel holds before sources are held back.",
                ChannelHandle::capacity,
            ),
        ];
        for (name, help, value) in channels {
            let rows = self
                .channels
                .iter()
                .map(|c| (c.name.as_str(), ConstGauge::new(value(c))));
            family(&mut encoder, name, help, Gauge, "channel", rows)?;
        }
        type SinkCounter = (&'static str, &'static str, fn(&SinkMetrics) -> &AtomicU64);
        let sinks: [SinkCounter; 2] = [
            (
                "freshet_collector_sink_sent",
                "Events a sink delivered and the destination acknowledged.",
                |m| &m.sent,
            ),
            (
                "freshet_collector_sink_failed",
                "Events in deliveries that failed (kept in the channel and retried).",
                |m| &m.failed,
            ),
        ];
        for (name, help, field) in sinks {
            let rows = self
                .sinks
                .iter()
                .map(|(n, m)| (n.as_str(), ConstCounter::new(field(m).load(Ordering::Relaxed))));
            family(&mut encoder, name, help, Counter, "sink", rows)?;
        }
        Ok(())
    }
}

/// Longest event a source accepts unless configured otherwise (1 MiB).
pub fn default_max_event_bytes() -> usize {
    1 << 20
}

/// Header naming why an event went to the dead-letter channel.
pub const ERROR_HEADER: &str = "freshet.error";
/// Header naming the source an event came from (on dead letters).
pub const SOURCE_HEADER: &str = "freshet.source";

/// How a source hands over its events: through the interceptor chain into its channel, rejected ones
/// into its dead-letter channel, counting as it goes.
pub struct Intake {
    pub name: String,
    chain: Chain,
    channel: Arc<ChannelHandle>,
    dead_letter: Option<Arc<ChannelHandle>>,
    pub metrics: Arc<SourceMetrics>,
    /// Longest event body accepted; longer lines are cut to this and rejected.
    pub max_event_bytes: usize,
}

impl Intake {
    pub fn new(
        name: &str,
        chain: Chain,
        channel: Arc<ChannelHandle>,
        dead_letter: Option<Arc<ChannelHandle>>,
        max_event_bytes: usize,
    ) -> Intake {
        Intake {
            name: name.to_string(),
            chain,
            channel,
            dead_letter,
            metrics: Arc::default(),
            max_event_bytes,
        }
    }

    /// Hand over a batch; returns once the accepted events are in the channel (and the rejected ones in
    /// the dead-letter channel), waiting while either is full.
    pub fn submit(&self, events: Vec<NewEvent>, stop: &AtomicBool) -> Result<()> {
        self.submit_within(events, stop, None).map(|_| ())
    }

    /// As [`Intake::submit`], but give up if the channel is still full after `timeout`: `Ok(None)`, and
    /// none of the accepted events was put. Otherwise `Ok(Some(rejected))`.
    pub fn submit_within(
        &self,
        events: Vec<NewEvent>,
        stop: &AtomicBool,
        timeout: Option<Duration>,
    ) -> Result<Option<usize>> {
        if events.is_empty() {
            return Ok(Some(0));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.metrics.received.fetch_add(events.len() as u64, Ordering::Relaxed);
        let (accepted, rejected) = if self.chain.is_empty() {
            (events, Vec::new())
        } else {
            let out = self.chain.apply(events);
            self.metrics.filtered.fetch_add(out.filtered as u64, Ordering::Relaxed);
            (out.accepted, out.rejected)
        };
        let n_rejected = rejected.len();
        self.reject_all(rejected, stop)?;
        if !self.channel.put_until(&accepted, stop, deadline)? {
            return Ok(None);
        }
        self.metrics
            .accepted
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        Ok(Some(n_rejected))
    }

    /// Reject events that never reached the chain (oversized, undecodable), with the reason.
    pub fn reject(&self, events: Vec<(NewEvent, String)>, stop: &AtomicBool) -> Result<()> {
        self.metrics.received.fetch_add(events.len() as u64, Ordering::Relaxed);
        self.reject_all(events, stop)
    }

    fn reject_all(&self, events: Vec<(NewEvent, String)>, stop: &AtomicBool) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.metrics.rejected.fetch_add(events.len() as u64, Ordering::Relaxed);
        match &self.dead_letter {
            Some(dl) => {
                let events: Vec<NewEvent> = events
                    .into_iter()
                    .map(|((body, mut headers), reason)| {
                        headers.push((ERROR_HEADER.to_string(), reason));
                        headers.push((SOURCE_HEADER.to_string(), self.name.clone()));
                        (body, headers)
                    })
                    .collect();
                dl.put(&events, stop)
            }
            None => {
                let ((body, _), reason) = &events[0];
                eprintln!(
                    "collect: source '{}': rejected {} event(s) (no dead_letter channel configured); first: {reason}: {}",
                    self.name,
                    events.len(),
                    preview(body)
                );
                Ok(())
            }
        }
    }

    /// A line over `max_event_bytes`, cut to it, with the reason to reject it for; `len` is the whole
    /// line's length when known (a reader may give up on a line before its end).
    pub fn oversized(&self, line: &[u8], len: Option<usize>, headers: &[(String, String)]) -> (NewEvent, String) {
        let max = self.max_event_bytes;
        let what = len.map_or_else(|| "line".to_string(), |n| format!("line of {n} bytes"));
        (
            (line[..line.len().min(max)].to_vec(), headers.to_vec()),
            format!("{what} is longer than max_event_bytes ({max}); kept its first {max} bytes"),
        )
    }

    /// Split `bytes` (complete lines) into events, cutting and rejecting oversized ones; then submit.
    /// `headers` go on every event.
    pub fn submit_lines(&self, lines: &[u8], headers: &[(String, String)], stop: &AtomicBool) -> Result<()> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for line in lines.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max_event_bytes {
                bad.push(self.oversized(line, Some(line.len()), headers));
            } else {
                ok.push((line.to_vec(), headers.to_vec()));
            }
        }
        self.reject(bad, stop)?;
        self.submit(ok, stop)
    }
}

/// The first bytes of a body, printable.
pub fn preview(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
    if body.len() > 120 { format!("{s}…") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_channel_transactions_and_backpressure() {
        let mut c = MemoryChannel::new(3);
        let ev = |s: &str| (s.as_bytes().to_vec(), vec![]);
        assert_eq!(c.put_batch(&[ev("a"), ev("b")]).expect("put"), vec![1, 2]);
        assert!(c.put_batch(&[ev("c"), ev("d")]).expect_err("full").is_full());
        assert!(matches!(
            c.put_batch(&vec![ev("x"); 4]),
            Err(channel::Error::TooLarge(_))
        ));
        let t = c.take(1).expect("take");
        assert_eq!((t[0].id, t[0].body.as_slice()), (1, &b"a"[..]));
        c.rollback();
        let t = c.take(5).expect("take");
        assert_eq!(
            t.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2],
            "rolled back events come again"
        );
        assert_eq!(c.len(), 2, "taken events still count until committed");
        c.commit().expect("commit");
        assert_eq!(c.len(), 0);
        assert_eq!(c.put_batch(&[ev("c")]).expect("put"), vec![3], "ids keep increasing");
    }

    #[test]
    fn metrics_render_prometheus_text() {
        let m = Metrics {
            sources: vec![("s\"1".into(), Arc::default())],
            channels: vec![ChannelHandle::new("mem", Box::new(MemoryChannel::new(10)))],
            sinks: vec![("k".into(), Arc::default())],
        };
        m.sources[0].1.received.store(7, Ordering::Relaxed);
        m.sinks[0].1.failed.store(2, Ordering::Relaxed);
        let text = m.render();
        let e = crate::metrics::parse::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let kinds: Vec<(&str, &str)> = e.types.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("freshet_collector_channel_capacity", "gauge"),
                ("freshet_collector_channel_size", "gauge"),
                ("freshet_collector_sink_failed_total", "counter"),
                ("freshet_collector_sink_sent_total", "counter"),
                ("freshet_collector_source_accepted_total", "counter"),
                ("freshet_collector_source_filtered_total", "counter"),
                ("freshet_collector_source_received_total", "counter"),
                ("freshet_collector_source_rejected_total", "counter"),
            ]
        );
        assert_eq!(e.samples.len(), 8, "one series per family: {text}");
        for line in [
            "freshet_collector_source_received_total{source=\"s\\\"1\"} 7\n",
            "freshet_collector_channel_capacity{channel=\"mem\"} 10\n",
            "freshet_collector_sink_failed_total{sink=\"k\"} 2\n",
            "# TYPE freshet_collector_sink_sent_total counter\n",
            "# HELP freshet_collector_source_rejected_total Events rejected (oversized, invalid, failed an \
             interceptor), sent to the dead-letter channel.\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
