//! Log ingestion: every byte a runner sends goes through [`LogIngest`]
//! before it is stored or shown. It masks declared secrets, also when a
//! secret arrives split across chunks, and caps a job's log size with a
//! clear marker.
//!
//! ```
//! use solstice_core::log::LogIngest;
//!
//! let mut log = LogIngest::new(&["hunter22".to_string()], 1 << 20);
//! let mut out = log.push(b"password: hunt");
//! out.extend(log.push(b"er22\n"));
//! out.extend(log.finish());
//! assert_eq!(out, b"password: ***\n");
//! ```
//!
//! Secret values shorter than [`MIN_SECRET_LEN`] bytes are not masked:
//! masking every `1` or `ab` in a log would make it unreadable while hiding
//! nothing (such a value is trivially guessed anyway). A multi-line secret is
//! masked as a whole and line by line (each line of at least that length),
//! because tools often print one line of a key at a time.

use aho_corasick::{AhoCorasick, MatchKind};

/// Shortest secret value that is masked.
pub const MIN_SECRET_LEN: usize = 4;
/// Default cap on one job's log after masking: 64 MiB.
pub const DEFAULT_LOG_CAP: u64 = 64 << 20;

/// Streaming secret masker.
pub struct Masker {
    finder: Option<AhoCorasick>,
    patterns: Vec<Vec<u8>>,
    /// Longest pattern in bytes; that much minus one is held back.
    longest: usize,
    marker: Vec<u8>,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for these secret values.
    pub fn new(secrets: &[String]) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let mut add = |p: &[u8]| {
                if p.len() >= MIN_SECRET_LEN && !patterns.iter().any(|q| q == p) {
                    patterns.push(p.to_vec());
                }
            };
            add(secret.as_bytes());
            if secret.contains('\n') {
                for line in secret.split('\n') {
                    add(line.trim_end_matches('\r').as_bytes());
                }
            }
        }
        // The marker must not be able to form a secret together with the
        // text around it, so it is made of a byte no secret contains.
        let marker_byte = [b'*', b'#', b'~', b'^', b'%', b'@', b'!', b'?', b'=', b'+']
            .into_iter()
            .find(|b| !patterns.iter().any(|p| p.contains(b)))
            .unwrap_or(b'*');
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let finder = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Masker {
            finder,
            patterns,
            longest,
            marker: vec![marker_byte; 3],
            pending: Vec::new(),
        }
    }

    /// Adds bytes; returns what is safe to emit now. Only a tail that could
    /// be the beginning of a secret stays behind (so output is not delayed
    /// unless it looks like a secret being printed), until more arrives or
    /// [`Masker::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(finder) = &self.finder else {
            return chunk.to_vec();
        };
        self.pending.extend_from_slice(chunk);
        // Hold back the longest tail that is a proper prefix of a pattern.
        // A match starting before `limit` then lies wholly in the buffer,
        // and so does every longer pattern that could start there.
        let len = self.pending.len();
        let hold = (1..self.longest.min(len + 1))
            .rev()
            .find(|&k| {
                let tail = &self.pending[len - k..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > k && p.starts_with(tail))
            })
            .unwrap_or(0);
        let limit = len - hold;
        let mut out = Vec::with_capacity(self.pending.len());
        let mut at = 0;
        for m in finder.find_iter(&self.pending[..]) {
            if m.start() >= limit {
                break;
            }
            out.extend_from_slice(&self.pending[at..m.start()]);
            out.extend_from_slice(&self.marker);
            at = m.end();
        }
        let emit_to = limit.max(at);
        out.extend_from_slice(&self.pending[at..emit_to]);
        self.pending.drain(..emit_to);
        out
    }

    /// Emits whatever is held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        let Some(finder) = &self.finder else {
            return rest;
        };
        let mut out = Vec::with_capacity(rest.len());
        finder.replace_all_with_bytes(&rest, &mut out, |_, _, dst| {
            dst.extend_from_slice(&self.marker);
            true
        });
        out
    }
}

/// Masking plus the per-job size cap.
pub struct LogIngest {
    masker: Masker,
    cap: u64,
    written: u64,
    dropped: u64,
}

impl LogIngest {
    /// Ingestion for one job with these secret values and this cap in bytes.
    pub fn new(secrets: &[String], cap: u64) -> Self {
        LogIngest {
            masker: Masker::new(secrets),
            cap,
            written: 0,
            dropped: 0,
        }
    }

    /// Takes raw bytes from the runner; returns the bytes to store and show.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let masked = self.masker.push(chunk);
        self.capped(masked)
    }

    /// Flushes the held-back tail and, when the cap cut the log, the marker
    /// saying how much was dropped.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = self.masker.finish();
        let mut out = self.capped(rest);
        if self.dropped > 0 {
            out.extend_from_slice(
                format!(
                    "\n[solstice: log truncated at {} bytes; {} more bytes were dropped]\n",
                    self.cap, self.dropped
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Bytes dropped by the cap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn capped(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let room = self.cap.saturating_sub(self.written);
        if bytes.len() as u64 > room {
            self.dropped += bytes.len() as u64 - room;
            bytes.truncate(room as usize);
        }
        self.written += bytes.len() as u64;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&[u8]]) -> Vec<u8> {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut log = LogIngest::new(&secrets, DEFAULT_LOG_CAP);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(log.push(c));
        }
        out.extend(log.finish());
        out
    }

    #[test]
    fn masks_whole_and_split_secrets() {
        assert_eq!(run(&["s3cret"], &[b"a s3cret b"]), b"a *** b");
        assert_eq!(run(&["s3cret"], &[b"a s3", b"cr", b"et b"]), b"a *** b");
        assert_eq!(run(&["s3cret"], &[b"s3cre"]), b"s3cre");
    }

    #[test]
    fn masks_each_line_of_a_multi_line_secret() {
        let key = "-----BEGIN KEY-----\nAAAABBBB\nx\n-----END KEY-----";
        let out = run(&[key], &[b"line AAAABBBB here\nx\n"]);
        assert_eq!(out, b"line *** here\nx\n");
        let out = run(&[key], &[key.as_bytes()]);
        assert_eq!(out, b"***");
    }

    #[test]
    fn output_is_not_held_back_unless_it_may_start_a_secret() {
        let secrets = vec!["hunter22".to_string()];
        let mut log = LogIngest::new(&secrets, DEFAULT_LOG_CAP);
        assert_eq!(log.push(b"plain line\n"), b"plain line\n");
        assert_eq!(log.push(b"pw: hun"), b"pw: ");
        assert_eq!(log.push(b"ter22!"), b"***!");
        assert_eq!(log.push(b"hunt"), b"");
        assert_eq!(log.push(b"ing"), b"hunting");
    }

    #[test]
    fn short_values_are_not_masked() {
        assert_eq!(run(&["abc", "1"], &[b"abc 1 abcd"]), b"abc 1 abcd");
    }

    #[test]
    fn longest_secret_wins_and_marker_avoids_secret_bytes() {
        assert_eq!(run(&["abcd", "abcdefgh"], &[b"xabcdefghx"]), b"x***x");
        // A secret made of `*` gets another marker byte.
        assert_eq!(run(&["****x"], &[b"a****xb"]), b"a###b");
    }

    #[test]
    fn the_cap_cuts_with_a_marker() {
        let mut log = LogIngest::new(&[], 10);
        let mut out = log.push(b"0123456789abcdef");
        out.extend(log.finish());
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with(
            "0123456789\n[solstice: log truncated at 10 bytes; 6 more bytes were dropped]"
        ));
    }
}
