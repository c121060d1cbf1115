//! BPE merges over counted unique chunks ("words").
//!
//! Words are stored flat as token ids and shrink in place as merges happen.
//! For every pair we keep its total count and the sorted list of words it may
//! occur in, as a slice of one shared arena (entries can go stale; a stale word
//! simply contains no occurrence). Merging a pair only visits its words and
//! updates the counts of the neighbouring pairs. Merge candidates live in a
//! max-heap with lazy invalidation: a popped entry whose count is out of date is
//! pushed back with its current count. A pair's count can only grow during the
//! merge step that creates it, so heap entries are always upper bounds and the
//! first up-to-date entry popped is the true best.
//!
//! Rule for choosing a merge: highest count; ties go to the smallest pair
//! (left id, then right id). A pair whose concatenated bytes already form a
//! token is skipped for good, so the exported ranks are always unique. (With
//! greedy left-to-right merging this cannot actually happen; the check is a
//! cheap safeguard for the tiktoken export.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ahash::{AHashMap, AHashSet};
use rayon::prelude::*;

use crate::count::ChunkTable;

#[inline(always)]
fn pack(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
fn unpack(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

const BYTE_PAIRS: usize = 256 * 256;

/// Error from training: the caller turns it into a Python `ValueError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainError {
    EmptyCorpus,
    TooSmall { reached: usize, wanted: usize },
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::EmptyCorpus => write!(f, "empty corpus: the texts produced no chunks to train on"),
            TrainError::TooSmall { reached, wanted } => {
                write!(f, "corpus too small for vocab_size {}: no pairs left to merge after {} tokens", wanted, reached)
            }
        }
    }
}

struct Trainer {
    // Words: token ids stored flat; word w is ids[start[w] .. start[w] + len[w]].
    ids: Vec<u32>,
    start: Vec<usize>,
    len: Vec<u32>,
    wcount: Vec<i64>,
    // Pairs. Byte pairs (a, b) have pid a * 256 + b; later pairs get the next pid and are
    // found through `index`. The words a pair may occur in (sorted, no duplicates) are
    // arena[pos_start[pid] .. pos_start[pid] + pos_len[pid]].
    index: AHashMap<u64, u32>,
    pkey: Vec<u64>,
    pcount: Vec<i64>,
    pos_start: Vec<usize>,
    pos_len: Vec<u32>,
    arena: Vec<u32>,
    live: usize, // arena entries still referenced
    // Per merge step: pid of (x, c) / (c, x) for the new token c, valid while stamp == c.
    left_pid: Vec<u32>,
    left_stamp: Vec<u32>,
    right_pid: Vec<u32>,
    right_stamp: Vec<u32>,
    step_first_pid: usize,
    step_pos: Vec<(u32, u32)>, // (pid, word) for pairs created in this step
}

impl Trainer {
    fn from_tables(tables: Vec<ChunkTable>, vocab_size: usize) -> Trainer {
        let mut n_words = 0usize;
        let mut n_ids = 0usize;
        for t in tables.iter() {
            for i in 0..t.len() {
                let k = t.key(i).len();
                if k >= 2 {
                    n_words += 1;
                    n_ids += k;
                }
            }
        }
        assert!(n_words < u32::MAX as usize, "too many unique chunks");
        let mut ids = Vec::with_capacity(n_ids);
        let mut start = Vec::with_capacity(n_words);
        let mut len = Vec::with_capacity(n_words);
        let mut wcount = Vec::with_capacity(n_words);
        for t in tables.into_iter() {
            for i in 0..t.len() {
                let k = t.key(i);
                if k.len() >= 2 {
                    start.push(ids.len());
                    len.push(k.len() as u32);
                    wcount.push(t.count(i) as i64);
                    ids.extend(k.iter().map(|&b| b as u32));
                }
            }
            // each table is freed as soon as it has been copied
        }
        let mut tr = Trainer {
            ids,
            start,
            len,
            wcount,
            index: AHashMap::new(),
            pkey: (0..BYTE_PAIRS as u32).map(|i| pack(i / 256, i % 256)).collect(),
            pcount: Vec::new(),
            pos_start: Vec::new(),
            pos_len: Vec::new(),
            arena: Vec::new(),
            live: 0,
            left_pid: vec![0; vocab_size],
            left_stamp: vec![u32::MAX; vocab_size],
            right_pid: vec![0; vocab_size],
            right_stamp: vec![u32::MAX; vocab_size],
            step_first_pid: 0,
            step_pos: Vec::new(),
        };
        tr.count_byte_pairs();
        tr
    }

