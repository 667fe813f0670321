//! A keyed operator split by key over worker threads (Flink's keyed parallelism, within one process).
//!
//! [`Partitioned`] holds `P` instances of one operator. Each row goes to the instance that owns its
//! key: the key's bytes in Arrow's row format (the bytes the operator's own [`super::groups`] table
//! keeps) give its key group ([`key_group`], one of [`KEY_GROUPS`]), and instance `i` owns the
//! contiguous range of key groups `g` with `g · P / KEY_GROUPS = i` (Flink's
//! `KeyGroupRangeAssignment`). All rows of a key meet in one instance, in their order, so each
//! instance sees exactly the rows a single operator would see for its keys; an operator whose state
//! is per key and whose output for a key depends only on that key's rows (the aggregates, the joins
//! on equality keys, Top-N and OVER per partition: see `OpFactory::partition_keys`) therefore emits
//! the same rows, only ordered by instance rather than interleaved. Every instance gets every `flush` and `advance`, so they fire under the same
//! watermarks.
//!
//! The instances run at once on scoped threads (the calling thread takes instance 0) when there is
//! enough work to pay for it; small inputs run one after the other on the calling thread.
//!
//! **Checkpoints.** With one instance the state is that instance's, unchanged. With `P > 1` it is a
//! table `partitions` (one row: `P`) and each instance's tables, named `part<i>/<table>`. A restore
//! takes the instance count from the checkpoint, whatever `--workers` says now, so every key's state
//! returns to the instance its rows will reach (the routing depends only on `P`). A checkpoint
//! written before operators were partitioned restores as one instance.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;

use super::groups::{KEY_GROUPS, key_group};
use super::state::{self, OpState, plain_table};
use super::stream_join::eval_keys;
use super::{ChangeBatch, Context, Operator};
use crate::error::{Error, Result};

/// Below this many input rows (or state entries, for `flush` and `advance`) the instances run one
/// after the other: starting a thread costs tens of microseconds.
const PARALLEL_MIN: usize = 4096;

/// The state table that records the instance count.
const PARTITIONS: &str = "partitions";

/// Builds a fresh instance of the partitioned operator.
pub type Build = Arc<dyn Fn() -> Result<Box<dyn Operator>> + Send + Sync>;

/// What a keyed operator is split by: per input port, the key expressions over that input, and the
/// types all ports' keys are cast to, so that equal keys on either input have the same bytes and
/// meet in one instance. (DataFusion's type coercion already gives a join's two sides one key type;
/// the keys are evaluated as the joins evaluate theirs, [`eval_keys`], so routing agrees with
/// matching whatever the plan holds.)
#[derive(Clone)]
pub struct PartitionKeys {
    pub ports: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    pub types: Vec<DataType>,
}

impl PartitionKeys {
    /// The key of a one-input operator.
    pub fn one(keys: &[Arc<dyn PhysicalExpr>], types: &[DataType]) -> PartitionKeys {
        PartitionKeys {
            ports: vec![keys.to_vec()],
            types: types.to_vec(),
        }
    }
}

/// Which instance of `parts` owns each row's key.
struct Router {
    keys: PartitionKeys,
    converter: RowConverter,
}

impl Router {
    /// Row indices of `input` (arrived on `port`) per instance, in row order.
    fn route(&self, port: usize, input: &ChangeBatch, parts: usize) -> Result<Vec<Vec<u32>>> {
        let n = input.num_rows();
        let exprs = self
            .keys
            .ports
            .get(port)
            .ok_or_else(|| Error::Internal(format!("a partitioned operator has no key for input {port}")))?;
        // NULL keys route like any other (a row and its retraction have the same bytes).
        let (cols, _) = eval_keys(exprs, &self.keys.types, true, &input.batch)?;
        let rows = self.converter.convert_columns(&cols)?;
        let mut idx: Vec<Vec<u32>> = (0..parts).map(|_| Vec::with_capacity(n / parts + n / 16)).collect();
        for (i, r) in rows.iter().enumerate() {
            idx[owner(key_group(r.as_ref()), parts)].push(i as u32);
        }
        Ok(idx)
    }
}

/// The instance of `parts` that owns key group `g`.
pub fn owner(g: u32, parts: usize) -> usize {
    g as usize * parts / KEY_GROUPS as usize
}

/// An instance and its argument, waiting for the thread that runs them.
type Slot<'a, T> = std::sync::Mutex<Option<(&'a mut Box<dyn Operator>, T)>>;

/// What a slot holds, taken out once.
fn take_slot<W>(slot: &std::sync::Mutex<Option<W>>) -> Option<W> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

