//! Ranking (Krones steps 2–4): each state scores the sum of the weights of the
//! groups voting for it; the highest score wins; a tie goes to the more severe
//! state (the higher index). States nobody votes for cannot win.

/// `votes`: (state index, weight) for every voting group. `scratch` is reused
/// between calls so ranking allocates nothing.
pub fn winner(
    votes: impl IntoIterator<Item = (u16, u32)>,
    n_states: usize,
    scratch: &mut Vec<Option<u64>>,
) -> Option<u16> {
    scratch.clear();
    scratch.resize(n_states, None);
    for (state, weight) in votes {
        if let Some(slot) = scratch.get_mut(state as usize) {
            *slot = Some(slot.unwrap_or(0) + u64::from(weight));
        }
    }
    let mut best: Option<(u64, u16)> = None;
    for (i, score) in scratch.iter().enumerate() {
        if let Some(score) = *score {
            // `>=`: walking up the severity order, an equal score moves the win up.
            if best.is_none_or(|(b, _)| score >= b) {
                best = Some((score, i as u16));
            }
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn krones_weights() {
        let mut s = Vec::new();
        // production ACTIVE(2) weight 1, thermal WARNING(3) weight 3.
        assert_eq!(winner([(2, 1), (3, 3)], 5, &mut s), Some(3));
        // Tie: more severe wins.
        assert_eq!(winner([(2, 3), (3, 3)], 5, &mut s), Some(3));
        assert_eq!(winner([(4, 1), (0, 1)], 5, &mut s), Some(4));
        // Two light groups outweigh one heavier.
        assert_eq!(winner([(1, 2), (1, 2), (4, 3)], 5, &mut s), Some(1));
        assert_eq!(winner([], 5, &mut s), None);
        // A weight-0 vote still makes its state a candidate.
        assert_eq!(winner([(1, 0)], 5, &mut s), Some(1));
    }

    proptest! {
        #[test]
        fn winner_has_the_top_score_and_is_the_most_severe_of_ties(
            votes in proptest::collection::vec((0u16..6, 0u32..5), 0..12),
        ) {
            let mut s = Vec::new();
            let w = winner(votes.iter().copied(), 6, &mut s);
            let score = |st: u16| votes.iter().filter(|v| v.0 == st).map(|v| u64::from(v.1)).sum::<u64>();
            match w {
                None => prop_assert!(votes.is_empty()),
                Some(w) => {
                    prop_assert!(votes.iter().any(|v| v.0 == w));
                    for &(st, _) in &votes {
                        prop_assert!(score(st) < score(w) || (score(st) == score(w) && st <= w));
                    }
                }
            }
            // Order of the votes does not matter.
            let mut rev = votes.clone();
            rev.reverse();
            prop_assert_eq!(winner(rev, 6, &mut s), w);
        }
    }
}
