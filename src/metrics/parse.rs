//! A strict reader of the Prometheus text format (0.0.4), for the tests of both `/metrics`
//! endpoints: the unit tests of the renderers and the integration tests that scrape a running server
//! or agent share it, so one reading of the format is checked everywhere.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What a scrape holds: each family's type by name, and the samples in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the series `name` whose labels include every one of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
}

/// Read `text`, refusing anything the format does not allow: a sample outside the family of the
/// `# TYPE` line before it (a family's samples are together), `# HELP` after its `# TYPE` or twice, a
/// family or a series twice, a bad name, label, escape or value, no newline at the end, or a histogram
/// whose buckets do not rise cumulatively to `+Inf` == `_count`.
pub fn parse(text: &str) -> Result<Exposition, String> {
    ensure(text.is_empty() || text.ends_with('\n'), || {
        "no newline at the end".into()
    })?;
    let mut types = BTreeMap::new();
    let mut helped: Vec<&str> = Vec::new();
    let mut current: Option<(&str, &str)> = None;
    let mut samples: Vec<Sample> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            ensure(valid_name(name), || format!("family name in {line}"))?;
            ensure(!types.contains_key(name), || format!("HELP after its TYPE: {line}"))?;
            ensure(!helped.contains(&name), || format!("two HELP lines: {line}"))?;
            helped.push(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| format!("TYPE without a type: {line}"))?;
            ensure(valid_name(name), || format!("family name in {line}"))?;
            ensure(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                || format!("unknown type: {line}"),
            )?;
            ensure(types.insert(name.to_string(), kind.to_string()).is_none(), || {
                format!("two TYPE lines: {line}")
            })?;
            current = Some((name, kind));
        } else if line.starts_with('#') || line.is_empty() {
            // Other comments and blank lines are allowed and mean nothing.
        } else {
            let s = sample(line)?;
            let (family, kind) = current.ok_or_else(|| format!("no TYPE line before {line}"))?;
            let belongs = match kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| s.name.strip_suffix(suffix) == Some(family)),
                _ => s.name == family,
            };
            ensure(belongs, || {
                format!("{line} is apart from the family it belongs to, not in {family}")
            })?;
            ensure(
                !samples.iter().any(|o| o.name == s.name && o.labels == s.labels),
                || format!("the same series twice: {line}"),
            )?;
            samples.push(s);
        }
    }
    let exposition = Exposition { types, samples };
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// `name{label="value",…} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    ensure(valid_name(name), || format!("metric name in {line}"))?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or_else(|| format!("unclosed labels: {line}"))?;
            match c {
                '}' => break i,
                ',' => continue,
                _ => {}
            }
            let eq = loop {
                match chars.next() {
                    Some((j, '=')) => break j,
                    Some(_) => {}
                    None => return Err(format!("label without '=': {line}")),
                }
            };
            let key = &inner[i..eq];
            ensure(valid_name(key), || format!("label name {key:?} in {line}"))?;
            ensure(chars.next().map(|(_, c)| c) == Some('"'), || {
                format!("label value not quoted: {line}")
            })?;
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => return Err(format!("bad escape {other:?} in {line}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unclosed label value: {line}")),
                }
            }
            ensure(labels.insert(key.to_string(), value).is_none(), || {
                format!("label twice: {line}")
            })?;
        };
        rest = &inner[end + 1..];
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line}"))?;
    let mut fields = rest.split(' ');
    let value = match fields.next().unwrap_or_default() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("value {v:?} is not a float: {line}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("timestamp {ts:?}: {line}"))?;
    }
    ensure(fields.next().is_none(), || format!("trailing text: {line}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Every histogram series: buckets in increasing `le`, cumulative, the last `+Inf` equal to `_count`,
/// and a `_sum` that is not negative.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = s.labels.get("le").ok_or_else(|| format!("bucket without le: {s:?}"))?;
            let le: f64 = match le.as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().map_err(|_| format!("le {le:?} in {s:?}"))?,
            };
            let mut labels = s.labels.clone();
            labels.remove("le");
            series.entry(labels).or_default().push((le, s.value));
        }
        for (labels, buckets) in &series {
            ensure(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), || {
                format!("{family}{labels:?}: buckets not increasing and cumulative: {buckets:?}")
            })?;
            let find = |suffix: &str| {
                e.samples
                    .iter()
                    .find(|s| s.name == format!("{family}{suffix}") && s.labels == *labels)
                    .map(|s| s.value)
                    .ok_or_else(|| format!("{family}{suffix}{labels:?} missing"))
            };
            let last = buckets.last().copied().unwrap_or((0.0, 0.0));
            ensure(last.0 == f64::INFINITY, || {
                format!("{family}{labels:?}: no +Inf bucket")
            })?;
            let count = find("_count")?;
            ensure(last.1 == count, || {
                format!("{family}{labels:?}: +Inf bucket {} != _count {count}", last.1)
            })?;
            ensure(find("_sum")? >= 0.0, || format!("{family}{labels:?}: negative _sum"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_samples_and_escapes() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{q=\"x\\\"\\\\\\n\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
        let e = parse(text).expect("valid");
        assert_eq!(e.types.get("a_total").map(String::as_str), Some("counter"));
        assert_eq!(e.value("a_total", &[("q", "x\"\\\n")]), Some(3.0));
        assert_eq!(e.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
    }

    #[test]
    fn refuses_what_the_format_does_not_allow() {
        for (text, why) in [
            // What the hand-written server renderer wrote for watermark and lag.
            (
                "# TYPE w gauge\n# TYPE l gauge\nw{q=\"a\"} 1\nl{q=\"a\"} 2\n",
                "apart from",
            ),
            ("x 1\n", "no TYPE"),
            ("# TYPE x gauge\n# HELP x X.\nx 1\n", "HELP after"),
            ("# TYPE x gauge\nx 1\nx 2\n", "twice"),
            ("# TYPE x gauge\nx one\n", "not a float"),
            ("# TYPE x gauge\nx{a=\"\\t\"} 1\n", "bad escape"),
            ("# TYPE x gauge\nx 1", "newline"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
                "!= _count",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
