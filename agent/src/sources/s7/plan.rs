//! Which read-var requests read a poll group's tags, packed to the negotiated
//! PDU size. Pure: the client runs the plan.
//!
//! 1. Per area, tags sorted by start; overlapping tags form a *cluster* (never cut
//!    between them), clusters at most `max_gap` units apart form a *span* (one item).
//! 2. Spans are packed in address order, next-fit: a span goes whole into the open
//!    request if it fits; else the longest prefix of whole clusters that fits goes in
//!    and the request closes; a cluster larger than any request (one big array or
//!    string) is cut at the byte that fills the request, and continues in the next.
//! 3. "Fits" counts the exact sizes: the request (10-byte header, 2-byte read-var
//!    parameter, 12 bytes per item) and the response (12-byte header, 2, and per
//!    item 4 + data, padded to even except the last) must each be within the PDU,
//!    and a request carries at most [`MAX_ITEMS`] items.
//!
//! A value no larger than what one request can answer is never split, so it is
//! always read in one piece (consistent); larger ones are split and reassembled.

use super::address::Extent;
use super::frame::{
    read_request_size, AreaCode, ReadItem, MAX_ITEMS, READ_DATA_ITEM, READ_PARAM, S7_ACK_HEADER,
};

/// One request of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub items: Vec<ReadItem>,
}

/// Part of a tag's bytes, found in item `item` of request `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub request: usize,
    pub item: usize,
    /// Byte offset in the item's data.
    pub item_offset: usize,
    /// Byte offset in the tag's value.
    pub tag_offset: usize,
    pub len: usize,
}

/// Where each tag's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagPieces {
    /// In tag-offset order.
    pub pieces: Vec<Piece>,
    /// The request after which all of its bytes have arrived.
    pub ready: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub requests: Vec<Request>,
    /// By tag index (the order of the `extents` given to [`plan`]).
    pub tags: Vec<TagPieces>,
}

/// The open request's sizes so far.
#[derive(Debug, Default)]
struct Open {
    items: Vec<ReadItem>,
    /// Response size with every current item padded (as if another followed).
    padded: usize,
}

impl Open {
    /// Largest data bytes a new last item may carry here (None: no room for an item).
    fn room(&self, pdu: usize, max_items: usize) -> Option<usize> {
        let n = self.items.len() + 1;
        if n > max_items || read_request_size(n) > pdu {
            return None;
        }
        let used = S7_ACK_HEADER + READ_PARAM + self.padded + READ_DATA_ITEM;
        pdu.checked_sub(used).filter(|r| *r > 0)
    }

    fn push(&mut self, item: ReadItem) {
        let b = item.response_bytes();
        self.padded += READ_DATA_ITEM + b + b % 2;
        self.items.push(item);
    }
}

/// A span being packed: its area, its tags' clusters as unit ranges.
struct Span {
    area: AreaCode,
    start: u32,
    end: u32,
    /// Ends of its clusters (the places it may be cut), ascending; the last is `end`.
    cuts: Vec<u32>,
    tags: Vec<usize>,
}

/// Plan the reads of `extents` (one per tag) for a PDU of `pdu` bytes.
///
/// Tried twice, keeping the one with fewer requests: once filling requests with
/// small values up to the item limit, once leaving one item free in each for the
/// pieces of the values too big for any request.
pub fn plan(extents: &[Extent], pdu: u16, max_gap: u32) -> Plan {
    let full = plan_with(extents, pdu, max_gap, 0);
    let reserved = plan_with(extents, pdu, max_gap, 1);
    if reserved.requests.len() < full.requests.len() {
        reserved
    } else {
        full
    }
}

