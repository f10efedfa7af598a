//! The lower-cased names of all keys in one byte arena, so that a search is one SIMD substring
//! scan (`memchr::memmem`) over contiguous memory instead of a pointer chase per key.
//!
//! Invariants:
//! - every row's name is followed by a `0` byte, and freed bytes are zeroed; names never hold
//!   control characters (the domain refuses them), so a needle without `0` bytes matches only
//!   inside one name;
//! - `starts` is sorted by offset; a row moved to the end leaves its old start marked
//!   [`FREED`], removed by the next compaction.

use memchr::memmem::Finder;

const FREED: u32 = u32::MAX;
const SEPARATOR: u8 = 0;

#[derive(Debug, Default)]
pub struct Names {
    bytes: Vec<u8>,
    /// Per row: offset and length of its name in `bytes`.
    spans: Vec<(u32, u32)>,
    /// `(offset, row)` of every span ever placed, in offset order; `row == FREED` when moved.
    starts: Vec<(u32, u32)>,
    freed: usize,
}

impl Names {
    /// Sets the name of `row` (rows are numbered densely from 0; a new row is `len()`).
    pub fn set(&mut self, row: u32, name_lower: &str) {
        let new = name_lower.as_bytes();
        if let Some(&(start, len)) = self.spans.get(row as usize) {
            let (start, len) = (start as usize, len as usize);
            if new.len() <= len {
                self.bytes[start..start + new.len()].copy_from_slice(new);
                self.bytes[start + new.len()..start + len].fill(SEPARATOR);
                self.freed += len - new.len();
                self.spans[row as usize].1 = new.len() as u32;
                return;
            }
            self.bytes[start..start + len].fill(SEPARATOR);
            self.freed += len + 1;
            let i = self
                .starts
                .binary_search_by_key(&(start as u32), |&(s, _)| s)
                .expect("every span has a start");
            self.starts[i].1 = FREED;
        } else {
            debug_assert_eq!(row as usize, self.spans.len(), "rows are dense");
            self.spans.push((0, 0));
        }
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(new);
        self.bytes.push(SEPARATOR);
        self.spans[row as usize] = (start, new.len() as u32);
        self.starts.push((start, row));
        if self.freed > 1 << 16 && self.freed > self.bytes.len() / 2 {
            self.compact();
        }
    }

    pub fn get(&self, row: u32) -> &[u8] {
        let (start, len) = self.spans[row as usize];
        &self.bytes[start as usize..(start + len) as usize]
    }

    /// Calls `f` once for each row whose name contains `needle`, in arena order.
    pub fn containing(&self, needle: &str, mut f: impl FnMut(u32)) {
        if needle.is_empty() {
            (0..self.spans.len() as u32).for_each(f);
            return;
        }
        if needle.as_bytes().contains(&SEPARATOR) {
            return;
        }
        let mut at = 0usize;
        let mut last = FREED;
        for pos in Finder::new(needle).find_iter(&self.bytes) {
            while at + 1 < self.starts.len() && self.starts[at + 1].0 as usize <= pos {
                at += 1;
            }
            let row = self.starts[at].1;
            if row != last && row != FREED {
                last = row;
                f(row);
            }
        }
    }

    /// Rewrites the arena without freed bytes.
    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.freed);
        let mut starts = Vec::with_capacity(self.spans.len());
        for (row, span) in self.spans.iter_mut().enumerate() {
            let (start, len) = (span.0 as usize, span.1 as usize);
            let at = bytes.len() as u32;
            bytes.extend_from_slice(&self.bytes[start..start + len]);
            bytes.push(SEPARATOR);
            *span = (at, len as u32);
            starts.push((at, row as u32));
        }
        self.bytes = bytes;
        self.starts = starts;
        self.freed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(n: &Names, needle: &str) -> Vec<u32> {
        let mut v = Vec::new();
        n.containing(needle, |r| v.push(r));
        v.sort_unstable();
        v
    }

    #[test]
    fn a_search_finds_each_matching_row_once() {
        let mut n = Names::default();
        n.set(0, "alpha falcon");
        n.set(1, "beta");
        n.set(2, "falcon falcon");
        assert_eq!(found(&n, "falcon"), vec![0, 2]);
        assert_eq!(found(&n, "a"), vec![0, 1, 2]);
        assert_eq!(found(&n, ""), vec![0, 1, 2]);
        assert!(found(&n, "x").is_empty());
    }

    #[test]
    fn a_match_never_spans_two_names() {
        let mut n = Names::default();
        n.set(0, "ab");
        n.set(1, "cd");
        assert!(found(&n, "bc").is_empty());
        assert!(found(&n, "b\0c").is_empty());
    }

    #[test]
    fn renames_shrink_in_place_or_move_and_forget_the_old_name() {
        let mut n = Names::default();
        n.set(0, "falcon");
        n.set(1, "other");
        n.set(0, "fal");
        assert_eq!(n.get(0), b"fal");
        assert!(found(&n, "falcon").is_empty());
        n.set(0, "a much longer falcon");
        assert_eq!(n.get(0), b"a much longer falcon");
        assert_eq!(found(&n, "falcon"), vec![0]);
        assert_eq!(found(&n, "fal"), vec![0]);
        assert_eq!(found(&n, "other"), vec![1]);
    }

    #[test]
    fn compaction_keeps_every_current_name() {
        let mut n = Names::default();
        for i in 0..100u32 {
            n.set(i, &format!("key {i}"));
        }
        // Grow every name repeatedly, so that most of the arena is freed and compacted.
        for round in 0..40 {
            for i in 0..100u32 {
                n.set(i, &format!("key {i} {}", "x".repeat(round * 40)));
            }
        }
        assert!(n.freed <= n.bytes.len() / 2 || n.freed <= 1 << 16);
        for i in 0..100u32 {
            assert!(n.get(i).starts_with(format!("key {i} ").as_bytes()));
        }
        assert_eq!(found(&n, "key 42 "), vec![42]);
    }
}
