//! Several executors over one store, as the `fleet` example runs them: `fleet worker` processes
//! sharing PostgreSQL (`SAGA_TEST_POSTGRES_URL`), and two executors in one process sharing the
//! sled store. What the step journal (`fleet/saga.rs`) shows of every execution of a step, and
//! what the store holds afterwards:
//!
//! - `pause`: a worker paused (SIGSTOP) mid-step past its lease, again and again, never runs a
//!   step beside the worker that took its Operation over;
//! - `cancel_race`: cancels racing the point of no return, 1,000 rounds on each store: every
//!   cancel answered `Ok` is followed by a rollback or by a recorded refusal, never by silence;
//! - `failover`: the primary killed under 200 Operations and its synchronous standby promoted
//!   (`SAGA_TEST_POSTGRES_FAILOVER_URL`, a multi-host URL): every Operation ends once, and every
//!   outcome a worker printed is in the promoted standby's store.
//!
//! Needs the `fleet` example built beside the tests (`cargo build -p saga-examples --example
//! fleet`; `cargo test --workspace` builds it). Without `SAGA_TEST_POSTGRES_URL` (or a server
//! answering there) the PostgreSQL tests print `SKIPPED <test>: ...` and pass, except under
//! `CI=true`, where they fail. They run one at a time.
#![allow(clippy::unwrap_used)]

#[path = "../fleet/saga.rs"]
#[allow(dead_code)]
mod saga;

#[path = "fleet/cancel_race.rs"]
mod cancel_race;
mod common;
#[path = "fleet/failover.rs"]
mod failover;
#[path = "fleet/journal.rs"]
mod journal;
#[path = "fleet/pause.rs"]
mod pause;
#[path = "fleet/support.rs"]
mod support;
