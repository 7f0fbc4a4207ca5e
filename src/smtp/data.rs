//! Incremental decoder for message content: the DATA stream (RFC 5321
//! 4.1.1.4: CRLF.CRLF terminator, dot-unstuffing per 4.5.2) and BDAT
//! chunks (RFC 3030: raw octets, no terminator), with bare-LF/bare-CR
//! detection (RFC 5321 2.3.8, the SMTP smuggling class), text-line length
//! (RFC 5321 4.5.3.1.6) and size accounting.
//!
//! Only the sequence CR LF "." CR LF ends DATA: a bare LF or bare CR is never
//! a line end here, so `\n.\n` and its relatives can never end a message
//! early. The decoder must never buffer more than the size limit, never
//! copy content after it has decided to reject the message, and never look
//! at bytes past the terminator (they are the next commands).

use memchr::memchr2;

/// Longest text line including CRLF (RFC 5321 4.5.3.1.6), not counting a
/// leading dot added for transparency.
pub const TEXT_LINE_MAX: usize = 1000;
/// Longest text line without its CRLF.
const TEXT_LINE_CONTENT_MAX: usize = TEXT_LINE_MAX - 2;

/// How content is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ends at CRLF.CRLF.
    DotStuffed,
    /// BDAT: octets counted by the command, no stuffing, no terminator.
    Chunked,
}

/// Why the content of a message is refused. Listed in the order of
/// precedence when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("bare CR or LF in message content (RFC 5321 2.3.8)")]
    BareLineEnding,
    #[error("text line longer than {TEXT_LINE_MAX} octets (RFC 5321 4.5.3.1.6)")]
    LineTooLong,
    #[error("message larger than the maximum size")]
    TooLarge,
    /// Found in the complete message by [`super::trace::too_many_hops`],
    /// never by the decoder.
    #[error(
        "more than {} Received: fields (RFC 5321 6.3: mail loop?)",
        super::trace::RECEIVED_HOPS_MAX
    )]
    TooManyHops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very start).
    LineStart,
    /// Inside a line.
    InLine,
    /// Just after a CR inside a line; an LF must follow.
    Cr,
    /// DATA only: a `.` at the start of a line.
    Dot,
    /// DATA only: `.` CR at the start of a line; LF ends the message.
    DotCr,
}

/// Result of one [`DataDecoder::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed (for DATA, up to and including the terminator).
    pub consumed: usize,
    /// DATA: the terminator was seen; nothing after it was consumed.
    pub finished: bool,
}

/// Decodes message content into a caller-owned buffer.
#[derive(Debug, Clone, Copy)]
pub struct DataDecoder {
    framing: Framing,
    max_size: u64,
    state: State,
    line_len: usize,
    /// Octets of content seen (unstuffed), counted even after rejection.
    size: u64,
    bare_line_ending: bool,
    line_too_long: bool,
    too_large: bool,
}

impl DataDecoder {
    pub fn new(framing: Framing, max_size: u64) -> Self {
        Self {
            framing,
            max_size,
            state: State::LineStart,
            line_len: 0,
            size: 0,
            bare_line_ending: false,
            line_too_long: false,
            too_large: false,
        }
    }

    /// Octets of message content seen so far (after unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first reason to refuse the content seen so far, if any.
    pub fn error(&self) -> Option<ContentError> {
        if self.bare_line_ending {
            Some(ContentError::BareLineEnding)
        } else if self.line_too_long {
            Some(ContentError::LineTooLong)
        } else if self.too_large {
            Some(ContentError::TooLarge)
        } else {
            None
        }
    }

    /// Call when the content is complete (after the DATA terminator, or
    /// after the BDAT LAST chunk): a CR left dangling at the end is bare.
    pub fn finish(&mut self) -> Option<ContentError> {
        if self.state == State::Cr {
            self.bare_line_ending = true;
        }
        self.error()
    }