    /// Initial pair counts and positions (all pairs are byte pairs).
    fn count_byte_pairs(&mut self) {
        let n_words = self.len.len();
        let parts = (rayon::current_num_threads() * 2).max(1);
        let step = (n_words + parts - 1) / parts;
        let ranges: Vec<(usize, usize)> =
            (0..parts).map(|p| (p * step, ((p + 1) * step).min(n_words))).filter(|r| r.0 < r.1).collect();
        let (ids, start, len, wcount) = (&self.ids, &self.start, &self.len, &self.wcount);
        let word_pairs = |w: usize| {
            let s = &ids[start[w]..start[w] + len[w] as usize];
            s.windows(2).map(|p| (p[0] * 256 + p[1]) as usize)
        };
        // Pass 1 (parallel): counts and the number of distinct words per pair.
        let partial: Vec<(Vec<i64>, Vec<u32>)> = ranges
            .par_iter()
            .map(|&(lo, hi)| {
                let mut counts = vec![0i64; BYTE_PAIRS];
                let mut words = vec![0u32; BYTE_PAIRS];
                let mut last = vec![u32::MAX; BYTE_PAIRS];
                for (w, &c) in wcount.iter().enumerate().take(hi).skip(lo) {
                    for pid in word_pairs(w) {
                        counts[pid] += c;
                        if last[pid] != w as u32 {
                            last[pid] = w as u32;
                            words[pid] += 1;
                        }
                    }
                }
                (counts, words)
            })
            .collect();
        let mut pcount = vec![0i64; BYTE_PAIRS];
        let mut pos_len = vec![0u32; BYTE_PAIRS];
        for (counts, words) in partial.iter() {
            for pid in 0..BYTE_PAIRS {
                pcount[pid] += counts[pid];
                pos_len[pid] += words[pid];
            }
        }
        drop(partial);
        let mut pos_start = vec![0usize; BYTE_PAIRS];
        let mut total = 0usize;
        for pid in 0..BYTE_PAIRS {
            pos_start[pid] = total;
            total += pos_len[pid] as usize;
        }
        // Pass 2: fill the arena in word order, so every list is sorted.
        let mut arena = vec![0u32; total];
        let mut fill = pos_start.clone();
        let mut last = vec![u32::MAX; BYTE_PAIRS];
        for w in 0..n_words {
            for pid in word_pairs(w) {
                if last[pid] != w as u32 {
                    last[pid] = w as u32;
                    arena[fill[pid]] = w as u32;
                    fill[pid] += 1;
                }
            }
        }
        self.pcount = pcount;
        self.pos_start = pos_start;
        self.pos_len = pos_len;
        self.arena = arena;
        self.live = total;
    }

    #[inline(always)]
    fn pid_of(&self, a: u32, b: u32) -> usize {
        if a < 256 && b < 256 {
            (a * 256 + b) as usize
        } else {
            self.index[&pack(a, b)] as usize
        }
    }

    #[inline(always)]
    fn new_pair(&mut self, a: u32, b: u32) -> u32 {
        let pid = self.pkey.len() as u32;
        let k = pack(a, b);
        self.index.insert(k, pid);
        self.pkey.push(k);
        self.pcount.push(0);
        self.pos_start.push(0);
        self.pos_len.push(0);
        pid
    }

    /// Count `delta` more for pair (x, c), c being the token made in this step.
    #[inline(always)]
    fn add_left(&mut self, x: u32, c: u32, delta: i64, w: u32) {
        let xi = x as usize;
        let pid = if self.left_stamp[xi] == c {
            self.left_pid[xi]
        } else {
            let pid = self.new_pair(x, c);
            self.left_stamp[xi] = c;
            self.left_pid[xi] = pid;
            pid
        };
        self.pcount[pid as usize] += delta;
        self.step_pos.push((pid, w));
    }

