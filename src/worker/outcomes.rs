//! The one rule per outcome: what each claim this worker made came to, decided once, when the
//! DB thread learns how the claim ended. `counters` counts the label per route (the metrics),
//! and everything else reads those counts: `tally`'s summaries (`drained: …`, `stopped: …`,
//! `summary: …`), the dead-event WARN line and the child's exit code (6 under
//! `--fail-on-dead`). So the log, `/metrics` and the exit code cannot disagree.
//!
//! | label | the claim ended… |
//! | --- | --- |
//! | delivered | with the handler's success, recorded |
//! | retried | with a failed attempt recorded while attempts remain (`Retry`, `RetryAfter`, an `Unavailable` charged before its route pauses) |
//! | dead | with `Permanent`, or a failure on the last allowed attempt, recorded; or the claim found its attempts used up |
//! | released | given back without an attempt, claimable at once: unstarted (shutdown, a stale lease, no handler thread) or after an `Abort` |
//! | deferred | given back without an attempt, due again after a pause: a handler's `Defer`, or held while its route is paused for an outage (not a label of its own: the route's `paused` gauge says why) |
//!
//! Invariant: a claim gets at most one label. A result for a claim not held now (void), or
//! one whose lease passed to another worker, gets none: the claim that holds the event counts it.

use super::ledger::Finished;
use crate::handler::Outcome as Verdict;
use crate::metrics::counts::Label;

/// How the DB thread learnt that a claim ended.
#[derive(Debug)]
pub(super) enum Ending<'a> {
    /// A handler answered; `attempt` is [`attempt`]'s label of its verdict, `finished` what
    /// the ledger made of it.
    Finished {
        attempt: Label,
        finished: &'a Finished,
    },
    /// Given back unstarted (stopping, a stale lease, no handler thread took it); `ours`:
    /// it was the claim held now.
    Unstarted { ours: bool },
    /// Given back to wait for its paused route; `ours` as above.
    Held { ours: bool },
    /// The claim found the event's attempts used up.
    DeadAtClaim,
}

/// The label of a handler's verdict on attempt `token` should it be recorded, by the rule
/// the completer applies (`complete::Completer::push`): a failure on the last allowed
/// attempt is dead.
pub(super) fn attempt(v: &Verdict, token: i32, max_attempts: i32) -> Label {
    match v {
        Verdict::Delivered => Label::Delivered,
        Verdict::Permanent(_) => Label::Dead,
        _ if token >= max_attempts => Label::Dead,
        Verdict::Defer(_) => Label::Deferred,
        Verdict::Abort(_) => Label::Released,
        Verdict::Retry(_) | Verdict::RetryAfter(..) | Verdict::Unavailable(..) => Label::Retried,
    }
}

