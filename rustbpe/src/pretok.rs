//! Pre-tokenisation: splitting text into chunks before BPE.
//!
//! Any pattern is supported through `fancy-regex`. The two GPT-4 style patterns
//! (`GPT4_PATTERN` and `GPT4_PATTERN_LATE`) are recognised by their exact text and
//! run through a hand-written scanner instead, which produces exactly the same
//! chunks as the backtracking regex engine but several times faster.
//!
//! Character classes (`\p{L}`, `\p{N}`, `\s` and the case-insensitive letters of
//! the contraction alternative) are not hard-coded: they are read once from the
//! `regex` crate (the engine `fancy-regex` delegates character classes to), so the
//! scanner follows whatever Unicode version that engine was built with.

use std::sync::OnceLock;

/// GPT-4 split pattern (numbers in groups of up to three digits).
pub const GPT4_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Later nanochat variant of the GPT-4 pattern (numbers in groups of up to two digits).
pub const GPT4_PATTERN_LATE: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

// Per-character flags.
const LETTER: u8 = 1; // \p{L}
const NUMBER: u8 = 2; // \p{N}
const SPACE: u8 = 4; // \s
const C_SDMT: u8 = 8; // (?i:[sdmt])
const C_L: u8 = 16; // (?i:l)
const C_V: u8 = 32; // (?i:v)
const C_E: u8 = 64; // (?i:e)
const C_R: u8 = 128; // (?i:r)

/// Code point -> flags. ASCII is filled at start-up; every other block of 256
/// code points is classified the first time a character from it is seen, so
/// start-up stays cheap and typical text only ever touches a few blocks.
struct CharTable {
    ascii: [u8; 128],
    blocks: Vec<OnceLock<Box<[u8; 256]>>>,
    classes: Vec<(regex::Regex, u8)>,
    // Union of the contraction letters: the per-letter classes are only run on
    // blocks where this matches something.
    any_contraction_letter: regex::Regex,
}

impl CharTable {
    fn build() -> CharTable {
        let classes: [(&str, u8); 8] = [
            (r"\p{L}+", LETTER),
            (r"\p{N}+", NUMBER),
            (r"\s+", SPACE),
            (r"(?i:[sdmt])+", C_SDMT),
            (r"(?i:l)+", C_L),
            (r"(?i:v)+", C_V),
            (r"(?i:e)+", C_E),
            (r"(?i:r)+", C_R),
        ];
        let classes =
            classes.iter().map(|(pat, bit)| (regex::Regex::new(pat).expect("character class regex"), *bit)).collect();
        let any_contraction_letter = regex::Regex::new(r"(?i:[sdmtlver])").expect("character class regex");
        let mut table = CharTable {
            ascii: [0; 128],
            blocks: (0..0x1100).map(|_| OnceLock::new()).collect(),
            classes,
            any_contraction_letter,
        };
        let first = table.classify_block(0);
        table.ascii.copy_from_slice(&first[..128]);
        table
    }

    /// Flags of the 256 code points `hi * 256 ..`, read from the regex engine.
    fn classify_block(&self, hi: usize) -> Box<[u8; 256]> {
        let mut flags = Box::new([0u8; 256]);
        let mut text = String::with_capacity(256 * 4);
        for lo in 0..256u32 {
            if let Some(ch) = char::from_u32(((hi as u32) << 8) | lo) {
                text.push(ch);
            }
        }
        let contractions = self.any_contraction_letter.is_match(&text);
        for (re, bit) in self.classes.iter() {
            if *bit >= C_SDMT && !contractions {
                continue;
            }
            for m in re.find_iter(&text) {
                for ch in m.as_str().chars() {
                    flags[(ch as u32 & 0xFF) as usize] |= *bit;
                }
            }
        }
        flags
    }

    #[inline(always)]
    fn get(&self, cp: u32) -> u8 {
        if cp < 128 {
            self.ascii[cp as usize]
        } else {
            let hi = (cp >> 8) as usize;
            let block = self.blocks[hi].get_or_init(|| self.classify_block(hi));
            block[(cp & 0xFF) as usize]
        }
    }
}

fn char_table() -> &'static CharTable {
    static TABLE: OnceLock<CharTable> = OnceLock::new();
    TABLE.get_or_init(CharTable::build)
}