    /// Count `delta` more for pair (c, y).
    #[inline(always)]
    fn add_right(&mut self, c: u32, y: u32, delta: i64, w: u32) {
        let yi = y as usize;
        let pid = if self.right_stamp[yi] == c {
            self.right_pid[yi]
        } else {
            let pid = self.new_pair(c, y);
            self.right_stamp[yi] = c;
            self.right_pid[yi] = pid;
            pid
        };
        self.pcount[pid as usize] += delta;
        self.step_pos.push((pid, w));
    }

    #[inline(always)]
    fn sub(&mut self, pid: usize, delta: i64) {
        self.pcount[pid] -= delta;
    }

    /// Replace every non-overlapping occurrence (left to right) of `(a, b)` in
    /// word `w` by `c`, updating pair counts; pairs with `c` are recorded in `step_pos`.
    fn merge_word(&mut self, w: u32, pid_ab: usize, a: u32, b: u32, c: u32) {
        let wi = w as usize;
        let s = self.start[wi];
        let n = self.len[wi] as usize;
        let cnt = self.wcount[wi];
        let mut i = 0;
        let mut out = 0;
        while i < n {
            let t = self.ids[s + i];
            if t == a && i + 1 < n && self.ids[s + i + 1] == b {
                self.sub(pid_ab, cnt);
                if out > 0 {
                    let x = self.ids[s + out - 1];
                    // (x, a) disappears, (x, c) appears; x may be a `c` made just before
                    let p = if x == c { self.right_pid[a as usize] as usize } else { self.pid_of(x, a) };
                    self.sub(p, cnt);
                    self.add_left(x, c, cnt, w);
                }
                if i + 2 < n {
                    let y = self.ids[s + i + 2];
                    let p = self.pid_of(b, y);
                    self.sub(p, cnt);
                    self.add_right(c, y, cnt, w);
                }
                self.ids[s + out] = c;
                out += 1;
                i += 2;
            } else {
                self.ids[s + out] = t;
                out += 1;
                i += 1;
            }
        }
        self.len[wi] = out as u32;
    }

    /// Merge pair `pid` = (a, b) into the new token `c` everywhere; returns the new pairs.
    fn merge(&mut self, pid: usize, a: u32, b: u32, c: u32) -> std::ops::Range<usize> {
        self.step_first_pid = self.pkey.len();
        self.step_pos.clear();
        let (ps, pl) = (self.pos_start[pid], self.pos_len[pid] as usize);
        for k in ps..ps + pl {
            let w = self.arena[k];
            self.merge_word(w, pid, a, b, c);
        }
        debug_assert_eq!(self.pcount[pid], 0);
        self.pos_len[pid] = 0;
        self.live -= pl;
        self.store_step_positions();
        self.step_first_pid..self.pkey.len()
    }

    /// Append the positions of this step's new pairs to the arena (counting sort by
    /// pid; words arrive in increasing order, so each list comes out sorted).
    fn store_step_positions(&mut self) {
        let first = self.step_first_pid;
        let n_new = self.pkey.len() - first;
        if n_new == 0 {
            return;
        }
        // count distinct words per new pair (pushes for one word are consecutive per pid)
        let mut counts = vec![0u32; n_new];
        let mut last = vec![u32::MAX; n_new];
        for &(pid, w) in self.step_pos.iter() {
            let j = pid as usize - first;
            if self.pcount[pid as usize] > 0 && last[j] != w {
                last[j] = w;
                counts[j] += 1;
            }
        }
        if self.arena.len() > 2 * self.live + (1 << 20) {
            self.compact_arena();
        }
        let base = self.arena.len();
        let mut total = 0usize;
        let mut offsets = vec![0usize; n_new];
        for j in 0..n_new {
            offsets[j] = base + total;
            self.pos_start[first + j] = base + total;
            self.pos_len[first + j] = counts[j];
            total += counts[j] as usize;
        }
        self.arena.resize(base + total, 0);
        for x in last.iter_mut() {
            *x = u32::MAX;
        }
        for &(pid, w) in self.step_pos.iter() {
            let j = pid as usize - first;
            if self.pcount[pid as usize] > 0 && last[j] != w {
                last[j] = w;
                self.arena[offsets[j]] = w;
                offsets[j] += 1;
            }
        }
        self.live += total;
    }

