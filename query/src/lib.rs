//! The query API's contract from the client side: the JSON model the server produces and every
//! client reads ([`model`], amounts as exact decimal strings), and the one HTTP client
//! ([`client::QueryClient`]) with its typed error, used by `tollgate balance | payee | epochs |
//! proof` and `tollgate grant submit`, by `tollgate-load --check` and by `tollgate demo`; session grants as JSON ([`grants`]); and how a caller proves who it is
//! ([`auth`]: bearer tokens, and the payer-signed request both sides build the same way).
//!
//! The server (router, OpenAPI document, proof cache) lives in `tollgate_tools::api`; it builds
//! these types, so a field renamed here breaks the server's build, not a client at run time.

pub mod auth;
pub mod client;
pub mod grants;
pub mod model;

pub use client::{Credentials, QueryClient, QueryError, root_cause};