/// The label of a claim that ended so (None: not this claim's to count).
pub(super) fn label(ending: &Ending<'_>) -> Option<Label> {
    match ending {
        Ending::Finished { attempt, finished } => match finished {
            Finished::Recorded => Some(*attempt),
            Finished::Aborted(_) => Some(Label::Released),
            Finished::Deferred { .. } => Some(Label::Deferred),
            Finished::Void | Finished::LeaseLost => None,
        },
        Ending::Unstarted { ours: true } => Some(Label::Released),
        Ending::Held { ours: true } => Some(Label::Deferred),
        Ending::Unstarted { ours: false } | Ending::Held { ours: false } => None,
        Ending::DeadAtClaim => Some(Label::Dead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;
    use crate::store::Status;
    use std::time::Duration;

    #[test]
    fn attempts_follow_the_completers_rule() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let verdicts = [
            Verdict::Delivered,
            Verdict::Retry("x".into()),
            Verdict::RetryAfter("x".into(), Duration::from_secs(3)),
            Verdict::Permanent("x".into()),
            Verdict::Unavailable("x".into(), None),
        ];
        for token in [1, 2, 3] {
            for v in &verdicts {
                let mut c = super::super::complete::Completer::new(3, backoff);
                c.push(1, token, v.clone());
                let want = match c.batch()[0].status {
                    Status::Done => Label::Delivered,
                    Status::Retry => Label::Retried,
                    Status::Dead => Label::Dead,
                };
                assert_eq!(attempt(v, token, 3), want, "{v:?} at attempt {token}");
            }
        }
        assert_eq!(attempt(&Verdict::Defer("x".into()), 1, 3), Label::Deferred);
        assert_eq!(attempt(&Verdict::Abort("x".into()), 1, 3), Label::Released);
    }

    #[test]
    fn one_label_per_ending() {
        let recorded = |attempt| Ending::Finished {
            attempt,
            finished: &Finished::Recorded,
        };
        assert_eq!(label(&recorded(Label::Retried)), Some(Label::Retried));
        let aborted = Finished::Aborted("gone".into());
        let deferred = Finished::Deferred {
            why: "EMFILE".into(),
            warn: false,
        };
        // What the ledger made of it decides over the verdict's own label.
        for (finished, want) in [
            (&aborted, Some(Label::Released)),
            (&deferred, Some(Label::Deferred)),
            (&Finished::Void, None),
            (&Finished::LeaseLost, None),
        ] {
            let attempt = Label::Dead;
            assert_eq!(label(&Ending::Finished { attempt, finished }), want);
        }
        assert_eq!(label(&Ending::Held { ours: true }), Some(Label::Deferred));
        assert_eq!(
            label(&Ending::Unstarted { ours: true }),
            Some(Label::Released)
        );
        assert_eq!(label(&Ending::Held { ours: false }), None);
        assert_eq!(label(&Ending::Unstarted { ours: false }), None);
        assert_eq!(label(&Ending::DeadAtClaim), Some(Label::Dead));
    }

    /// A scenario of every way a claim ends, fed to the one count: the metrics' view (the
    /// per-route counts a report carries) and the summary line agree, and each claim is
    /// counted once.
    #[test]
    fn a_scenario_counts_each_claim_once_in_both_views() {
        use super::super::counters::Counters;
        use super::super::tally::Tally;
        use std::time::Instant;
        let t = Instant::now();
        let mut c = Counters::new(t);
        for (id, route) in
            (1..=10).zip(["stdout", "stdout", "exec:x", "exec:x", "exec:y"].repeat(2))
        {
            c.dispatched(id, 1, route);
        }
        let ms = Some(Duration::from_millis(3));
        let recorded = |attempt| Ending::Finished {
            attempt,
            finished: &Finished::Recorded,
        };
        let deferred = Finished::Deferred {
            why: "EMFILE".into(),
            warn: true,
        };
        let aborted = Finished::Aborted("gone".into());
        let scenario = [
            (1, recorded(Label::Delivered), ms),
            (2, recorded(Label::Delivered), ms),
            (
                3,
                recorded(attempt(&Verdict::Unavailable("x".into(), None), 1, 5)),
                ms,
            ),
            (4, recorded(attempt(&Verdict::Retry("x".into()), 1, 1)), ms),
            (5, Ending::Held { ours: true }, None),
            (6, Ending::Unstarted { ours: true }, None),
            (
                7,
                Ending::Finished {
                    attempt: Label::Dead,
                    finished: &deferred,
                },
                ms,
            ),
            (
                8,
                Ending::Finished {
                    attempt: Label::Released,
                    finished: &aborted,
                },
                ms,
            ),
            (
                9,
                Ending::Finished {
                    attempt: Label::Delivered,
                    finished: &Finished::LeaseLost,
                },
                ms,
            ),
            (10, Ending::Unstarted { ours: false }, None),
            // Told twice: the second time is void.
            (1, recorded(Label::Delivered), ms),
        ];
        for (id, ending, took) in &scenario {
            c.ended(*id, 1, ending, *took);
        }
        c.dead_at_claim("exec:y");
        let mut metrics = [0u64; 5];
        for r in c.counts().routes.values() {
            for (i, o) in Label::ALL.into_iter().enumerate() {
                metrics[i] += r.count(o);
            }
        }
        assert_eq!(
            metrics,
            [2, 1, 2, 2, 2],
            "delivered, retried, dead, released, deferred"
        );
        let line = Tally::new(t).drained(t + Duration::from_secs(1), c.totals());
        assert_eq!(
            line,
            "drained: 2 delivered, 1 retried, 2 dead, 2 released, 2 deferred, 5 events/s over 1.0 s"
        );
    }
}
