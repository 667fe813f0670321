//! The interceptor chain of a collector source (Flume's interceptors): each event a source reads runs
//! through the configured interceptors in order, which stamp headers or top-level JSON fields (receive
//! time, host name, fixed values, regex captures), drop events (regex filter) or reject them with a reason
//! (JSON validation, or a field interceptor meeting a body that is not a JSON object).
//!
//! Costs: header interceptors touch only the header list (a linear scan plus at most two small
//! allocations); the receive time is read once per [`Chain::apply`] and the host name once at
//! [`Chain::new`]. Bodies are checked with serde_json into [`IgnoredAny`] (no `Value` tree); keys are
//! compared borrowed. Setting a field splices `"name":value,` right after the object's opening `{` and
//! keeps every other byte of the body as it was; replacing an existing field rewrites only that value's
//! bytes.
//!
//! ```toml
//! interceptors = [
//!   { type = "timestamp" },                                   # header "timestamp" = epoch ms
//!   { type = "static", key = "dc", value = "eu-1", to = "field" },
//!   { type = "regex_filter", regex = "^\\s*#", exclude = true },
//!   { type = "json", require = ["user_id"] },
//! ]
//! ```

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::channel::NewEvent;
use crate::error::{Error, Result};

/// One interceptor as configured (`interceptors = [{ type = "…", … }]` of a source).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InterceptorConfig {
    /// Stamp the receive time, epoch milliseconds (a JSON number in a field, decimal text in a header).
    Timestamp {
        #[serde(default = "default_timestamp_name")]
        name: String,
        #[serde(default)]
        to: Target,
        #[serde(default)]
        preserve_existing: bool,
    },
    /// Stamp the agent's host name (read once, when the chain is built).
    Host {
        #[serde(default = "default_host_name")]
        name: String,
        #[serde(default)]
        to: Target,
        #[serde(default)]
        preserve_existing: bool,
    },
    /// A fixed key/value.
    Static {
        key: String,
        value: String,
        #[serde(default)]
        to: Target,
        #[serde(default = "default_true")]
        preserve_existing: bool,
    },
    /// Keep only events whose body (lossy UTF-8) matches; with `exclude = true` drop those that match.
    RegexFilter {
        regex: String,
        #[serde(default)]
        exclude: bool,
    },
    /// Capture groups 1..n of the first match go to `names[0..n-1]` (existing values are replaced); no match
    /// adds nothing, nor does a group that took no part in the match.
    RegexExtract {
        regex: String,
        names: Vec<String>,
        #[serde(default)]
        to: Target,
    },
    /// The body must be valid UTF-8 holding one JSON object with every field of `require` at its top level.
    Json {
        #[serde(default)]
        require: Vec<String>,
    },
}

fn default_timestamp_name() -> String {
    "timestamp".to_string()
}

fn default_host_name() -> String {
    "host".to_string()
}

fn default_true() -> bool {
    true
}

/// Where an interceptor puts its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// An event header.
    #[default]
    Header,
    /// A top-level field of the event's body, which must then be a JSON object.
    Field,
}

/// At most this many names per interceptor (`require`, `names`): found names are tracked in a `u64`.
const MAX_NAMES: usize = 64;

/// What an interceptor did with one event.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events that passed every interceptor, in their input order.
    pub accepted: Vec<NewEvent>,
    /// Events an interceptor rejected, with its reason; each keeps its original body and the headers set
    /// before the rejecting interceptor.
    pub rejected: Vec<(NewEvent, String)>,
    /// Events dropped on purpose by a filter.
    pub filtered: usize,
}

/// A compiled interceptor chain.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Timestamp {
        name: Name,
        to: Target,
        preserve: bool,
    },
    /// Host and static: a fixed value.
    Fixed {
        what: &'static str,
        name: Name,
        value: String,
        /// `value` as a JSON string literal.
        json_value: String,
        to: Target,
        preserve: bool,
    },
    Filter {
        regex: Regex,
        exclude: bool,
    },
    Extract {
        regex: Regex,
        names: Vec<Name>,
        to: Target,
    },
    Json {
        require: Vec<String>,
    },
}

/// A header or field name, with its JSON string literal ready for splicing into bodies.
#[derive(Debug)]
struct Name {
    text: String,
    json: String,
}

impl Name {
    fn new(text: &str) -> Name {
        Name {
            text: text.to_string(),
            json: json_string(text),
        }
    }
}

/// What a step decided for one event.
enum Verdict {
    Keep,
    Drop,
    Reject(String),
}

/// An event on its way through the chain; `original` holds the body as it came in once a step replaced it.
struct Event {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    original: Option<Vec<u8>>,
}

impl Event {
    fn replace_body(&mut self, body: Vec<u8>) {
        let old = std::mem::replace(&mut self.body, body);
        if self.original.is_none() {
            self.original = Some(old);
        }
    }
}

