//! Which read requests a poll group makes (pure).
//!
//! Tags of one area whose registers (or bits) touch, overlap, or lie at most
//! `max_gap` apart are merged into one request, up to the protocol's limit per
//! read (125 registers, 2000 bits). Every request lists the tags it serves and
//! where each one starts inside the response.

use super::config::{Area, ModbusTag};

/// Where one tag's data sits: area, first register/bit, and how many it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagExtent {
    pub area: Area,
    pub address: u16,
    /// Registers (register areas) or bits (bit areas); at least 1.
    pub len: u16,
}

impl TagExtent {
    pub fn of(tag: &ModbusTag) -> TagExtent {
        let len = if tag.area.is_bits() {
            1
        } else {
            tag.data_type.registers()
        };
        TagExtent {
            area: tag.area,
            address: tag.address,
            len,
        }
    }

    fn start(&self) -> u32 {
        u32::from(self.address)
    }

    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.len.max(1))
    }
}

/// One tag served by a request: its index in the group's tag list, and where its
/// data starts in the response (in registers or bits from the request's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSlot {
    pub tag: usize,
    pub offset: u16,
    pub len: u16,
}

/// One Modbus read: function (by area), first address, count, and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub area: Area,
    pub address: u16,
    pub count: u16,
    pub slots: Vec<TagSlot>,
}

impl ReadRequest {
    /// One past the last register/bit read.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }

    /// The same tags as requests of their own (tags on the identical registers share
    /// one), used once a PLC rejected the merged request: then only the tag whose
    /// registers are really invalid keeps failing.
    pub fn split(&self) -> Vec<ReadRequest> {
        let mut out: Vec<ReadRequest> = Vec::with_capacity(self.slots.len());
        let mut slots = self.slots.clone();
        slots.sort_by_key(|s| (s.offset, s.len, s.tag));
        for s in slots {
            let address = u32::from(self.address) + u32::from(s.offset);
            // Offsets come from `plan`, so this fits; skip rather than panic if not.
            let Ok(address) = u16::try_from(address) else {
                continue;
            };
            let slot = TagSlot {
                tag: s.tag,
                offset: 0,
                len: s.len,
            };
            match out.last_mut() {
                Some(last) if last.address == address && last.count == s.len => {
                    last.slots.push(slot)
                }
                _ => out.push(ReadRequest {
                    area: self.area,
                    address,
                    count: s.len,
                    slots: vec![slot],
                }),
            }
        }
        out
    }
}

