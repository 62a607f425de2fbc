//! Rotating aggregation groups for swarms too large for all-to-all rounds.
//!
//! All-to-all gossip costs every node O(N) inbound deltas per round. In a
//! grouped round the members are shuffled by a hash of (run seed, round, key)
//! and cut into groups of about `size`; each group averages only its own deltas.
//! The shuffle is new every round, so a node's state mixes with a fresh set of
//! peers each time and the swarm's states contract toward their mean
//! (Moshpit-style averaging), at O(size) bytes per node per round. Every node
//! that knows the same members computes the same groups.

use crate::keys::PublicKey;

/// The groups of `round`: `members` (any order, duplicates ignored) shuffled by
/// a keyed hash and dealt into ⌊n / size⌋ groups (at least one) whose sizes
/// differ by at most one.
pub fn assign(seed: &[u8; 32], round: u64, members: &[PublicKey], size: usize) -> Vec<Vec<PublicKey>> {
    let mut keyed: Vec<([u8; 32], PublicKey)> = members
        .iter()
        .map(|k| {
            let mut h = blake3::Hasher::new_keyed(seed);
            h.update(&round.to_le_bytes());
            h.update(&k.0);
            (*h.finalize().as_bytes(), *k)
        })
        .collect();
    keyed.sort_unstable();
    keyed.dedup_by(|a, b| a.1 == b.1);
    let count = (keyed.len() / size.max(1)).max(1);
    let mut groups = vec![Vec::with_capacity(size + 1); count];
    for (i, (_, key)) in keyed.into_iter().enumerate() {
        groups[i % count].push(key);
    }
    for g in &mut groups {
        g.sort_unstable();
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u32) -> Vec<PublicKey> {
        (0..n)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes());
                PublicKey(k)
            })
            .collect()
    }

    #[test]
    fn every_member_is_in_exactly_one_group_of_about_the_size() {
        let members = keys(1003);
        let groups = assign(&[1; 32], 5, &members, 16);
        assert_eq!(groups.len(), 62);
        let mut all: Vec<PublicKey> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        let mut expected = members.clone();
        expected.sort_unstable();
        assert!(all == expected, "every member exactly once");
        assert!(groups.iter().all(|g| (16..=17).contains(&g.len())));
    }

    #[test]
    fn groups_depend_on_the_round_not_on_the_order_members_are_listed() {
        let members = keys(64);
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(assign(&[1; 32], 3, &members, 8), assign(&[1; 32], 3, &reversed, 8));
        assert_ne!(assign(&[1; 32], 3, &members, 8), assign(&[1; 32], 4, &members, 8));
        assert_eq!(assign(&[1; 32], 3, &keys(5), 8).len(), 1, "fewer than a group: one group");
    }
}
