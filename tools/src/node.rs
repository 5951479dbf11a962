//! The chain node `tollgate deploy` and `tollgate deposit` talk to: each asks its chain id first,
//! and a node that does not answer is one line naming it (its URL masked) and the innermost cause.

use alloy::providers::Provider;
use anyhow::anyhow;
use tollgate_query::root_cause;
use tollgate_settle::chain::{mask_url, read_provider};

/// The chain id of the node at `rpc_url`.
pub async fn chain_id(rpc_url: &str) -> anyhow::Result<u64> {
    read_provider(rpc_url)?.get_chain_id().await.map_err(|e| {
        anyhow!(
            "cannot reach the node at {}: {}",
            mask_url(rpc_url),
            root_cause(&e)
        )
    })
}