impl Chain {
    /// Compile `configs`; `path` is where they sit in the agent config (e.g. `sources.http.interceptors`),
    /// so an error names the key, e.g. `sources.http.interceptors[2].regex: …`.
    pub fn new(configs: &[InterceptorConfig], path: &str) -> Result<Chain> {
        let mut host: Option<String> = None;
        let mut steps = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let key = |k: &str| format!("{path}[{i}].{k}");
            let step = match config {
                InterceptorConfig::Timestamp {
                    name,
                    to,
                    preserve_existing,
                } => Step::Timestamp {
                    name: non_empty(name, &key("name"))?,
                    to: *to,
                    preserve: *preserve_existing,
                },
                InterceptorConfig::Host {
                    name,
                    to,
                    preserve_existing,
                } => {
                    let value = host.get_or_insert_with(host_name).clone();
                    fixed("host", non_empty(name, &key("name"))?, value, *to, *preserve_existing)
                }
                InterceptorConfig::Static {
                    key: name,
                    value,
                    to,
                    preserve_existing,
                } => fixed(
                    "static",
                    non_empty(name, &key("key"))?,
                    value.clone(),
                    *to,
                    *preserve_existing,
                ),
                InterceptorConfig::RegexFilter { regex, exclude } => Step::Filter {
                    regex: compile(regex, &key("regex"))?,
                    exclude: *exclude,
                },
                InterceptorConfig::RegexExtract { regex, names, to } => {
                    let regex = compile(regex, &key("regex"))?;
                    let groups = regex.captures_len() - 1;
                    if names.len() != groups {
                        return Err(Error::option(
                            key("names"),
                            format!("{} name(s) for {groups} capture group(s) in the regex", names.len()),
                        ));
                    }
                    check_names(names, &key("names"))?;
                    let names = names
                        .iter()
                        .map(|n| non_empty(n, &key("names")))
                        .collect::<Result<Vec<_>>>()?;
                    Step::Extract { regex, names, to: *to }
                }
                InterceptorConfig::Json { require } => {
                    check_names(require, &key("require"))?;
                    Step::Json {
                        require: require.clone(),
                    }
                }
            };
            steps.push(step);
        }
        Ok(Chain { steps })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Run every event through the chain in order, stamping the current time.
    pub fn apply(&self, events: Vec<NewEvent>) -> Outcome {
        self.apply_at(events, now_ms())
    }

    /// [`Chain::apply`] with the receive time given (epoch milliseconds).
    pub fn apply_at(&self, events: Vec<NewEvent>, now_ms: i64) -> Outcome {
        let now = now_ms.to_string();
        let mut out = Outcome {
            accepted: Vec::with_capacity(events.len()),
            rejected: Vec::new(),
            filtered: 0,
        };
        'events: for (body, headers) in events {
            let mut event = Event {
                body,
                headers,
                original: None,
            };
            for step in &self.steps {
                match step.run(&mut event, &now) {
                    Verdict::Keep => {}
                    Verdict::Drop => {
                        out.filtered += 1;
                        continue 'events;
                    }
                    Verdict::Reject(reason) => {
                        let body = event.original.unwrap_or(event.body);
                        out.rejected.push(((body, event.headers), reason));
                        continue 'events;
                    }
                }
            }
            out.accepted.push((event.body, event.headers));
        }
        out
    }
}

fn fixed(what: &'static str, name: Name, value: String, to: Target, preserve: bool) -> Step {
    Step::Fixed {
        what,
        name,
        json_value: json_string(&value),
        value,
        to,
        preserve,
    }
}

fn non_empty(name: &str, key: &str) -> Result<Name> {
    if name.is_empty() {
        return Err(Error::option(key, "a name must not be empty"));
    }
    Ok(Name::new(name))
}

fn compile(regex: &str, key: &str) -> Result<Regex> {
    Regex::new(regex).map_err(|e| Error::option(key, e.to_string()))
}

fn check_names(names: &[String], key: &str) -> Result<()> {
    if names.len() > MAX_NAMES {
        return Err(Error::option(key, format!("at most {MAX_NAMES} names")));
    }
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(Error::option(key, format!("'{name}' is named twice")));
        }
    }
    Ok(())
}

impl Step {
    fn run(&self, event: &mut Event, now: &str) -> Verdict {
        match self {
            Step::Timestamp { name, to, preserve } => match to {
                Target::Header => {
                    set_header(&mut event.headers, &name.text, now, *preserve);
                    Verdict::Keep
                }
                Target::Field => set_body_fields(event, "timestamp", &[FieldValue::new(name, now)], *preserve),
            },
            Step::Fixed {
                what,
                name,
                value,
                json_value,
                to,
                preserve,
            } => match to {
                Target::Header => {
                    set_header(&mut event.headers, &name.text, value, *preserve);
                    Verdict::Keep
                }
                Target::Field => set_body_fields(event, what, &[FieldValue::new(name, json_value)], *preserve),
            },
            Step::Filter { regex, exclude } => {
                if regex.is_match(&String::from_utf8_lossy(&event.body)) != *exclude {
                    Verdict::Keep
                } else {
                    Verdict::Drop
                }
            }
            Step::Extract { regex, names, to } => {
                let values: Vec<FieldValue> = {
                    let text = String::from_utf8_lossy(&event.body);
                    let Some(caps) = regex.captures(&text) else {
                        return Verdict::Keep;
                    };
                    let groups = names
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| Some((n, caps.get(i + 1)?.as_str())));
                    if *to == Target::Header {
                        for (name, value) in groups {
                            set_header(&mut event.headers, &name.text, value, false);
                        }
                        return Verdict::Keep;
                    }
                    groups
                        .map(|(name, value)| FieldValue {
                            name,
                            json_value: Cow::Owned(json_string(value)),
                        })
                        .collect()
                };
                if values.is_empty() {
                    return Verdict::Keep;
                }
                set_body_fields(event, "regex_extract", &values, false)
            }
            Step::Json { require } => match scan_object(&event.body, require) {
                Err(reason) => Verdict::Reject(reason),
                Ok((_, info)) => {
                    let missing: Vec<&str> = require
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| info.found & (1 << i) == 0)
                        .map(|(_, n)| n.as_str())
                        .collect();
                    match missing.as_slice() {
                        [] => Verdict::Keep,
                        [one] => Verdict::Reject(format!("missing field '{one}'")),
                        many => Verdict::Reject(format!("missing fields '{}'", many.join("', '"))),
                    }
                }
            },
        }
    }
}

