//! nanochat_rustbpe: byte-level BPE training.
//!
//! Python API (module `nanochat_rustbpe`):
//!   GPT4_PATTERN, GPT4_PATTERN_LATE            split patterns (str)
//!   train_from_iterator(iterator, vocab_size, pattern=None, buffer_size=8192)
//!       -> list[tuple[bytes, int]]             mergeable ranks, ordered by rank
//!   split(text, pattern=None) -> list[str]     pre-tokenisation
//!
//! Training streams the texts: up to `buffer_size` strings are taken from the
//! iterator at a time (at most 16 MiB of text), split and counted in parallel
//! without the GIL; only the table of unique chunks outlives a batch. Merges are
//! then learnt incrementally (see `bpe`).

pub mod bpe;
pub mod count;
pub mod pretok;

pub use pretok::{GPT4_PATTERN, GPT4_PATTERN_LATE};

/// Train from in-memory batches of texts (used by tests and Rust callers).
pub fn train<S: AsRef<str> + Sync>(
    batches: &[Vec<S>],
    vocab_size: usize,
    pattern: &str,
) -> Result<Vec<Vec<u8>>, String> {
    let splitter = pretok::Splitter::new(pattern)?;
    let mut counter = count::ChunkCounter::new(splitter);
    for b in batches {
        counter.add_batch(b)?;
    }
    let total = counter.total_chunks();
    bpe::train_tables(counter.into_shards(), total, vocab_size).map_err(|e| e.to_string())
}

#[cfg(feature = "python")]
mod python {
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyString};

    use crate::bpe;
    use crate::count::ChunkCounter;
    use crate::pretok::{Splitter, GPT4_PATTERN, GPT4_PATTERN_LATE};

    /// A batch is also cut when its text reaches this many bytes (bounds memory
    /// when documents are large).
    const MAX_BATCH_BYTES: usize = 16 << 20;

    fn splitter_for(pattern: Option<&str>) -> PyResult<Splitter> {
        Splitter::new(pattern.unwrap_or(GPT4_PATTERN)).map_err(PyValueError::new_err)
    }

    /// train_from_iterator(iterator, vocab_size, pattern=None, buffer_size=8192)
    /// --
    ///
    /// Learn a byte-level BPE vocabulary of `vocab_size` tokens (the 256 single
    /// bytes included) from an iterable of strings. Returns the mergeable ranks
    /// as a list of (token bytes, rank) ordered by rank.
    #[pyfunction(pattern = "None", buffer_size = "8192")]
    #[pyo3(text_signature = "(iterator, vocab_size, pattern=None, buffer_size=8192)")]
    fn train_from_iterator(
        py: Python<'_>,
        iterator: &PyAny,
        vocab_size: i64,
        pattern: Option<&str>,
        buffer_size: i64,
    ) -> PyResult<Vec<(Py<PyBytes>, u32)>> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!(
                "vocab_size must be at least 256 (the single bytes), got {}",
                vocab_size
            )));
        }
        if vocab_size > u32::MAX as i64 {
            return Err(PyValueError::new_err(format!("vocab_size {} is too large", vocab_size)));
        }
        if buffer_size < 1 {
            return Err(PyValueError::new_err(format!("buffer_size must be positive, got {}", buffer_size)));
        }
        let buffer_size = buffer_size as usize;
        let splitter = splitter_for(pattern)?;
        let mut iter = iterator.iter()?;
        let mut counter = ChunkCounter::new(splitter);
        // The batch: documents concatenated in one buffer (one large allocation that
        // goes straight back to the OS when training moves on to the merges).
        let mut text = String::new();
        let mut ends: Vec<usize> = Vec::with_capacity(buffer_size.min(1 << 16));
        loop {
            text.clear();
            ends.clear();
            let mut exhausted = false;
            while ends.len() < buffer_size && text.len() < MAX_BATCH_BYTES {
                // A pool per item: the item (and any temporary UTF-8 copy made by
                // `to_str`) is released right after it has been copied.
                let _pool = unsafe { py.new_pool() };
                match iter.next() {
                    None => {
                        exhausted = true;
                        break;
                    }
                    Some(item) => {
                        let item = item?;
                        let s: &PyString = item.downcast().map_err(|_| {
                            PyTypeError::new_err(format!(
                                "train_from_iterator expects an iterable of str, got an item of type {}",
                                item.get_type().name().unwrap_or("?")
                            ))
                        })?;
                        text.push_str(s.to_str()?);
                        ends.push(text.len());
                    }
                }
            }
            py.check_signals()?;
            if !ends.is_empty() {
                let mut docs: Vec<&str> = Vec::with_capacity(ends.len());
                let mut start = 0;
                for &e in ends.iter() {
                    docs.push(&text[start..e]);
                    start = e;
                }
                let c = &mut counter;
                py.allow_threads(move || c.add_batch(&docs)).map_err(PyValueError::new_err)?;
            }
            if exhausted {
                break;
            }
        }
        drop(text);
        drop(ends);
        let total = counter.total_chunks();
        let tokens = py
            .allow_threads(move || bpe::train_tables(counter.into_shards(), total, vocab_size as usize))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(tokens.iter().enumerate().map(|(i, t)| (PyBytes::new(py, t).into(), i as u32)).collect())
    }

    /// split(text, pattern=None)
    /// --
    ///
    /// Pre-tokenise `text` into chunks with the split pattern (GPT-4 by default).
    #[pyfunction(pattern = "None")]
    #[pyo3(text_signature = "(text, pattern=None)")]
    fn split(text: &str, pattern: Option<&str>) -> PyResult<Vec<String>> {
        splitter_for(pattern)?.split(text).map_err(PyValueError::new_err)
    }

    #[pymodule]
    fn nanochat_rustbpe(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
        m.add("GPT4_PATTERN", GPT4_PATTERN)?;
        m.add("GPT4_PATTERN_LATE", GPT4_PATTERN_LATE)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add_function(wrap_pyfunction!(train_from_iterator, m)?)?;
        m.add_function(wrap_pyfunction!(split, m)?)?;
        Ok(())
    }
}
