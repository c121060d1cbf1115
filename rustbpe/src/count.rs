//! Counting unique chunks of a streamed corpus.
//!
//! Chunks are stored once each in a byte arena, indexed by an open-addressing
//! table keyed by a fixed-seed hash. The global table is split into shards by
//! hash so that merging the per-thread tables of a batch runs in parallel too.

use std::hash::{BuildHasher, Hasher};

use rayon::prelude::*;

use crate::pretok::Splitter;

const SHARD_BITS: u32 = 4;
const NUM_SHARDS: usize = 1 << SHARD_BITS;

#[inline(always)]
fn hash_bytes(state: &ahash::RandomState, bytes: &[u8]) -> u64 {
    let mut h = state.build_hasher();
    h.write(bytes);
    h.finish()
}

fn hash_state() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    )
}

#[inline(always)]
fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

/// Map from byte strings to counts; keys live in one arena.
pub struct ChunkTable {
    slots: Vec<u32>, // 0 = empty, otherwise entry index + 1
    hashes: Vec<u64>,
    ends: Vec<u64>, // entry i spans arena[ends[i-1]..ends[i]] (ends[-1] = 0)
    counts: Vec<u64>,
    arena: Vec<u8>,
}

impl Default for ChunkTable {
    fn default() -> Self {
        ChunkTable::new()
    }
}

impl ChunkTable {
    pub fn new() -> ChunkTable {
        ChunkTable { slots: vec![0; 1024], hashes: Vec::new(), ends: Vec::new(), counts: Vec::new(), arena: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    #[inline(always)]
    pub fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    pub fn count(&self, i: usize) -> u64 {
        self.counts[i]
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let mask = cap - 1;
        let mut slots = vec![0u32; cap];
        for (i, &h) in self.hashes.iter().enumerate() {
            let mut s = (h as usize) & mask;
            while slots[s] != 0 {
                s = (s + 1) & mask;
            }
            slots[s] = i as u32 + 1;
        }
        self.slots = slots;
    }

    /// Add `count` to the entry for `key` (whose hash is `hash`).
    #[inline]
    pub fn add(&mut self, key: &[u8], hash: u64, count: u64) {
        let mask = self.slots.len() - 1;
        let mut s = (hash as usize) & mask;
        loop {
            let e = self.slots[s];
            if e == 0 {
                break;
            }
            let i = (e - 1) as usize;
            if self.hashes[i] == hash && self.key(i) == key {
                self.counts[i] += count;
                return;
            }
            s = (s + 1) & mask;
        }
        assert!(self.counts.len() < u32::MAX as usize - 1, "too many unique chunks");
        self.slots[s] = self.counts.len() as u32 + 1;
        self.hashes.push(hash);
        self.arena.extend_from_slice(key);
        self.ends.push(self.arena.len() as u64);
        self.counts.push(count);
        if self.counts.len() * 2 > self.slots.len() {
            self.grow();
        }
    }

    /// Add every entry of `other` into `self`.
    pub fn absorb(&mut self, other: &ChunkTable) {
        for i in 0..other.len() {
            self.add(other.key(i), other.hashes[i], other.counts[i]);
        }
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4
            + self.hashes.capacity() * 8
            + self.ends.capacity() * 8
            + self.counts.capacity() * 8
            + self.arena.capacity()
    }
}

/// Counts chunks over batches of documents.
pub struct ChunkCounter {
    splitter: Splitter,
    state: ahash::RandomState,
    shards: Vec<ChunkTable>,
    total_chunks: u64,
}

impl ChunkCounter {
    pub fn new(splitter: Splitter) -> ChunkCounter {
        ChunkCounter {
            splitter,
            state: hash_state(),
            shards: (0..NUM_SHARDS).map(|_| ChunkTable::new()).collect(),
            total_chunks: 0,
        }
    }

    pub fn total_chunks(&self) -> u64 {
        self.total_chunks
    }

    pub fn unique_chunks(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Split and count one batch of documents, in parallel.
    pub fn add_batch<S: AsRef<str> + Sync>(&mut self, docs: &[S]) -> Result<(), String> {
        if docs.is_empty() {
            return Ok(());
        }
        // Cut the batch into contiguous parts of similar byte size, a few per thread.
        let parts_wanted = (rayon::current_num_threads() * 3).max(1);
        let total: usize = docs.iter().map(|d| d.as_ref().len()).sum();
        let target = total / parts_wanted + 1;
        let mut parts: Vec<&[S]> = Vec::with_capacity(parts_wanted + 1);
        let mut start = 0;
        let mut acc = 0;
        for (i, d) in docs.iter().enumerate() {
            acc += d.as_ref().len();
            if acc >= target {
                parts.push(&docs[start..=i]);
                start = i + 1;
                acc = 0;
            }
        }
        if start < docs.len() {
            parts.push(&docs[start..]);
        }

        let splitter = &self.splitter;
        let state = &self.state;
        let locals: Vec<Result<(Vec<ChunkTable>, u64), String>> = parts
            .par_iter()
            .map(|part| {
                let mut tables: Vec<ChunkTable> = (0..NUM_SHARDS).map(|_| ChunkTable::new()).collect();
                let mut n = 0u64;
                for doc in part.iter() {
                    splitter.for_each(doc.as_ref(), |chunk| {
                        let h = hash_bytes(state, chunk.as_bytes());
                        tables[shard_of(h)].add(chunk.as_bytes(), h, 1);
                        n += 1;
                    })?;
                }
                Ok((tables, n))
            })
            .collect();
        let mut per_part = Vec::with_capacity(locals.len());
        for r in locals {
            let (tables, n) = r?;
            self.total_chunks += n;
            per_part.push(tables);
        }
        self.shards.par_iter_mut().enumerate().for_each(|(k, shard)| {
            for tables in per_part.iter() {
                shard.absorb(&tables[k]);
            }
        });
        Ok(())
    }

    /// Hand over the shards (each a table of unique chunks with counts).
    pub fn into_shards(self) -> Vec<ChunkTable> {
        self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretok::GPT4_PATTERN;

    #[test]
    fn table_counts_and_grows() {
        let state = hash_state();
        let mut t = ChunkTable::new();
        for round in 0..3u64 {
            for i in 0..5000u32 {
                let k = format!("key{}", i);
                t.add(k.as_bytes(), hash_bytes(&state, k.as_bytes()), round + 1);
            }
        }
        assert_eq!(t.len(), 5000);
        for i in 0..t.len() {
            assert_eq!(t.count(i), 6);
        }
        assert!(t.heap_bytes() > 0);
    }

    #[test]
    fn counter_is_independent_of_batching_and_threads() {
        let docs: Vec<String> = (0..300).map(|i| format!("doc {} says hello, world {}!\n", i % 7, i)).collect();
        let collect = |batch: usize, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut c = ChunkCounter::new(Splitter::new(GPT4_PATTERN).unwrap());
                for b in docs.chunks(batch) {
                    c.add_batch(b).unwrap();
                }
                let total = c.total_chunks();
                let mut all: Vec<(Vec<u8>, u64)> = Vec::new();
                for s in c.into_shards() {
                    for i in 0..s.len() {
                        all.push((s.key(i).to_vec(), s.count(i)));
                    }
                }
                all.sort();
                (total, all)
            })
        };
        let a = collect(1000, 1);
        assert_eq!(a, collect(7, 2));
        assert_eq!(a, collect(1, 3));
        let sum: u64 = a.1.iter().map(|x| x.1).sum();
        assert_eq!(sum, a.0);
    }
}
