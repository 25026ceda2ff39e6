//! Log ingestion: every byte a runner sends goes through [`LogIngest`]
//! before it is stored or shown. It masks declared secrets, also when a
//! secret arrives split across chunks, and caps a job's log size with a
//! clear marker.
//!
//! ```
//! use solstice_core::log::LogIngest;
//!
//! let mut log = LogIngest::new(&["hunter22".to_string()], 1 << 20).unwrap();
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
/// Longest secret value that can be masked (64 KiB): a masker is refused
/// beyond it, and a job whose secrets cannot be masked does not run.
pub const MAX_SECRET_LEN: usize = 64 << 10;
/// Streams of a job's log: stdout, stderr, and the runner's and engine's
/// own lines. Each is masked on its own (so output of one stream between
/// two halves of a secret on another does not hide it), and a secret that
/// starts at the end of one stream and ends at the start of the next chunk
/// of another is masked too.
pub const STREAMS: usize = LogStream::ALL.len();

/// Which stream a piece of log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "store", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "store", serde(rename_all = "snake_case"))]
pub enum LogStream {
    /// A step's standard output.
    Stdout,
    /// A step's standard error.
    Stderr,
    /// The runner's or the engine's own lines (checkout, VM, masking).
    System,
}

impl LogStream {
    /// All streams, in their stored order.
    pub const ALL: [LogStream; 3] = [LogStream::Stdout, LogStream::Stderr, LogStream::System];

    /// Its position in [`LogStream::ALL`] (what a store may keep).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stream at `index` in [`LogStream::ALL`].
    pub fn from_index(index: usize) -> Option<LogStream> {
        LogStream::ALL.get(index).copied()
    }
}

/// Why secrets cannot be masked. Masking fails closed: nothing is logged
/// without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    /// A secret is longer than [`MAX_SECRET_LEN`].
    #[error("a secret of {len} bytes is longer than the {MAX_SECRET_LEN} bytes that can be masked")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The matcher could not be built.
    #[error("cannot build the secret matcher")]
    Matcher(#[source] aho_corasick::BuildError),
}
/// Default cap on one job's log after masking: 64 MiB.
pub const DEFAULT_LOG_CAP: u64 = 64 << 20;

/// Streaming secret masker. `Debug` shows no secret and no held text.
pub struct Masker {
    finder: Option<AhoCorasick>,
    /// Longest pattern in bytes; that much minus one is held back.
    longest: usize,
    marker: Vec<u8>,
    pending: Vec<u8>,
    prefixes: Prefixes,
    /// State of `prefixes` after the text seen so far.
    state: u32,
}

/// A trie of the patterns with failure links (Aho-Corasick): after any
/// text, its state tells how long a tail of that text could still become a
/// secret, and which secrets end there, in O(1) per byte. (Comparing every tail
/// with every pattern was quadratic in the secret's length per chunk.)
#[derive(Default)]
struct Prefixes {
    /// Transitions of each node, by byte.
    next: Vec<Vec<(u8, u32)>>,
    fail: Vec<u32>,
    /// Length of the longest tail that is a proper prefix of some pattern,
    /// for the text that led to this node.
    hold: Vec<u32>,
    /// Length of the pattern that ends at this node (0: none).
    ends: Vec<u32>,
    /// The nearest node on the failure chain where a pattern ends (0: none):
    /// with `ends`, every pattern that ends at a position of the text.
    dict: Vec<u32>,
}

impl Prefixes {
    fn new(patterns: &[Vec<u8>]) -> Self {
        let mut t = Prefixes {
            next: vec![Vec::new()],
            ..Prefixes::default()
        };
        let mut ends = vec![0u32];
        for p in patterns {
            let mut node = 0usize;
            for &b in p {
                node = match t.next[node].iter().find(|(c, _)| *c == b) {
                    Some((_, n)) => *n as usize,
                    None => {
                        let n = t.next.len();
                        t.next.push(Vec::new());
                        ends.push(0);
                        t.next[node].push((b, n as u32));
                        n
                    }
                };
            }
            ends[node] = p.len() as u32;
        }
        t.ends = ends;
        let n = t.next.len();
        t.dict = vec![0; n];
        t.fail = vec![0; n];
        let mut depth = vec![0u32; n];
        t.hold = vec![0; n];
        let mut queue = std::collections::VecDeque::from([0usize]);
        while let Some(node) = queue.pop_front() {
            t.hold[node] = if !t.next[node].is_empty() {
                depth[node]
            } else {
                t.hold[t.fail[node] as usize]
            };
            for i in 0..t.next[node].len() {
                let (b, child) = t.next[node][i];
                let child = child as usize;
                depth[child] = depth[node] + 1;
                t.fail[child] = if node == 0 {
                    0
                } else {
                    t.step(t.fail[node], b)
                };
                let f = t.fail[child] as usize;
                t.dict[child] = if t.ends[f] > 0 { f as u32 } else { t.dict[f] };
                queue.push_back(child);
            }
        }
        t
    }