/// `P` instances of a keyed operator, each owning a range of key groups.
pub struct Partitioned {
    build: Build,
    router: Router,
    parts: Vec<Box<dyn Operator>>,
    /// What `busy` was at the last `flush`, for the `advance` after it.
    busy: Option<bool>,
}

impl Partitioned {
    /// `parts` instances (at least one, at most [`KEY_GROUPS`]) of what `build` makes, routed by
    /// `keys`.
    pub fn new(parts: usize, keys: PartitionKeys, build: Build) -> Result<Partitioned> {
        if keys.types.is_empty() || keys.ports.iter().any(|k| k.len() != keys.types.len()) {
            return Err(Error::Internal(
                "a partitioned operator needs a key, of the same arity on every input".into(),
            ));
        }
        let converter = RowConverter::new(keys.types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let mut p = Partitioned {
            build,
            router: Router { keys, converter },
            parts: Vec::new(),
            busy: None,
        };
        p.rebuild(parts)?;
        Ok(p)
    }

    fn rebuild(&mut self, parts: usize) -> Result<()> {
        if parts == 0 || parts > KEY_GROUPS as usize {
            return Err(Error::Internal(format!(
                "{parts} partitions of an operator (1 to {KEY_GROUPS})"
            )));
        }
        self.parts = (0..parts).map(|_| (self.build)()).collect::<Result<_>>()?;
        Ok(())
    }

    /// Run `f` on every instance with its argument, at once when `parallel`; outputs and late rows
    /// in instance order.
    fn each<T: Send>(
        &mut self,
        args: Vec<T>,
        parallel: bool,
        cx: &mut Context,
        f: impl Fn(&mut dyn Operator, T, &mut Context) -> Result<Vec<ChangeBatch>> + Sync,
    ) -> Result<Vec<ChangeBatch>> {
        let hold_early = cx.hold_early;
        let run = |op: &mut Box<dyn Operator>, a: T| {
            let mut c = Context {
                hold_early,
                ..Context::default()
            };
            (f(op.as_mut(), a, &mut c), c)
        };
        let results: Vec<(Result<Vec<ChangeBatch>>, Context)> = if parallel && self.parts.len() > 1 {
            // Each instance after the first waits in a slot its thread takes it from; one whose
            // thread cannot be started (the process is out of threads) is still in its slot and
            // runs here instead.
            let slots: Vec<Slot<'_, T>> = self
                .parts
                .iter_mut()
                .zip(args)
                .map(|w| std::sync::Mutex::new(Some(w)))
                .collect();
            std::thread::scope(|s| {
                let run = &run;
                let started: Vec<_> = slots[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, slot)| {
                        fail::fail_point!("partition-spawn", |_| None); // as if out of threads
                        std::thread::Builder::new()
                            .name(format!("freshet-part-{}", i + 1))
                            .spawn_scoped(s, move || take_slot(slot).map(|(op, a)| run(op, a)))
                            .ok()
                    })
                    .collect();
                let mut out = Vec::with_capacity(slots.len());
                out.extend(take_slot(&slots[0]).map(|(op, a)| run(op, a)));
                for (slot, h) in slots[1..].iter().zip(started) {
                    let done = h.and_then(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
                    out.extend(done.or_else(|| take_slot(slot).map(|(op, a)| run(op, a))));
                }
                out
            })
        } else {
            self.parts.iter_mut().zip(args).map(|(op, a)| run(op, a)).collect()
        };
        let mut out = Vec::new();
        for (r, c) in results {
            cx.late.extend(c.late);
            out.extend(r?);
        }
        Ok(out)
    }

    /// Whether `flush` and `advance` run the instances at once: the state is large enough.
    fn busy(&self) -> bool {
        self.parts.len() > 1 && self.state_size() >= PARALLEL_MIN
    }
}

impl Operator for Partitioned {
    fn process(&mut self, port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if self.parts.len() == 1 {
            return self.parts[0].process(port, input, cx);
        }
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let parallel = input.num_rows() >= PARALLEL_MIN;
        let inputs = self
            .router
            .route(port, &input, self.parts.len())?
            .into_iter()
            .map(|ix| {
                if ix.len() == input.num_rows() {
                    Ok(input.clone())
                } else {
                    input.take(&UInt32Array::from(ix))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.each(inputs, parallel, cx, |op, b, c| {
            if b.is_empty() {
                Ok(Vec::new())
            } else {
                op.process(port, b, c)
            }
        })
    }

    fn flush(&mut self, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        // Counted once per micro-batch (the engine calls `flush`, then `advance`): counting can walk
        // every partition of some operators.
        let parallel = self.busy();
        self.busy = Some(parallel);
        let n = self.parts.len();
        self.each(vec![(); n], parallel, cx, |op, (), c| op.flush(c))
    }

    fn advance(&mut self, wm: i64, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let parallel = self.busy.take().unwrap_or_else(|| self.busy());
        let n = self.parts.len();
        self.each(vec![(); n], parallel, cx, |op, (), c| op.advance(wm, c))
    }

    fn low_water(&self) -> i64 {
        self.parts.iter().map(|p| p.low_water()).min().unwrap_or(i64::MAX)
    }

    fn state_size(&self) -> usize {
        self.parts.iter().map(|p| p.state_size()).sum()
    }

    fn instances(&self) -> usize {
        self.parts.len()
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.parts.iter_mut().for_each(|p| p.set_emit_floor(floor));
    }

    /// One instance: its state. More: `partitions` (one row: the count), then every instance's
    /// tables as `part<i>/<table>`.
    fn snapshot(&self) -> Result<OpState> {
        if self.parts.len() == 1 {
            return self.parts[0].snapshot();
        }
        let mut st = OpState::new();
        st.put(
            PARTITIONS,
            plain_table(vec![(
                "parts",
                Arc::new(UInt32Array::from(vec![self.parts.len() as u32])) as ArrayRef,
            )])?,
        );
        for (i, p) in self.parts.iter().enumerate() {
            for (name, t) in p.snapshot()?.tables {
                st.put(&format!("part{i}/{name}"), t);
            }
        }
        if st.tables.len() == 1 {
            return Ok(OpState::new()); // every instance is stateless
        }
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        if st.is_empty() {
            return Ok(());
        }
        if !st.tables.iter().any(|(n, _)| n == PARTITIONS) {
            // One instance's state (or a checkpoint from before operators were partitioned).
            self.rebuild(1)?;
            return self.parts[0].restore(st);
        }
        let meta = st.take_single_row(PARTITIONS)?;
        let count = state::dense_column::<UInt32Array>(PARTITIONS, &meta, "parts")?.value(0) as usize;
        self.rebuild(count)?;
        let mut states: Vec<OpState> = (0..count).map(|_| OpState::new()).collect();
        for (name, t) in st.tables {
            let (i, table) = name
                .strip_prefix("part")
                .and_then(|r| r.split_once('/'))
                .and_then(|(i, t)| Some((i.parse::<usize>().ok()?, t)))
                .filter(|(i, _)| *i < count)
                .ok_or_else(|| Error::Internal(format!("state table '{name}' belongs to no partition of {count}")))?;
            states[i].put(table, t);
        }
        for (p, s) in self.parts.iter_mut().zip(states) {
            p.restore(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::test_rows::rows;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::physical_expr::expressions::Column;

    /// Keeps `key@time` of each row it saw, in order, and passes the rows on.
    struct Echo {
        seen: Vec<String>,
        /// The threads `process` ran on, if logged.
        threads: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    }

    impl Operator for Echo {
        fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
            let times = input
                .batch
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("t");
            let keys = strings(input.batch.column(0));
            self.seen
                .extend(keys.iter().zip(times.values()).map(|(k, t)| format!("{k}@{t}")));
            if let Some(log) = &self.threads {
                let me = std::thread::current().name().unwrap_or_default().to_string();
                log.lock().expect("log").push(me);
            }
            Ok(vec![input])
        }
        fn state_size(&self) -> usize {
            self.seen.len()
        }
        fn snapshot(&self) -> Result<OpState> {
            let mut st = OpState::new();
            if !self.seen.is_empty() {
                let keys = datafusion::arrow::array::StringArray::from(self.seen.clone());
                st.put("seen", plain_table(vec![("k", Arc::new(keys) as ArrayRef)])?);
            }
            Ok(st)
        }
        fn restore(&mut self, mut st: OpState) -> Result<()> {
            self.seen = strings(st.take("seen")?.column(0));
            Ok(())
        }
    }

    fn echo(parts: usize) -> Partitioned {
        echo_logged(parts, None)
    }

    fn echo_logged(parts: usize, threads: Option<Arc<std::sync::Mutex<Vec<String>>>>) -> Partitioned {
        let build: Build = Arc::new(move || {
            Ok(Box::new(Echo {
                seen: Vec::new(),
                threads: threads.clone(),
            }) as Box<dyn Operator>)
        });
        let keys = PartitionKeys::one(&[Arc::new(Column::new("k", 0))], &[DataType::Utf8]);
        Partitioned::new(parts, keys, build).expect("operator")
    }

    /// The values of a VARCHAR column.
    fn strings(a: &ArrayRef) -> Vec<String> {
        let k = a
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .expect("VARCHAR");
        k.iter().map(|v| v.unwrap_or_default().to_string()).collect()
    }

    fn keys_of(out: &[ChangeBatch]) -> Vec<String> {
        out.iter().flat_map(|b| strings(b.batch.column(0))).collect()
    }

    fn input(n: usize) -> ChangeBatch {
        let keys: Vec<String> = (0..n).map(|i| format!("k{}", i % 97)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ts: Vec<i64> = (0..n as i64).collect();
        rows(&refs, &ts, &vec![0; n])
    }

    #[test]
    fn every_key_reaches_one_instance_in_order_serially_and_in_parallel() {
        for (parts, n) in [(1, 10), (2, 100), (3, 10_000), (4, 9_999)] {
            let mut op = echo(parts);
            let inp = input(n);
            let out = op.process(0, inp.clone(), &mut Context::default()).expect("process");
            let got = keys_of(&out);
            assert_eq!(got.len(), n, "{parts} parts: every row once");
            // Each key's rows in their order, all in one instance.
            let mut owner_of = std::collections::HashMap::new();
            for (i, p) in op.parts.iter().enumerate() {
                let e = p.state_size();
                assert!(parts == 1 || e < n, "{parts} parts: instance {i} took every row");
                let st = p.snapshot().expect("snapshot");
                if st.is_empty() {
                    continue;
                }
                // Rows are `k<key>@<time>`, times ascending in the input.
                let mut last: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
                for v in strings(st.tables[0].1.column(0)) {
                    let (k, t) = v.split_once('@').expect("key@time");
                    let t: i64 = t.parse().expect("time");
                    assert_eq!(*owner_of.entry(k.to_string()).or_insert(i), i, "{k} in two instances");
                    assert!(
                        last.insert(k.to_string(), t).is_none_or(|before| before < t),
                        "{v} out of order"
                    );
                }
            }
            let mut want = keys_of(&[inp]);
            let mut got_sorted = got.clone();
            want.sort();
            got_sorted.sort();
            assert_eq!(got_sorted, want);
        }
    }

    #[test]
    fn a_checkpoint_keeps_its_instance_count_and_each_instance_its_state() {
        let mut op = echo(3);
        op.process(0, input(5_000), &mut Context::default()).expect("process");
        let per_part: Vec<usize> = op.parts.iter().map(|p| p.state_size()).collect();
        let st = op.snapshot().expect("snapshot");
        assert_eq!(st.tables[0].0, PARTITIONS);
        // Restored where --workers now says 1 or 5: three instances, each with its own keys.
        for now in [1, 5] {
            let mut fresh = echo(now);
            fresh.restore(st.clone()).expect("restore");
            assert_eq!(fresh.instances(), 3);
            assert_eq!(fresh.parts.iter().map(|p| p.state_size()).collect::<Vec<_>>(), per_part);
            // New rows of a key go where its state is.
            let again = fresh.snapshot().expect("snapshot");
            assert_eq!(again.tables.len(), st.tables.len());
        }
        // A one-instance state (what an unpartitioned operator wrote) restores as one instance.
        let mut one = echo(1);
        one.process(0, input(10), &mut Context::default()).expect("process");
        let mut fresh = echo(4);
        fresh.restore(one.snapshot().expect("snapshot")).expect("restore");
        assert_eq!((fresh.instances(), fresh.state_size()), (1, 10));
        // A table of no partition is an error naming it.
        let mut bad = st.clone();
        bad.tables.push(("part9/seen".into(), st.tables[1].1.clone()));
        let e = echo(2).restore(bad).expect_err("refused").to_string();
        assert!(e.contains("part9/seen"), "{e}");
    }

    #[test]
    fn instances_run_on_threads_of_their_own_and_here_when_none_can_start() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let me = std::thread::current().name().unwrap_or_default().to_string();
        let ran_on = |failing: bool| {
            log.lock().expect("log").clear();
            if failing {
                fail::cfg("partition-spawn", "return").expect("fail point");
            }
            let mut op = echo_logged(3, Some(log.clone()));
            let out = op.process(0, input(3 * PARALLEL_MIN), &mut Context::default());
            fail::remove("partition-spawn");
            assert_eq!(
                keys_of(&out.expect("process")).len(),
                3 * PARALLEL_MIN,
                "every row once"
            );
            let mut threads = log.lock().expect("log").clone();
            threads.sort();
            threads
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut spawned = names(&["freshet-part-1", "freshet-part-2", &me]);
        spawned.sort();
        assert_eq!(ran_on(false), spawned);
        // No thread could be started: every instance runs on the calling thread, nothing is lost.
        assert_eq!(ran_on(true), vec![me.clone(); 3]);
    }

    #[test]
    fn key_groups_are_split_into_contiguous_ranges() {
        for parts in 1..=8 {
            let owners: Vec<usize> = (0..KEY_GROUPS).map(|g| owner(g, parts)).collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1));
            assert_eq!((owners[0], *owners.last().expect("last")), (0, parts - 1));
        }
    }
}
