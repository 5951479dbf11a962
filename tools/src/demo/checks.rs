//! The demo's checks against the chain: the engine's balances next to the contract's, the
//! arbiter's dispute and the recommit of its amounts, a payer's exit, a payee's withdrawal, a
//! proof verified by the contract and a replayed commit refused. Each prints its figures and says
//! whether they agreed.

use std::time::{Duration, Instant};

use alloy::primitives::{B256, TxHash, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use tollgate_engine::ledger::LedgerConfig;
use tollgate_engine::{Address, PayerKey};
use tollgate_load::check::PayerBalance;
use tollgate_load::cli::DomainArgs;
use tollgate_load::population::{payee_address, payee_signer};
use tollgate_query::model::EpochView;
use tollgate_query::{QueryClient, QueryError};
use tollgate_settle::chain::{
    ContractReader, DeployedAddresses, complete_withdrawal, dispute, read_provider,
    request_withdrawal, withdraw,
};
use tollgate_settle::contract::Settlement::SettlementErrors;
use tollgate_settle::devchain::{replay, send_gas_money};
use tollgate_settle::merkle::Leaf;

use super::{DemoArgs, wait_for};
use crate::audit::{AuditArgs, audit};
use crate::query::{CallerArgs, ServerArgs};

/// Gas money sent to the payee that withdraws: 0.1 ETH, far more than one `withdraw` costs.
const PAYEE_GAS_WEI: u128 = 100_000_000_000_000_000;
/// Payers shown side by side with the chain in the summary.
const PAYERS_SHOWN: usize = 5;

/// Every payer's available balance and every payee's settled credit against the contract.
pub(super) async fn compare_with_chain(
    args: &DemoArgs,
    payers: &[PayerKey],
    balances: &[PayerBalance],
    query: &QueryClient,
    chain: &ContractReader,
) -> anyhow::Result<bool> {
    let mut disagreements = 0usize;
    println!(
        "{:<18}  {:>10}  {:>10}  {:>14}  {:>14}",
        "PAYER", "DEPOSITED", "SETTLED", "API AVAILABLE", "CHAIN AVAILABLE"
    );
    let mut by_spend: Vec<usize> = (0..payers.len()).collect();
    by_spend.sort_by_key(|&i| std::cmp::Reverse(balances[i].settled));
    for (rank, &i) in by_spend.iter().enumerate() {
        let onchain = chain.available(&payers[i]).await?;
        let same = onchain == balances[i].available;
        if !same {
            disagreements += 1;
        }
        if rank < PAYERS_SHOWN || !same {
            println!(
                "{:<18}  {:>10}  {:>10}  {:>14}  {:>14}{}",
                format!("{}…", &payers[i].to_string()[..16]),
                balances[i].deposited,
                balances[i].settled,
                balances[i].available,
                onchain,
                if same { "" } else { "  DIFFERENT" }
            );
        }
    }
    println!("… {} payers compared", payers.len());

    let mut payee_rows = 0;
    for index in 0..args.payees {
        let payee = payee_address(args.seed, index);
        let api = query.payee(&payee).await?;
        let onchain = chain.withdrawable(payee).await?;
        // The API's own `withdrawable` is read from the contract by the server: it must be
        // there, and equal what the engine says was settled to this payee.
        if api.settled != onchain || api.withdrawable != Some(onchain) {
            disagreements += 1;
            println!(
                "payee {payee}: API settled {}, API withdrawable {:?}, chain withdrawable \
                 {onchain}  DIFFERENT",
                api.settled, api.withdrawable
            );
        }
        payee_rows += 1;
    }
    println!("{payee_rows} payees: API settled credit against the chain's withdrawable");
    if disagreements == 0 {
        println!("all agree");
    } else {
        println!("{disagreements} disagreements");
    }
    Ok(disagreements == 0)
}

/// The payee owed the most gets gas money from `funder` and withdraws: the contract must pay
/// exactly what it owed, and afterwards owe nothing, onchain and per the API.
pub(super) async fn payee_withdraws(
    args: &DemoArgs,
    rpc_url: &str,
    funder: PrivateKeySigner,
    query: &QueryClient,
    chain: &ContractReader,
) -> anyhow::Result<bool> {
    let mut richest = (0, 0);
    for index in 0..args.payees {
        let owed = chain.withdrawable(payee_address(args.seed, index)).await?;
        if owed > richest.1 {
            richest = (index, owed);
        }
    }
    let (index, owed) = richest;
    if owed == 0 {
        println!("no payee is owed anything, so none can withdraw  WRONG");
        return Ok(false);
    }
    let signer = payee_signer(args.seed, index);
    let payee = Address(signer.address().0.0);
    send_gas_money(rpc_url, funder, signer.address(), U256::from(PAYEE_GAS_WEI)).await?;
    let paid = withdraw(rpc_url, signer, chain.address()).await?;
    let left = chain.withdrawable(payee).await?;
    // The API reuses a contract read for a few seconds: wait for it to catch up.
    wait_for(|| async { Ok(query.payee(&payee).await?.withdrawable == Some(0)) }).await?;
    let api = query.payee(&payee).await?.withdrawable;
    let right = paid == owed && left == 0 && api == Some(0);
    println!(
        "payee {payee} withdrew {paid} of {owed} owed; withdrawable now {left} onchain, {} per \
         the API{}",
        api.map_or_else(|| "nothing".to_owned(), |amount| amount.to_string()),
        if right { "" } else { "  WRONG" }
    );
    Ok(right)
}

/// The highest committed epoch: the one the proof and the replay are about.
pub(super) fn last_committed(epochs: &[EpochView]) -> anyhow::Result<&EpochView> {
    epochs
        .iter()
        .filter(|epoch| epoch.status.as_str() == "committed")
        .max_by_key(|epoch| epoch.epoch)
        .context("no committed epoch")
}

/// The last committed epoch's commit transaction, replayed as `eth_call` from the operator: the
/// contract must refuse it.
pub(super) async fn replay_last_commit(
    epochs: &[EpochView],
    chain: &ContractReader,
) -> anyhow::Result<bool> {
    let last = last_committed(epochs)?;
    let tx_hash: TxHash = last
        .tx_hash
        .as_deref()
        .with_context(|| format!("committed epoch {} has no tx hash", last.epoch))?
        .parse()
        .context("epoch tx hash")?;
    Ok(match replay(chain, tx_hash).await? {
        // The contract has moved on to the next epoch: exactly the refusal of a second landing.
        Some(revert @ SettlementErrors::UnexpectedPart(_)) => {
            println!(
                "epoch {} commit {tx_hash} replayed: reverts with {revert:?}",
                last.epoch
            );
            true
        }
        Some(revert) => {
            println!(
                "epoch {} commit {tx_hash} replayed: reverts with {revert:?}, not UnexpectedPart  WRONG",
                last.epoch
            );
            false
        }
        None => {
            println!(
                "epoch {} commit {tx_hash} replayed: it would land again  WRONG",
                last.epoch
            );
            false
        }
    })
}

/// The most active payer's leaf in the last committed epoch, proven by the contract.
pub(super) async fn prove_onchain(
    args: &DemoArgs,
    payers: &[PayerKey],
    balances: &[PayerBalance],
    epochs: &[EpochView],
    query: &QueryClient,
    chain: &ContractReader,
) -> anyhow::Result<bool> {
    let last = last_committed(epochs)?.epoch;
    let busiest = (0..payers.len())
        .max_by_key(|&i| balances[i].settled)
        .context("no payers")?;
    let payer = payers[busiest];
    for index in 0..args.payees {
        let payee: Address = payee_address(args.seed, index);
        let proof = match query.proof(last, &payer, &payee).await {
            Ok(proof) => proof,
            // This payer paid another payee in that epoch; any other answer is a failure.
            Err(QueryError::NotFound { code, .. }) if code == "unknown_leaf" => continue,
            Err(error) => {
                println!("proof of epoch {last} for payee {payee}: {error}  WRONG");
                return Ok(false);
            }
        };
        let leaf = Leaf {
            payer,
            payee,
            cumulative: proof.cumulative,
        };
        let hashes = proof
            .proof
            .iter()
            .map(|hash| hash.parse::<B256>().context("proof hash"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let accepted = chain.verify_leaf(last, &leaf, &hashes).await?;
        let mut tampered = leaf;
        tampered.cumulative += 1;
        let tampered_accepted = chain.verify_leaf(last, &tampered, &hashes).await?;
        println!(
            "epoch {last} root {}\nleaf: payer {payer}\n      payee {payee}, cumulative {}\nproof: {} hashes; verifyLeaf: {accepted}; with cumulative + 1: {tampered_accepted}",
            proof.root,
            proof.cumulative,
            hashes.len()
        );
        return Ok(accepted && !tampered_accepted);
    }
    println!("no leaf of the busiest payer in epoch {last}");
    Ok(false)
}

/// How long the arbiter watches for a committed epoch to dispute.
const WATCH_SECS: u64 = 300;

/// The arbiter's part: polls the API and disputes the first epoch it sees committed, inside its
/// challenge window. An epoch that turned final before the dispute landed is skipped for the next
/// one. Returns the epoch voided.
pub(super) async fn dispute_first_committed(
    rpc_url: String,
    arbiter: PrivateKeySigner,
    settlement: alloy::primitives::Address,
    query: QueryClient,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(WATCH_SECS);
    let mut tried = 0;
    while Instant::now() < deadline {
        let epochs = query.epochs(100).await?.epochs;
        let candidate = epochs
            .iter()
            .filter(|epoch| epoch.status.as_str() == "committed" && epoch.epoch > tried)
            .map(|epoch| epoch.epoch)
            .min();
        if let Some(epoch) = candidate {
            tried = epoch;
            if dispute(&rpc_url, arbiter.clone(), settlement, epoch).await? {
                println!("arbiter {} disputed epoch {epoch}", arbiter.address());
                return Ok(epoch);
            }
            println!("epoch {epoch} turned final before the arbiter's dispute; watching the next");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no committed epoch could be disputed in {WATCH_SECS} s")
}

/// The disputed epoch is `disputed` in the API and its amounts were committed again: a later
/// committed epoch holds at least as much, and the committed epochs add up to exactly what every
/// payer settled (the voided amounts counted once).
pub(super) fn check_recommitted(
    disputed: u64,
    epochs: &[EpochView],
    balances: &[PayerBalance],
) -> bool {
    let Some(voided) = epochs.iter().find(|epoch| epoch.epoch == disputed) else {
        println!("epoch {disputed} is missing from the API  WRONG");
        return false;
    };
    let carried_into = epochs
        .iter()
        .filter(|epoch| {
            epoch.epoch > disputed
                && epoch.status.as_str() == "committed"
                && epoch.debit_total >= voided.debit_total
        })
        .map(|epoch| epoch.epoch)
        .min();
    let committed_total: u128 = epochs
        .iter()
        .filter(|epoch| epoch.status.as_str() == "committed")
        .map(|epoch| epoch.debit_total)
        .sum();
    let settled_total: u128 = balances.iter().map(|balance| balance.settled).sum();
    let right = voided.status.as_str() == "disputed"
        && voided.debit_total > 0
        && carried_into.is_some()
        && committed_total == settled_total;
    println!(
        "epoch {disputed}: {} with {} voided; recommitted in epoch {}; committed epochs total {}, \
         payers settled {}{}",
        voided.status.as_str(),
        voided.debit_total,
        carried_into.map_or_else(|| "none".to_owned(), |epoch| epoch.to_string()),
        committed_total,
        settled_total,
        if right { "" } else { "  WRONG" }
    );
    right
}

/// The payer with the most left exits: its owner requests all of it, the engine stops its spend
/// at once, anvil's clock moves past the exit delay, and the owner completes the withdrawal. The
/// contract must pay exactly what was requested, and the engine must then show nothing left.
pub(super) async fn payer_exits(
    rpc_url: &str,
    owner: PrivateKeySigner,
    deployed: &DeployedAddresses,
    payers: &[PayerKey],
    query: &QueryClient,
    chain: &ContractReader,
) -> anyhow::Result<bool> {
    let mut richest = (payers[0], 0);
    for payer in payers {
        let available = chain.available(payer).await?;
        if available > richest.1 {
            richest = (*payer, available);
        }
    }
    let (payer, amount) = richest;
    if amount == 0 {
        println!("no payer has anything left to withdraw  WRONG");
        return Ok(false);
    }
    let ready_at =
        request_withdrawal(rpc_url, owner.clone(), deployed.settlement, &payer, amount).await?;
    let engine_stopped_spend =
        wait_for(|| async { Ok(query.payer(&payer).await?.available == 0) }).await?;
    let provider = read_provider(rpc_url)?;
    let now = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await?
        .context("no latest block")?
        .header
        .timestamp;
    let _: serde_json::Value = provider
        .raw_request(
            "evm_increaseTime".into(),
            [ready_at.saturating_sub(now).saturating_add(1)],
        )
        .await?;
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await?;
    let (paid, remaining) =
        complete_withdrawal(rpc_url, owner, deployed.settlement, &payer).await?;
    let engine_caught_up = wait_for(|| async {
        let view = query.payer(&payer).await?;
        Ok(view.available == 0 && view.withdrawn == paid)
    })
    .await?;
    let right = paid == amount && remaining == 0 && engine_stopped_spend && engine_caught_up;
    println!(
        "payer {payer} exited: requested {amount}, paid {paid}, {remaining} left requested; the \
         engine stopped its spend at the request: {engine_stopped_spend}; shows it withdrawn: \
         {engine_caught_up}{}",
        if right { "" } else { "  WRONG" }
    );
    Ok(right)
}

/// `tollgate audit` over every sealed epoch: recomputed from the archived receipts and compared
/// with the API and the contract. True when everything agrees.
pub(super) async fn audit_every_epoch(
    api_url: &str,
    rpc_url: &str,
    deployed: &DeployedAddresses,
) -> anyhow::Result<bool> {
    let args = AuditArgs {
        server: ServerArgs {
            server: api_url.to_owned(),
            json: false,
            caller: CallerArgs::default(),
            domain: DomainArgs {
                chain_id: deployed.chain_id,
                contract: Address(deployed.settlement.0.0),
            },
        },
        archive: None,
        save: None,
        epoch: None,
        rpc_url: Some(rpc_url.to_owned()),
        from_block: deployed.block,
        window_nonces: LedgerConfig::default().window_nonces,
    };
    let report = audit(&args).await?;
    print!("{}", report.render());
    Ok(report.agrees())
}
