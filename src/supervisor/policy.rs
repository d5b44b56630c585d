//! The restart policy: what happens to a slot whose child ended. Pure code: the supervisor
//! gathers the facts, this decides, the supervisor carries the decision out (and logs it).
//!
//! - A child that was told to stop, or drained (exit 0 with `--drain`, or 6: drained, and
//!   some event went dead meanwhile), is done.
//! - Bad configuration (exit 2) and a database that refuses us (exit 4: authentication, a
//!   read-only server, a missing table) fail the same way next time: everything stops.
//! - An unreachable database (exit 3) is an outage to ride out once some worker has been
//!   ready (the database works, or did): daemon mode restarts the slot with a growing pause
//!   that does not count toward the give-up limit; `--drain` gives up on a slot that could
//!   not start while others drain, and fails when a worker that was ready lost the database.
//!   While no worker has been ready, the verdict waits for the slots still starting: if none
//!   of them becomes ready, the exit is fatal.
//! - Anything else (a crash, an exit the child chose, a death before it was ready, a child
//!   that could not be started) is restarted with a growing pause; `MAX_QUICK_DEATHS` of them
//!   in a row, each within `QUICK_DEATH` of starting, stop everything. A child killed by
//!   SIGKILL/SIGTERM after it was ready (an operator, the OOM killer) is not at fault: it is
//!   restarted and the count starts over.

use crate::error::exit;
use std::time::Duration;

/// A child that dies sooner than this after starting counts as a quick death.
pub(crate) const QUICK_DEATH: Duration = Duration::from_secs(10);
/// Consecutive quick failures of one slot after which the supervisor gives up.
pub(crate) const MAX_QUICK_DEATHS: u32 = 5;

/// How a child ended, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It could not be started at all (fork or exec failed, e.g. EAGAIN).
    NotStarted,
    /// It exited with this code.
    Code(u8),
    /// SIGKILL or SIGTERM: killed from outside.
    Killed,
    /// Any other signal: a crash (SIGSEGV, SIGABRT, ...).
    Crashed,
}

/// One child's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    pub ending: Ending,
    /// Time from its start to its end.
    pub lived: Duration,
    /// It reported `ready` before it ended.
    pub was_ready: bool,
}

/// What the supervisor knows besides the exit itself.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Context {
    pub drain: bool,
    /// Everything is stopping already (a signal, the time limit, a fatal error).
    pub stopping: bool,
    /// This slot's consecutive quick failures before this end.
    pub quick_deaths: u32,
    /// This slot's restarts after exit 3 since it was last ready (they pace the next one).
    pub outage_restarts: u32,
    /// An earlier child of this slot was ready.
    pub slot_was_ready: bool,
    /// Some other slot's child is or was ready.
    pub others_were_ready: bool,
    /// Some other slot is running or waiting to restart: it may yet become ready.
    pub others_starting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Done: the slot keeps this exit code.
    Exited(u8),
    /// Restart after `reconnect_delay(quick_deaths)`; the slot's count becomes this.
    Restart { quick_deaths: u32 },
    /// An outage (exit 3 after some worker was ready): restart after
    /// `reconnect_delay(outage_restarts)`; the slot's outage count becomes this.
    RideOut { outage_restarts: u32 },
    /// `--drain`: leave this slot (exit 0); the others drain without it.
    GiveUp,
    /// Stop everything with this exit code.
    Fatal { code: u8, why: Fatal },
    /// Exit 3 while no worker has been ready: ask again once more is known.
    Wait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fatal {
    /// The child's own error: a restart would fail the same way.
    Refused,
    /// Too many quick failures in a row (the count).
    CrashLoop(u32),
}

/// A worker's code for a clean end: 0, or 6 when it saw an event go dead meanwhile.
pub(crate) fn clean(code: u8) -> bool {
    code == exit::OK || code == exit::DEAD_EVENTS
}

/// The run's exit code from the codes its slots ended with, when nothing else decided it (a
/// fatal error, the time limit of a drain): 1 when a worker failed; else 6 when one saw an
/// event go dead and `--fail-on-dead` asks for it; else 0.
pub(crate) fn run_code(codes: impl IntoIterator<Item = u8>, fail_on_dead: bool) -> u8 {
    let mut code = exit::OK;
    for c in codes {
        if !clean(c) {
            return exit::FAILURE;
        }
        if c == exit::DEAD_EVENTS && fail_on_dead {
            code = exit::DEAD_EVENTS;
        }
    }
    code
}

