//! The demo's agent: a payer delegates a session key capped at a few calls' worth to an agent,
//! the agent pays per call until its grant refuses it, and the payer's own deposit is still
//! there, spent by exactly what the agent paid.

use std::net::SocketAddr;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use tollgate_engine::grant::{Grant, PayeeScope};
use tollgate_engine::{Address, Domain, PayerKey, Reason, UnsignedReceipt};
use tollgate_ingest::client::{Client, ClientConfig};
use tollgate_load::check::fetch_balances;

use crate::grant::now_ms;

/// What the agent may spend in all, and what one call costs.
const CAP: u64 = 100;
const PRICE: u64 = 7;
/// The agent's producer id on the fleet connection: apart from the load generator's.
const AGENT_PRODUCER: u64 = 0xA6E7;

/// Grants a fresh session key of `payer_key` a cap of [`CAP`] for one payee, registers the grant
/// over the fleet protocol, and pays [`PRICE`] per call with the session key until refused.
/// True when the refusal is `over_grant_cap` right at the cap and the payer's available balance
/// fell by exactly what the agent paid, with deposit left.
pub(super) async fn agent_runs_out_of_cap(
    seed: u64,
    payer_key: &SigningKey,
    payee: Address,
    listen: SocketAddr,
    domain: Domain,
    api_url: &str,
) -> anyhow::Result<bool> {
    let payer = PayerKey(payer_key.verifying_key().to_bytes());
    let agent = SigningKey::from_bytes(&blake3::derive_key(
        "tollgate demo agent session key",
        &seed.to_le_bytes(),
    ));
    let session = PayerKey(agent.verifying_key().to_bytes());
    let now = now_ms();
    let grant = Grant {
        domain,
        payer,
        session,
        nonce: 1,
        cap: CAP,
        allowance: None,
        valid_from_ms: now.saturating_sub(60_000),
        valid_until_ms: now + 3_600_000,
        payees: PayeeScope::Only(vec![payee]),
    }
    .sign(payer_key);
    let fleet_key = SigningKey::from_bytes(&blake3::derive_key(
        "tollgate demo agent fleet key",
        &seed.to_le_bytes(),
    ));
    let client = Client::connect(ClientConfig::new(
        listen.to_string(),
        0,
        fleet_key,
        AGENT_PRODUCER,
        domain,
    ))
    .await?;
    client.grant(&grant).await?.map_err(|refusal| {
        anyhow::anyhow!("grant refused: {} ({})", refusal.name(), refusal.text)
    })?;
    let before = balance(api_url, payer).await?;

    let mut paid = 0u64;
    let mut refusal = None;
    for nonce in 1..=CAP / PRICE + 1 {
        let receipt = UnsignedReceipt {
            payer: session,
            payee,
            amount: PRICE,
            nonce,
            timestamp_ms: now_ms(),
            request_hash: *blake3::hash(&nonce.to_le_bytes()).as_bytes(),
            session: true,
        }
        .sign(&agent, &domain);
        match client.submit(receipt).await?.await? {
            Ok(()) => paid += PRICE,
            Err(reason) => {
                refusal = Some(reason);
                break;
            }
        }
    }
    client.close().await?;
    let after = balance(api_url, payer).await?;
    let calls = paid / PRICE;
    println!(
        "a grant: payer {payer} gave session {session} a cap of {CAP} for payee {payee}\n\
         the agent paid {calls} calls of {PRICE} ({paid}); call {} was refused: {}",
        calls + 1,
        refusal.map_or_else(
            || "not refused".to_owned(),
            |reason| reason.name().to_owned()
        )
    );
    println!("the payer's available balance went from {before} to {after}: its own key still pays");
    let agreed = refusal == Some(Reason::OverGrantCap)
        && paid <= CAP
        && paid + PRICE > CAP
        && before.checked_sub(after) == Some(u128::from(paid))
        && after > 0;
    if !agreed {
        println!("the agent's session did not stop exactly at its cap  WRONG");
    }
    Ok(agreed)
}

async fn balance(api_url: &str, payer: PayerKey) -> anyhow::Result<u128> {
    fetch_balances(api_url, &[payer])
        .await?
        .first()
        .map(|balance| balance.available)
        .context("the API returned no balance")
}