/// The fewest requests that read every tag once.
///
/// Greedy over tags sorted by (area, address): a tag joins the open request when it
/// starts at most `max_gap` past the request's end and the request stays within the
/// area's limit; otherwise it opens a new one. For `max_gap = 0` this is minimal:
/// each request's first tag cannot share a request with any earlier request's first
/// tag (checked by a property test against an exhaustive optimum).
pub fn plan(extents: &[TagExtent], max_gap: u16) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..extents.len()).collect();
    order.sort_by_key(|&i| (extents[i].area, extents[i].address, extents[i].len, i));

    struct Open {
        area: Area,
        start: u32,
        end: u32,
        slots: Vec<(usize, u32, u16)>,
    }
    fn close(o: Open) -> Option<ReadRequest> {
        let address = u16::try_from(o.start).ok()?;
        let count = u16::try_from(o.end - o.start).ok()?;
        let slots = o
            .slots
            .into_iter()
            .filter_map(|(tag, start, len)| {
                Some(TagSlot {
                    tag,
                    offset: u16::try_from(start - o.start).ok()?,
                    len,
                })
            })
            .collect();
        Some(ReadRequest {
            area: o.area,
            address,
            count,
            slots,
        })
    }

    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    for i in order {
        let e = extents[i];
        let (start, end) = (e.start(), e.end());
        if let Some(o) = open.as_mut() {
            let limit = u32::from(e.area.max_per_read());
            if o.area == e.area
                && start <= o.end + u32::from(max_gap)
                && end.max(o.end) - o.start <= limit
            {
                o.end = o.end.max(end);
                o.slots.push((i, start, e.len.max(1)));
                continue;
            }
        }
        if let Some(o) = open.take() {
            out.extend(close(o));
        }
        open = Some(Open {
            area: e.area,
            start,
            end,
            slots: vec![(i, start, e.len.max(1))],
        });
    }
    if let Some(o) = open {
        out.extend(close(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(area: Area, address: u16, len: u16) -> TagExtent {
        TagExtent { area, address, len }
    }

    const HR: Area = Area::HoldingRegister;

    #[test]
    fn adjacent_registers_make_one_request() {
        let reqs = plan(
            &[ext(HR, 4, 2), ext(HR, 0, 2), ext(HR, 2, 1), ext(HR, 3, 1)],
            0,
        );
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].address, reqs[0].count), (0, 6));
        let mut offsets: Vec<(usize, u16)> =
            reqs[0].slots.iter().map(|s| (s.tag, s.offset)).collect();
        offsets.sort();
        assert_eq!(offsets, vec![(0, 4), (1, 0), (2, 2), (3, 3)]);
    }

    #[test]
    fn a_gap_splits_unless_max_gap_allows_it() {
        let tags = [ext(HR, 0, 2), ext(HR, 5, 1)];
        assert_eq!(plan(&tags, 0).len(), 2);
        assert_eq!(plan(&tags, 2).len(), 2);
        let merged = plan(&tags, 3);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].address, merged[0].count), (0, 6));
    }

    #[test]
    fn areas_are_never_merged() {
        let reqs = plan(
            &[
                ext(HR, 0, 1),
                ext(Area::InputRegister, 1, 1),
                ext(Area::Coil, 0, 1),
                ext(Area::DiscreteInput, 1, 1),
            ],
            10,
        );
        assert_eq!(reqs.len(), 4);
    }

    #[test]
    fn register_reads_stop_at_125_and_bit_reads_at_2000() {
        let regs: Vec<TagExtent> = (0..200).map(|a| ext(HR, a, 1)).collect();
        let counts: Vec<u16> = plan(&regs, 0).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 75]);
        let bits: Vec<TagExtent> = (0..2500).map(|a| ext(Area::Coil, a, 1)).collect();
        let counts: Vec<u16> = plan(&bits, 0).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![2000, 500]);
    }

    #[test]
    fn a_value_is_never_cut_at_the_limit() {
        // 31 f32 take 62 registers, 62 more take 124: the 63rd f32 would end at 126.
        let tags: Vec<TagExtent> = (0..63).map(|i| ext(HR, i * 2, 2)).collect();
        let reqs = plan(&tags, 0);
        assert_eq!(
            reqs.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![124, 2]
        );
    }

    #[test]
    fn the_top_of_the_address_space_is_planned() {
        let reqs = plan(&[ext(HR, 65532, 4), ext(HR, 65535, 1)], 0);
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            (reqs[0].address, reqs[0].count, reqs[0].end()),
            (65532, 4, 65536)
        );
    }

    #[test]
    fn split_gives_one_request_per_register_range() {
        let tags = [
            ext(HR, 10, 2),
            ext(HR, 12, 4),
            ext(HR, 12, 4),
            ext(HR, 16, 1),
        ];
        let reqs = plan(&tags, 0);
        assert_eq!(reqs.len(), 1);
        let split = reqs[0].split();
        let shape: Vec<(u16, u16, usize)> = split
            .iter()
            .map(|r| (r.address, r.count, r.slots.len()))
            .collect();
        assert_eq!(shape, vec![(10, 2, 1), (12, 4, 2), (16, 1, 1)]);
        assert!(split.iter().flat_map(|r| &r.slots).all(|s| s.offset == 0));
    }

    fn area() -> impl Strategy<Value = Area> {
        prop_oneof![
            Just(Area::Coil),
            Just(Area::DiscreteInput),
            Just(Area::InputRegister),
            Just(Area::HoldingRegister),
        ]
    }

    fn extent() -> impl Strategy<Value = TagExtent> {
        (
            area(),
            0u16..3000,
            prop_oneof![Just(1u16), Just(2), Just(4)],
        )
            .prop_map(|(area, address, len)| {
                let len = if area.is_bits() { 1 } else { len };
                TagExtent { area, address, len }
            })
    }

    /// Non-overlapping tags of one area, packed densely so merges and limits matter.
    fn packed(area: Area) -> impl Strategy<Value = Vec<TagExtent>> {
        // Runs long enough to hit the per-read limit, with the odd gap between them.
        let (lens, max_items, spread, contiguous) = if area.is_bits() {
            (Just(1u16).boxed(), 4500, 10u16, 1500)
        } else {
            (
                prop_oneof![Just(1u16), Just(2), Just(4)].boxed(),
                300,
                30,
                60,
            )
        };
        let gap = prop_oneof![contiguous => Just(0u16), 1 => Just(1), 1 => Just(2)];
        prop::collection::vec((gap, lens), 1..max_items).prop_map(move |items| {
            let mut at = 0u16;
            let mut out = Vec::new();
            for (gap, len) in items {
                at += gap * spread;
                out.push(TagExtent {
                    area,
                    address: at,
                    len,
                });
                at += len;
            }
            out
        })
    }

    /// Exhaustive optimum for non-overlapping tags and max_gap = 0: a request is a run
    /// of consecutive tags with no unread register between them.
    fn optimum(tags: &[TagExtent]) -> usize {
        let mut t = tags.to_vec();
        t.sort_by_key(|e| e.address);
        let n = t.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            for i in (0..j).rev() {
                let contiguous = i + 1 == j || t[i].end() == t[i + 1].start();
                if !contiguous
                    || t[j - 1].end() - t[i].start() > u32::from(t[i].area.max_per_read())
                {
                    break;
                }
                if best[i] != usize::MAX {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[n]
    }

    fn check_invariants(
        tags: &[TagExtent],
        reqs: &[ReadRequest],
        max_gap: u16,
    ) -> Result<(), TestCaseError> {
        let mut served = vec![0usize; tags.len()];
        for r in reqs {
            prop_assert!(r.count >= 1);
            prop_assert!(r.count <= r.area.max_per_read(), "{r:?}");
            prop_assert!(r.end() <= 65536);
            let mut covered: Vec<(u32, u32)> = Vec::new();
            for s in &r.slots {
                served[s.tag] += 1;
                let t = tags[s.tag];
                prop_assert_eq!(t.area, r.area);
                prop_assert_eq!(u32::from(r.address) + u32::from(s.offset), t.start());
                prop_assert_eq!(s.len, t.len);
                prop_assert!(u32::from(s.offset) + u32::from(s.len) <= u32::from(r.count));
                covered.push((t.start(), t.end()));
            }
            // Registers read for no tag of this request come in runs of at most max_gap.
            covered.sort();
            let mut reach = u32::from(r.address);
            for (s, e) in covered {
                prop_assert!(
                    s.saturating_sub(reach) <= u32::from(max_gap),
                    "gap in {r:?}"
                );
                reach = reach.max(e);
            }
            prop_assert_eq!(reach, r.end(), "request reads past its last tag: {:?}", r);
        }
        prop_assert!(served.iter().all(|&n| n == 1), "served {served:?}");
        Ok(())
    }

    proptest! {
        #[test]
        fn every_tag_is_served_once_within_limits(tags in prop::collection::vec(extent(), 0..300), max_gap in 0u16..20) {
            let reqs = plan(&tags, max_gap);
            check_invariants(&tags, &reqs, max_gap)?;
        }

        #[test]
        fn splitting_keeps_every_tag(tags in prop::collection::vec(extent(), 1..100), max_gap in 0u16..20) {
            for r in plan(&tags, max_gap) {
                let split = r.split();
                let mut before: Vec<usize> = r.slots.iter().map(|s| s.tag).collect();
                let mut after: Vec<usize> = split.iter().flat_map(|p| p.slots.iter().map(|s| s.tag)).collect();
                before.sort();
                after.sort();
                prop_assert_eq!(before, after);
                for p in &split {
                    for s in &p.slots {
                        let t = tags[s.tag];
                        prop_assert_eq!((p.address, p.count, s.offset), (t.address, t.len, 0));
                    }
                }
            }
        }
    }

    proptest! {
        // Long bit runs make each case costly; fewer cases still hit every branch.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_plan_is_minimal_without_gaps(
            tags in prop_oneof![packed(Area::HoldingRegister), packed(Area::Coil)],
        ) {
            let reqs = plan(&tags, 0);
            check_invariants(&tags, &reqs, 0)?;
            prop_assert_eq!(reqs.len(), optimum(&tags));
        }
    }
}