/// Decode the UTF-8 scalar starting at byte `i` of a valid UTF-8 buffer.
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F), 3)
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

/// Hand-written equivalent of the GPT-4 split pattern.
///
/// At each position the alternatives are tried in the pattern's order, with the
/// same backtracking outcome as the regex engine:
///  1. `'(?i:[sdmt]|ll|ve|re)`
///  2. `[^\r\n\p{L}\p{N}]?+\p{L}+`
///  3. `\p{N}{1,k}`
///  4. ` ?[^\s\p{L}\p{N}]++[\r\n]*`
///  5. `\s*[\r\n]`   (up to and including the last CR/LF of the whitespace run)
///  6. `\s+(?!\S)`   (the run minus its last character, or all of it at the end)
///  7. `\s+`
///
/// Every character is a letter, a number, whitespace or "other", and each kind
/// is matched by some alternative, so the chunks tile the text exactly.
pub struct Gpt4Scanner {
    table: &'static CharTable,
    max_digits: usize,
}

impl Gpt4Scanner {
    pub fn new(max_digits: usize) -> Gpt4Scanner {
        Gpt4Scanner { table: char_table(), max_digits }
    }

    #[inline(always)]
    fn flags_at(&self, b: &[u8], i: usize) -> (u8, u32, usize) {
        let (cp, len) = decode(b, i);
        (self.table.get(cp), cp, len)
    }

    /// End of the run of letters starting at `i`.
    #[inline(always)]
    fn letters_end(&self, b: &[u8], mut i: usize) -> usize {
        let n = b.len();
        while i < n {
            let c = b[i];
            if c < 0x80 {
                if self.table.ascii[c as usize] & LETTER == 0 {
                    break;
                }
                i += 1;
            } else {
                let (f, _, len) = self.flags_at(b, i);
                if f & LETTER == 0 {
                    break;
                }
                i += len;
            }
        }
        i
    }

    /// End of the run of "other" characters (not letter, number or whitespace)
    /// starting at `i`, followed by any CR/LF characters.
    #[inline(always)]
    fn punct_then_newlines_end(&self, b: &[u8], mut i: usize) -> usize {
        let n = b.len();
        while i < n {
            let c = b[i];
            if c < 0x80 {
                if self.table.ascii[c as usize] & (LETTER | NUMBER | SPACE) != 0 {
                    break;
                }
                i += 1;
            } else {
                let (f, _, len) = self.flags_at(b, i);
                if f & (LETTER | NUMBER | SPACE) != 0 {
                    break;
                }
                i += len;
            }
        }
        while i < n && (b[i] == b'\r' || b[i] == b'\n') {
            i += 1;
        }
        i
    }

    /// Byte offset where the chunk starting at `p` ends (`p < b.len()`).
    #[inline]
    pub fn chunk_end(&self, b: &[u8], p: usize) -> usize {
        let n = b.len();
        let (f, c, clen) = self.flags_at(b, p);
        let after = p + clen;

        // 1. contractions
        if c == '\'' as u32 && after < n {
            let (f1, _, l1) = self.flags_at(b, after);
            if f1 & C_SDMT != 0 {
                return after + l1;
            }
            if f1 & (C_L | C_V | C_R) != 0 && after + l1 < n {
                let (f2, _, l2) = self.flags_at(b, after + l1);
                let want = if f1 & C_L != 0 { C_L } else { C_E };
                if f2 & want != 0 {
                    return after + l1 + l2;
                }
            }
        }

        // 2. optional non-letter/number/CR/LF prefix, then letters
        if f & LETTER != 0 {
            return self.letters_end(b, after);
        }
        if f & NUMBER == 0 && c != '\r' as u32 && c != '\n' as u32 && after < n {
            let (f1, _, l1) = self.flags_at(b, after);
            if f1 & LETTER != 0 {
                return self.letters_end(b, after + l1);
            }
        }

        // 3. numbers
        if f & NUMBER != 0 {
            let mut i = after;
            let mut k = 1;
            while k < self.max_digits && i < n {
                let (f1, _, l1) = self.flags_at(b, i);
                if f1 & NUMBER == 0 {
                    break;
                }
                i += l1;
                k += 1;
            }
            return i;
        }

        // 4. optional space, run of other characters, trailing CR/LF
        if f & SPACE == 0 {
            return self.punct_then_newlines_end(b, after);
        }
        if c == ' ' as u32 && after < n {
            let (f1, _, l1) = self.flags_at(b, after);
            if f1 & (LETTER | NUMBER | SPACE) == 0 {
                return self.punct_then_newlines_end(b, after + l1);
            }
        }

        // 5-7. whitespace run
        let mut i = after;
        let mut last_start = p;
        let mut after_newline = if c == '\r' as u32 || c == '\n' as u32 { after } else { 0 };
        while i < n {
            let ch = b[i];
            if ch < 0x80 {
                if self.table.ascii[ch as usize] & SPACE == 0 {
                    break;
                }
                last_start = i;
                i += 1;
                if ch == b'\r' || ch == b'\n' {
                    after_newline = i;
                }
            } else {
                let (f1, _, l1) = self.flags_at(b, i);
                if f1 & SPACE == 0 {
                    break;
                }
                last_start = i;
                i += l1;
            }
        }
        if after_newline != 0 {
            return after_newline; // 5
        }
        if i == n {
            return i; // 6, run reaches the end of the text
        }
        if last_start > p {
            return last_start; // 6, leave the last whitespace character for the next chunk
        }
        i // 7
    }