    fn step(&self, mut state: u32, b: u8) -> u32 {
        loop {
            if let Some((_, n)) = self.next[state as usize].iter().find(|(c, _)| *c == b) {
                return *n;
            }
            if state == 0 {
                return 0;
            }
            state = self.fail[state as usize];
        }
    }

    fn feed(&self, state: u32, bytes: &[u8]) -> u32 {
        bytes.iter().fold(state, |s, b| self.step(s, *b))
    }
}

impl Masker {
    /// A masker for these secret values; an error when they cannot be
    /// masked (see [`MaskError`]), never a masker that lets them through.
    pub fn new(secrets: &[String]) -> Result<Self, MaskError> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            if secret.len() > MAX_SECRET_LEN {
                return Err(MaskError::TooLong { len: secret.len() });
            }
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
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    // A DFA of a 64 KiB secret takes minutes to build.
                    .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
                    .build(&patterns)
                    .map_err(MaskError::Matcher)?,
            )
        };
        Ok(Masker {
            finder,
            prefixes: Prefixes::new(&patterns),
            state: 0,
            longest,
            marker: vec![marker_byte; 3],
            pending: Vec::new(),
        })
    }

    /// When the held-back tail is the start of a secret whose rest begins
    /// `next` (bytes of another stream), masks the tail and returns how
    /// many bytes of `next` belong to the secret.
    fn complete_across(&mut self, next: &[u8]) -> Option<usize> {
        if self.pending.is_empty() || next.is_empty() {
            return None;
        }
        let len = self.pending.len();
        // Scan `next` on from the state after the held tail: a pattern that
        // ends `rest` bytes into `next` and is longer than that started `k`
        // bytes before its end, in the tail. The earliest start wins, then
        // the longest secret (as when the tail is masked alone). Linear in
        // what is scanned: no more of `next` than the longest secret.
        let t = &self.prefixes;
        let mut state = self.state;
        let mut best: Option<(usize, usize)> = None;
        for (i, &b) in next.iter().take(self.longest).enumerate() {
            state = t.step(state, b);
            let rest = i + 1;
            let mut node = if t.ends[state as usize] > 0 {
                state
            } else {
                t.dict[state as usize]
            };
            while node != 0 {
                let plen = t.ends[node as usize] as usize;
                if plen > rest && plen - rest <= len {
                    let k = plen - rest;
                    if best.is_none_or(|(bk, br)| k > bk || (k == bk && rest > br)) {
                        best = Some((k, rest));
                    }
                }
                node = t.dict[node as usize];
            }
        }
        let (k, rest) = best?;
        self.pending.truncate(len - k);
        let marker = self.marker.clone();
        self.pending.extend_from_slice(&marker);
        self.state = 0; // the marker is in no secret: nothing can continue
        Some(rest)
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
        self.state = self.prefixes.feed(self.state, chunk);
        // Hold back the longest tail that is a proper prefix of a pattern.
        // A match starting before `limit` then lies wholly in the buffer,
        // and so does every longer pattern that could start there.
        let len = self.pending.len();
        let hold = (self.prefixes.hold[self.state as usize] as usize).min(len);
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
        if at > limit {
            // A secret reached into the held tail: what is left is new text.
            self.state = self.prefixes.feed(0, &self.pending);
        }
        out
    }

    /// Emits whatever is held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.state = 0;
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

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field(
                "secrets",
                &self.finder.as_ref().map_or(0, |f| f.patterns_len()),
            )
            .field("held_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Masking plus the per-job size cap.
#[derive(Debug)]
pub struct LogIngest {
    maskers: Vec<Masker>,
    cap: u64,
    written: u64,
    dropped: u64,
}

impl LogIngest {
    /// Ingestion for one job with these secret values and this cap in
    /// bytes; an error when the secrets cannot be masked.
    pub fn new(secrets: &[String], cap: u64) -> Result<Self, MaskError> {
        let mut maskers = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            maskers.push(Masker::new(secrets)?);
        }
        Ok(LogIngest {
            maskers,
            cap,
            written: 0,
            dropped: 0,
        })
    }

    /// Takes raw bytes of one stream (stdout); returns the bytes to store
    /// and show.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.push_stream(0, chunk)
            .into_iter()
            .flat_map(|(_, bytes)| bytes)
            .collect()
    }

    /// Takes raw bytes of `stream` (`0..STREAMS`; others count as the
    /// last); returns what to store and show, each part with its stream: a
    /// secret completed across streams also releases the other stream's
    /// held-back, now masked, tail.
    pub fn push_stream(&mut self, stream: usize, chunk: &[u8]) -> Vec<(usize, Vec<u8>)> {
        let stream = stream.min(STREAMS - 1);
        let mut out = Vec::new();
        let mut chunk = chunk;
        for other in (0..STREAMS).filter(|o| *o != stream) {
            if let Some(used) = self.maskers[other].complete_across(chunk) {
                chunk = &chunk[used..];
                let released = self.maskers[other].push(b"");
                let released = self.capped(released);
                if !released.is_empty() {
                    out.push((other, released));
                }
            }
        }
        let masked = self.maskers[stream].push(chunk);
        let masked = self.capped(masked);
        if !masked.is_empty() {
            out.push((stream, masked));
        }
        out
    }

    /// Flushes the held-back tails and, when the cap cut the log, the
    /// marker saying how much was dropped.
    pub fn finish(&mut self) -> Vec<u8> {
        self.finish_streams()
            .into_iter()
            .flat_map(|(_, bytes)| bytes)
            .collect()
    }

    /// [`LogIngest::finish`], each part with its stream (the marker is on
    /// the last stream).
    pub fn finish_streams(&mut self) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        for stream in 0..STREAMS {
            let rest = self.maskers[stream].finish();
            let rest = self.capped(rest);
            if !rest.is_empty() {
                out.push((stream, rest));
            }
        }
        if self.dropped > 0 {
            out.push((
                STREAMS - 1,
                format!(
                    "\n[solstice: log truncated at {} bytes; {} more bytes were dropped]\n",
                    self.cap, self.dropped
                )
                .into_bytes(),
            ));
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
        let mut log = LogIngest::new(&secrets, DEFAULT_LOG_CAP).expect("maskable");
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
        let mut log = LogIngest::new(&secrets, DEFAULT_LOG_CAP).expect("maskable");
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

    fn streams(secrets: &[&str], chunks: &[(usize, &[u8])]) -> [Vec<u8>; STREAMS] {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut log = LogIngest::new(&secrets, DEFAULT_LOG_CAP).expect("maskable");
        let mut out: [Vec<u8>; STREAMS] = Default::default();
        for (stream, chunk) in chunks {
            for (s, bytes) in log.push_stream(*stream, chunk) {
                out[s].extend(bytes);
            }
        }
        for (s, bytes) in log.finish_streams() {
            out[s].extend(bytes);
        }
        out
    }

    #[test]
    fn a_secret_split_across_stdout_and_stderr_is_masked() {
        let out = streams(
            &["hunter2-hunter2"],
            &[(0, b"x hunter2-hu"), (1, b"nter2 y\n")],
        );
        assert_eq!(out[0], b"x ***");
        assert_eq!(out[1], b" y\n");
        // Output of another stream between two halves does not hide it.
        let out = streams(
            &["hunter2-hunter2"],
            &[(0, b"a hunter2-"), (1, b"warning\n"), (0, b"hunter2 b")],
        );
        assert_eq!(out[0], b"a *** b");
        assert_eq!(out[1], b"warning\n");
    }

    #[test]
    fn a_long_held_secret_prefix_costs_linear_time_across_streams() {
        // A 64 KiB secret's start held on stdout while stderr writes line
        // after line: each stderr chunk is checked against the held tail
        // (comparing every tail with every secret was quadratic per chunk).
        let secret = format!("{}b", "a".repeat(MAX_SECRET_LEN - 1));
        let mut chunks: Vec<(usize, Vec<u8>)> =
            vec![(0, "a".repeat(MAX_SECRET_LEN - 2).into_bytes())];
        chunks.extend((0..200).map(|_| (1, b"c\n".to_vec())));
        chunks.push((0, b"ab".to_vec()));
        let chunks: Vec<(usize, &[u8])> = chunks.iter().map(|(s, c)| (*s, c.as_slice())).collect();
        let out = streams(&[&secret], &chunks);
        assert_eq!(out[0], b"***");
        assert_eq!(out[1], b"c\n".repeat(200));
    }

    #[test]
    fn secrets_that_cannot_be_masked_are_refused() {
        let huge = "x".repeat(MAX_SECRET_LEN + 1);
        assert!(matches!(
            LogIngest::new(&[huge], DEFAULT_LOG_CAP),
            Err(MaskError::TooLong { .. })
        ));
        assert!(LogIngest::new(&["x".repeat(MAX_SECRET_LEN)], DEFAULT_LOG_CAP).is_ok());
    }

    #[test]
    fn a_long_secret_costs_linear_time() {
        // Text that almost forms a 64 KiB secret at every position: the
        // earlier tail-by-tail comparison took minutes on this (quadratic in
        // the secret's length per chunk).
        let secret = format!("{}b", "a".repeat(MAX_SECRET_LEN - 1));
        let mut log =
            LogIngest::new(std::slice::from_ref(&secret), DEFAULT_LOG_CAP).expect("maskable");
        let mut out = Vec::new();
        for _ in 0..4 {
            out.extend(log.push(format!("{}c", "a".repeat(70_000)).as_bytes()));
        }
        out.extend(log.push(secret.as_bytes()));
        out.extend(log.finish());
        assert_eq!(out.len(), 4 * 70_001 + 3);
        assert!(out.ends_with(b"c***"));
    }

    #[test]
    fn the_cap_cuts_with_a_marker() {
        let mut log = LogIngest::new(&[], 10).expect("maskable");
        let mut out = log.push(b"0123456789abcdef");
        out.extend(log.finish());
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with(
            "0123456789\n[solstice: log truncated at 10 bytes; 6 more bytes were dropped]"
        ));
    }
}