    /// Decodes `input`, appending content to `out` while the message is
    /// still acceptable; once it is not, `out` is cleared and stays empty.
    /// In DATA framing, stops right after the terminator.
    ///
    /// Lines are checked one by one, but content is copied in runs of many
    /// lines: `input[run..pos]` is content not yet appended, copied in one
    /// piece when a byte must be left out (a stuffed dot, a bare CR or LF,
    /// the terminator) or when the input ends.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut pos = 0;
        let mut run = 0;
        // Every `input[pos]` below is guarded by this loop condition, and
        // `run <= pos` holds throughout.
        while pos < input.len() {
            match self.state {
                State::LineStart => {
                    if self.framing == Framing::DotStuffed && input[pos] == b'.' {
                        self.append(&input[run..pos], out);
                        pos += 1;
                        run = pos;
                        self.state = State::Dot;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::Dot => {
                    if input[pos] == b'\r' {
                        self.state = State::DotCr;
                        pos += 1;
                    } else {
                        // Dot-unstuffing (RFC 5321 4.5.2): the leading dot
                        // stays out of the run.
                        self.state = State::InLine;
                    }
                }
                State::DotCr => {
                    if input[pos] == b'\n' {
                        // `input[run..pos]` is the terminator's CR, if any.
                        self.state = State::LineStart;
                        return Progress {
                            consumed: pos + 1,
                            finished: true,
                        };
                    }
                    // `.` CR followed by something else: the CR is bare.
                    self.bare_line_ending = true;
                    out.clear();
                    run = pos;
                    self.state = State::InLine;
                }
                State::Cr => {
                    if input[pos] == b'\n' {
                        if run == pos {
                            // The CR ended the previous input and was held
                            // back; this LF makes it a line end.
                            self.append(b"\r", out);
                        }
                        pos += 1;
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        self.bare_line_ending = true;
                        out.clear();
                        // The bare CR (the byte before, when in this input)
                        // is left out.
                        let cr = pos.saturating_sub(1).max(run);
                        self.append(&input[run..cr], out);
                        run = pos;
                        self.state = State::InLine;
                    }
                }
                State::InLine => {
                    let rest = &input[pos..];
                    let span_len = memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    self.line_len = self.line_len.saturating_add(span_len);
                    if self.line_len > TEXT_LINE_CONTENT_MAX && !self.line_too_long {
                        self.line_too_long = true;
                        out.clear();
                    }
                    pos += span_len;
                    match rest.get(span_len) {
                        Some(b'\r') => {
                            self.state = State::Cr;
                            pos += 1;
                        }
                        Some(_) => {
                            // A bare LF is content, not a line end: only the
                            // real CRLF.CRLF may end the message.
                            self.bare_line_ending = true;
                            out.clear();
                            self.append(&input[run..pos], out);
                            self.line_len = self.line_len.saturating_add(1);
                            pos += 1;
                            run = pos;
                        }
                        None => {}
                    }
                }
            }
        }
        // A CR whose LF has not come yet is held back: the next input says
        // whether it is a line end.
        let end = match self.state {
            State::Cr | State::DotCr => pos.saturating_sub(1).max(run),
            _ => pos,
        };
        self.append(&input[run..end], out);
        Progress {
            consumed: input.len(),
            finished: false,
        }
    }

    fn append(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // usize always fits in u64 on the supported 64-bit (and 32-bit) targets.
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max_size && !self.too_large {
            self.too_large = true;
            out.clear();
        }
        if self.error().is_none() {
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` whole and byte by byte; both must agree. Returns the
    /// decoded content, the error, and the number of bytes consumed.
    fn decode(framing: Framing, max: u64, input: &[u8]) -> (Vec<u8>, Option<ContentError>, usize) {
        let mut whole = DataDecoder::new(framing, max);
        let mut out_whole = Vec::new();
        let progress = whole.feed(input, &mut out_whole);
        let finished_whole = progress.finished;
        let error_whole = if finished_whole || framing == Framing::Chunked {
            whole.finish()
        } else {
            whole.error()
        };

        let mut single = DataDecoder::new(framing, max);
        let mut out_single = Vec::new();
        let mut consumed = 0;
        for byte in input {
            let step = single.feed(std::slice::from_ref(byte), &mut out_single);
            consumed += step.consumed;
            if step.finished {
                break;
            }
        }
        let error_single = if finished_whole || framing == Framing::Chunked {
            single.finish()
        } else {
            single.error()
        };
        assert_eq!(out_whole, out_single);
        assert_eq!(error_whole, error_single);
        assert_eq!(whole.size(), single.size());
        assert_eq!(progress.consumed, consumed);

        // Split in two at every point: the same as whole.
        for split in 0..=input.len() {
            let mut halves = DataDecoder::new(framing, max);
            let mut out_halves = Vec::new();
            let first = halves.feed(&input[..split], &mut out_halves);
            let consumed = if first.finished {
                first.consumed
            } else {
                split + halves.feed(&input[split..], &mut out_halves).consumed
            };
            let error_halves = if finished_whole || framing == Framing::Chunked {
                halves.finish()
            } else {
                halves.error()
            };
            assert_eq!(out_halves, out_whole, "split at {split}");
            assert_eq!(error_halves, error_whole, "split at {split}");
            assert_eq!(halves.size(), whole.size(), "split at {split}");
            assert_eq!(consumed, progress.consumed, "split at {split}");
        }
        (out_whole, error_whole, progress.consumed)
    }

    #[test]
    fn every_short_input_decodes_alike_whole_split_and_bytewise() {
        // Both framings, with a size limit some of the inputs pass.
        for input in crate::test_util::every_string(b".\r\na", 7) {
            for framing in [Framing::DotStuffed, Framing::Chunked] {
                decode(framing, 3, &input);
            }
        }
    }

    #[test]
    fn plain_message_and_terminator() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, error, consumed) = decode(Framing::DotStuffed, 1000, input);
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(error, None);
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        let (out, error, consumed) = decode(Framing::DotStuffed, 1000, b".\r\n");
        assert!(out.is_empty());
        assert_eq!(error, None);
        assert_eq!(consumed, 3);
    }

    #[test]
    fn dot_unstuffing() {
        let input = b"..leading\r\n...two\r\n.\r\n";
        let (out, error, _) = decode(Framing::DotStuffed, 1000, input);
        assert_eq!(out, b".leading\r\n..two\r\n");
        assert_eq!(error, None);
        let (out, _, _) = decode(Framing::DotStuffed, 1000, b"a.\r\n .x\r\n.\r\n");
        assert_eq!(out, b"a.\r\n .x\r\n");
    }

    #[test]
    fn unfinished_message_is_not_finished() {
        let mut decoder = DataDecoder::new(Framing::DotStuffed, 1000);
        let mut out = Vec::new();
        let progress = decoder.feed(b"line\r\n.", &mut out);
        assert!(!progress.finished);
        assert_eq!(progress.consumed, 7);
        let progress = decoder.feed(b"\r\n", &mut out);
        assert!(progress.finished);
        assert_eq!(out, b"line\r\n");
    }

    #[test]
    fn smuggling_forms_never_terminate_and_are_rejected() {
        for smuggle in [
            &b"a\n.\nMAIL FROM:<x@y.example>\r\n"[..],
            b"a\r.\nMAIL FROM:<x@y.example>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y.example>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y.example>\r\n",
            b"a\rb\r\n",
            b"a\nb\r\n",
        ] {
            let mut input = smuggle.to_vec();
            input.extend_from_slice(b"tail\r\n.\r\nNEXT");
            let (out, error, consumed) = decode(Framing::DotStuffed, 10_000, &input);
            assert_eq!(error, Some(ContentError::BareLineEnding), "{smuggle:?}");
            assert!(out.is_empty());
            assert_eq!(&input[consumed..], b"NEXT", "{smuggle:?}");
        }
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'x'; TEXT_LINE_CONTENT_MAX];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(Framing::DotStuffed, 1 << 20, &ok).1, None);
        // A stuffed dot does not count towards the limit.
        let mut stuffed = vec![b'.'; TEXT_LINE_CONTENT_MAX + 1];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(Framing::DotStuffed, 1 << 20, &stuffed).1, None);
        let mut long = vec![b'x'; TEXT_LINE_CONTENT_MAX + 1];
        long.extend_from_slice(b"\r\n.\r\n");
        let (out, error, consumed) = decode(Framing::DotStuffed, 1 << 20, &long);
        assert_eq!(error, Some(ContentError::LineTooLong));
        assert!(out.is_empty());
        assert_eq!(consumed, long.len());
    }

    #[test]
    fn size_limit_counts_unstuffed_content() {
        let (_, error, _) = decode(Framing::DotStuffed, 6, b"abcd\r\n.\r\n");
        assert_eq!(error, None);
        let (out, error, consumed) = decode(Framing::DotStuffed, 5, b"abcd\r\nmore\r\n.\r\nX");
        assert_eq!(error, Some(ContentError::TooLarge));
        assert!(out.is_empty());
        assert_eq!(consumed, 15);
    }

    #[test]
    fn bare_line_ending_wins_over_size() {
        let (_, error, _) = decode(Framing::DotStuffed, 3, b"abcdef\nx\r\n.\r\n");
        assert_eq!(error, Some(ContentError::BareLineEnding));
    }

    #[test]
    fn chunked_framing_keeps_dots_and_has_no_terminator() {
        let input = b"..x\r\n.\r\nrest\r\n";
        let (out, error, consumed) = decode(Framing::Chunked, 1000, input);
        assert_eq!(out, input);
        assert_eq!(error, None);
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn chunked_crlf_split_across_chunks_is_fine_but_trailing_cr_is_bare() {
        let mut decoder = DataDecoder::new(Framing::Chunked, 1000);
        let mut out = Vec::new();
        decoder.feed(b"a\r", &mut out);
        decoder.feed(b"\nb\r", &mut out);
        assert_eq!(decoder.error(), None);
        assert_eq!(out, b"a\r\nb");
        assert_eq!(decoder.finish(), Some(ContentError::BareLineEnding));
    }

    #[test]
    fn chunked_bare_lf_rejected() {
        let (out, error, _) = decode(Framing::Chunked, 1000, b"a\nb\r\n");
        assert_eq!(error, Some(ContentError::BareLineEnding));
        assert!(out.is_empty());
    }
}
