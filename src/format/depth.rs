//! JSON nested too deeply for arrow: its tape decoder keeps nesting on the heap, but when a value
//! nested deeper than the schema does not fit (an array where a string is expected), it describes
//! the value for the error message by recursing once per level, and a line nested 100 000 deep
//! overflows the stack. Such lines are set aside as bad records before arrow sees them.

/// The deepest JSON accepted, as serde_json's own limit (which then names the reason).
pub const MAX_DEPTH: usize = 128;

/// Whether `line` nests arrays and objects deeper than [`MAX_DEPTH`] (outside strings).
pub fn too_deep(line: &[u8]) -> bool {
    // Cheap first: fewer openers than the limit cannot nest past it.
    if memchr::memchr2_iter(b'[', b'{', line).take(MAX_DEPTH + 1).count() <= MAX_DEPTH {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in line {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether any `\n`-separated line of `chunk` is [`too_deep`]. One SIMD pass over the chunk for
/// the usual input (a few brackets per line); only a line with many openers is looked at closely.
pub fn any_too_deep(chunk: &[u8]) -> bool {
    let (mut line_start, mut openers) = (0, 0);
    for i in memchr::memchr3_iter(b'[', b'{', b'\n', chunk) {
        if chunk[i] == b'\n' {
            line_start = i + 1;
            openers = 0;
            continue;
        }
        openers += 1;
        if openers == MAX_DEPTH + 1 {
            let end = memchr::memchr(b'\n', &chunk[i..]).map_or(chunk.len(), |k| i + k);
            if too_deep(&chunk[line_start..end]) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings_only() {
        let at = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(!too_deep(at(MAX_DEPTH).as_bytes()));
        assert!(too_deep(at(MAX_DEPTH + 1).as_bytes()));
        // Many openers side by side, or inside a string, are not nesting.
        assert!(!too_deep("[1],".repeat(1000).as_bytes()));
        let in_string = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(!too_deep(in_string.as_bytes()));
        let chunk = format!("{{\"a\":1}}\n{}\n{{\"a\":2}}", at(MAX_DEPTH + 1));
        assert!(any_too_deep(chunk.as_bytes()));
        assert!(!any_too_deep(format!("{}\n{}", at(100), at(100)).as_bytes()));
    }
}