    /// Call `f` on every chunk of `text`, in order.
    #[inline]
    pub fn for_each<'t, F: FnMut(&'t str)>(&self, text: &'t str, mut f: F) {
        let b = text.as_bytes();
        let mut p = 0;
        while p < b.len() {
            let e = self.chunk_end(b, p);
            // chunk boundaries always fall on character boundaries
            f(unsafe { text.get_unchecked(p..e) });
            p = e;
        }
    }
}

/// A compiled split pattern.
pub enum Splitter {
    Fast(Gpt4Scanner),
    Regex(fancy_regex::Regex),
}

impl Splitter {
    /// Compile `pattern`; the two GPT-4 patterns use the fast scanner.
    pub fn new(pattern: &str) -> Result<Splitter, String> {
        if pattern == GPT4_PATTERN {
            Ok(Splitter::Fast(Gpt4Scanner::new(3)))
        } else if pattern == GPT4_PATTERN_LATE {
            Ok(Splitter::Fast(Gpt4Scanner::new(2)))
        } else {
            Self::new_regex(pattern)
        }
    }

    /// Compile `pattern` with the regex engine, even for the GPT-4 patterns.
    pub fn new_regex(pattern: &str) -> Result<Splitter, String> {
        fancy_regex::Regex::new(pattern)
            .map(Splitter::Regex)
            .map_err(|e| format!("invalid split pattern {:?}: {}", pattern, e))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Splitter::Fast(_))
    }

    /// Call `f` on every chunk of `text`. Empty regex matches are skipped.
    pub fn for_each<'t, F: FnMut(&'t str)>(&self, text: &'t str, mut f: F) -> Result<(), String> {
        match self {
            Splitter::Fast(s) => {
                s.for_each(text, f);
                Ok(())
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| format!("split pattern failed on the input: {}", e))?;
                    if m.start() < m.end() {
                        f(m.as_str());
                    }
                }
                Ok(())
            }
        }
    }

    /// All chunks of `text` as owned strings.
    pub fn split(&self, text: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        self.for_each(text, |c| out.push(c.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small deterministic generator (xorshift64*).
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545F4914F6CDD1D)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    // Characters that exercise every branch: contractions (incl. the long s that
    // case-folds to 's'), letters of several scripts, combining marks, digits of
    // several scripts and other numbers, all kinds of whitespace, punctuation,
    // symbols and emoji.
    const ALPHABET: &[&str] = &[
        "'",
        "'",
        "'",
        "s",
        "S",
        "\u{17F}",
        "d",
        "D",
        "m",
        "t",
        "T",
        "l",
        "L",
        "v",
        "V",
        "e",
        "E",
        "r",
        "R",
        "a",
        "z",
        "Q",
        "é",
        "ß",
        "Ж",
        "ж",
        "λ",
        "中",
        "文",
        "ア",
        "한",
        "ع",
        "א",
        "ह",
        "\u{301}",
        "\u{93F}",
        "\u{200D}",
        "0",
        "1",
        "9",
        "٣",
        "५",
        "²",
        "½",
        "Ⅻ",
        "𝟗",
        " ",
        " ",
        " ",
        "\t",
        "\n",
        "\n",
        "\r",
        "\r\n",
        "\u{B}",
        "\u{C}",
        "\u{85}",
        "\u{A0}",
        "\u{2028}",
        "\u{3000}",
        "\u{200B}",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "\"",
        "#",
        "$",
        "€",
        "+",
        "=",
        "😀",
        "👍🏽",
        "🇫🇷",
        "\u{0}",
        "\u{7F}",
        "\u{FEFF}",
        "\u{10FFFF}",
        "\u{E000}",
    ];

    fn random_text(rng: &mut Rng, max_len: usize) -> String {
        let len = rng.below(max_len + 1);
        let mut s = String::new();
        for _ in 0..len {
            if rng.below(8) == 0 {
                // any scalar value
                loop {
                    let cp = rng.below(0x110000) as u32;
                    if let Some(ch) = char::from_u32(cp) {
                        s.push(ch);
                        break;
                    }
                }
            } else {
                s.push_str(ALPHABET[rng.below(ALPHABET.len())]);
            }
        }
        s
    }

    fn check_same(text: &str, fast: &Splitter, slow: &Splitter) {
        let a = fast.split(text).unwrap();
        let b = slow.split(text).unwrap();
        assert_eq!(a, b, "scanner and regex disagree on {:?}", text);
        assert_eq!(a.concat(), text);
    }

    #[test]
    fn scanner_matches_regex_on_random_text() {
        for (pattern, seed) in [(GPT4_PATTERN, 1u64), (GPT4_PATTERN_LATE, 2u64)] {
            let fast = Splitter::new(pattern).unwrap();
            assert!(fast.is_fast());
            let slow = Splitter::new_regex(pattern).unwrap();
            let mut rng = Rng::new(seed);
            for _ in 0..20_000 {
                let text = random_text(&mut rng, 24);
                check_same(&text, &fast, &slow);
            }
        }
    }

    #[test]
    fn scanner_matches_regex_on_every_code_point_in_context() {
        // Every scalar value, alone and between a few interesting neighbours.
        let fast = Splitter::new(GPT4_PATTERN).unwrap();
        let slow = Splitter::new_regex(GPT4_PATTERN).unwrap();
        let contexts = [("'", "x"), (" ", " "), ("a", "1"), ("1", "a"), ("\n", "  ")];
        let mut batch = String::new();
        let mut count = 0;
        for cp in 0u32..0x110000 {
            let Some(ch) = char::from_u32(cp) else { continue };
            let (l, r) = contexts[(cp as usize) % contexts.len()];
            batch.push_str(l);
            batch.push(ch);
            batch.push(ch);
            batch.push_str(r);
            count += 1;
            if count % 512 == 0 {
                check_same(&batch, &fast, &slow);
                batch.clear();
            }
        }
        check_same(&batch, &fast, &slow);
    }

    #[test]
    fn known_splits() {
        let s = Splitter::new(GPT4_PATTERN).unwrap();
        let got = s.split("Hello world's 12345 x!!\n\n  foo\tbar  ").unwrap();
        assert_eq!(got, vec!["Hello", " world", "'s", " ", "123", "45", " x", "!!\n\n", " ", " foo", "\tbar", "  "]);
        let late = Splitter::new(GPT4_PATTERN_LATE).unwrap();
        assert_eq!(late.split("12345").unwrap(), vec!["12", "34", "5"]);
        assert_eq!(s.split("").unwrap(), Vec::<String>::new());
        assert_eq!(s.split("I'LL DON'T").unwrap(), vec!["I", "'LL", " DON", "'T"]);
    }

    #[test]
    fn custom_patterns_use_the_regex_engine() {
        let s = Splitter::new(r"\w+|\s+").unwrap();
        assert!(!s.is_fast());
        assert_eq!(s.split("ab  cd!").unwrap(), vec!["ab", "  ", "cd"]);
        assert!(Splitter::new("(unclosed").is_err());
    }
}
