//! Decoding of a line-oriented source on several threads, results in input order.
//!
//! The source cuts its input into chunks of whole lines (cheap: a newline search) and hands chunk
//! `i` to worker `i mod n`; each worker decodes its chunks in the order it got them, so taking
//! results from worker `0, 1, …, n−1, 0, …` gives them back in input order without a reorder
//! buffer. The source keeps up to `2n` chunks in flight. Decoding (JSON or CSV → Arrow, with
//! per-record error capture) is most of a simple query's time (see docs/benchmarks.md), so this is
//! where a query over a file uses every core.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::format::{Decoded, LineDecoder, Lines};

/// A chunk to decode: its bytes, its lines and the line number of its first line.
type Job = (Vec<u8>, Lines, u64);

/// Chunk buffers done with, for the source to cut the next chunks into (a fresh multi-megabyte
/// buffer per chunk costs page faults and zeroing in the kernel).
type Spare = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

struct Worker {
    jobs: Option<Sender<Job>>,
    results: Receiver<Result<Decoded>>,
    thread: Option<JoinHandle<()>>,
}

pub struct DecodePool {
    workers: Vec<Worker>,
    /// Worker the next chunk goes to.
    next_job: usize,
    /// Per chunk in flight, oldest first: the worker decoding it and what the caller attached.
    in_flight: VecDeque<(usize, (u64, u64))>,
    spare: Spare,
}

impl DecodePool {
    /// `n` threads decoding with `decoder`; positions of bad records name `origin`.
    pub fn new(n: usize, decoder: Arc<LineDecoder>, origin: Arc<str>) -> Result<DecodePool> {
        let keep = 2 * n.max(1) + 1;
        let spare: Spare = Arc::default();
        let workers = (0..n.max(1))
            .map(|i| {
                let spare = spare.clone();
                let (jobs, job_rx) = channel::<Job>();
                let (result_tx, results) = channel();
                let (decoder, origin) = (decoder.clone(), origin.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("freshet-decode-{i}"))
                    .spawn(move || {
                        for (mut chunk, lines, first_line) in job_rx {
                            let decoded = decoder.decode_chunk_lines(&chunk, lines, first_line, &origin);
                            if result_tx.send(decoded).is_err() {
                                break;
                            }
                            chunk.clear();
                            let mut spare = spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            if spare.len() < keep {
                                spare.push(chunk);
                            }
                        }
                    })
                    .map_err(|e| Error::Internal(format!("starting a decode thread: {e}")))?;
                Ok(Worker {
                    jobs: Some(jobs),
                    results,
                    thread: Some(thread),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodePool {
            workers,
            next_job: 0,
            in_flight: VecDeque::new(),
            spare,
        })
    }

    /// Whether another chunk may be handed over now (at most two per worker in flight).
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < 2 * self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// An empty buffer a worker is done with, if any.
    pub fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Hand a chunk of `lines` lines over; `tag` (the source's position after it) comes back with its
    /// result.
    pub fn submit(&mut self, chunk: Vec<u8>, lines: Lines, first_line: u64, tag: (u64, u64)) -> Result<()> {
        let w = self.next_job;
        self.next_job = (w + 1) % self.workers.len();
        let sent = self.workers[w]
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((chunk, lines, first_line)).is_ok());
        if !sent {
            return Err(Error::Internal("a decode thread ended early".into()));
        }
        self.in_flight.push_back((w, tag));
        Ok(())
    }

    /// The oldest chunk's result (waiting for it) with its tag; `None` with nothing in flight.
    pub fn next(&mut self) -> Result<Option<(Decoded, (u64, u64))>> {
        let Some((w, tag)) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        match self.workers[w].results.recv() {
            Ok(decoded) => Ok(Some((decoded?, tag))),
            Err(_) => Err(Error::Internal("a decode thread panicked".into())),
        }
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.jobs = None; // its thread ends after the chunk at hand
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// Chunk `c` of the test input: `1 + (c·7919 mod 400)` lines (sizes differ, so workers
    /// finish out of order), every 97th of them malformed.
    fn chunk(c: u64) -> Vec<(u64, bool)> {
        (0..1 + (c * 7919) % 400)
            .map(|i| (c * 1000 + i, (c + i).is_multiple_of(97)))
            .collect()
    }

    #[test]
    fn results_come_back_in_input_order_with_their_tags_and_bad_records() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let decoder = Arc::new(LineDecoder::new(schema, Format::Json));
        let mut pool = DecodePool::new(3, decoder, "f".into()).expect("pool");
        let (mut got, mut bad, mut tags) = (Vec::new(), Vec::new(), Vec::new());
        let mut take = |pool: &mut DecodePool| match pool.next().expect("decode") {
            Some((d, tag)) => {
                let values = d.batch.map_or(Vec::new(), |b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("i64")
                        .values()
                        .to_vec()
                });
                got.extend(values);
                bad.extend(d.errors.into_iter().map(|e| e.position));
                tags.push(tag);
                true
            }
            None => false,
        };
        let (mut line, mut want, mut want_bad) = (1, Vec::new(), Vec::new());
        for c in 0..20u64 {
            let mut text = String::new();
            for (i, (v, malformed)) in chunk(c).into_iter().enumerate() {
                if malformed {
                    text.push_str("{\"x\": oops\n");
                    want_bad.push(format!("f:{}", line + i as u64));
                } else {
                    text.push_str(&format!("{{\"x\": {v}}}\n"));
                    want.push(v as i64);
                }
            }
            while !pool.has_room() {
                assert!(take(&mut pool), "a chunk in flight");
            }
            let lines = Lines {
                count: chunk(c).len(),
                longest: text.len(),
            };
            pool.submit(text.into_bytes(), lines, line, (c, line)).expect("submit");
            line += chunk(c).len() as u64;
        }
        while take(&mut pool) {}
        assert!(pool.is_empty());
        assert_eq!(got, want);
        assert_eq!(bad, want_bad);
        assert_eq!(
            tags.iter().map(|t| t.0).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
    }
}
