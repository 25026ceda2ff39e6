//! The `needs` graph: cycle detection and a stable topological order. Both
//! are iterative, so a hostile file with a very long chain cannot overflow
//! the stack.
//!
//! Our own code rather than a graph crate (petgraph) on purpose: what is
//! needed is small (about a hundred lines), but specific: every cycle
//! reported once with the labelled edges that close it (for spans in the
//! diagnostics), and a topological order that keeps file order among
//! independent jobs (so `cidev inspect` and the stages are stable). A
//! general library gives neither directly and would add a dependency to a
//! crate that editors and linters embed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Finds cycles in a graph given as adjacency lists of `(target, label)`.
/// Each cycle is the list of `(node, label of the edge to the next node)`.
/// At most one cycle is reported per back edge, and never the same node set twice.
pub(crate) fn cycles<S: Copy>(edges: &[Vec<(usize, S)>]) -> Vec<Vec<(usize, S)>> {
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; edges.len()];
    let mut found: Vec<Vec<(usize, S)>> = Vec::new();
    let mut seen_sets: Vec<Vec<usize>> = Vec::new();
    for start in 0..edges.len() {
        if state[start] != NEW {
            continue;
        }
        state[start] = OPEN;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (v, i) = *top;
            if i == edges[v].len() {
                state[v] = DONE;
                stack.pop();
                continue;
            }
            top.1 += 1;
            let (w, _) = edges[v][i];
            match state[w] {
                NEW => {
                    state[w] = OPEN;
                    stack.push((w, 0));
                }
                OPEN => {
                    let Some(pos) = stack.iter().position(|(x, _)| *x == w) else {
                        continue;
                    };
                    let cycle: Vec<(usize, S)> = stack[pos..]
                        .iter()
                        .map(|(x, next)| (*x, edges[*x][next - 1].1))
                        .collect();
                    let mut set: Vec<usize> = cycle.iter().map(|(x, _)| *x).collect();
                    set.sort_unstable();
                    if !seen_sets.contains(&set) {
                        seen_sets.push(set);
                        found.push(cycle);
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// A topological order that keeps file order among independent nodes, or
/// `None` when the graph has a cycle. `deps[i]` lists what `i` needs.
pub(crate) fn topo_order(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            indegree[i] += 1;
            dependents[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    (order.len() == n).then_some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cycles_once() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3
        let edges = vec![
            vec![(1, 'a')],
            vec![(2, 'b')],
            vec![(0, 'c')],
            vec![(3, 'd')],
        ];
        let found = cycles(&edges);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], vec![(0, 'a'), (1, 'b'), (2, 'c')]);
        assert_eq!(found[1], vec![(3, 'd')]);
        assert!(cycles(&[vec![(1, ())], vec![]]).is_empty());
    }

    #[test]
    fn long_chains_do_not_recurse() {
        let n = 200_000;
        let edges: Vec<Vec<(usize, ())>> = (0..n).map(|i| vec![((i + 1) % n, ())]).collect();
        assert_eq!(cycles(&edges).len(), 1);
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(topo_order(&deps).map(|o| o.len()), Some(n));
    }

    #[test]
    fn topo_order_is_stable() {
        // 2 needs 0; 1 needs 2
        let deps = vec![vec![], vec![2], vec![0], vec![]];
        assert_eq!(topo_order(&deps), Some(vec![0, 2, 1, 3]));
        assert_eq!(topo_order(&[vec![1], vec![0]]), None);
    }
}
