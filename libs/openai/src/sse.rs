//! Server-sent events, decoded incrementally (the WHATWG event-stream rules keel needs): lines
//! end in LF, CRLF or CR; `data:` lines of one event are joined with LF; an empty line ends the
//! event; comments (`:`) and other fields are skipped. A line longer than the cap is an error,
//! so a hostile or broken upstream cannot make the buffer grow without bound.

/// The longest line accepted (a chunk of a chat completion is far smaller).
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event-stream line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("an event-stream line is not UTF-8")]
    NotUtf8,
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Option<String>,
    event: Option<String>,
    /// The previous byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line)? {
                        out.push(ev);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.data.take().map(|data| SseEvent {
                event: self.event.take(),
                data,
            }));
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    if d.len() + value.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

/// Encodes one `data:` event (the payload must not contain a line break; JSON never does).
pub fn encode_data(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Vec<SseEvent> {
        SseDecoder::new().push(input).unwrap()
    }

    #[test]
    fn events_comments_and_line_ends() {
        let evs = all(b": keep-alive\ndata: {\"a\":1}\n\nevent: x\r\ndata: one\r\ndata: two\r\n\r\ndata:[DONE]\r\r");
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].event.as_deref(), Some("x"));
        assert_eq!(evs[1].data, "one\ntwo");
        assert_eq!(evs[2].data, "[DONE]");
        assert!(all(b"data: no end yet\n").is_empty());
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut d = SseDecoder::new();
        let chunk = vec![b'a'; 64 * 1024];
        let mut err = None;
        for _ in 0..20 {
            if let Err(e) = d.push(&chunk) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SseError::LineTooLong));
    }

    proptest! {
        /// However the bytes are split across reads, the same events come out.
        #[test]
        fn splitting_does_not_change_the_events(
            payloads in proptest::collection::vec("[a-z0-9{}\":, ]{0,40}", 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let mut stream = Vec::new();
            for p in &payloads {
                stream.extend_from_slice(encode_data(p).as_bytes());
            }
            let whole = all(&stream);
            prop_assert_eq!(whole.len(), payloads.len());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut d = SseDecoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([stream.len()]) {
                got.extend(d.push(&stream[at..c]).unwrap());
                at = c;
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SseDecoder::new().push(&bytes);
        }
    }
}
