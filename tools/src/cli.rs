//! Argument groups shared by several commands.

use clap::Args;
use tollgate_engine::{Address, Domain};

/// The deployment receipts are signed for: part of every signing message.
#[derive(Debug, Clone, Args)]
pub struct DomainArgs {
    /// EVM chain id of the settlement chain (31337 is anvil's).
    #[arg(long, env = "TOLLGATE_CHAIN_ID", default_value_t = 31_337)]
    pub chain_id: u64,
    /// Address of the settlement contract (0x + 40 hex digits).
    #[arg(long, env = "TOLLGATE_CONTRACT", default_value_t = Address::default())]
    pub contract: Address,
}

impl DomainArgs {
    /// The signing domain these arguments name.
    pub fn domain(&self) -> Domain {
        Domain {
            chain_id: self.chain_id,
            contract: self.contract,
        }
    }
}