/// Set header `name`: with `preserve`, an existing header is left alone; otherwise the first one with that
/// name gets the value (in place) and any later duplicates are removed; a missing one is appended.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str, preserve: bool) {
    match headers.iter().position(|(k, _)| k == name) {
        None => headers.push((name.to_string(), value.to_string())),
        Some(_) if preserve => {}
        Some(i) => {
            let slot = &mut headers[i].1;
            slot.clear();
            slot.push_str(value);
            if headers[i + 1..].iter().any(|(k, _)| k == name) {
                let mut at = 0;
                headers.retain(|(k, _)| {
                    at += 1;
                    at <= i + 1 || k != name
                });
            }
        }
    }
}

/// A field to set: its name and the value as JSON text.
struct FieldValue<'a> {
    name: &'a Name,
    json_value: Cow<'a, str>,
}

impl<'a> FieldValue<'a> {
    fn new(name: &'a Name, json_value: &'a str) -> FieldValue<'a> {
        FieldValue {
            name,
            json_value: Cow::Borrowed(json_value),
        }
    }
}

impl AsRef<str> for FieldValue<'_> {
    fn as_ref(&self) -> &str {
        &self.name.text
    }
}

fn set_body_fields(event: &mut Event, what: &str, fields: &[FieldValue], preserve: bool) -> Verdict {
    match set_fields(&event.body, fields, preserve) {
        Ok(None) => Verdict::Keep,
        Ok(Some(body)) => {
            event.replace_body(body);
            Verdict::Keep
        }
        Err(reason) => {
            let names: Vec<&str> = fields.iter().map(|f| f.name.text.as_str()).collect();
            Verdict::Reject(format!(
                "{what} to field '{}' needs a JSON object body: {reason}",
                names.join("', '")
            ))
        }
    }
}

/// Set top-level fields of the JSON object in `body`; `None` when nothing changes. Missing fields are
/// spliced in right after the opening `{` (in `fields` order); present ones are left alone with `preserve`,
/// otherwise every top-level occurrence gets the new value. All other bytes stay as they were.
fn set_fields(body: &[u8], fields: &[FieldValue], preserve: bool) -> std::result::Result<Option<Vec<u8>>, String> {
    let (text, info) = scan_object(body, fields)?;
    let all = if fields.len() >= MAX_NAMES {
        u64::MAX
    } else {
        (1u64 << fields.len()) - 1
    };
    let missing = all & !info.found;
    let replace = if preserve { 0 } else { info.found };
    if missing == 0 && replace == 0 {
        return Ok(None);
    }
    // Valid JSON whose first non-whitespace character is `{`.
    let brace = text.find('{').unwrap_or(0);
    let extra: usize = fields.iter().map(|f| f.name.json.len() + f.json_value.len() + 2).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    out.extend_from_slice(&body[..=brace]);
    let mut spliced = false;
    for (i, f) in fields.iter().enumerate() {
        if missing & (1 << i) != 0 {
            if spliced {
                out.push(b',');
            }
            out.extend_from_slice(f.name.json.as_bytes());
            out.push(b':');
            out.extend_from_slice(f.json_value.as_bytes());
            spliced = true;
        }
    }
    if spliced && info.entries > 0 {
        out.push(b',');
    }
    let mut pos = brace + 1;
    if replace != 0 {
        for (span, i) in value_spans(text.as_bytes(), brace, fields, replace) {
            out.extend_from_slice(&body[pos..span.start]);
            out.extend_from_slice(fields[i].json_value.as_bytes());
            pos = span.end;
        }
    }
    out.extend_from_slice(&body[pos..]);
    Ok(Some(out))
}

/// What a scan of a JSON object found: bit `i` of `found` is set when `names[i]` is a top-level key.
#[derive(Debug, Clone, Copy)]
struct ObjectInfo {
    found: u64,
    entries: usize,
}

