//! Finished offsets above the committed one, written into the commit's
//! metadata so that a partition's next owner (another member after a
//! rebalance, or this one after a restart or a crash) does not handle them
//! again. Encoded at commit time only; decoded once per assignment.
//!
//! The text is [`PREFIX`] followed by the URL-safe base64 (no padding) of:
//!
//! - the version byte ([`VERSION`]);
//! - the form byte: 0 for a bitset, 1 for runs;
//! - the base offset, a LEB128 varint: the offset committed with it (the
//!   metadata of any other offset is ignored);
//! - the span, a varint: how many offsets from the base it describes (every
//!   offset past it is unfinished);
//! - a bitset (bit `i` of byte `i / 8`, lowest first, is offset `base + i`)
//!   or runs (varint lengths, unfinished and finished in turn, unfinished
//!   first), whichever is shorter;
//! - the FNV-1a checksum (32 bits, little-endian) of all the above.
//!
//! Decoding is strict: anything that is not exactly this (another client's
//! metadata, a newer version, a wrong checksum, a length that does not add
//! up, another base) decodes to nothing finished, so a damaged string can
//! cost duplicates, never a skipped message.

use std::fmt;

/// What starts kconc's metadata.
pub(crate) const PREFIX: &str = "kconc:";
/// The format's version: what decoding accepts and encoding writes.
pub(crate) const VERSION: u8 = 1;
/// Kafka's default `offset.metadata.max.bytes`: a commit with longer
/// metadata fails as a whole.
pub(crate) const MAX_METADATA: usize = 4096;
/// The longest span decoding accepts (a bound on the memory a string can
/// make it allocate).
const MAX_SPAN: u64 = 1 << 24;

const BITSET: u8 = 0;
const RUNS: u8 = 1;
/// Version, form, base and span varints (at most 10 bytes each), checksum.
const HEADER_MAX: usize = 2 + 10 + 10 + 4;

/// A set of offsets, as sorted, disjoint half-open ranges that do not touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    ranges: Vec<(i64, i64)>,
}

impl Finished {
    /// Adds `offset`, which must be above every offset added so far (else it
    /// is ignored).
    pub(crate) fn push(&mut self, offset: i64) {
        self.push_range(offset, offset.saturating_add(1));
    }

    /// Adds `[start, end)`, which must start at or after the end of every
    /// range added so far (else only what lies past them is added).
    pub(crate) fn push_range(&mut self, start: i64, end: i64) {
        let start = self.ranges.last().map_or(start, |&(_, e)| start.max(e));
        if start >= end {
            return;
        }
        match self.ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.ranges.push((start, end)),
        }
    }

    pub(crate) fn contains(&self, offset: i64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end <= offset);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= offset)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many offsets it holds.
    pub(crate) fn count(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| (e - s) as u64).sum()
    }

    /// Its ranges, in order.
    pub(crate) fn ranges(&self) -> &[(i64, i64)] {
        &self.ranges
    }

    /// Drops every offset below `offset`.
    pub(crate) fn drop_below(&mut self, offset: i64) {
        let i = self.ranges.partition_point(|&(_, end)| end <= offset);
        self.ranges.drain(..i);
        if let Some(first) = self.ranges.first_mut() {
            first.0 = first.0.max(offset);
        }
    }

    /// One past its highest offset.
    #[cfg(test)]
    pub(crate) fn end(&self) -> Option<i64> {
        self.ranges.last().map(|&(_, e)| e)
    }
}

/// Metadata ready to commit with offset `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub(crate) text: String,
    /// Only a prefix of the finished offsets fitted in the size limit.
    pub(crate) truncated: bool,
}