pub(crate) fn decide(exit: &Exit, ctx: &Context) -> Decision {
    match exit.ending {
        Ending::Code(c) if ctx.stopping || (clean(c) && ctx.drain) => Decision::Exited(c),
        Ending::Killed | Ending::Crashed | Ending::NotStarted if ctx.stopping => {
            Decision::Exited(exit::FAILURE)
        }
        Ending::Code(exit::UNREACHABLE) => outage(exit, ctx),
        Ending::Code(code @ (exit::USAGE | exit::DATABASE)) => Decision::Fatal {
            code,
            why: Fatal::Refused,
        },
        _ => failure(exit, ctx),
    }
}

/// Exit 3: the database could not be reached.
fn outage(exit: &Exit, ctx: &Context) -> Decision {
    if ctx.drain {
        if exit.was_ready {
            // The drain lost its database: that is the drain's failure.
            return refused(exit::UNREACHABLE);
        }
        if ctx.others_were_ready {
            return Decision::GiveUp;
        }
    } else if ctx.others_were_ready || ctx.slot_was_ready || exit.was_ready {
        return Decision::RideOut {
            outage_restarts: ctx.outage_restarts + 1,
        };
    }
    if ctx.others_starting {
        Decision::Wait
    } else {
        refused(exit::UNREACHABLE)
    }
}

/// A crash, an exit the child chose, or a child that never started.
fn failure(exit: &Exit, ctx: &Context) -> Decision {
    let not_its_fault = exit.was_ready && exit.ending == Ending::Killed;
    let quick_deaths = if not_its_fault {
        0
    } else if exit.lived < QUICK_DEATH {
        ctx.quick_deaths + 1
    } else {
        1
    };
    if quick_deaths >= MAX_QUICK_DEATHS {
        Decision::Fatal {
            code: exit::FAILURE,
            why: Fatal::CrashLoop(quick_deaths),
        }
    } else {
        Decision::Restart { quick_deaths }
    }
}

