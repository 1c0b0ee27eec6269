//! A stable reorder buffer: items come out in event-time order, equal times in
//! arrival order, once the watermark has passed them.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Heap entry: small and `Copy`, so sifting moves 24 bytes, not the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    ts: u64,
    /// Arrival number: the tie-break that makes the buffer stable.
    seq: u64,
    slot: u32,
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    // Reversed: BinaryHeap is a max-heap, we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.ts, other.seq).cmp(&(self.ts, self.seq))
    }
}

/// Slots per chunk of the item store. Chunks, not one vector: growing never copies
/// (and never holds old and new copies at once) and the slack is at most one chunk.
const CHUNK: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReorderBuffer<T> {
    heap: BinaryHeap<Key>,
    /// Items by slot (`slot / CHUNK`, `slot % CHUNK`); freed slots are reused.
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
    next_seq: u64,
}

impl<T> Default for ReorderBuffer<T> {
    fn default() -> Self {
        ReorderBuffer {
            heap: BinaryHeap::new(),
            chunks: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
        }
    }
}

impl<T> ReorderBuffer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    // Once per point on the hot path: keep it inlined into the sequencer.
    #[inline]
    pub fn push(&mut self, ts: u64, item: T) {
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(cell) = self.cell(s) {
                    *cell = Some(item);
                }
                s
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let n = self.chunks.len() - 1;
                let last = &mut self.chunks[n];
                last.push(Some(item));
                (n * CHUNK + last.len() - 1) as u32
            }
        };
        self.heap.push(Key {
            ts,
            seq: self.next_seq,
            slot,
        });
        self.next_seq += 1;
    }

    /// The earliest item if its time is at or below `watermark`.
    #[inline]
    pub fn pop_through(&mut self, watermark: u64) -> Option<(u64, T)> {
        if self.heap.peek()?.ts > watermark {
            return None;
        }
        let key = self.heap.pop()?;
        let item = self.cell(key.slot)?.take()?;
        self.free.push(key.slot);
        Some((key.ts, item))
    }

    #[inline]
    fn cell(&mut self, slot: u32) -> Option<&mut Option<T>> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Time of the earliest buffered item.
    pub fn earliest(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.ts)
    }

    /// Time of the latest buffered item (a scan: for rare checks only).
    pub fn latest(&self) -> Option<u64> {
        self.heap.iter().map(|e| e.ts).max()
    }

    /// Give memory back after a burst (only when empty: slots are positions).
    pub fn shrink(&mut self) {
        if self.heap.is_empty() && self.chunks.len() > 1 {
            self.chunks = Vec::new();
            self.free = Vec::new();
            self.heap.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn releases_in_time_order_stably_and_only_through_the_watermark(
            items in proptest::collection::vec(0u64..50, 0..200),
            marks in proptest::collection::vec(0u64..60, 1..10),
        ) {
            let mut b = ReorderBuffer::new();
            for (i, ts) in items.iter().enumerate() {
                b.push(*ts, i);
            }
            let mut marks = marks;
            marks.sort();
            let mut out = Vec::new();
            for m in marks.iter().copied().chain([u64::MAX]) {
                while let Some((ts, i)) = b.pop_through(m) {
                    prop_assert!(ts <= m);
                    out.push((ts, i));
                }
                if let Some(e) = b.earliest() {
                    prop_assert!(e > m);
                }
            }
            let mut expected: Vec<(u64, usize)> = items.iter().copied().enumerate().map(|(i, t)| (t, i)).collect();
            expected.sort(); // by time, then arrival: exactly a stable sort by time
            prop_assert_eq!(out, expected);
        }
    }
}