/// Encodes the offsets of `finished` at or above `base`, in at most
/// `max_len` bytes of text. `None` when there are none; when not all fit,
/// the longest prefix of them that does (possibly nothing: then `text` is
/// empty), marked `truncated`.
pub(crate) fn encode(base: i64, finished: &Finished, max_len: usize) -> Option<Encoded> {
    let runs = runs_from(base, finished);
    if runs.is_empty() || base < 0 {
        return None;
    }
    let span: u64 = runs.iter().sum();
    let budget = max_len.saturating_sub(PREFIX.len()) * 3 / 4;
    let bitset_len = span.div_ceil(8);
    let runs_len: u64 = runs.iter().map(|&r| varint_len(r) as u64).sum();
    let header = 2 + varint_len(base as u64) + varint_len(span) + 4;
    let (form, span, body) = if header as u64 + bitset_len.min(runs_len) <= budget as u64 {
        if bitset_len <= runs_len {
            (BITSET, span, bitset(&runs, span))
        } else {
            (RUNS, span, runs_body(&runs))
        }
    } else {
        // The longest prefix that fits, in either form.
        let room = budget.saturating_sub(HEADER_MAX) as u64;
        let bits_span = trim_to_finished(&runs, room * 8);
        let (runs_span, runs_kept) = runs_prefix(&runs, room);
        let (form, span, body) = if bits_span >= runs_span {
            (BITSET, bits_span, bitset(&runs, bits_span))
        } else {
            (RUNS, runs_span, runs_body(&runs[..runs_kept]))
        };
        if span == 0 {
            return Some(Encoded {
                text: String::new(),
                truncated: true,
            });
        }
        let text = frame(base, form, span, &body);
        return Some(Encoded { text, truncated: true });
    };
    Some(Encoded {
        text: frame(base, form, span, &body),
        truncated: false,
    })
}

/// Why committed metadata was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not kconc's (another client's, or set by a tool).
    Foreign,
    /// kconc's, of a version this one does not read.
    Version(u8),
    /// kconc's prefix, but not a valid encoding (or a wrong checksum).
    Corrupt(&'static str),
    /// Written with another offset than the one committed now.
    OtherBase { base: i64, committed: i64 },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign => f.write_str("not written by kconc"),
            Self::Version(v) => write!(f, "format version {v}, which this kconc does not read"),
            Self::Corrupt(why) => write!(f, "damaged ({why})"),
            Self::OtherBase { base, committed } => {
                write!(f, "written for offset {base}, but offset {committed} is committed")
            }
        }
    }
}

/// The finished offsets that `metadata`, committed with offset `committed`,
/// describes. Empty metadata describes none.
pub(crate) fn decode(metadata: &[u8], committed: i64) -> Result<Finished, Rejected> {
    if metadata.is_empty() {
        return Ok(Finished::default());
    }
    let Some(b64) = metadata.strip_prefix(PREFIX.as_bytes()) else {
        return Err(Rejected::Foreign);
    };
    let bytes = base64_decode(b64).ok_or(Rejected::Corrupt("not base64"))?;
    let Some((&version, _)) = bytes.split_first() else {
        return Err(Rejected::Corrupt("empty"));
    };
    if version != VERSION {
        return Err(Rejected::Version(version));
    }
    let (data, sum) = bytes
        .split_at_checked(bytes.len().saturating_sub(4))
        .filter(|(d, _)| d.len() >= 2)
        .ok_or(Rejected::Corrupt("too short"))?;
    if fnv1a(data).to_le_bytes() != sum {
        return Err(Rejected::Corrupt("wrong checksum"));
    }
    let mut r = Reader { data, at: 2 };
    let form = data[1];
    let base = r.varint().ok_or(Rejected::Corrupt("no base offset"))?;
    let span = r.varint().ok_or(Rejected::Corrupt("no span"))?;
    let base = i64::try_from(base).map_err(|_| Rejected::Corrupt("base offset out of range"))?;
    if span > MAX_SPAN || base.checked_add(span as i64).is_none() {
        return Err(Rejected::Corrupt("span out of range"));
    }
    if base != committed {
        return Err(Rejected::OtherBase { base, committed });
    }
    let body = &data[r.at..];
    let mut out = Finished::default();
    match form {
        BITSET => {
            if body.len() as u64 != span.div_ceil(8) {
                return Err(Rejected::Corrupt("bitset length"));
            }
            for i in 0..span {
                if body[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                    out.push(base + i as i64);
                }
            }
            if span % 8 != 0 && body[body.len() - 1] >> (span % 8) != 0 {
                return Err(Rejected::Corrupt("bits past the span"));
            }
        }
        RUNS => {
            let mut r = Reader { data: body, at: 0 };
            let (mut at, mut finished) = (0u64, false);
            while r.at < body.len() {
                let len = r.varint().ok_or(Rejected::Corrupt("run length"))?;
                at = at
                    .checked_add(len)
                    .filter(|&a| a <= span)
                    .ok_or(Rejected::Corrupt("runs past the span"))?;
                if finished {
                    out.push_range(base + (at - len) as i64, base + at as i64);
                }
                finished = !finished;
            }
            if at != span {
                return Err(Rejected::Corrupt("runs short of the span"));
            }
        }
        _ => return Err(Rejected::Corrupt("unknown form")),
    }
    Ok(out)
}