fn refused(code: u8) -> Decision {
    Decision::Fatal {
        code,
        why: Fatal::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(300);
    const LATER: Duration = Duration::from_secs(600);

    fn ended(ending: Ending, lived: Duration, was_ready: bool) -> Exit {
        Exit {
            ending,
            lived,
            was_ready,
        }
    }

    fn daemon() -> Context {
        Context::default()
    }

    fn drain() -> Context {
        Context {
            drain: true,
            ..Context::default()
        }
    }

    /// Feeds `exit` to the policy the way the supervisor does, restart after restart.
    fn deaths_until_decided(exit: Exit) -> (u32, Decision) {
        let mut ctx = daemon();
        for n in 1..100 {
            match decide(&exit, &ctx) {
                Decision::Restart { quick_deaths } => ctx.quick_deaths = quick_deaths,
                d => return (n, d),
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn quick_deaths_are_restarted_up_to_the_give_up_limit() {
        for ending in [Ending::Code(1), Ending::Crashed, Ending::NotStarted] {
            let mut ctx = daemon();
            for n in 1..MAX_QUICK_DEATHS {
                let d = decide(&ended(ending, SOON, false), &ctx);
                assert_eq!(d, Decision::Restart { quick_deaths: n }, "{ending:?}");
                ctx.quick_deaths = n;
            }
            assert_eq!(
                decide(&ended(ending, SOON, false), &ctx),
                Decision::Fatal {
                    code: exit::FAILURE,
                    why: Fatal::CrashLoop(MAX_QUICK_DEATHS)
                }
            );
        }
        // Killed before it was ready: also the worker's failure.
        let (n, d) = deaths_until_decided(ended(Ending::Killed, SOON, false));
        assert_eq!(n, MAX_QUICK_DEATHS);
        assert!(matches!(d, Decision::Fatal { .. }));
        // Exit 0 in daemon mode is a death too.
        let (n, _) = deaths_until_decided(ended(Ending::Code(0), SOON, true));
        assert_eq!(n, MAX_QUICK_DEATHS);
    }

    #[test]
    fn a_death_after_a_long_life_starts_the_count_over() {
        let ctx = Context {
            quick_deaths: MAX_QUICK_DEATHS - 1,
            ..daemon()
        };
        assert_eq!(
            decide(&ended(Ending::Crashed, LATER, true), &ctx),
            Decision::Restart { quick_deaths: 1 }
        );
    }

    #[test]
    fn a_ready_worker_killed_from_outside_is_restarted_without_counting() {
        let ctx = Context {
            quick_deaths: MAX_QUICK_DEATHS - 1,
            ..daemon()
        };
        for lived in [SOON, LATER] {
            assert_eq!(
                decide(&ended(Ending::Killed, lived, true), &ctx),
                Decision::Restart { quick_deaths: 0 }
            );
        }
        // A crash signal is the worker's own failure, ready or not.
        assert_eq!(
            decide(&ended(Ending::Crashed, SOON, true), &ctx),
            Decision::Fatal {
                code: exit::FAILURE,
                why: Fatal::CrashLoop(MAX_QUICK_DEATHS)
            }
        );
    }

    #[test]
    fn bad_configuration_and_refusals_are_fatal_always() {
        for code in [exit::USAGE, exit::DATABASE] {
            for ctx in [
                daemon(),
                drain(),
                Context {
                    others_were_ready: true,
                    slot_was_ready: true,
                    others_starting: true,
                    ..daemon()
                },
            ] {
                for was_ready in [false, true] {
                    assert_eq!(
                        decide(&ended(Ending::Code(code), LATER, was_ready), &ctx),
                        Decision::Fatal {
                            code,
                            why: Fatal::Refused
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn unreachable_before_any_worker_was_ready_waits_for_the_others_then_is_fatal() {
        let exit = ended(Ending::Code(exit::UNREACHABLE), SOON, false);
        for base in [daemon(), drain()] {
            let starting = Context {
                others_starting: true,
                ..base
            };
            assert_eq!(decide(&exit, &starting), Decision::Wait);
            assert_eq!(decide(&exit, &base), refused(exit::UNREACHABLE));
        }
    }

    #[test]
    fn unreachable_after_a_worker_was_ready_is_an_outage_in_daemon_mode() {
        let exit = ended(Ending::Code(exit::UNREACHABLE), SOON, false);
        for ctx in [
            Context {
                others_were_ready: true,
                ..daemon()
            },
            Context {
                slot_was_ready: true,
                ..daemon()
            },
        ] {
            let ctx = Context {
                outage_restarts: 3,
                quick_deaths: MAX_QUICK_DEATHS - 1,
                ..ctx
            };
            assert_eq!(
                decide(&exit, &ctx),
                Decision::RideOut { outage_restarts: 4 }
            );
        }
        // This very worker was ready, then lost the database.
        let lost = ended(Ending::Code(exit::UNREACHABLE), LATER, true);
        assert_eq!(
            decide(&lost, &daemon()),
            Decision::RideOut { outage_restarts: 1 }
        );
    }

    #[test]
    fn unreachable_in_a_drain_gives_up_quietly_unless_the_worker_had_been_ready() {
        let cannot_start = ended(Ending::Code(exit::UNREACHABLE), SOON, false);
        let others = Context {
            others_were_ready: true,
            others_starting: true,
            ..drain()
        };
        assert_eq!(decide(&cannot_start, &others), Decision::GiveUp);
        let lost = ended(Ending::Code(exit::UNREACHABLE), LATER, true);
        assert_eq!(decide(&lost, &others), refused(exit::UNREACHABLE));
        // An earlier child of this slot was ready, this one never was, nobody else was.
        let own = Context {
            slot_was_ready: true,
            ..drain()
        };
        assert_eq!(decide(&cannot_start, &own), refused(exit::UNREACHABLE));
    }

    #[test]
    fn dead_events_fail_the_run_only_when_asked() {
        assert_eq!(run_code([0, 0], true), exit::OK);
        assert_eq!(run_code([0, 6], false), exit::OK);
        assert_eq!(run_code([6, 0], true), exit::DEAD_EVENTS);
        assert_eq!(run_code([6, 6], true), exit::DEAD_EVENTS);
        assert_eq!(run_code([6, 1], true), exit::FAILURE, "a failure wins");
        assert_eq!(run_code([3, 6], false), exit::FAILURE);
        assert_eq!(run_code([], true), exit::OK);
        // A worker that drained and saw deaths is done, like one that drained without.
        assert_eq!(
            decide(&ended(Ending::Code(6), SOON, true), &drain()),
            Decision::Exited(6)
        );
    }

    #[test]
    fn a_drained_or_stopped_worker_is_done() {
        assert_eq!(
            decide(&ended(Ending::Code(0), SOON, true), &drain()),
            Decision::Exited(0)
        );
        let stopping = Context {
            stopping: true,
            ..daemon()
        };
        for code in [0, 1, 2, 3, 4] {
            assert_eq!(
                decide(&ended(Ending::Code(code), SOON, false), &stopping),
                Decision::Exited(code)
            );
        }
        for ending in [Ending::Killed, Ending::Crashed] {
            assert_eq!(
                decide(&ended(ending, SOON, true), &stopping),
                Decision::Exited(exit::FAILURE)
            );
        }
    }
}
