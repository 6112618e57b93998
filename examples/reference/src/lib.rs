//! What the reference examples share, so that each example's file is about its saga.
//!
//! The examples (`zero_downtime_deploy`, `redeploy_database`, `resize_volume`) run real Operations
//! against the local Docker Engine and an AWS API emulator, on the durable sled store. Each one:
//!
//! - parses the same command line ([`Cli`], [`Args`]): `--data DIR`, `--aws-endpoint URL`,
//!   `--registry HOST:PORT`, `--image PATH:TAG`, `--app NAME`, `--fail-at STEP`, `--crash-at STEP`,
//!   `--cancel-after MS`, `--cleanup`, `--help` (which lists the saga's steps);
//! - connects to Docker and the emulator ([`Clients`]);
//! - wraps every step in [`Injected`], which reads the `--fail-at` and `--crash-at` flags from the
//!   Operation's params ([`FaultFlags`]) and injects the failure or the crash;
//! - writes its saga once against [`DefineSaga`](saga_core::saga::DefineSaga), so that the same
//!   definition builds the production [`Saga`](saga_core::Saga) and the one that `saga-testkit`
//!   checks;
//! - recovers what an earlier run left unfinished, then runs one Operation and streams its log
//!   ([`Runner`]), ending with `operation <id>: <outcome>`;
//! - sets up what it needs in the emulator once, recording the ids in `DIR` ([`Recorded`],
//!   [`emulator`]), and names and labels its containers by app ([`containers`]).
//!
//! ```no_run
//! use saga_reference::{Args, Cli};
//!
//! let cli = Cli::new("resize_volume", "grows a volume", &["grow", "restart"]);
//! let args: Args = match cli.parse(std::env::args().skip(1))? {
//!     Some(args) => args,
//!     None => return Ok(()), // --help was printed
//! };
//! println!("data in {}", args.data.display());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod cli;
mod clients;
pub mod containers;
pub mod database;
pub mod emulator;
mod faults;
mod http;
mod recorded;
mod runner;

pub use crate::cli::{Args, Cli};
pub use crate::clients::Clients;
pub use crate::faults::{FaultFlags, Injected};
pub use crate::http::http_get_local;
pub use crate::recorded::Recorded;
pub use crate::runner::{say, Runner};

/// The error type of the examples' plumbing: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
