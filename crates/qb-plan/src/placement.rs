//! Master placement: how many masters (control plane + etcd members) a cluster runs and which
//! nodes they are.
//!
//! The rules, in order:
//! 1. **Count.** `auto` follows [`auto_master_count`]; an explicit count is kept but never exceeds
//!    the nodes that may be masters (then the largest odd number that fits). etcd never runs an
//!    even membership, and a cluster with a node has at least one master.
//! 2. **Overrides** ("advanced mode", by node name) win: a node forced to master is a master, a
//!    node forced to worker is a worker. Forced masters beyond the count are all kept, which must
//!    still give an odd number.
//! 3. **Stability.** Nodes that are masters now stay masters while the count allows, so growing a
//!    cluster never reshuffles etcd; when the count shrinks, the current masters that rank worst
//!    by rule 4 are demoted.
//! 4. **Spreading.** Each free seat goes to the failure domain ([`failure_domain`]) with the
//!    fewest masters so far; within it to the node with the most memory, then the first name.
//!
//! The result depends only on the set of candidates, never on their order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use qb_api::{Labels, MasterCount, NodeId, NodeName, NodeRole};

/// Label keys that name a node's failure domain, most specific convention first.
pub const FAILURE_DOMAIN_KEYS: [&str; 4] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/rack",
    "rack",
    "zone",
];

/// The largest explicit master count: more etcd members only slow consensus down.
pub const MAX_MASTERS: u8 = 9;

/// A node that may take a role in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    /// The node's name, which overrides refer to.
    pub name: NodeName,
    /// Memory of the host; masters go to bigger hosts first.
    pub memory_bytes: u64,
    /// The node's labels; they carry its failure domain.
    pub labels: Labels,
    /// Role it has now, if it already runs in the cluster.
    pub current: Option<NodeRole>,
}

/// The role of every candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Masters, in node-name order. Always an odd number, or none when there are no nodes.
    pub masters: Vec<NodeId>,
    /// Workers, in node-name order.
    pub workers: Vec<NodeId>,
}

impl Placement {
    /// The role placed on `id`, or `None` if it was not a candidate.
    pub fn role(&self, id: NodeId) -> Option<NodeRole> {
        if self.masters.contains(&id) {
            Some(NodeRole::Master)
        } else if self.workers.contains(&id) {
            Some(NodeRole::Worker)
        } else {
            None
        }
    }
}

/// Why no placement satisfies the request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// An explicit master count that the rules forbid (the parser never produces one).
    #[error("master count {requested} is not an odd number from 1 to {MAX_MASTERS}")]
    InvalidCount { requested: u8 },
    /// Overrides leave an even number of masters.
    #[error(
        "advanced mode asks for {count} masters ({names}): etcd needs an odd number",
        count = .masters.len(),
        names = join(.masters)
    )]
    EvenMasters { masters: Vec<NodeName> },
    /// Overrides make every node a worker.
    #[error(
        "advanced mode makes all {count} nodes workers ({names}): a cluster needs at least one master",
        count = .workers.len(),
        names = join(.workers)
    )]
    NoMaster { workers: Vec<NodeName> },
}

