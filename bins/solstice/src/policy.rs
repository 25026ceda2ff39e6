//! Who may run what: the gate in front of a pull request from a fork. A
//! pure function of the delivery's facts, so every case is a table row.
//!
//! Trust belongs to whose code it is (the pull request's author), never to
//! whoever caused the delivery: a maintainer who reopens a stranger's pull
//! request or presses "Update branch" is the event's sender, and the code
//! is still the stranger's. An approval covers exactly the commit an
//! operator looked at: a new head needs a new one, unless the author is
//! trusted.

/// What a delivery from a fork may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkGate {
    /// Run (without the repository's secrets: a fork never gets them).
    Run,
    /// Wait for an operator's approval of this commit.
    Hold,
}

/// The gate: `from_fork`, the head is in another repository; `author`,
/// whose code it is; `trusted`, the operator's list of authors whose fork
/// pull requests run without approval; `commit_approved`, an operator
/// approved this very commit of this repository (now or for an earlier
/// delivery about it).
pub fn fork_gate(
    from_fork: bool,
    author: &str,
    trusted: &[String],
    commit_approved: bool,
) -> ForkGate {
    if !from_fork || commit_approved {
        return ForkGate::Run;
    }
    // An unknown author (empty) is nobody's.
    if !author.is_empty() && trusted.iter().any(|t| t == author) {
        return ForkGate::Run;
    }
    ForkGate::Hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_keys_trust_to_the_author_and_approval_to_the_commit() {
        let trusted = vec!["maintainer".to_string(), "alice".to_string()];
        // (from fork, author, commit approved) -> gate
        let table = [
            (false, "mallory", false, ForkGate::Run),
            (true, "mallory", false, ForkGate::Hold),
            (true, "mallory", true, ForkGate::Run),
            (true, "alice", false, ForkGate::Run),
            (true, "", false, ForkGate::Hold),
            (true, "Alice", false, ForkGate::Hold),
            (true, "maintainer2", false, ForkGate::Hold),
        ];
        for (from_fork, author, approved, want) in table {
            assert_eq!(
                fork_gate(from_fork, author, &trusted, approved),
                want,
                "from_fork={from_fork} author={author:?} approved={approved}"
            );
        }
        // No one trusted: every unapproved fork waits.
        assert_eq!(fork_gate(true, "alice", &[], false), ForkGate::Hold);
    }
}
