//! The operator's side of Tollgate: everything behind the `tollgate` binary, and the shell of
//! `tollgate-load` (its library is `tollgate_load`).
//!
//! - [`keys`]: generating and loading ed25519 keys (payers, fleet clients).
//! - [`receipts_json`]: receipts as JSON lines, signed and verified from a shell.
//! - [`grant`]: `tollgate grant`, session grants and revocations signed, submitted, and read
//!   back by `receipts verify --grant` as the server would judge a session's receipt.
//! - [`bench_e2e`]: `tollgate bench e2e`, the durable rate through `tollgate serve` next to the
//!   verify-only ceiling, in one run.
//! - [`bench_abuse`]: `tollgate bench abuse`, what one client sending bad signatures costs the
//!   seven others, against the same run with it clean.
//! - [`bench_verify`]: `tollgate bench verify`, Tollgate's verifier against ed25519-dalek in one run.
//! - [`serve`]: `tollgate serve`, the engine, fleet protocol, HTTP API and settlement loops in
//!   one process, and its configuration (flags, `TOLLGATE_*` variables, a TOML file).
//! - [`demo`]: `tollgate demo`, chain + engine + generator + settlement end to end, checked.
//! - [`deploy`]: `tollgate deploy`, the Settlement contract (and a dev chain's test token) onchain.
//! - [`deposit`]: `tollgate deposit`, deposits for many payer keys from one account (dev chains).
//! - [`node`]: the chain node those two commands ask first (its chain id, or one line why not).
//! - [`audit`]: `tollgate audit`, epochs recomputed from their archived receipts and compared with
//!   the API and the contract.
//! - [`api`]: the HTTP query API's server (balances, epochs, proofs, metrics, OpenAPI).
//! - [`query`]: `tollgate balance | payee | epochs | proof`, the query API's client commands.
//! - [`output`]: how commands print: tables for people, JSON for scripts, errors on one line.
//! - `proc_stat`: CPU time of processes and threads from /proc, for the benches.
//!
//! The binaries are thin shells over these modules so tests and the demo drive the same code an
//! operator does. This crate wires the others together; it owns no protocol, ledger or chain logic.

pub mod api;
pub mod audit;
pub mod bench_abuse;
pub mod bench_e2e;
pub mod bench_verify;
pub mod bench_x402;
pub mod demo;
pub mod deploy;
pub mod deposit;
pub mod grant;
pub mod keys;
pub mod node;
pub mod output;
mod proc_stat;
pub mod query;
pub mod receipts_json;
pub mod serve;
pub mod x402;