fn join(names: &[NodeName]) -> String {
    names
        .iter()
        .map(NodeName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The number of masters `auto` gives a cluster of `nodes` nodes: 0 for none, 1 for 1–2, 3 for
/// 3–9, 5 beyond.
pub fn auto_master_count(nodes: usize) -> usize {
    match nodes {
        0 => 0,
        1..=2 => 1,
        3..=9 => 3,
        _ => 5,
    }
}

/// The number of masters `masters` asks of a cluster of `nodes` nodes: an explicit count is
/// lowered to the largest odd number that fits, so the result is odd, or 0 for no nodes.
pub fn target_master_count(masters: MasterCount, nodes: usize) -> Result<usize, PlacementError> {
    match masters {
        MasterCount::Auto => Ok(auto_master_count(nodes)),
        MasterCount::Count(k) if k % 2 == 1 && k <= MAX_MASTERS => {
            Ok(usize::from(k).min(largest_odd_at_most(nodes)))
        }
        MasterCount::Count(k) => Err(PlacementError::InvalidCount { requested: k }),
    }
}

/// The largest odd number ≤ `n`, or 0 for 0.
fn largest_odd_at_most(n: usize) -> usize {
    if n % 2 == 1 { n } else { n.saturating_sub(1) }
}

/// A node's failure domain: the value of the first of [`FAILURE_DOMAIN_KEYS`] it carries with a
/// non-empty value. `None` means the node is a domain of its own.
pub fn failure_domain(labels: &Labels) -> Option<String> {
    FAILURE_DOMAIN_KEYS.iter().find_map(|key| {
        labels
            .iter()
            .find(|(k, v)| k.as_str() == *key && !v.as_str().is_empty())
            .map(|(_, v)| v.as_str().to_owned())
    })
}

/// Chooses the masters and workers among `candidates`.
///
/// `overrides` forces roles by node name; names that are not candidates are ignored. No
/// candidates give an empty placement.
pub fn place(
    candidates: &[Candidate],
    masters: MasterCount,
    overrides: &BTreeMap<NodeName, NodeRole>,
) -> Result<Placement, PlacementError> {
    let mut nodes: Vec<Seat<'_>> = candidates.iter().map(Seat::new).collect();
    nodes.sort_by(|a, b| (&a.node.name, a.node.id).cmp(&(&b.node.name, b.node.id)));
    if nodes.is_empty() {
        return Ok(Placement::default());
    }
    let target = target_master_count(masters, nodes.len())?;
    let forced = |role: NodeRole| {
        nodes
            .iter()
            .filter(|s| overrides.get(&s.node.name) == Some(&role))
            .cloned()
            .collect::<Vec<_>>()
    };
    let forced_masters = forced(NodeRole::Master);
    let forced_workers = forced(NodeRole::Worker);
    let seats = seat_count(target, nodes.len(), &forced_masters, &forced_workers)?;

    let (current, others): (Vec<Seat<'_>>, Vec<Seat<'_>>) = nodes
        .iter()
        .filter(|s| !overrides.contains_key(&s.node.name))
        .cloned()
        .partition(|s| s.node.current == Some(NodeRole::Master));
    let mut chosen = forced_masters;
    fill(&mut chosen, current, seats);
    fill(&mut chosen, others, seats);
    Ok(split(&nodes, &chosen))
}

/// How many masters to place: the target, lowered to what the nodes not forced to be workers
/// allow, raised to the forced masters; refused when that is even or zero.
fn seat_count(
    target: usize,
    nodes: usize,
    forced_masters: &[Seat<'_>],
    forced_workers: &[Seat<'_>],
) -> Result<usize, PlacementError> {
    let eligible = nodes - forced_workers.len();
    if eligible == 0 {
        return Err(PlacementError::NoMaster {
            workers: names(forced_workers),
        });
    }
    let seats = target
        .min(largest_odd_at_most(eligible))
        .max(forced_masters.len());
    if seats.is_multiple_of(2) {
        return Err(PlacementError::EvenMasters {
            masters: names(forced_masters),
        });
    }
    Ok(seats)
}

fn names(seats: &[Seat<'_>]) -> Vec<NodeName> {
    seats.iter().map(|s| s.node.name.clone()).collect()
}

/// A candidate with its failure domain worked out once.
#[derive(Clone, Debug)]
struct Seat<'a> {
    node: &'a Candidate,
    domain: Option<String>,
}

impl<'a> Seat<'a> {
    fn new(node: &'a Candidate) -> Self {
        Self {
            node,
            domain: failure_domain(&node.labels),
        }
    }
}

/// Moves the best nodes of `pool` into `chosen` until it holds `seats` masters or the pool is
/// empty, one at a time so that each pick sees the domains of the ones before.
fn fill<'a>(chosen: &mut Vec<Seat<'a>>, mut pool: Vec<Seat<'a>>, seats: usize) {
    while chosen.len() < seats {
        let best = pool
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| rank(chosen, s))
            .map(|(i, _)| i);
        let Some(best) = best else { return };
        chosen.push(pool.swap_remove(best));
    }
}

/// How good `seat` is as the next master, lowest first: fewest masters in its domain, then most
/// memory, then name (and id, for duplicate names). Comparing nodes by this key picks the best
/// node of the emptiest domain, and breaks ties between domains by their best nodes.
fn rank<'s>(
    chosen: &[Seat<'_>],
    seat: &'s Seat<'_>,
) -> (usize, Reverse<u64>, &'s NodeName, NodeId) {
    let in_domain = match &seat.domain {
        None => 0,
        Some(d) => chosen
            .iter()
            .filter(|m| m.domain.as_ref() == Some(d))
            .count(),
    };
    (
        in_domain,
        Reverse(seat.node.memory_bytes),
        &seat.node.name,
        seat.node.id,
    )
}

/// The placement of `nodes` (sorted by name) with `chosen` as masters.
fn split(nodes: &[Seat<'_>], chosen: &[Seat<'_>]) -> Placement {
    let masters: BTreeSet<NodeId> = chosen.iter().map(|s| s.node.id).collect();
    let (masters, workers) = nodes
        .iter()
        .map(|s| s.node.id)
        .partition(|id| masters.contains(id));
    Placement { masters, workers }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GIB: u64 = 1 << 30;
    const COUNTS: [MasterCount; 6] = [
        MasterCount::Auto,
        MasterCount::Count(1),
        MasterCount::Count(3),
        MasterCount::Count(5),
        MasterCount::Count(7),
        MasterCount::Count(9),
    ];

    /// A node with a deterministic id, `zone` under `topology.kubernetes.io/zone` (none if
    /// empty) and `gib` GiB of memory.
    fn node(name: &str, zone: &str, gib: u64) -> Candidate {
        let mut labels = Labels::new();
        if !zone.is_empty() {
            labels.insert(
                "topology.kubernetes.io/zone".parse().unwrap(),
                zone.parse().unwrap(),
            );
        }
        Candidate {
            id: id_of(name),
            name: name.parse().unwrap(),
            memory_bytes: gib * GIB,
            labels,
            current: None,
        }
    }

    /// Ids whose order is unrelated to names', so nothing passes by sorting on the id.
    fn id_of(name: &str) -> NodeId {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("00000000-0000-7000-8000-{:012x}", hash & 0xffff_ffff_ffff)
            .parse()
            .unwrap()
    }

    fn plain(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| node(&format!("n{i:02}"), "", 8)).collect()
    }

    fn no_overrides() -> BTreeMap<NodeName, NodeRole> {
        BTreeMap::new()
    }

    fn overrides(pairs: &[(&str, NodeRole)]) -> BTreeMap<NodeName, NodeRole> {
        pairs
            .iter()
            .map(|(name, role)| (name.parse().unwrap(), *role))
            .collect()
    }

    /// Names of the masters, sorted.
    fn master_names(nodes: &[Candidate], placement: &Placement) -> Vec<String> {
        let mut names: Vec<String> = nodes
            .iter()
            .filter(|c| placement.role(c.id) == Some(NodeRole::Master))
            .map(|c| c.name.to_string())
            .collect();
        names.sort();
        names
    }

    fn masters_of(
        nodes: &[Candidate],
        count: MasterCount,
        roles: &BTreeMap<NodeName, NodeRole>,
    ) -> Vec<String> {
        master_names(nodes, &place(nodes, count, roles).unwrap())
    }

    /// `nodes` with the roles of `placement` as their current roles.
    fn applied(nodes: &[Candidate], placement: &Placement) -> Vec<Candidate> {
        nodes
            .iter()
            .map(|c| Candidate {
                current: placement.role(c.id),
                ..c.clone()
            })
            .collect()
    }

    fn set_current(nodes: &mut [Candidate], masters: &[&str]) {
        for c in nodes.iter_mut() {
            c.current = Some(if masters.contains(&c.name.as_str()) {
                NodeRole::Master
            } else {
                NodeRole::Worker
            });
        }
    }

    /// A small deterministic generator (xorshift64*), so the property checks need no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                let j = self.below(i as u64 + 1) as usize;
                items.swap(i, j);
            }
        }
    }

    /// `n` nodes with random zones (some none), memory and current roles.
    fn random_nodes(rng: &mut Rng, n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| {
                let zone = ["", "a", "b", "c"][rng.below(4) as usize];
                let mut c = node(&format!("n{i:02}"), zone, 1 + rng.below(4));
                c.current =
                    [None, Some(NodeRole::Master), Some(NodeRole::Worker)][rng.below(3) as usize];
                c
            })
            .collect()
    }

    // ---- counts -------------------------------------------------------------------------------

    #[test]
    fn auto_count_follows_the_node_count() {
        let expected = [0, 1, 1, 3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5];
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(auto_master_count(n), *want, "{n} nodes");
        }
        assert_eq!(auto_master_count(1000), 5);
    }

    #[test]
    fn count_table_for_auto_and_explicit_counts() {
        // Columns: auto, 1, 3, 5, 7, 9.
        let table: [[usize; 6]; 13] = [
            [0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [3, 1, 3, 3, 3, 3],
            [3, 1, 3, 3, 3, 3],
            [3, 1, 3, 5, 5, 5],
            [3, 1, 3, 5, 5, 5],
            [3, 1, 3, 5, 7, 7],
            [3, 1, 3, 5, 7, 7],
            [3, 1, 3, 5, 7, 9],
            [5, 1, 3, 5, 7, 9],
            [5, 1, 3, 5, 7, 9],
            [5, 1, 3, 5, 7, 9],
        ];
        for (n, row) in table.iter().enumerate() {
            let nodes = plain(n);
            for (count, want) in COUNTS.iter().zip(row) {
                assert_eq!(
                    target_master_count(*count, n).unwrap(),
                    *want,
                    "{n} nodes, {count}"
                );
                let placement = place(&nodes, *count, &no_overrides()).unwrap();
                assert_eq!(placement.masters.len(), *want, "{n} nodes, {count}");
                assert_eq!(placement.workers.len(), n - want, "{n} nodes, {count}");
            }
        }
    }

    #[test]
    fn counts_the_parser_refuses_are_refused() {
        for k in [0, 2, 4, 8, 10, 11, 255] {
            let err = target_master_count(MasterCount::Count(k), 12).unwrap_err();
            assert_eq!(err, PlacementError::InvalidCount { requested: k });
            assert!(place(&plain(12), MasterCount::Count(k), &no_overrides()).is_err());
        }
        assert_eq!(
            PlacementError::InvalidCount { requested: 4 }.to_string(),
            "master count 4 is not an odd number from 1 to 9"
        );
    }

    #[test]
    fn no_candidates_give_an_empty_placement() {
        for count in COUNTS {
            let roles = overrides(&[("ghost", NodeRole::Master)]);
            assert_eq!(place(&[], count, &roles).unwrap(), Placement::default());
        }
    }

    // ---- failure domains ----------------------------------------------------------------------

    #[test]
    fn failure_domain_takes_the_first_key_present() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                .collect()
        };
        let all = [
            ("topology.kubernetes.io/zone", "tz"),
            ("topology.kubernetes.io/rack", "tr"),
            ("rack", "r"),
            ("zone", "z"),
        ];
        for skip in 0..all.len() {
            let want = all[skip].1.to_owned();
            assert_eq!(failure_domain(&labels(&all[skip..])), Some(want));
        }
        assert_eq!(
            failure_domain(&labels(&[("zone", "z"), ("rack", "r")])).unwrap(),
            "r"
        );
        assert_eq!(failure_domain(&labels(&[("region", "eu")])), None);
        assert_eq!(failure_domain(&Labels::new()), None);
        assert_eq!(
            failure_domain(&labels(&[
                ("topology.kubernetes.io/zone", ""),
                ("rack", "r")
            ])),
            Some("r".to_owned()),
            "an empty value names no domain"
        );
    }

    // ---- spreading and preference -------------------------------------------------------------

    #[test]
    fn three_masters_spread_over_three_zones() {
        let nodes = [
            node("a1", "a", 16),
            node("a2", "a", 32),
            node("a3", "a", 64),
            node("b1", "b", 8),
            node("b2", "b", 4),
            node("c1", "c", 2),
        ];
        let masters = masters_of(&nodes, MasterCount::Auto, &no_overrides());
        assert_eq!(masters, ["a3", "b1", "c1"]);
    }

    #[test]
    fn three_masters_over_two_zones_go_two_and_one() {
        let nodes = [
            node("a1", "a", 16),
            node("a2", "a", 8),
            node("a3", "a", 4),
            node("b1", "b", 12),
            node("b2", "b", 10),
            node("b3", "b", 2),
        ];
        // a1 (16) first, then the emptier zone b (b1), then the better of a2 (8) and b2 (10).
        let masters = masters_of(&nodes, MasterCount::Count(3), &no_overrides());
        assert_eq!(masters, ["a1", "b1", "b2"]);
    }

    #[test]
    fn nodes_without_a_domain_are_each_their_own() {
        let nodes = [
            node("a1", "a", 64),
            node("a2", "a", 64),
            node("a3", "a", 64),
            node("x", "", 1),
            node("y", "", 2),
        ];
        let masters = masters_of(&nodes, MasterCount::Auto, &no_overrides());
        assert_eq!(masters, ["a1", "x", "y"]);
    }

    #[test]
    fn more_memory_wins_then_the_first_name() {
        let nodes = [
            node("d", "", 4),
            node("c", "", 16),
            node("b", "", 8),
            node("a", "", 8),
            node("e", "", 2),
        ];
        let masters = masters_of(&nodes, MasterCount::Auto, &no_overrides());
        assert_eq!(masters, ["a", "b", "c"]);
        let same_zone = [node("q", "z", 8), node("p", "z", 8), node("r", "z", 8)];
        let masters = masters_of(&same_zone, MasterCount::Count(1), &no_overrides());
        assert_eq!(masters, ["p"]);
    }

    #[test]
    fn domain_ties_break_on_the_best_node() {
        // Both zones are empty; b holds the biggest node, so b gets the single master.
        let nodes = [node("a1", "a", 8), node("b1", "b", 16)];
        assert_eq!(
            masters_of(&nodes, MasterCount::Auto, &no_overrides()),
            ["b1"]
        );
        // Equal memory: the first name decides.
        let nodes = [node("b1", "b", 8), node("a1", "a", 8)];
        assert_eq!(
            masters_of(&nodes, MasterCount::Auto, &no_overrides()),
            ["a1"]
        );
    }

    // ---- stability ----------------------------------------------------------------------------

    #[test]
    fn growing_three_to_five_to_ten_keeps_the_masters() {
        let small = ["s1", "s2", "s3"].map(|n| node(n, "a", 2));
        let first = place(&small, MasterCount::Auto, &no_overrides()).unwrap();
        assert_eq!(master_names(&small, &first), ["s1", "s2", "s3"]);

        // Two bigger nodes in new zones would win a fresh placement, but the masters stay.
        let mut five = applied(&small, &first);
        five.extend([node("big1", "b", 64), node("big2", "c", 64)]);
        let fresh: Vec<Candidate> = five
            .iter()
            .map(|c| Candidate {
                current: None,
                ..c.clone()
            })
            .collect();
        assert_ne!(
            masters_of(&fresh, MasterCount::Auto, &no_overrides()),
            ["s1", "s2", "s3"]
        );
        let second = place(&five, MasterCount::Auto, &no_overrides()).unwrap();
        assert_eq!(master_names(&five, &second), ["s1", "s2", "s3"]);

        // At ten nodes auto wants five: the three stay and two join, spread away from zone a.
        let mut ten = applied(&five, &second);
        ten.extend([
            node("big3", "b", 32),
            node("big4", "c", 32),
            node("big5", "d", 16),
            node("big6", "a", 128),
            node("big7", "", 1),
        ]);
        let third = place(&ten, MasterCount::Auto, &no_overrides()).unwrap();
        assert_eq!(
            master_names(&ten, &third),
            ["big1", "big2", "s1", "s2", "s3"]
        );
    }

    #[test]
    fn shrinking_demotes_the_worst_masters() {
        let mut nodes = vec![
            node("a1", "a", 8),
            node("a2", "a", 16),
            node("b1", "b", 4),
            node("c1", "c", 8),
            node("c2", "c", 8),
            node("w1", "d", 64),
        ];
        set_current(&mut nodes, &["a1", "a2", "b1", "c1", "c2"]);
        // One per zone among the current masters: a2 (more memory), b1, c1 (first name).
        let three = masters_of(&nodes, MasterCount::Count(3), &no_overrides());
        assert_eq!(three, ["a2", "b1", "c1"]);
        // One: the biggest current master, never the bigger worker.
        let one = masters_of(&nodes, MasterCount::Count(1), &no_overrides());
        assert_eq!(one, ["a2"]);
    }

    #[test]
    fn losing_nodes_shrinks_to_an_odd_count_of_current_masters() {
        let mut nodes: Vec<Candidate> = ["m1", "m2", "m3", "m4", "m5", "w1"]
            .iter()
            .zip([8, 16, 32, 4, 2, 64])
            .map(|(n, gib)| node(n, "", gib))
            .collect();
        set_current(&mut nodes, &["m1", "m2", "m3", "m4", "m5"]);
        // Four of the six nodes are left (m2 and w1 went away): auto wants three.
        let left: Vec<Candidate> = nodes
            .iter()
            .filter(|c| !["m2", "w1"].contains(&c.name.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            masters_of(&left, MasterCount::Auto, &no_overrides()),
            ["m1", "m3", "m4"]
        );
        // An explicit five with four nodes left: three.
        assert_eq!(
            masters_of(&left, MasterCount::Count(5), &no_overrides()),
            ["m1", "m3", "m4"]
        );
    }

    #[test]
    fn current_masters_fill_before_better_newcomers() {
        let mut nodes = vec![
            node("old", "a", 1),
            node("new", "b", 64),
            node("new2", "c", 64),
        ];
        set_current(&mut nodes, &["old"]);
        assert_eq!(
            masters_of(&nodes, MasterCount::Count(1), &no_overrides()),
            ["old"]
        );
        // Growing to three adds the newcomers.
        assert_eq!(
            masters_of(&nodes, MasterCount::Count(3), &no_overrides()),
            ["new", "new2", "old"]
        );
    }

    // ---- overrides ----------------------------------------------------------------------------

    #[test]
    fn forced_masters_take_seats() {
        let nodes = [
            node("a1", "a", 64),
            node("a2", "a", 64),
            node("b1", "b", 64),
            node("tiny", "a", 1),
            node("c1", "c", 2),
        ];
        let roles = overrides(&[("tiny", NodeRole::Master)]);
        // tiny fills zone a's seat; the other two go to b and c.
        assert_eq!(
            masters_of(&nodes, MasterCount::Auto, &roles),
            ["b1", "c1", "tiny"]
        );
    }

    #[test]
    fn forced_masters_beyond_the_count_are_all_kept() {
        let nodes = plain(5);
        let roles = overrides(&[
            ("n00", NodeRole::Master),
            ("n02", NodeRole::Master),
            ("n04", NodeRole::Master),
        ]);
        let masters = masters_of(&nodes, MasterCount::Count(1), &roles);
        assert_eq!(masters, ["n00", "n02", "n04"]);
        let all = overrides(&[
            ("n00", NodeRole::Master),
            ("n01", NodeRole::Master),
            ("n02", NodeRole::Master),
            ("n03", NodeRole::Master),
            ("n04", NodeRole::Master),
        ]);
        assert_eq!(masters_of(&nodes, MasterCount::Auto, &all).len(), 5);
    }

    #[test]
    fn forced_workers_are_workers_even_when_masters_now() {
        let mut nodes = vec![
            node("a", "", 64),
            node("b", "", 32),
            node("c", "", 16),
            node("d", "", 1),
        ];
        set_current(&mut nodes, &["a", "b", "c"]);
        let roles = overrides(&[("a", NodeRole::Worker)]);
        let placement = place(&nodes, MasterCount::Auto, &roles).unwrap();
        assert_eq!(master_names(&nodes, &placement), ["b", "c", "d"]);
        assert_eq!(placement.role(nodes[0].id), Some(NodeRole::Worker));
    }

    #[test]
    fn forced_workers_lower_the_count_to_what_is_left() {
        let nodes = plain(5);
        let roles = overrides(&[
            ("n00", NodeRole::Worker),
            ("n01", NodeRole::Worker),
            ("n02", NodeRole::Worker),
        ]);
        // Two nodes may be masters: one is.
        assert_eq!(masters_of(&nodes, MasterCount::Auto, &roles), ["n03"]);
    }

    #[test]
    fn an_even_count_of_forced_masters_is_refused() {
        let nodes = [node("a", "", 1), node("b", "", 1), node("c", "", 1)];
        let roles = overrides(&[("a", NodeRole::Master), ("b", NodeRole::Master)]);
        let err = place(&nodes, MasterCount::Count(1), &roles).unwrap_err();
        assert_eq!(
            err.to_string(),
            "advanced mode asks for 2 masters (a, b): etcd needs an odd number"
        );
        // With auto (three) the third node completes an odd membership.
        assert_eq!(
            masters_of(&nodes, MasterCount::Auto, &roles),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn forced_masters_and_workers_leaving_an_even_count_are_refused() {
        let nodes = plain(5);
        let roles = overrides(&[
            ("n00", NodeRole::Master),
            ("n01", NodeRole::Master),
            ("n02", NodeRole::Worker),
            ("n03", NodeRole::Worker),
            ("n04", NodeRole::Worker),
        ]);
        let err = place(&nodes, MasterCount::Auto, &roles).unwrap_err();
        assert_eq!(
            err,
            PlacementError::EvenMasters {
                masters: vec!["n00".parse().unwrap(), "n01".parse().unwrap()]
            }
        );
    }

    #[test]
    fn all_workers_are_refused() {
        let nodes = [node("a", "", 1), node("b", "", 1)];
        let roles = overrides(&[("a", NodeRole::Worker), ("b", NodeRole::Worker)]);
        for count in COUNTS {
            let err = place(&nodes, count, &roles).unwrap_err();
            assert_eq!(
                err.to_string(),
                "advanced mode makes all 2 nodes workers (a, b): a cluster needs at least one master"
            );
        }
    }

    #[test]
    fn unknown_names_are_ignored() {
        let nodes = [
            node("a", "x", 4),
            node("b", "y", 8),
            node("c", "z", 2),
            node("d", "x", 1),
        ];
        let roles = overrides(&[
            ("ghost", NodeRole::Master),
            ("phantom", NodeRole::Master),
            ("spirit", NodeRole::Worker),
        ]);
        for count in COUNTS {
            assert_eq!(
                place(&nodes, count, &roles).unwrap(),
                place(&nodes, count, &no_overrides()).unwrap(),
                "{count}"
            );
        }
    }

    // ---- determinism and properties -----------------------------------------------------------

    #[test]
    fn input_order_does_not_matter() {
        let mut rng = Rng(0x5eed);
        for n in 1..=12 {
            for _ in 0..10 {
                let nodes = random_nodes(&mut rng, n);
                for count in COUNTS {
                    let want = place(&nodes, count, &no_overrides()).unwrap();
                    let mut shuffled = nodes.clone();
                    for _ in 0..5 {
                        rng.shuffle(&mut shuffled);
                        assert_eq!(place(&shuffled, count, &no_overrides()).unwrap(), want);
                    }
                }
            }
        }
    }

    #[test]
    fn output_is_sorted_by_name() {
        let nodes = [
            node("c", "", 8),
            node("a", "", 1),
            node("b", "", 4),
            node("d", "", 2),
        ];
        let placement = place(&nodes, MasterCount::Auto, &no_overrides()).unwrap();
        assert_eq!(placement.masters, [id_of("b"), id_of("c"), id_of("d")]);
        assert_eq!(placement.workers, [id_of("a")]);
        assert_eq!(placement.role(id_of("nobody")), None);
    }

    /// Checks what every placement keeps: one role per candidate, an odd number of masters.
    fn check_invariants(nodes: &[Candidate], placement: &Placement) {
        let n = nodes.len();
        let m = placement.masters.len();
        assert_eq!(m + placement.workers.len(), n, "every node gets one role");
        let all: BTreeSet<NodeId> = placement
            .masters
            .iter()
            .chain(&placement.workers)
            .copied()
            .collect();
        assert_eq!(
            all,
            nodes.iter().map(|c| c.id).collect(),
            "roles go to the candidates"
        );
        if n == 0 {
            assert_eq!(m, 0);
        } else {
            assert_eq!(m % 2, 1, "{n} nodes: {m} masters is even");
        }
    }

    #[test]
    fn never_even_never_zero_and_current_masters_stay() {
        let mut rng = Rng(0x0dd_e7cd);
        for n in 0..=12 {
            for _ in 0..50 {
                let nodes = random_nodes(&mut rng, n);
                let current: BTreeSet<NodeId> = nodes
                    .iter()
                    .filter(|c| c.current == Some(NodeRole::Master))
                    .map(|c| c.id)
                    .collect();
                for count in COUNTS {
                    let placement = place(&nodes, count, &no_overrides()).unwrap();
                    check_invariants(&nodes, &placement);
                    let target = target_master_count(count, n).unwrap();
                    assert_eq!(placement.masters.len(), target, "{n} nodes, {count}");
                    let masters: BTreeSet<NodeId> = placement.masters.iter().copied().collect();
                    if current.len() <= target {
                        assert!(current.is_subset(&masters), "a current master was demoted");
                    } else {
                        assert!(
                            masters.is_subset(&current),
                            "a worker was promoted while shrinking"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn overrides_are_honoured_or_refused() {
        let mut rng = Rng(0xad_5a9ce);
        for n in 0..=12 {
            for _ in 0..50 {
                let nodes = random_nodes(&mut rng, n);
                let mut roles = BTreeMap::new();
                for c in &nodes {
                    match rng.below(6) {
                        0 => roles.insert(c.name.clone(), NodeRole::Master),
                        1 => roles.insert(c.name.clone(), NodeRole::Worker),
                        _ => None,
                    };
                }
                for count in COUNTS {
                    match place(&nodes, count, &roles) {
                        Ok(placement) => {
                            check_invariants(&nodes, &placement);
                            for c in &nodes {
                                if let Some(role) = roles.get(&c.name) {
                                    assert_eq!(placement.role(c.id), Some(*role), "{}", c.name);
                                }
                            }
                        }
                        Err(PlacementError::EvenMasters { masters }) => {
                            assert_eq!(masters.len() % 2, 0);
                            let forced = roles.values().filter(|r| **r == NodeRole::Master);
                            assert_eq!(masters.len(), forced.count());
                        }
                        Err(PlacementError::NoMaster { workers }) => {
                            assert_eq!(
                                workers.len(),
                                n,
                                "not every node was forced to be a worker"
                            );
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
        }
    }
}
