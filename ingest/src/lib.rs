//! How receipts get into Tollgate: the binary TCP protocol v1 that API fleets speak.
//!
//! - [`wire`]: every frame's byte layout with its encoder and decoder side by side, the protocol
//!   [`wire::ErrorCode`]s, and the `tokio_util` codec. `docs/PROTOCOL.md` specifies the same
//!   protocol for implementers in other languages; tests keep the two in step.
//! - [`client`]: the async client library fleets use: batching, pipelining, reconnect and re-send.
//! - [`server`]: the tokio TCP server: handshake and client auth, limits, back-pressure into the
//!   engine, ACKs after durability, graceful shutdown.
//! - [`telemetry`]: the names of ingest's metrics and their registration at zero.
//!
//! This crate must never let a peer make it allocate beyond the configured frame size, never panic
//! on any input, and never apply any part of a frame it could not read whole.

pub mod client;
pub mod server;
pub mod telemetry;
pub mod wire;
