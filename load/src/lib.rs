//! `tollgate-load`, as a library: a load generator that also audits the engine's answers. The
//! `tollgate-load` binary (in tollgate-tools) only parses [`cli::LoadArgs`] and calls
//! [`cli::run`]; `tollgate demo`, `tollgate bench e2e` and the tests drive the same code.
//!
//! - [`cli`]: the flags, and one run from the `--check` baseline to the comparison and the exit
//!   code.
//! - [`population`]: the payers' keys and payees' accounts derived from the seed, and Zipf
//!   popularity.
//! - [`workload`]: the deterministic plan: who pays whom, nonces, injected bad receipts and the
//!   verdict each receipt must get.
//! - [`driver`]: presigning, pacing, connections and ack collection ([`driver::run_with`]).
//! - [`stats`]: counts, verdict mismatches, the ack latency histogram and the `--json` summary.
//! - [`check`]: `--check URL`, the server's per-payer totals (read with `tollgate_query`'s client
//!   and model) against the acks.
//! - [`client`]: the ingest client as the driver's transport.
//! - [`child`]: `tollgate-load` as a child process, for the bench and the demo.
//! - [`acked_log`], [`report`]: `--acked-log FILE` and `--report FILE.html`.
//!
//! The generator must never steal the engine's CPU while the clock runs (presign, batch, no task
//! per receipt), and never report a figure it did not measure: every ack is judged against the
//! verdict the workload model owes, and `sent = acked + failed` always holds.

pub mod acked_log;
pub mod check;
pub mod child;
pub mod cli;
pub mod client;
pub mod driver;
pub mod population;
pub mod report;
pub mod stats;
pub mod workload;

pub use driver::{LoadError, Options, Outcome, Transport, run_with};
pub use stats::{Stats, Summary};
pub use workload::{Funds, Kind, Planner, Sessions, Workload, WorkloadError};