fn plan_with(extents: &[Extent], pdu: u16, max_gap: u32, reserve: usize) -> Plan {
    let pdu = usize::from(pdu);
    let mut order: Vec<usize> = (0..extents.len()).filter(|&i| extents[i].len > 0).collect();
    order.sort_by_key(|&i| (extents[i].area, extents[i].start, extents[i].len));

    let mut spans: Vec<Span> = Vec::new();
    for &i in &order {
        let e = extents[i];
        let end = e.start + e.len;
        match spans.last_mut() {
            Some(s) if s.area == e.area && e.start < s.end => {
                // Overlaps the last cluster: it grows, no cut in between.
                s.end = s.end.max(end);
                if let Some(c) = s.cuts.last_mut() {
                    *c = s.end;
                }
                s.tags.push(i);
            }
            Some(s) if s.area == e.area && e.start <= s.end.saturating_add(max_gap) => {
                s.end = end;
                s.cuts.push(end);
                s.tags.push(i);
            }
            _ => spans.push(Span {
                area: e.area,
                start: e.start,
                end,
                cuts: vec![end],
                tags: vec![i],
            }),
        }
    }

    // A cluster no request can hold is split anyway: it is packed last, into the
    // room the others left, so splitting it costs no extra request.
    let empty_room = Open::default().room(pdu, MAX_ITEMS).unwrap_or(0);
    let mut small: Vec<(usize, u32, u32, Vec<u32>)> = Vec::new(); // (span, start, end, cuts)
    let mut big: Vec<(usize, u32, u32)> = Vec::new();
    for (si, span) in spans.iter().enumerate() {
        let unit = span.area.unit();
        let mut seg_start = span.start;
        let mut seg_cuts = Vec::new();
        let mut cluster_start = span.start;
        for &cut in &span.cuts {
            if (cut - cluster_start) as usize * unit > empty_room {
                if !seg_cuts.is_empty() {
                    small.push((si, seg_start, cluster_start, std::mem::take(&mut seg_cuts)));
                }
                big.push((si, cluster_start, cut));
                seg_start = cut;
            } else {
                seg_cuts.push(cut);
            }
            cluster_start = cut;
        }
        if !seg_cuts.is_empty() {
            small.push((si, seg_start, span.end, seg_cuts));
        }
    }

    let mut requests: Vec<Open> = Vec::new();
    // Placed items per span: (request, item, start, end) in units.
    let mut placed: Vec<Vec<(usize, usize, u32, u32)>> = vec![Vec::new(); spans.len()];
    let place = |requests: &mut Vec<Open>,
                 placed: &mut Vec<Vec<(usize, usize, u32, u32)>>,
                 ri: usize,
                 si: usize,
                 from: u32,
                 to: u32| {
        let r = &mut requests[ri];
        placed[si].push((ri, r.items.len(), from, to));
        r.push(ReadItem {
            area: spans[si].area,
            start: from,
            count: (to - from) as u16,
        });
    };

    // Small segments, next-fit in address order, cut only between clusters.
    for (si, start, end, cuts) in &small {
        let unit = spans[*si].area.unit();
        let mut from = *start;
        while from < *end {
            let fit = requests
                .last()
                .and_then(|r| r.room(pdu, MAX_ITEMS - reserve))
                .map_or(0, |room| (room / unit) as u32);
            let to = if end - from <= fit {
                Some(*end)
            } else {
                cuts.iter()
                    .rev()
                    .copied()
                    .find(|&c| c > from && c - from <= fit)
            };
            match to {
                Some(to) => {
                    let ri = requests.len() - 1;
                    place(&mut requests, &mut placed, ri, *si, from, to);
                    from = to;
                }
                None => requests.push(Open::default()),
            }
        }
    }

    // Big clusters: into every request's leftover room, then into new requests.
    for (si, start, end) in &big {
        let unit = spans[*si].area.unit();
        let mut from = *start;
        let mut ri = 0;
        while from < *end {
            if ri == requests.len() {
                requests.push(Open::default());
            }
            let fit = requests[ri]
                .room(pdu, MAX_ITEMS)
                .map_or(0, |room| (room / unit) as u32);
            if fit == 0 && requests[ri].items.is_empty() {
                break; // not one unit fits an empty request: the PDU is too small
            }
            if fit > 0 {
                let to = (*end).min(from + fit);
                place(&mut requests, &mut placed, ri, *si, from, to);
                from = to;
            }
            ri += 1;
        }
    }

    let mut out = Plan {
        requests: requests
            .into_iter()
            .filter(|r| !r.items.is_empty())
            .map(|r| Request { items: r.items })
            .collect(),
        tags: vec![TagPieces::default(); extents.len()],
    };
    for (si, span) in spans.iter().enumerate() {
        let unit = span.area.unit();
        let mut items = std::mem::take(&mut placed[si]);
        items.sort_by_key(|p| p.2);
        for &t in &span.tags {
            let e = extents[t];
            let (ts, te) = (e.start, e.start + e.len);
            let tag = &mut out.tags[t];
            for &(request, item, is, ie) in &items {
                let (s, en) = (ts.max(is), te.min(ie));
                if s < en {
                    tag.pieces.push(Piece {
                        request,
                        item,
                        item_offset: (s - is) as usize * unit,
                        tag_offset: (s - ts) as usize * unit,
                        len: (en - s) as usize * unit,
                    });
                    tag.ready = tag.ready.max(request);
                }
            }
        }
    }
    out
}