/// Check that `body` is UTF-8 holding exactly one JSON object and look for top-level `names` (at most
/// [`MAX_NAMES`]); the error is the reason to reject the event.
fn scan_object<'b, N: AsRef<str>>(body: &'b [u8], names: &[N]) -> std::result::Result<(&'b str, ObjectInfo), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let first = text.bytes().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Err(e) => malformed(&e),
            Ok(_) => {
                let kind = match first {
                    Some(b'[') => "array",
                    Some(b'"') => "string",
                    Some(b't' | b'f') => "boolean",
                    Some(b'n') => "null",
                    _ => "number",
                };
                format!("not a JSON object ({kind})")
            }
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let info = de.deserialize_map(ObjectScan { names }).map_err(|e| malformed(&e))?;
    de.end().map_err(|e| malformed(&e))?;
    Ok((text, info))
}

/// `malformed JSON at line L column C: MESSAGE` (serde_json puts the position at the end of its message).
fn malformed(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&at).unwrap_or(&msg);
    format!("malformed JSON at line {} column {}: {msg}", e.line(), e.column())
}

struct ObjectScan<'n, N> {
    names: &'n [N],
}

impl<'de, N: AsRef<str>> Visitor<'de> for ObjectScan<'_, N> {
    type Value = ObjectInfo;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<ObjectInfo, A::Error> {
        let mut info = ObjectInfo { found: 0, entries: 0 };
        while let Some(hit) = map.next_key_seed(KeyMatch { names: self.names })? {
            map.next_value::<IgnoredAny>()?;
            info.entries += 1;
            if let Some(i) = hit {
                info.found |= 1 << i;
            }
        }
        Ok(info)
    }
}

/// Deserializes a key into the index of the name it equals, without allocating.
struct KeyMatch<'n, N> {
    names: &'n [N],
}

impl<'de, N: AsRef<str>> DeserializeSeed<'de> for KeyMatch<'_, N> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, N: AsRef<str>> Visitor<'de> for KeyMatch<'_, N> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<Option<usize>, E> {
        Ok(self.names.iter().position(|n| n.as_ref() == key))
    }
}

/// The byte ranges of the values of top-level keys named by `wanted` (bits into `fields`), with the
/// field's index, in order. `b` must be valid JSON with its object's `{` at `brace`.
fn value_spans(b: &[u8], brace: usize, fields: &[FieldValue], wanted: u64) -> Vec<(Range<usize>, usize)> {
    let mut spans = Vec::new();
    let mut pos = skip_ws(b, brace + 1);
    while b.get(pos) == Some(&b'"') {
        let key_end = skip_string(b, pos);
        let raw = &b[pos + 1..key_end.saturating_sub(1).max(pos + 1)];
        let key: Cow<str> = if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(&b[pos..key_end]).map_or(Cow::Borrowed(""), Cow::Owned)
        } else {
            String::from_utf8_lossy(raw)
        };
        pos = skip_ws(b, key_end);
        if b.get(pos) != Some(&b':') {
            break;
        }
        pos = skip_ws(b, pos + 1);
        let start = pos;
        pos = skip_value(b, pos);
        if let Some(i) = fields.iter().position(|f| f.name.text == key)
            && wanted & (1 << i) != 0
        {
            spans.push((start..pos, i));
        }
        pos = skip_ws(b, pos);
        if b.get(pos) != Some(&b',') {
            break;
        }
        pos = skip_ws(b, pos + 1);
    }
    spans
}

fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// From the opening `"` at `pos` to just past the closing one.
fn skip_string(b: &[u8], pos: usize) -> usize {
    let mut i = pos + 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// From the first byte of a (valid) JSON value at `pos` to just past its end.
fn skip_value(b: &[u8], pos: usize) -> usize {
    match b.get(pos) {
        Some(b'"') => skip_string(b, pos),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = pos;
            while let Some(&c) = b.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        _ => {
            let mut i = pos;
            while !matches!(b.get(i), None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            i
        }
    }
}

/// A JSON string literal for `s` (quotes, backslashes and control characters escaped).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes to JSON")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`.
pub fn host_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    from_proc
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_123;

    fn chain(toml_list: &str) -> Chain {
        Chain::new(&configs(toml_list), "sources.s.interceptors").expect("chain compiles")
    }

    fn configs(toml_list: &str) -> Vec<InterceptorConfig> {
        #[derive(Deserialize)]
        struct Doc {
            interceptors: Vec<InterceptorConfig>,
        }
        let doc: Doc = toml::from_str(&format!("interceptors = {toml_list}")).expect("config parses");
        doc.interceptors
    }

    fn event(body: &str) -> NewEvent {
        (body.as_bytes().to_vec(), Vec::new())
    }

    fn event_h(body: &str, headers: &[(&str, &str)]) -> NewEvent {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (body.as_bytes().to_vec(), headers)
    }

    /// Run one event; the accepted body as text and its headers, or the rejection reason.
    fn run(c: &Chain, e: NewEvent) -> std::result::Result<(String, Vec<(String, String)>), String> {
        let out = c.apply_at(vec![e], NOW);
        assert_eq!(out.accepted.len() + out.rejected.len() + out.filtered, 1);
        if let Some(((_, _), reason)) = out.rejected.into_iter().next() {
            return Err(reason);
        }
        let (body, headers) = out.accepted.into_iter().next().expect("accepted");
        Ok((String::from_utf8(body).expect("utf-8 body"), headers))
    }

    fn body(c: &Chain, b: &str) -> String {
        run(c, event(b)).expect("accepted").0
    }

    fn reason(c: &Chain, b: &[u8]) -> String {
        run(c, (b.to_vec(), Vec::new())).expect_err("rejected")
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn timestamp_to_header_and_field() {
        let c = chain(r#"[{ type = "timestamp" }]"#);
        let (b, headers) = run(&c, event_h("x", &[("a", "1")])).expect("accepted");
        assert_eq!(b, "x");
        assert_eq!(headers, h(&[("a", "1"), ("timestamp", "1700000000123")]));

        let c = chain(r#"[{ type = "timestamp", name = "ts", to = "field" }]"#);
        assert_eq!(body(&c, r#"{"a":1}"#), r#"{"ts":1700000000123,"a":1}"#);
        assert_eq!(body(&c, "{}"), r#"{"ts":1700000000123}"#);
        assert_eq!(body(&c, " \n{ }\n"), " \n{\"ts\":1700000000123 }\n");
        assert_eq!(
            body(&c, r#"  {"a" : [1, {"ts": 2}], "b": "x"}  "#),
            r#"  {"ts":1700000000123,"a" : [1, {"ts": 2}], "b": "x"}  "#
        );
        // The header target leaves the body alone, whatever it is.
        let c = chain(r#"[{ type = "timestamp" }]"#);
        assert_eq!(body(&c, "[not json"), "[not json");
    }

    #[test]
    fn timestamp_is_read_once_per_apply() {
        let c = chain(r#"[{ type = "timestamp" }]"#);
        let before = now_ms();
        let out = c.apply((0..1000).map(|i| event(&i.to_string())).collect());
        let after = now_ms();
        assert_eq!(out.accepted.len(), 1000);
        let first = &out.accepted[0].1[0].1;
        let ms: i64 = first.parse().expect("a number");
        assert!(before <= ms && ms <= after, "{before} <= {ms} <= {after}");
        assert!(out.accepted.iter().all(|(_, hs)| &hs[0].1 == first));
    }

    #[test]
    fn timestamp_preserve_existing() {
        let c = chain(r#"[{ type = "timestamp", preserve_existing = true }]"#);
        let (_, headers) = run(&c, event_h("x", &[("timestamp", "5")])).expect("accepted");
        assert_eq!(headers, h(&[("timestamp", "5")]));
        let c = chain(r#"[{ type = "timestamp" }]"#);
        let (_, headers) = run(&c, event_h("x", &[("timestamp", "5"), ("b", "2"), ("timestamp", "6")])).expect("ok");
        assert_eq!(headers, h(&[("timestamp", "1700000000123"), ("b", "2")]));

        let body_in = r#"{"a":1, "timestamp" :  "old" , "b":[1,{"c":"}"}]}"#;
        let c = chain(r#"[{ type = "timestamp", to = "field", preserve_existing = true }]"#);
        assert_eq!(body(&c, body_in), body_in);
        let c = chain(r#"[{ type = "timestamp", to = "field" }]"#);
        assert_eq!(
            body(&c, body_in),
            r#"{"a":1, "timestamp" :  1700000000123 , "b":[1,{"c":"}"}]}"#
        );
        // Every top-level occurrence is replaced, nested ones are not; an escaped key counts.
        assert_eq!(
            body(
                &c,
                r#"{"timestamp":{"timestamp":1},"x":"timestamp","time\u0073tamp":[2]}"#
            ),
            r#"{"timestamp":1700000000123,"x":"timestamp","time\u0073tamp":1700000000123}"#
        );
    }

    #[test]
    fn host_to_header_and_field() {
        let host = host_name();
        assert!(!host.is_empty());
        let c = chain(r#"[{ type = "host" }, { type = "host", name = "agent", to = "field" }]"#);
        let (b, headers) = run(&c, event(r#"{"a":1}"#)).expect("accepted");
        assert_eq!(headers, vec![("host".to_string(), host.clone())]);
        assert_eq!(b, format!(r#"{{"agent":{},"a":1}}"#, json_string(&host)));

        let c = chain(r#"[{ type = "host", preserve_existing = true }]"#);
        let (_, headers) = run(&c, event_h("x", &[("host", "relay")])).expect("accepted");
        assert_eq!(headers, h(&[("host", "relay")]));
        let c = chain(r#"[{ type = "host" }]"#);
        let (_, headers) = run(&c, event_h("x", &[("host", "relay")])).expect("accepted");
        assert_eq!(headers, vec![("host".to_string(), host)]);
    }

    #[test]
    fn static_header_and_field_preserve_by_default() {
        let c = chain(r#"[{ type = "static", key = "dc", value = "eu-1" }]"#);
        let (_, headers) = run(&c, event("x")).expect("accepted");
        assert_eq!(headers, h(&[("dc", "eu-1")]));
        let (_, headers) = run(&c, event_h("x", &[("dc", "us-2")])).expect("accepted");
        assert_eq!(headers, h(&[("dc", "us-2")]));
        let c = chain(r#"[{ type = "static", key = "dc", value = "eu-1", preserve_existing = false }]"#);
        let (_, headers) = run(&c, event_h("x", &[("dc", "us-2")])).expect("accepted");
        assert_eq!(headers, h(&[("dc", "eu-1")]));

        let c = chain(r#"[{ type = "static", key = "dc", value = "eu-1", to = "field" }]"#);
        assert_eq!(body(&c, r#"{"a":null}"#), r#"{"dc":"eu-1","a":null}"#);
        assert_eq!(body(&c, r#"{"dc":"us-2"}"#), r#"{"dc":"us-2"}"#);
        let c = chain(r#"[{ type = "static", key = "dc", value = "eu-1", to = "field", preserve_existing = false }]"#);
        assert_eq!(body(&c, r#"{"dc":"us-2","a":1}"#), r#"{"dc":"eu-1","a":1}"#);
    }

    #[test]
    fn static_field_values_and_keys_are_json_escaped() {
        let value = "say \"hi\" \\ C:\\tmp \u{e9}\u{1F600}\n\t\u{1}";
        let key = "we\"ird\\key";
        let c = Chain::new(
            &[InterceptorConfig::Static {
                key: key.to_string(),
                value: value.to_string(),
                to: Target::Field,
                preserve_existing: true,
            }],
            "i",
        )
        .expect("chain compiles");
        let b = body(&c, r#"{"a":1}"#);
        assert_eq!(
            b,
            "{\"we\\\"ird\\\\key\":\"say \\\"hi\\\" \\\\ C:\\\\tmp \u{e9}\u{1F600}\\n\\t\\u0001\",\"a\":1}"
        );
        let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(parsed[key], serde_json::Value::String(value.to_string()));
        assert_eq!(parsed["a"], serde_json::json!(1));
        // The escaped key is recognised as present next time.
        assert_eq!(body(&c, &b), b);
    }

    #[test]
    fn field_target_rejects_bodies_that_are_not_objects() {
        let c = chain(r#"[{ type = "static", key = "dc", value = "eu-1", to = "field" }]"#);
        assert_eq!(
            reason(&c, b"[1,2]"),
            "static to field 'dc' needs a JSON object body: not a JSON object (array)"
        );
        assert_eq!(
            reason(&c, b"plain text"),
            "static to field 'dc' needs a JSON object body: malformed JSON at line 1 column 1: expected value"
        );
        let c = chain(r#"[{ type = "timestamp", to = "field" }]"#);
        assert_eq!(
            reason(&c, b"{\"a\":\"\xff\"}"),
            "timestamp to field 'timestamp' needs a JSON object body: invalid UTF-8 at byte 6"
        );
    }

    #[test]
    fn regex_filter_keeps_or_excludes() {
        let c = chain(r#"[{ type = "regex_filter", regex = "ERROR|WARN" }]"#);
        let out = c.apply_at(
            vec![event("ERROR x"), event("INFO y"), event("a WARN"), event("DEBUG")],
            NOW,
        );
        assert_eq!(out.filtered, 2);
        assert!(out.rejected.is_empty());
        let bodies: Vec<&[u8]> = out.accepted.iter().map(|(b, _)| b.as_slice()).collect();
        assert_eq!(bodies, vec![b"ERROR x".as_slice(), b"a WARN".as_slice()]);

        let c = chain(r#"[{ type = "regex_filter", regex = '^\s*#', exclude = true }]"#);
        let out = c.apply_at(vec![event("  # comment"), event("data # not a comment")], NOW);
        assert_eq!(out.filtered, 1);
        assert_eq!(out.accepted, vec![event("data # not a comment")]);

        // Lossy UTF-8: an invalid byte does not hide the rest of the body; the body is kept as it was.
        let c = chain(r#"[{ type = "regex_filter", regex = "^.ok$" }]"#);
        let out = c.apply_at(vec![(b"\xffok".to_vec(), Vec::new())], NOW);
        assert_eq!(out.accepted, vec![(b"\xffok".to_vec(), Vec::new())]);
    }

    #[test]
    fn regex_extract_to_header_and_field() {
        let c = chain(r#"[{ type = "regex_extract", regex = '^(\w+) user=(\d+)', names = ["level", "user"] }]"#);
        let (b, headers) = run(&c, event_h("ERROR user=42 boom", &[("level", "old")])).expect("ok");
        assert_eq!(b, "ERROR user=42 boom");
        assert_eq!(headers, h(&[("level", "ERROR"), ("user", "42")]));
        let (_, headers) = run(&c, event("no match here")).expect("ok");
        assert!(headers.is_empty());

        let c = chain(
            r#"[{ type = "regex_extract", regex = '"msg":"(\w+)(?: (\d+))?', names = ["word", "n"], to = "field" }]"#,
        );
        assert_eq!(
            body(&c, r#"{"msg":"hello 7"}"#),
            r#"{"word":"hello","n":"7","msg":"hello 7"}"#
        );
        // A group that took no part adds nothing; an existing field is replaced.
        assert_eq!(body(&c, r#"{"word":"x","msg":"hi"}"#), r#"{"word":"hi","msg":"hi"}"#);
        assert_eq!(body(&c, r#"{"msg":1}"#), r#"{"msg":1}"#);
        assert_eq!(
            reason(&c, br#"["msg":"hi"]"#),
            "regex_extract to field 'word' needs a JSON object body: malformed JSON at line 1 column 7: expected `,` or `]`"
        );
    }

    #[test]
    fn chain_runs_in_order() {
        let extract = r#"{ type = "regex_extract", regex = '"m":"(\w+):', names = ["level"], to = "field" }"#;
        let filter = r#"{ type = "regex_filter", regex = '"level":"ERROR"' }"#;
        let events = || vec![event(r#"{"m":"ERROR: disk"}"#), event(r#"{"m":"INFO: ok"}"#)];
        // The filter sees the body as the earlier interceptors left it.
        let c = chain(&format!("[{filter}, {extract}]"));
        let out = c.apply_at(events(), NOW);
        assert_eq!((out.accepted.len(), out.filtered), (0, 2));
        let c = chain(&format!("[{extract}, {filter}]"));
        let out = c.apply_at(events(), NOW);
        assert_eq!(out.filtered, 1);
        assert_eq!(out.accepted, vec![event(r#"{"level":"ERROR","m":"ERROR: disk"}"#)]);

        // Header order follows the chain; a later interceptor overrides an earlier one.
        let c = chain(
            r#"[{ type = "static", key = "a", value = "1" }, { type = "timestamp" },
                { type = "static", key = "a", value = "2", preserve_existing = false }]"#,
        );
        let (_, headers) = run(&c, event("x")).expect("ok");
        assert_eq!(headers, h(&[("a", "2"), ("timestamp", "1700000000123")]));
    }

    #[test]
    fn rejected_event_keeps_original_body_and_headers_so_far() {
        let c = chain(
            r#"[{ type = "static", key = "dc", value = "eu-1" },
                { type = "timestamp", to = "field" },
                { type = "json", require = ["user_id"] },
                { type = "static", key = "never", value = "x" }]"#,
        );
        let out = c.apply_at(vec![event(r#"{"a":1}"#), event(r#"{"user_id":7}"#)], NOW);
        assert_eq!(out.filtered, 0);
        assert_eq!(
            out.rejected,
            vec![(
                event_h(r#"{"a":1}"#, &[("dc", "eu-1")]),
                "missing field 'user_id'".to_string()
            )]
        );
        assert_eq!(
            out.accepted,
            vec![event_h(
                r#"{"timestamp":1700000000123,"user_id":7}"#,
                &[("dc", "eu-1"), ("never", "x")]
            )]
        );
    }

    #[test]
    fn json_validation_reasons() {
        let c = chain(r#"[{ type = "json" }]"#);
        assert_eq!(
            body(&c, r#" {"a": [1, {"b": null}], "c": "\u00e9"} "#),
            r#" {"a": [1, {"b": null}], "c": "\u00e9"} "#
        );
        assert_eq!(body(&c, "{}"), "{}");
        // Invalid UTF-8: the exact byte, even inside a string serde_json would only skip.
        assert_eq!(reason(&c, b"{\"user_id\":\"ab\xffc\"}"), "invalid UTF-8 at byte 14");
        assert_eq!(reason(&c, b"\xc3"), "invalid UTF-8 at byte 0");
        assert_eq!(
            reason(&c, br#"{"user_id":}"#),
            "malformed JSON at line 1 column 12: expected value"
        );
        assert_eq!(
            reason(&c, b"{\"a\": 1,\n  \"b\": tru}"),
            "malformed JSON at line 2 column 11: expected ident"
        );
        assert_eq!(
            reason(&c, br#"{"a":1} {"b":2}"#),
            "malformed JSON at line 1 column 9: trailing characters"
        );
        assert_eq!(
            reason(&c, br#"{"a":1"#),
            "malformed JSON at line 1 column 6: EOF while parsing an object"
        );
        assert_eq!(
            reason(&c, b""),
            "malformed JSON at line 1 column 0: EOF while parsing a value"
        );
        assert_eq!(reason(&c, b"[1, 2]"), "not a JSON object (array)");
        assert_eq!(reason(&c, b"\"s\""), "not a JSON object (string)");
        assert_eq!(reason(&c, b" -1.5e3 "), "not a JSON object (number)");
        assert_eq!(reason(&c, b"true"), "not a JSON object (boolean)");
        assert_eq!(reason(&c, b"null"), "not a JSON object (null)");
        // A non-object that is also malformed is reported as malformed.
        assert_eq!(
            reason(&c, b"[1,"),
            "malformed JSON at line 1 column 3: EOF while parsing a value"
        );
    }

    #[test]
    fn json_required_fields() {
        let c = chain(r#"[{ type = "json", require = ["user_id", "event_time"] }]"#);
        let ok = r#"{"event_time":1,"x":{"user_id":0},"user_id":null}"#;
        assert_eq!(body(&c, ok), ok);
        // An escaped key is the same key; nested fields do not count.
        assert_eq!(
            body(&c, r#"{"user\u005fid":1,"event_time":2}"#),
            r#"{"user\u005fid":1,"event_time":2}"#
        );
        assert_eq!(
            reason(&c, br#"{"event_time":1,"x":{"user_id":0}}"#),
            "missing field 'user_id'"
        );
        assert_eq!(reason(&c, br#"{"user_id":1}"#), "missing field 'event_time'");
        assert_eq!(reason(&c, b"{}"), "missing fields 'user_id', 'event_time'");
    }

    #[test]
    fn config_errors_name_the_key_path() {
        let err = |list: &str| {
            Chain::new(&configs(list), "sources.http.interceptors")
                .expect_err("config error")
                .to_string()
        };
        let e = err(r#"[{ type = "timestamp" }, { type = "host" }, { type = "regex_filter", regex = "(a" }]"#);
        assert!(
            e.starts_with("option 'sources.http.interceptors[2].regex': regex parse error"),
            "{e}"
        );
        let e = err(r#"[{ type = "regex_extract", regex = "(a)(b)", names = ["x"] }]"#);
        assert_eq!(
            e,
            "option 'sources.http.interceptors[0].names': 1 name(s) for 2 capture group(s) in the regex"
        );
        let e = err(r#"[{ type = "regex_extract", regex = "(?:a)(b)", names = ["x", "y"] }]"#);
        assert_eq!(
            e,
            "option 'sources.http.interceptors[0].names': 2 name(s) for 1 capture group(s) in the regex"
        );
        let e = err(r#"[{ type = "regex_extract", regex = "(a)(b)", names = ["x", "x"] }]"#);
        assert_eq!(e, "option 'sources.http.interceptors[0].names': 'x' is named twice");
        let e = err(r#"[{ type = "json" }, { type = "static", key = "", value = "v" }]"#);
        assert_eq!(e, "option 'sources.http.interceptors[1].key': a name must not be empty");
        let e = err(r#"[{ type = "timestamp", name = "" }]"#);
        assert_eq!(
            e,
            "option 'sources.http.interceptors[0].name': a name must not be empty"
        );
        let e = err(r#"[{ type = "json", require = ["a", "b", "a"] }]"#);
        assert_eq!(e, "option 'sources.http.interceptors[0].require': 'a' is named twice");
        let many: Vec<String> = (0..65).map(|i| format!("\"f{i}\"")).collect();
        let e = err(&format!(r#"[{{ type = "json", require = [{}] }}]"#, many.join(",")));
        assert_eq!(e, "option 'sources.http.interceptors[0].require': at most 64 names");
        assert!(Chain::new(&[], "x").expect("empty chain").is_empty());
    }

    #[test]
    fn toml_config_round_trip() {
        let list = configs(
            r#"[{ type = "static", key = "dc", value = "eu-1", to = "field" }, { type = "json", require = ["user_id"] }]"#,
        );
        assert!(matches!(
            &list[..],
            [
                InterceptorConfig::Static { key, value, to: Target::Field, preserve_existing: true },
                InterceptorConfig::Json { require },
            ] if key == "dc" && value == "eu-1" && require == &["user_id".to_string()]
        ));
        let c = Chain::new(&list, "sources.s.interceptors").expect("chain compiles");
        assert!(!c.is_empty());
        assert_eq!(body(&c, r#"{"user_id":1}"#), r#"{"dc":"eu-1","user_id":1}"#);
        assert_eq!(reason(&c, br#"{"id":1}"#), "missing field 'user_id'");

        // Defaults.
        let list = configs(
            r#"[{ type = "timestamp" }, { type = "host" }, { type = "regex_filter", regex = "x" },
                { type = "regex_extract", regex = "(x)", names = ["n"] }, { type = "json" }]"#,
        );
        assert!(matches!(
            &list[..],
            [
                InterceptorConfig::Timestamp { name: t, to: Target::Header, preserve_existing: false },
                InterceptorConfig::Host { name: n, to: Target::Header, preserve_existing: false },
                InterceptorConfig::RegexFilter { exclude: false, .. },
                InterceptorConfig::RegexExtract { to: Target::Header, .. },
                InterceptorConfig::Json { require },
            ] if t == "timestamp" && n == "host" && require.is_empty()
        ));

        // Unknown keys, types and targets are errors that name them.
        let bad = |list: &str| {
            toml::from_str::<toml::Table>(&format!("interceptors = {list}")).expect("toml");
            #[derive(Debug, Deserialize)]
            #[allow(dead_code)]
            struct Doc {
                interceptors: Vec<InterceptorConfig>,
            }
            toml::from_str::<Doc>(&format!("interceptors = {list}"))
                .expect_err("rejected")
                .to_string()
        };
        let e = bad(r#"[{ type = "static", key = "a", value = "b", colour = "red" }]"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = bad(r#"[{ type = "stamp" }]"#);
        assert!(e.contains("unknown variant `stamp`"), "{e}");
        let e = bad(r#"[{ type = "host", to = "body" }]"#);
        assert!(e.contains("unknown variant `body`"), "{e}");
        let e = bad(r#"[{ type = "static", key = "a" }]"#);
        assert!(e.contains("missing field `value`"), "{e}");
    }
}