    /// Drop the arena entries that no pair refers to any more.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.live + self.step_pos.len());
        for pid in 0..self.pkey.len() {
            let l = self.pos_len[pid] as usize;
            if l > 0 {
                let s = self.pos_start[pid];
                self.pos_start[pid] = arena.len();
                arena.extend_from_slice(&self.arena[s..s + l]);
            }
        }
        self.arena = arena;
    }

    /// Forget the positions of a pair that will never be merged.
    fn drop_positions(&mut self, pid: usize) {
        self.live -= self.pos_len[pid] as usize;
        self.pos_len[pid] = 0;
    }
}

/// Learn merges until the vocabulary has `vocab_size` tokens (256 bytes included).
/// Returns the bytes of every token, indexed by id (= rank).
pub fn train_tables(tables: Vec<ChunkTable>, total_chunks: u64, vocab_size: usize) -> Result<Vec<Vec<u8>>, TrainError> {
    if total_chunks == 0 {
        return Err(TrainError::EmptyCorpus);
    }
    let mut tokens: Vec<Vec<u8>> = (0..256u32).map(|b| vec![b as u8]).collect();
    if vocab_size <= 256 {
        tokens.truncate(vocab_size);
        return Ok(tokens);
    }
    assert!(vocab_size < u32::MAX as usize, "vocab_size too large");
    let mut tr = Trainer::from_tables(tables, vocab_size);
    let mut known: AHashSet<Vec<u8>> = tokens.iter().cloned().collect();

    // Max-heap on (count, smallest pair first).
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = BinaryHeap::with_capacity(BYTE_PAIRS);
    for pid in 0..BYTE_PAIRS {
        if tr.pcount[pid] > 0 {
            heap.push((tr.pcount[pid], Reverse(tr.pkey[pid])));
        }
    }

    while tokens.len() < vocab_size {
        let Some((cnt, Reverse(key))) = heap.pop() else {
            return Err(TrainError::TooSmall { reached: tokens.len(), wanted: vocab_size });
        };
        let (a, b) = unpack(key);
        let pid = tr.pid_of(a, b);
        let current = tr.pcount[pid];
        if current != cnt {
            if current > 0 {
                heap.push((current, Reverse(key)));
            } else {
                tr.drop_positions(pid);
            }
            continue;
        }
        let mut bytes = Vec::with_capacity(tokens[a as usize].len() + tokens[b as usize].len());
        bytes.extend_from_slice(&tokens[a as usize]);
        bytes.extend_from_slice(&tokens[b as usize]);
        if known.contains(&bytes) {
            // would duplicate an existing token: skip this pair for good
            tr.drop_positions(pid);
            continue;
        }
        let c = tokens.len() as u32;
        known.insert(bytes.clone());
        tokens.push(bytes);

        for q in tr.merge(pid, a, b, c) {
            if tr.pcount[q] > 0 {
                heap.push((tr.pcount[q], Reverse(tr.pkey[q])));
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::ChunkCounter;
    use crate::pretok::{Splitter, GPT4_PATTERN};

    fn train_texts(texts: &[&str], vocab: usize) -> Result<Vec<Vec<u8>>, TrainError> {
        let mut c = ChunkCounter::new(Splitter::new(GPT4_PATTERN).unwrap());
        c.add_batch(texts).unwrap();
        let total = c.total_chunks();
        train_tables(c.into_shards(), total, vocab)
    }

    /// Straightforward BPE: recount every pair for every merge.
    fn naive(words: &[(Vec<u8>, i64)], vocab: usize) -> Result<Vec<Vec<u8>>, TrainError> {
        let mut tokens: Vec<Vec<u8>> = (0..256u32).map(|b| vec![b as u8]).collect();
        let mut ws: Vec<(Vec<u32>, i64)> =
            words.iter().map(|(w, c)| (w.iter().map(|&b| b as u32).collect(), *c)).collect();
        let mut banned: std::collections::BTreeSet<(u32, u32)> = Default::default();
        while tokens.len() < vocab {
            let mut counts: std::collections::BTreeMap<(u32, u32), i64> = Default::default();
            for (w, c) in ws.iter() {
                for p in w.windows(2) {
                    *counts.entry((p[0], p[1])).or_default() += c;
                }
            }
            let mut best: Option<((u32, u32), i64)> = None;
            for (&p, &c) in counts.iter() {
                if c > 0 && !banned.contains(&p) && best.map_or(true, |(_, bc)| c > bc) {
                    best = Some((p, c));
                }
            }
            let Some(((a, b), _)) = best else {
                return Err(TrainError::TooSmall { reached: tokens.len(), wanted: vocab });
            };
            let mut bytes = tokens[a as usize].clone();
            bytes.extend_from_slice(&tokens[b as usize]);
            if tokens.contains(&bytes) {
                banned.insert((a, b));
                continue;
            }
            let c = tokens.len() as u32;
            tokens.push(bytes);
            for (w, _) in ws.iter_mut() {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(c);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
            }
        }
        Ok(tokens)
    }

    fn naive_texts(texts: &[&str], vocab: usize) -> Result<Vec<Vec<u8>>, TrainError> {
        let s = Splitter::new(GPT4_PATTERN).unwrap();
        let mut m: std::collections::BTreeMap<Vec<u8>, i64> = Default::default();
        for t in texts {
            s.for_each(t, |c| *m.entry(c.as_bytes().to_vec()).or_default() += 1).unwrap();
        }
        let words: Vec<(Vec<u8>, i64)> = m.into_iter().collect();
        naive(&words, vocab)
    }

    #[test]
    fn matches_naive_bpe() {
        let texts = [
            "aaaa aaa aa a abab ababab bababa",
            "the cat sat on the mat; the cat ate the rat. 1234567 12 123",
            "hello hello hello world worlds wordy words 'll 've 're",
        ];
        for vocab in [256, 257, 270, 300] {
            assert_eq!(train_texts(&texts, vocab), naive_texts(&texts, vocab), "vocab {}", vocab);
        }
    }

    #[test]
    fn matches_naive_bpe_on_random_corpora() {
        let mut rng = crate::pretok::tests::Rng::new(7);
        let letters = ["a", "b", "c", "ab", " ", "é", "x", "\n", "1", "."];
        for round in 0..150 {
            let n_docs = 1 + rng.below(5);
            let docs: Vec<String> =
                (0..n_docs).map(|_| (0..rng.below(60)).map(|_| letters[rng.below(letters.len())]).collect()).collect();
            let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
            let vocab = 256 + rng.below(40);
            let got = train_texts(&refs, vocab);
            let want = naive_texts(&refs, vocab);
            assert_eq!(got, want, "round {} docs {:?} vocab {}", round, docs, vocab);
        }
    }

    #[test]
    fn token_bytes_are_unique() {
        // Greedy left-to-right merging can never build the same bytes twice, but the
        // trainer checks anyway; make sure the output is always loadable as ranks.
        let mut rng = crate::pretok::tests::Rng::new(11);
        for _ in 0..60 {
            let docs: Vec<String> = (0..1 + rng.below(6))
                .map(|_| (0..rng.below(80)).map(|_| ["a", "b", "aa", "ab"][rng.below(4)]).collect())
                .collect();
            let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
            let got = match train_texts(&refs, 100_000) {
                Err(TrainError::TooSmall { reached, .. }) => train_texts(&refs, reached).unwrap(),
                other => panic!("unexpected {:?}", other),
            };
            let set: std::collections::HashSet<&Vec<u8>> = got.iter().collect();
            assert_eq!(set.len(), got.len());
            assert_eq!(Ok(got.clone()), naive_texts(&refs, got.len()));
        }
    }

    #[test]
    fn errors() {
        assert_eq!(train_texts(&[""], 300), Err(TrainError::EmptyCorpus));
        assert_eq!(train_texts(&[], 256), Err(TrainError::EmptyCorpus));
        assert!(matches!(train_texts(&["ab ab"], 300), Err(TrainError::TooSmall { .. })));
        assert_eq!(train_texts(&["a"], 256).unwrap().len(), 256);
    }

    #[test]
    fn deterministic_across_threads() {
        let texts: Vec<String> =
            (0..400).map(|i| format!("token {} and {} more words, {}x{}", i, i * 7, i % 13, i % 5)).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut c = ChunkCounter::new(Splitter::new(GPT4_PATTERN).unwrap());
                for b in texts.chunks(37) {
                    c.add_batch(b).unwrap();
                }
                let total = c.total_chunks();
                train_tables(c.into_shards(), total, 400).unwrap()
            })
        };
        assert_eq!(run(1), run(4));
    }
}