/// The metadata of sorted `offsets` above `base` (what [`encode`] makes of
/// them at the size limit), and whether it was cut to fit; for the bench
/// and tests.
pub(crate) fn encode_offsets(base: i64, offsets: &[i64]) -> Option<(String, bool)> {
    let mut set = Finished::default();
    offsets.iter().for_each(|&o| set.push(o));
    encode(base, &set, MAX_METADATA).map(|e| (e.text, e.truncated))
}

/// How many offsets `metadata`, committed with `offset`, lists as finished
/// (0 for metadata kconc cannot use).
pub(crate) fn finished_count(metadata: &[u8], offset: i64) -> u64 {
    decode(metadata, offset).map_or(0, |f| f.count())
}

/// Run lengths from `base`: unfinished, finished, unfinished, ... ending
/// with a finished run (empty when nothing at or above `base` finished).
fn runs_from(base: i64, finished: &Finished) -> Vec<u64> {
    let mut runs = Vec::new();
    let mut at = base;
    for &(start, end) in finished.ranges() {
        let start = start.max(at);
        if start >= end {
            continue;
        }
        runs.push((start - at) as u64);
        runs.push((end - start) as u64);
        at = end;
    }
    runs
}

/// The bitset of the first `span` offsets the runs describe.
fn bitset(runs: &[u64], span: u64) -> Vec<u8> {
    let mut out = vec![0u8; span.div_ceil(8) as usize];
    let mut at = 0u64;
    for (i, &len) in runs.iter().enumerate() {
        if i % 2 == 1 {
            for bit in at..(at + len).min(span) {
                out[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        at += len;
        if at >= span {
            break;
        }
    }
    out
}

fn runs_body(runs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &r in runs {
        put_varint(&mut out, r);
    }
    out
}

/// The span, at most `limit`, that ends with a finished offset.
fn trim_to_finished(runs: &[u64], limit: u64) -> u64 {
    let (mut at, mut best) = (0u64, 0u64);
    for (i, &len) in runs.iter().enumerate() {
        if at >= limit {
            break;
        }
        if i % 2 == 1 {
            best = (at + len).min(limit);
        }
        at += len;
    }
    best
}

/// The longest whole (unfinished, finished) pairs of runs that fit in
/// `room` bytes: their span and how many runs.
fn runs_prefix(runs: &[u64], room: u64) -> (u64, usize) {
    let (mut used, mut span, mut kept) = (0u64, 0u64, 0usize);
    for pair in runs.chunks(2) {
        let len: u64 = pair.iter().map(|&r| varint_len(r) as u64).sum();
        if used + len > room {
            break;
        }
        used += len;
        span += pair.iter().sum::<u64>();
        kept += pair.len();
    }
    (span, kept)
}

fn frame(base: i64, form: u8, span: u64, body: &[u8]) -> String {
    let mut bytes = vec![VERSION, form];
    put_varint(&mut bytes, base as u64);
    put_varint(&mut bytes, span);
    bytes.extend_from_slice(body);
    let sum = fnv1a(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let mut text = String::with_capacity(PREFIX.len() + bytes.len().div_ceil(3) * 4);
    text.push_str(PREFIX);
    base64_encode(&bytes, &mut text);
    text
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                // The shortest form only: one value, one encoding.
                return (b != 0 || shift == 0).then_some(v);
            }
        }
        None
    }
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter()
        .fold(0x811c_9dc5_u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64_encode(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        // Bits below the last byte must be zero: one value, one encoding.
        if n & (0xff_ffff >> (8 * bytes)) != 0 {
            return None;
        }
        out.extend((0..bytes).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn set(offsets: impl IntoIterator<Item = i64>) -> Finished {
        let mut f = Finished::default();
        offsets.into_iter().for_each(|o| f.push(o));
        f
    }

    fn round_trip(base: i64, f: &Finished, max: usize) -> (Finished, Encoded) {
        let e = encode(base, f, max).expect("something to encode");
        assert!(e.text.len() <= max, "{} bytes over the limit of {max}", e.text.len());
        assert!(e.text.is_ascii());
        let back = if e.text.is_empty() {
            Finished::default()
        } else {
            decode(e.text.as_bytes(), base).expect("own encoding decodes")
        };
        (back, e)
    }

    /// Random sets of every shape: whatever decodes was in the set, and
    /// when nothing was truncated, everything was.
    #[test]
    fn random_sets_round_trip_and_a_truncated_one_is_a_prefix() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let base = [0, 1, 4096, i64::MAX / 4][case % 4] + rng.below(1000) as i64;
            let span = [0, 1, 7, 8, 9, 100, 1000, 5000, 40_000][rng.below(9) as usize];
            let density = rng.below(101);
            let mut f = Finished::default();
            for o in 1..=span {
                if rng.below(100) < density {
                    f.push(base + o as i64);
                }
            }
            if f.is_empty() {
                assert_eq!(encode(base, &f, MAX_METADATA), None);
                continue;
            }
            let max = [MAX_METADATA, 64, 200][case % 3];
            let (back, e) = round_trip(base, &f, max);
            if e.truncated {
                // A prefix: every decoded offset is in the set, and every
                // offset of the set below the decoded end is decoded.
                let end = back.end().unwrap_or(base);
                for &(s, en) in f.ranges() {
                    for o in s..en {
                        assert_eq!(back.contains(o), o < end, "case {case}: offset {o}, end {end}");
                    }
                }
                assert!(back.count() < f.count());
            } else {
                assert_eq!(back, f, "case {case}");
            }
        }
    }

    #[test]
    fn dense_sparse_alternating_and_empty_sets() {
        let dense = set(1..=3000);
        let (back, e) = round_trip(0, &dense, MAX_METADATA);
        assert_eq!(back, dense);
        assert!(e.text.len() < 30, "a dense set is one run: {}", e.text);

        let sparse = set([5, 90_000, 1_000_000]);
        let (back, e) = round_trip(0, &sparse, MAX_METADATA);
        assert_eq!(back, sparse);
        assert!(e.text.len() < 40, "a sparse set is a few runs: {}", e.text);

        let alternating = set((1..20_000).step_by(2));
        let (back, e) = round_trip(0, &alternating, MAX_METADATA);
        assert_eq!(back, alternating, "alternating offsets fit as a bitset");
        assert!(!e.truncated);

        assert_eq!(
            encode(10, &set(1..10), MAX_METADATA),
            None,
            "nothing at or above the base"
        );
        assert_eq!(decode(b"", 7), Ok(Finished::default()), "no metadata, nothing finished");
    }

    /// At the size limit: the longest prefix that fits, never over it.
    #[test]
    fn what_does_not_fit_is_cut_to_a_prefix_that_does() {
        let alternating = set((1..100_000).step_by(2));
        let (back, e) = round_trip(0, &alternating, MAX_METADATA);
        assert!(e.truncated);
        assert!(e.text.len() <= MAX_METADATA && e.text.len() > MAX_METADATA - 64);
        assert!(back.count() > 12_000, "a 4 KB bitset holds about 24,000 offsets");
        assert!(back.ranges().iter().all(|&(s, _)| s % 2 == 1));
        // Too small for even the header: nothing, marked truncated.
        let e = encode(0, &alternating, 20).unwrap();
        assert_eq!(
            e,
            Encoded {
                text: String::new(),
                truncated: true
            }
        );
    }

    #[test]
    fn other_clients_garbage_and_future_versions_are_rejected() {
        let good = encode(100, &set([101, 102, 150]), MAX_METADATA).unwrap().text;
        assert!(decode(good.as_bytes(), 100).is_ok());
        for foreign in [&b"some app's note"[..], b"{\"v\":1}", b"\xff\xfe", b"kconc"] {
            assert_eq!(decode(foreign, 100), Err(Rejected::Foreign));
        }
        for garbage in ["kconc:", "kconc:!!!!", "kconc:A", "kconc:AQ", "kconc:AQAAAAAAAAA"] {
            assert!(
                matches!(decode(garbage.as_bytes(), 100), Err(Rejected::Corrupt(_))),
                "{garbage}"
            );
        }
        // Any single changed character is caught.
        for i in PREFIX.len()..good.len() {
            for c in [b'A', b'z', b'0', b'_'] {
                let mut bad = good.clone().into_bytes();
                if bad[i] == c {
                    continue;
                }
                bad[i] = c;
                assert!(decode(&bad, 100).is_err(), "{}", String::from_utf8_lossy(&bad));
            }
        }
        // Cut short.
        for n in PREFIX.len()..good.len() {
            assert!(decode(&good.as_bytes()[..n], 100).is_err());
        }
        // Another base: committed with another offset.
        assert_eq!(
            decode(good.as_bytes(), 101),
            Err(Rejected::OtherBase {
                base: 100,
                committed: 101
            })
        );
        // A future version, with a valid checksum.
        let mut bytes = vec![VERSION + 1, BITSET, 100, 2, 3];
        bytes.extend_from_slice(&fnv1a(&bytes).to_le_bytes());
        let mut future = PREFIX.to_owned();
        base64_encode(&bytes, &mut future);
        assert_eq!(decode(future.as_bytes(), 100), Err(Rejected::Version(VERSION + 1)));
    }

    #[test]
    fn base64_matches_the_standard_url_safe_alphabet() {
        let mut s = String::new();
        base64_encode(b"\xfb\xff\xbf", &mut s);
        assert_eq!(s, "-_-_");
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 5) as u8).collect();
            let mut s = String::new();
            base64_encode(&bytes, &mut s);
            assert_eq!(base64_decode(s.as_bytes()), Some(bytes));
        }
    }

    #[test]
    fn the_set_keeps_ranges_merged_and_drops_below() {
        let mut f = set([3, 4, 5, 9]);
        f.push(4);
        f.push_range(10, 12);
        assert_eq!(f.ranges(), &[(3, 6), (9, 12)]);
        assert!(f.contains(3) && f.contains(11) && !f.contains(6) && !f.contains(12));
        f.drop_below(4);
        assert_eq!(f.ranges(), &[(4, 6), (9, 12)]);
        f.drop_below(10);
        assert_eq!(f.ranges(), &[(10, 12)]);
        assert_eq!(f.count(), 2);
    }
    /// Known answers, computed apart from this code (Python's `base64`
    /// and a plain FNV-1a): the format is pinned, checksum and all.
    #[test]
    fn the_encoding_is_the_documented_format() {
        assert_eq!(
            (fnv1a(b""), fnv1a(b"a"), fnv1a(b"kconc")),
            (0x811c_9dc5, 0xe40c_292c, 0x20a1_e5bf)
        );
        let e = encode(10, &set([12]), MAX_METADATA).unwrap();
        assert_eq!(
            (e.text.as_str(), e.truncated),
            ("kconc:AQAKAwQdFWoe", false),
            "a bitset"
        );
        let e = encode(300, &set([1300, 1301]), MAX_METADATA).unwrap();
        assert_eq!(e.text, "kconc:AQGsAuoH6AcCo_ltcA", "runs, a two-byte base");
        let e = encode(0, &set([1, 8]), MAX_METADATA).unwrap();
        assert_eq!(e.text, "kconc:AQAACQIBMrLNfQ", "a two-byte bitset");
        assert_eq!(decode(b"kconc:AQAKAwQdFWoe", 10).unwrap().ranges(), &[(12, 13)]);
        assert_eq!(
            decode(b"kconc:AQGsAuoH6AcCo_ltcA", 300).unwrap().ranges(),
            &[(1300, 1302)]
        );
        assert_eq!(decode(b"kconc:AQAACQIBMrLNfQ", 0).unwrap().ranges(), &[(1, 2), (8, 9)]);
        assert_eq!(
            encode_offsets(10, &[12]),
            Some(("kconc:AQAKAwQdFWoe".to_owned(), false))
        );
        assert_eq!(encode_offsets(10, &[]), None);
        assert_eq!(finished_count(b"kconc:AQGsAuoH6AcCo_ltcA", 300), 2);
        assert_eq!(finished_count(b"kconc:AQGsAuoH6AcCo_ltcA", 301), 0, "another base");
        assert_eq!(encode(-1, &set([3]), MAX_METADATA), None, "no offset committed yet");
    }

    /// The text of `bytes` with their checksum, as `frame` writes it.
    fn framed(bytes: &[u8]) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes.extend_from_slice(&fnv1a(&bytes).to_le_bytes());
        let mut text = PREFIX.to_owned();
        base64_encode(&bytes, &mut text);
        text.into_bytes()
    }

    #[test]
    fn each_damage_is_named() {
        let corrupt = |bytes: &[u8]| decode(&framed(bytes), 10);
        let v = VERSION;
        assert_eq!(
            corrupt(&[v, RUNS, 10, 3, 1, 3]),
            Err(Rejected::Corrupt("runs past the span"))
        );
        assert_eq!(
            corrupt(&[v, RUNS, 10, 3, 1, 1]),
            Err(Rejected::Corrupt("runs short of the span"))
        );
        assert_eq!(corrupt(&[v, RUNS, 10, 3, 1, 2]).unwrap().ranges(), &[(11, 13)]);
        assert_eq!(corrupt(&[v, RUNS, 10, 3, 0x81]), Err(Rejected::Corrupt("run length")));
        assert_eq!(
            corrupt(&[v, BITSET, 10, 3, 4, 0]),
            Err(Rejected::Corrupt("bitset length"))
        );
        assert_eq!(
            corrupt(&[v, BITSET, 10, 3, 0x0c]),
            Err(Rejected::Corrupt("bits past the span"))
        );
        assert_eq!(
            corrupt(&[v, BITSET, 10, 8, 0x80]).unwrap().ranges(),
            &[(17, 18)],
            "a full byte"
        );
        assert_eq!(corrupt(&[v, 7, 10, 3, 4]), Err(Rejected::Corrupt("unknown form")));
        assert_eq!(corrupt(&[v, BITSET]), Err(Rejected::Corrupt("no base offset")));
        assert_eq!(corrupt(&[v, BITSET, 10]), Err(Rejected::Corrupt("no span")));
        assert_eq!(
            corrupt(&[v, BITSET, 0x8a, 0x00, 3, 4]),
            Err(Rejected::Corrupt("no base offset")),
            "a varint not in its shortest form"
        );
        let mut huge = vec![v, BITSET];
        put_varint(&mut huge, u64::MAX);
        huge.extend([3, 4]);
        assert_eq!(corrupt(&huge), Err(Rejected::Corrupt("base offset out of range")));
        let mut wide = vec![v, BITSET, 10];
        put_varint(&mut wide, MAX_SPAN + 1);
        assert_eq!(corrupt(&wide), Err(Rejected::Corrupt("span out of range")));
        let mut edge = vec![v, BITSET];
        put_varint(&mut edge, i64::MAX as u64);
        edge.push(1);
        assert_eq!(
            corrupt(&edge),
            Err(Rejected::Corrupt("span out of range")),
            "past i64::MAX"
        );
        assert_eq!(corrupt(&[v]), Err(Rejected::Corrupt("too short")));
        let mut wrong = framed(&[v, BITSET, 10, 3, 4]);
        wrong.pop();
        wrong.push(b'A');
        assert_eq!(decode(&wrong, 10), Err(Rejected::Corrupt("wrong checksum")));
        assert_eq!(decode(b"kconc:", 10), Err(Rejected::Corrupt("empty")));
        assert_eq!(decode(b"", 10), Ok(Finished::default()));
        // What the log says of each.
        assert_eq!(Rejected::Foreign.to_string(), "not written by kconc");
        assert_eq!(
            Rejected::Version(2).to_string(),
            "format version 2, which this kconc does not read"
        );
        assert_eq!(Rejected::Corrupt("x").to_string(), "damaged (x)");
        assert_eq!(
            Rejected::OtherBase { base: 1, committed: 2 }.to_string(),
            "written for offset 1, but offset 2 is committed"
        );
    }

    #[test]
    fn varints_are_leb128() {
        for (v, bytes) in [
            (0u64, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len(), "{v}");
            assert_eq!(Reader { data: bytes, at: 0 }.varint(), Some(v), "{v}");
        }
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!((out.len(), varint_len(u64::MAX)), (10, 10));
        assert_eq!(Reader { data: &out, at: 0 }.varint(), Some(u64::MAX));
        assert_eq!(Reader { data: &[0x80], at: 0 }.varint(), None, "cut short");
    }

    /// The prefixes a cut keeps: whole (unfinished, finished) pairs of
    /// runs within the room, or a bitset span that ends finished.
    #[test]
    fn a_cut_keeps_whole_pairs_or_ends_finished() {
        let runs = [2, 3, 200, 1];
        assert_eq!(runs_prefix(&runs, 2), (5, 2));
        assert_eq!(runs_prefix(&runs, 4), (5, 2), "200 takes two bytes");
        assert_eq!(runs_prefix(&runs, 5), (206, 4));
        assert_eq!(runs_prefix(&runs, 1), (0, 0));
        assert_eq!(trim_to_finished(&runs, 4), 4, "inside the first finished run");
        assert_eq!(trim_to_finished(&runs, 100), 5, "the first finished run's end");
        assert_eq!(trim_to_finished(&runs, 1000), 206);
        assert_eq!(trim_to_finished(&runs, 2), 0, "nothing finished yet");
        assert_eq!(bitset(&runs, 6), [0b0001_1100]);
    }

    /// The size limit holds to the byte, whatever the header takes: a set
    /// whose whole bitset fits exactly is not cut; one byte more is, and
    /// the cut still fits, with the longest base offset too.
    #[test]
    fn the_limit_holds_to_the_byte() {
        // Base 0 (1 byte), span 24,456 (3 bytes): 2 + 1 + 3 + 4 + 3,057 =
        // 3,067 bytes, all that 4,090 characters of base64 hold.
        let odd = |span: i64| set((1..span).step_by(2));
        let e = encode(0, &odd(24_456), MAX_METADATA).unwrap();
        assert!(!e.truncated && e.text.len() <= MAX_METADATA, "{}", e.text.len());
        let e = encode(0, &odd(24_464), MAX_METADATA).unwrap();
        assert!(e.truncated && e.text.len() <= MAX_METADATA, "{}", e.text.len());
        // The longest header (a 9-byte base): the cut fits, and fills the
        // room the bound leaves.
        let base = i64::MAX / 2;
        let far = set((1..100_000).step_by(2).map(|o| base + o));
        let e = encode(base, &far, MAX_METADATA).unwrap();
        assert!(e.truncated && e.text.len() <= MAX_METADATA, "{}", e.text.len());
        assert!(e.text.len() > MAX_METADATA - 16, "{}", e.text.len());
        // The longest real header, 19 bytes (a 4-byte span), in the runs
        // form, with pairs of runs that fill the room to the byte: one of
        // 4 bytes, then pairs of 3. The bound (26) leaves room for it.
        let mut sparse = vec![base + 16_384];
        for _ in 0..3_000 {
            sparse.push(sparse[sparse.len() - 1] + 2_101);
        }
        let e = encode(base, &set(sparse), MAX_METADATA).unwrap();
        assert!(e.truncated && e.text.len() <= MAX_METADATA, "{}", e.text.len());
        let back = decode(e.text.as_bytes(), base).unwrap();
        assert!(back.ranges().last().unwrap().1 - base > 1 << 21, "a 4-byte span");
    }

    #[test]
    fn the_longest_span_is_read_and_one_more_is_not() {
        let runs = |span: u64| {
            let mut bytes = vec![VERSION, RUNS, 0];
            put_varint(&mut bytes, span);
            put_varint(&mut bytes, span - 1);
            put_varint(&mut bytes, 1);
            decode(&framed(&bytes), 0)
        };
        assert_eq!(runs(MAX_SPAN).unwrap().count(), 1);
        assert_eq!(runs(MAX_SPAN + 1), Err(Rejected::Corrupt("span out of range")));
        assert_eq!(base64_decode(b"A"), None, "one character too many");
        assert_eq!(base64_decode(b"AAAAA"), None);
    }
}
