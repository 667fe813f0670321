//! Window specifications (Flink's window TVFs) and how rows and panes map to windows.
//!
//! Windows are aligned to the Unix epoch. TUMBLE, HOP and CUMULATE are cut into *panes* (slices): a
//! pane is gcd(slide, size) long for HOP, the step for CUMULATE, the window itself for TUMBLE. A
//! row is aggregated once, into its pane; a window's value is the merge of its panes. SESSION windows
//! are per key and merge when they overlap or touch (Flink's `TimeWindow.intersects`).

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum WindowSpec {
    Tumble {
        size: i64,
    },
    Hop {
        slide: i64,
        size: i64,
    },
    Cumulate {
        step: i64,
        size: i64,
    },
    Session {
        gap: i64,
    },
    /// Windows the input already carries (a window aggregate over the result of a HOP aggregate):
    /// a row's window starts at its `window_start` and is `size` long.
    Windowed {
        size: i64,
    },
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WindowSpec {
    /// Pane length (ms); for sessions, 1 (rows are kept at their own time).
    pub fn pane(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size } => size,
            WindowSpec::Hop { slide, size } => gcd(slide, size),
            WindowSpec::Cumulate { step, .. } => step,
            WindowSpec::Session { .. } | WindowSpec::Windowed { .. } => 1,
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// Windows (start, end) containing the pane that starts at `p`, by end ascending.
    pub fn windows_of_pane(&self, p: i64) -> Vec<(i64, i64)> {
        match *self {
            WindowSpec::Tumble { size } => {
                let s = p.div_euclid(size) * size;
                vec![(s, s + size)]
            }
            WindowSpec::Hop { slide, size } => {
                let last = p.div_euclid(slide) * slide;
                let mut v: Vec<(i64, i64)> = (0..)
                    .map(|i| last - i * slide)
                    .take_while(|s| s + size > p)
                    .map(|s| (s, s + size))
                    .collect();
                v.reverse();
                v
            }
            WindowSpec::Cumulate { step, size } => {
                let c = p.div_euclid(size) * size;
                (1..=size / step)
                    .map(|k| (c, c + k * step))
                    .filter(|(_, e)| *e > p)
                    .collect()
            }
            WindowSpec::Session { gap } => vec![(p, p + gap)],
            WindowSpec::Windowed { size } => vec![(p, p + size)],
        }
    }

    /// The end of the last window containing the pane at `p` (after it, the pane can go).
    pub fn last_end(&self, p: i64) -> i64 {
        self.windows_of_pane(p).last().map(|w| w.1).unwrap_or(i64::MIN)
    }

    /// The end of the first window containing the pane at `p`.
    pub fn first_end(&self, p: i64) -> i64 {
        self.windows_of_pane(p).first().map(|w| w.1).unwrap_or(i64::MIN)
    }

    /// Pane start of event time `t`.
    pub fn pane_of(&self, t: i64) -> i64 {
        let p = self.pane();
        t.div_euclid(p) * p
    }

    /// Window ends in `(after, upto]` that panes can produce (the grid of window ends).
    pub fn ends_between(&self, after: i64, upto: i64) -> Vec<i64> {
        let step = match *self {
            WindowSpec::Tumble { size } => size,
            WindowSpec::Hop { slide, .. } => slide,
            WindowSpec::Cumulate { step, .. } => step,
            WindowSpec::Session { .. } | WindowSpec::Windowed { .. } => return Vec::new(),
        };
        let size = match *self {
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => size,
            _ => 0,
        };
        if upto <= after {
            return Vec::new();
        }
        // Ends are k * step + size (mod step: size % step) for HOP/TUMBLE, multiples of step for CUMULATE.
        let off = size.rem_euclid(step);
        let mut e = (after - off).div_euclid(step) * step + off;
        if e <= after {
            e += step;
        }
        let mut out = Vec::new();
        while e <= upto && out.len() < 100_000 {
            out.push(e);
            e += step;
        }
        out
    }

    pub fn describe(&self) -> String {
        match self {
            WindowSpec::Tumble { size } => format!("TUMBLE(size {})", dur(*size)),
            WindowSpec::Hop { slide, size } => format!(
                "HOP(slide {}, size {}; panes of {})",
                dur(*slide),
                dur(*size),
                dur(self.pane())
            ),
            WindowSpec::Cumulate { step, size } => format!("CUMULATE(step {}, size {})", dur(*step), dur(*size)),
            WindowSpec::Session { gap } => format!("SESSION(gap {})", dur(*gap)),
            WindowSpec::Windowed { size } => format!("the input's windows ({})", dur(*size)),
        }
    }
}

/// Milliseconds as a short duration (`90s`, `1m`, `250ms`).
pub fn dur(ms: i64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// Event times (ms) of a TIMESTAMP column of any unit.
pub fn millis(a: &ArrayRef) -> Result<Int64Array> {
    let ms = match a.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, None) => a.clone(),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?
        }
        DataType::Int64 => {
            return a
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| Error::Internal("BIGINT column".into()));
        }
        other => {
            return Err(Error::plan(format!(
                "a window's time column must be a TIMESTAMP, not {other}"
            )));
        }
    };
    let ts = ms
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| Error::Internal("timestamp cast".into()))?;
    Ok(Int64Array::new(ts.values().clone(), ts.nulls().cloned()))
}

/// Row indices grouped by key, keys ascending.
pub fn group_rows(keys: impl Iterator<Item = i64>) -> Vec<(i64, UInt32Array)> {
    let mut by: std::collections::BTreeMap<i64, Vec<u32>> = std::collections::BTreeMap::new();
    for (i, k) in keys.enumerate() {
        by.entry(k).or_default().push(i as u32);
    }
    by.into_iter().map(|(k, v)| (k, UInt32Array::from(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_map_to_windows() {
        let hop = WindowSpec::Hop {
            slide: 2_000,
            size: 10_000,
        };
        assert_eq!(hop.pane(), 2_000);
        assert_eq!(
            hop.windows_of_pane(10_000),
            vec![
                (2_000, 12_000),
                (4_000, 14_000),
                (6_000, 16_000),
                (8_000, 18_000),
                (10_000, 20_000)
            ]
        );
        let odd = WindowSpec::Hop {
            slide: 4_000,
            size: 6_000,
        };
        assert_eq!(odd.pane(), 2_000);
        assert_eq!(odd.windows_of_pane(2_000), vec![(0, 6_000)]);
        assert_eq!(odd.windows_of_pane(4_000), vec![(0, 6_000), (4_000, 10_000)]);
        let cum = WindowSpec::Cumulate {
            step: 1_000,
            size: 3_000,
        };
        assert_eq!(cum.windows_of_pane(4_000), vec![(3_000, 5_000), (3_000, 6_000)]);
        assert_eq!(cum.windows_of_pane(-1_000), vec![(-3_000, 0)]);
        assert_eq!(cum.last_end(3_000), 6_000);
        assert_eq!(
            WindowSpec::Tumble { size: 60_000 }.windows_of_pane(-1),
            vec![(-60_000, 0)]
        );
        assert_eq!(hop.ends_between(10_000, 15_000), vec![12_000, 14_000]);
        assert_eq!(odd.ends_between(0, 15_000), vec![2_000, 6_000, 10_000, 14_000]);
        assert_eq!(cum.ends_between(-500, 2_000), vec![0, 1_000, 2_000]);
    }
}
