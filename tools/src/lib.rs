//! The operator's side of Tollgate: everything behind the `tollgate` and `tollgate-load` binaries.
//!
//! - [`keys`]: generating and loading ed25519 keys (payers, fleet clients).
//! - [`receipts_json`]: receipts as JSON lines, signed and verified from a shell.
//! - [`cli`]: argument types shared by the binaries.
//! - [`bench_e2e`]: `tollgate bench e2e`, the durable rate through `tollgate serve` next to the
//!   verify-only ceiling, in one run.
//! - [`bench_verify`]: `tollgate bench verify`, Tollgate's verifier against ed25519-dalek in one run.
//! - [`load`]: the load generator behind `tollgate-load`, which the demo and tests drive too; it
//!   checks every verdict the engine returns against the one its workload model owes.
//! - [`serve`]: `tollgate serve`, the engine, fleet protocol, HTTP API and settlement loops in
//!   one process, and its configuration (flags, `TOLLGATE_*` variables, a TOML file).
//! - [`demo`]: `tollgate demo`, chain + engine + generator + settlement end to end, checked.
//! - [`deploy`]: `tollgate deploy`, the Settlement contract (and a dev chain's test token) onchain.
//! - [`deposit`]: `tollgate deposit`, deposits for many payer keys from one account (dev chains).
//! - [`api`]: the HTTP query API (balances, epochs, metrics, OpenAPI) and the CLI's
//!   query commands that talk to it.
//!
//! The binaries are thin shells over these modules so tests and the demo drive the same code an
//! operator does. This crate wires the others together; it owns no protocol, ledger or chain logic.

pub mod api;
pub mod bench_e2e;
pub mod bench_verify;
pub mod cli;
pub mod demo;
pub mod deploy;
pub mod deposit;
pub mod keys;
pub mod load;
pub mod receipts_json;
pub mod serve;
