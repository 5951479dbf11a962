//! Rust bindings for the committed contract artifacts (`settle/artifacts/*.json`, produced by
//! `settle/scripts/compile.js` with the pinned solc). The bytecode comes from the artifact, so
//! deploying needs no compiler at run time.

// `sol!` generates one Rust function per contract function with the ABI's arity; `commitEpoch` and
// the constructor take more than clippy's default of seven, and that arity is the contract's.
#![allow(clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    Settlement,
    "artifacts/Settlement.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    TestToken,
    "artifacts/TestToken.json"
);

/// Packs a credit the way `commitEpoch` takes it: `amount << 160 | payee`. `None` when the amount
/// does not fit the contract's 96-bit balances.
pub fn pack_credit(
    payee: alloy::primitives::Address,
    amount: u128,
) -> Option<alloy::primitives::U256> {
    if amount >> 96 != 0 {
        return None;
    }
    let payee_word = alloy::primitives::U256::from_be_slice(payee.as_slice());
    Some((alloy::primitives::U256::from(amount) << 160) | payee_word)
}
