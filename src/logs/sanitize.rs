//! What a build's raw output becomes before it is stored: valid UTF-8, one line, no
//! terminal control sequence but SGR colours, a carriage-return progress bar reduced to
//! its last state, and at most [`MAX_LINE_BYTES`].
//!
//! Stored text is still untrusted: HTML in it stays as text, and every reader (the UI,
//! the SSE stream's JSON) escapes it where it is shown.

/// Longest line kept whole; a longer one is cut and marked.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// What marks a cut line.
pub const CUT_MARKER: &str = " … [line cut at 16 KiB]";

/// Cleans one line of raw output (without its trailing `\n`).
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    // A progress bar redraws with `\r`: keep what the terminal would show last.
    let text = last_carriage_segment(&text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut terminator = None;
                    for p in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&p) {
                            terminator = Some(p);
                            break;
                        }
                        params.push(p);
                    }
                    let is_sgr = terminator == Some('m')
                        && params.chars().all(|p| p.is_ascii_digit() || p == ';');
                    if is_sgr {
                        out.push_str("\u{1b}[");
                        out.push_str(&params);
                        out.push('m');
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ST (ESC \).
                    chars.next();
                    while let Some(p) = chars.next() {
                        if p == '\u{7}' {
                            break;
                        }
                        if p == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some('P' | 'X' | '^' | '_') => {
                    // DCS, SOS, PM, APC: up to ST.
                    chars.next();
                    while let Some(p) = chars.next() {
                        if p == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    // A two-character escape (ESC c, ESC 7, …).
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    cut(out)
}

fn last_carriage_segment(text: &str) -> &str {
    let trimmed = text.trim_end_matches('\r');
    match trimmed.rfind('\r') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

fn cut(mut s: String) -> String {
    if s.len() <= MAX_LINE_BYTES {
        return s;
    }
    let mut end = MAX_LINE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(CUT_MARKER);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_colours_and_drops_other_controls() {
        assert_eq!(clean_line(b"\x1b[1;32mok\x1b[0m"), "\x1b[1;32mok\x1b[0m");
        assert_eq!(clean_line(b"a\x1b[2Kb\x1b[1Ac"), "abc");
        assert_eq!(clean_line(b"\x1b]0;title\x07text"), "text");
        assert_eq!(
            clean_line(b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"),
            "link"
        );
        assert_eq!(
            clean_line(b"bell\x07 and \x08backspace"),
            "bell and backspace"
        );
        assert_eq!(clean_line(b"\x1b[?25lhidden cursor"), "hidden cursor");
        assert_eq!(clean_line(b"tab\there"), "tab\there");
    }

    #[test]
    fn progress_bars_keep_their_last_state() {
        assert_eq!(clean_line(b"10%\r50%\r100%"), "100%");
        assert_eq!(clean_line(b"done\r"), "done");
    }

    #[test]
    fn invalid_utf8_and_html_are_text() {
        assert_eq!(clean_line(b"caf\xc3\xa9 \xff"), "café \u{fffd}");
        assert_eq!(
            clean_line(b"<script>alert(1)</script>"),
            "<script>alert(1)</script>"
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let out = clean_line(long.as_bytes());
        assert!(out.ends_with(CUT_MARKER));
        assert!(out.len() <= MAX_LINE_BYTES + CUT_MARKER.len());
    }
}