/// The fewest requests any plan could need, from the two limits alone: items
/// per request, and bytes (every span at least once, with its 4-byte item header).
pub fn lower_bound(spans: usize, span_bytes: usize, pdu: u16) -> usize {
    let pdu = usize::from(pdu);
    let per_request = MAX_ITEMS.min((pdu - read_request_size(0)) / super::frame::READ_ITEM);
    let by_items = spans.div_ceil(per_request);
    let by_bytes = (span_bytes + spans * READ_DATA_ITEM).div_ceil(pdu - S7_ACK_HEADER - READ_PARAM);
    by_items.max(by_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::s7::frame::read_response_size;
    use proptest::prelude::*;

    fn db(start: u32, len: u32) -> Extent {
        Extent {
            area: AreaCode::DataBlock(1),
            start,
            len,
        }
    }

    fn check(extents: &[Extent], pdu: u16, p: &Plan) -> Result<(), TestCaseError> {
        for r in &p.requests {
            prop_assert!(!r.items.is_empty() && r.items.len() <= MAX_ITEMS);
            prop_assert!(read_request_size(r.items.len()) <= usize::from(pdu));
            let resp = read_response_size(r.items.iter().map(ReadItem::response_bytes));
            prop_assert!(resp <= usize::from(pdu), "response {} > pdu {}", resp, pdu);
        }
        for (t, e) in extents.iter().enumerate() {
            let unit = e.area.unit();
            let tp = &p.tags[t];
            let mut covered = 0;
            for piece in &tp.pieces {
                prop_assert_eq!(piece.tag_offset, covered, "tag {} pieces contiguous", t);
                let item = p.requests[piece.request].items[piece.item];
                prop_assert_eq!(item.area, e.area);
                prop_assert!(piece.item_offset + piece.len <= item.response_bytes());
                // The piece's bytes are the tag's bytes at that address.
                prop_assert_eq!(
                    item.start as usize * unit + piece.item_offset,
                    e.start as usize * unit + piece.tag_offset
                );
                prop_assert!(piece.request <= tp.ready);
                covered += piece.len;
            }
            prop_assert_eq!(covered, e.len as usize * unit, "tag {} covered", t);
        }
        Ok(())
    }

    #[test]
    fn adjacent_tags_merge_into_one_item() {
        let p = plan(&[db(0, 4), db(4, 4), db(8, 2), db(20, 4)], 480, 0);
        assert_eq!(p.requests.len(), 1);
        let items = &p.requests[0].items;
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].start, items[0].count), (0, 10));
        assert_eq!((items[1].start, items[1].count), (20, 4));
        assert_eq!(p.tags[2].pieces[0].item_offset, 8);
        // With a gap allowance the last one joins too.
        assert_eq!(
            plan(&[db(0, 4), db(20, 4)], 480, 16).requests[0]
                .items
                .len(),
            1
        );
    }

    #[test]
    fn separate_reals_fill_requests_to_the_item_limit() {
        // 30 REALs 8 bytes apart: 20 items fit a 480 request, 19 a 240 one (12 × 19 + 12 ≤ 240).
        let e: Vec<Extent> = (0..30).map(|i| db(i * 8, 4)).collect();
        assert_eq!(plan(&e, 480, 0).requests.len(), 2);
        assert_eq!(plan(&e, 480, 0).requests[0].items.len(), 20);
        assert_eq!(plan(&e, 240, 0).requests[0].items.len(), 19);
    }

    #[test]
    fn one_field_larger_than_the_pdu_is_split() {
        // A 1000-byte array: 462 bytes per 480-PDU answer (480 − 12 − 2 − 4).
        let p = plan(&[db(0, 1000)], 480, 0);
        let sizes: Vec<u16> = p.requests.iter().map(|r| r.items[0].count).collect();
        assert_eq!(sizes, [462, 462, 76]);
        assert_eq!(p.tags[0].ready, 2);
        let p = plan(&[db(0, 1000)], 960, 0);
        assert_eq!(p.requests.len(), 2);
    }

    #[test]
    fn a_big_array_fills_the_room_small_tags_leave() {
        // 50 DINTs 8 bytes apart (20 items per request) and a 800-byte array: 3
        // requests (by items: 52 / 20; by bytes: 1208 / 466), not 4.
        let mut e: Vec<Extent> = (0..50)
            .map(|i| Extent {
                area: AreaCode::DataBlock(2),
                start: i * 8,
                len: 4,
            })
            .collect();
        e.push(db(0, 800));
        let p = plan(&e, 480, 0);
        assert_eq!(p.requests.len(), 3);
        check(&e, 480, &p).expect("valid plan");
        let spans = 51;
        assert_eq!(lower_bound(spans, 50 * 4 + 800, 480), 3);
    }

    #[test]
    fn timers_are_counted_in_words() {
        let t = |start, len| Extent {
            area: AreaCode::Timers,
            start,
            len,
        };
        let p = plan(&[t(0, 1), t(1, 1), t(5, 300)], 240, 0);
        assert_eq!(p.requests[0].items[0].count, 2);
        check(&[t(0, 1), t(1, 1), t(5, 300)], 240, &p).expect("valid plan");
    }

    fn extents() -> impl Strategy<Value = Vec<Extent>> {
        let area = prop_oneof![
            Just(AreaCode::Markers),
            Just(AreaCode::DataBlock(1)),
            Just(AreaCode::DataBlock(2)),
            Just(AreaCode::Counters),
        ];
        let one = (area, 0u32..3000, prop_oneof![1u32..9, 1u32..2000])
            .prop_map(|(area, start, len)| Extent { area, start, len });
        proptest::collection::vec(one, 0..120)
    }

    proptest! {
        #[test]
        fn every_request_fits_and_every_byte_is_covered(e in extents(), pdu in prop_oneof![Just(240u16), Just(480), Just(960), 64u16..1200], gap in 0u32..20) {
            let p = plan(&e, pdu, gap);
            check(&e, pdu, &p)?;
        }

        #[test]
        fn the_request_count_is_near_the_lower_bound(e in extents(), pdu in prop_oneof![Just(240u16), Just(480), Just(960)]) {
            let p = plan(&e, pdu, 0);
            // Spans as the planner sees them.
            let mut sorted = e.clone();
            sorted.sort_by_key(|x| (x.area, x.start));
            let mut spans: Vec<(AreaCode, u32, u32)> = Vec::new();
            for x in sorted {
                match spans.last_mut() {
                    Some(s) if s.0 == x.area && x.start <= s.2 => s.2 = s.2.max(x.start + x.len),
                    _ => spans.push((x.area, x.start, x.start + x.len)),
                }
            }
            let bytes: usize = spans.iter().map(|s| (s.2 - s.1) as usize * s.0.unit()).sum();
            let lb = lower_bound(spans.len(), bytes, pdu);
            prop_assert!(p.requests.len() >= lb);
            prop_assert!(p.requests.len() <= 2 * lb + 1, "{} requests, lower bound {}", p.requests.len(), lb);
        }

        #[test]
        fn uniform_separate_tags_meet_the_bound_exactly(n in 1u32..200, size in 1u32..40, pdu in prop_oneof![Just(240u16), Just(480), Just(960)]) {
            let e: Vec<Extent> = (0..n).map(|i| db(i * (size + 1), size)).collect();
            let p = plan(&e, pdu, 0);
            let per_request = (0..=MAX_ITEMS).rev().find(|&k| {
                read_request_size(k) <= usize::from(pdu)
                    && read_response_size(std::iter::repeat_n(size as usize, k)) <= usize::from(pdu)
            }).unwrap_or(1);
            prop_assert_eq!(p.requests.len(), (n as usize).div_ceil(per_request));
        }
    }
}
