//! Property: whatever the secrets and wherever the chunk boundaries fall,
//! the ingested log never contains a secret (nor a line of a multi-line
//! secret) of masking length, and text without secrets passes unchanged.

use proptest::prelude::*;
use solstice_core::log::{LogIngest, MIN_SECRET_LEN};

fn ingest(secrets: &[String], text: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut log = LogIngest::new(secrets, u64::MAX).expect("maskable");
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    points.sort_unstable();
    let mut at = 0;
    for p in points {
        out.extend(log.push(&text[at..p.max(at)]));
        at = p.max(at);
    }
    out.extend(log.push(&text[at..]));
    out.extend(log.finish());
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_secret_survives(
        // A small alphabet makes overlaps and near-misses likely; `*` and
        // `#` are in it so the marker choice is exercised too.
        secrets in proptest::collection::vec("[ab*#\n]{1,10}", 1..4),
        filler in proptest::collection::vec("[ab*# \n]{0,12}", 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut text = Vec::new();
        for (i, f) in filler.iter().enumerate() {
            text.extend_from_slice(f.as_bytes());
            text.extend_from_slice(secrets[i % secrets.len()].as_bytes());
        }
        let out = ingest(&secrets, &text, &cuts);
        for s in &secrets {
            if s.len() >= MIN_SECRET_LEN {
                prop_assert!(!contains(&out, s.as_bytes()), "secret {s:?} in {:?}", String::from_utf8_lossy(&out));
            }
            for line in s.split('\n') {
                if line.len() >= MIN_SECRET_LEN {
                    prop_assert!(!contains(&out, line.as_bytes()), "line {line:?} in {:?}", String::from_utf8_lossy(&out));
                }
            }
        }
    }

    #[test]
    fn text_without_secrets_is_unchanged(
        text in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        // The secret contains a byte (0x00 0x01 pattern) excluded from the text.
        let text: Vec<u8> = text.into_iter().map(|b| if b == 0 { 1 } else { b }).collect();
        let secrets = vec![String::from("\u{0}\u{0}\u{0}\u{0}")];
        prop_assert_eq!(ingest(&secrets, &text, &cuts), text);
    }

    #[test]
    fn no_secret_survives_on_any_stream_or_across_two(
        secrets in proptest::collection::vec("[ab*#]{4,10}", 1..3),
        filler in proptest::collection::vec("[ab*# \n]{0,12}", 1..6),
        cuts in proptest::collection::vec((any::<usize>(), 0usize..3), 0..10),
    ) {
        let mut text = Vec::new();
        for (i, f) in filler.iter().enumerate() {
            text.extend_from_slice(f.as_bytes());
            text.extend_from_slice(secrets[i % secrets.len()].as_bytes());
        }
        let mut log = LogIngest::new(&secrets, u64::MAX).expect("maskable");
        let mut points: Vec<(usize, usize)> =
            cuts.iter().map(|(c, s)| (c % (text.len() + 1), *s)).collect();
        points.sort_unstable();
        let mut per_stream: [Vec<u8>; solstice_core::log::STREAMS] = Default::default();
        let (mut at, mut stream) = (0, 0);
        for (p, next_stream) in points {
            for (s, bytes) in log.push_stream(stream, &text[at..p.max(at)]) {
                per_stream[s].extend(bytes);
            }
            at = p.max(at);
            stream = next_stream;
        }
        for (s, bytes) in log.push_stream(stream, &text[at..]) {
            per_stream[s].extend(bytes);
        }
        for (s, bytes) in log.finish_streams() {
            per_stream[s].extend(bytes);
        }
        for out in &per_stream {
            for s in &secrets {
                prop_assert!(!contains(out, s.as_bytes()), "secret {s:?} in {:?}", String::from_utf8_lossy(out));
            }
        }
    }

    #[test]
    fn a_secret_cut_once_between_two_streams_is_masked(
        secret in "[ab]{4,12}",
        cut in any::<usize>(),
        first in 0usize..3,
        second in 0usize..3,
    ) {
        let cut = 1 + cut % (secret.len() - 1);
        let secrets = vec![secret.clone()];
        let mut log = LogIngest::new(&secrets, u64::MAX).expect("maskable");
        let mut merged = Vec::new();
        for (stream, part) in [(first, &secret.as_bytes()[..cut]), (second, &secret.as_bytes()[cut..])] {
            for (_, bytes) in log.push_stream(stream, part) {
                merged.extend(bytes);
            }
        }
        for (_, bytes) in log.finish_streams() {
            merged.extend(bytes);
        }
        prop_assert!(!contains(&merged, secret.as_bytes()), "{:?}", String::from_utf8_lossy(&merged));
        prop_assert!(contains(&merged, b"***"), "{:?}", String::from_utf8_lossy(&merged));
    }
}
