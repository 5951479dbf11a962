//! Session grants in the ledger: holding a checked grant, revoking a session key, and finding
//! the payer a session receipt is charged to. Each takes effect at its place in the writer's
//! order: a receipt applied after a revocation (in the same group or later) is refused, and
//! the revocation is on disk before that receipt's ack leaves.

use crate::grant::{CheckedGrant, CheckedRevocation, GrantError, GrantSpend};
use crate::receipt::{PayerKey, ReceiptView};
use crate::store::{Cf, Store, StoreBatch};
use crate::verdict::Reason;

use super::UnknownPayers;
use super::cache::Cached;
use super::error::{DecodeError, LedgerError, corrupt, invariant};
use super::reader::session_spend;
use super::record::{
    GRANT_KEY_PREFIX, GRANT_RECORDS_SPLIT_KEY, GRANT_SPEND_KEY_PREFIX, HeldGrant, PayerState,
    SessionWindow, decode_legacy_grant_spend, session_windows_prefix,
};
use super::state::Ledger;

/// Grant records read per scan while splitting.
const SPLIT_SCAN_KEYS: usize = 4_096;

/// Rewrites every grant record of the first layout (spend inside) as a held grant, its spend
/// folded into one of the session's windows, before the writer reads any: a data directory from
/// before the split keeps what its sessions spent. Each record's parts go in one write, so a
/// crash midway leaves records of either layout and the next open finishes the job.
pub(crate) fn split_grant_records(store: &Store) -> Result<(), LedgerError> {
    if store.get(Cf::Meta, GRANT_RECORDS_SPLIT_KEY)?.is_some() {
        return Ok(());
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = store.snapshot().scan(
            Cf::Grants,
            &[GRANT_KEY_PREFIX],
            after.as_deref(),
            SPLIT_SCAN_KEYS,
        )?;
        let mut batch = StoreBatch::default();
        for (key, value) in &chunk {
            let (held, spent) = HeldGrant::decode_any(value).map_err(corrupt(Cf::Grants))?;
            if let Some(spent) = spent {
                let session = held.grant.grant.session;
                batch.put(Cf::Grants, key, held.encode());
                fold_into_window(store, &session, spent, &mut batch)?;
            }
        }
        if !batch.is_empty() {
            store.write(batch)?;
        }
        match chunk.last() {
            Some((key, _)) if chunk.len() == SPLIT_SCAN_KEYS => after = Some(key.to_vec()),
            _ => break,
        }
    }
    let mut done = StoreBatch::default();
    done.put(Cf::Meta, GRANT_RECORDS_SPLIT_KEY, Vec::new());
    Ok(store.write(done)?)
}

/// Folds every session spend record (the layout between the split above and the spend moving
/// into the session's windows) into one of the session's windows, before the writer reads any.
/// Each record's fold (the window rewritten, the record deleted) is one write, so a crash midway
/// leaves records the next open folds.
pub(crate) fn fold_grant_spends(store: &Store) -> Result<(), LedgerError> {
    loop {
        let chunk =
            store
                .snapshot()
                .scan(Cf::Grants, &[GRANT_SPEND_KEY_PREFIX], None, SPLIT_SCAN_KEYS)?;
        if chunk.is_empty() {
            return Ok(());
        }
        let mut batch = StoreBatch::default();
        for (key, value) in &chunk {
            let spent = decode_legacy_grant_spend(value).map_err(corrupt(Cf::Grants))?;
            let session = PayerKey(
                key.get(1..)
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| corrupt(Cf::Grants)(DecodeError("spend key length".into())))?,
            );
            fold_into_window(store, &session, spent, &mut batch)?;
            batch.delete(Cf::Grants, key);
        }
        store.write(batch)?;
    }
}

/// Adds a whole session's spend, kept apart in an older layout, to the part of the session's
/// first window (the parts then combine to it), in `batch`.
fn fold_into_window(
    store: &Store,
    session: &PayerKey,
    spent: GrantSpend,
    batch: &mut StoreBatch,
) -> Result<(), LedgerError> {
    if spent == GrantSpend::default() {
        return Ok(());
    }
    let prefix = session_windows_prefix(session);
    // A session spends only through a receipt, whose window was written with its spend.
    let (key, bytes) = store
        .snapshot()
        .scan(Cf::Grants, &prefix, None, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            corrupt(Cf::Grants)(DecodeError(format!(
                "spend of session {} without a window",
                hex::encode(session.0)
            )))
        })?;
    let mut window = SessionWindow::decode(&bytes).map_err(corrupt(Cf::Grants))?;
    window.spent = window
        .spent
        .combine(spent)
        .ok_or_else(|| corrupt(Cf::Grants)(DecodeError("session spend overflows".into())))?;
    batch.put(Cf::Grants, &key, window.encode());
    Ok(())
}

impl Ledger {
    /// Holds a checked grant from now on. The identical grant again changes nothing (a fleet
    /// registers the grant its client presents, as often as it is presented). Refused: a
    /// session key that already holds another grant, is revoked, or is a payer's deposit key,
    /// a payer key that is itself a session key, and a payer that never deposited (unless the
    /// ledger accepts unknown payers): grants cost the ledger storage, which only a payer with
    /// money in the contract may ask for.
    pub(crate) fn register_grant(&mut self, grant: &CheckedGrant) -> Result<(), LedgerError> {
        let signed = grant.signed();
        let session = signed.grant.session;
        let payer = signed.grant.payer;
        if self.grants.load_existing(&self.store, &session)? {
            let held = self
                .grants
                .get(&session)
                .ok_or_else(|| invariant("grant not cached after load"))?;
            return match () {
                _ if held.grant.grant.payer != payer => {
                    Err(GrantError::GrantedByAnotherPayer { session }.into())
                }
                _ if held.revoked.is_some() => Err(GrantError::Revoked(session).into()),
                _ if held.grant == *signed => Ok(()),
                _ => Err(GrantError::AlreadyGranted {
                    session,
                    nonce: held.grant.grant.nonce,
                }
                .into()),
            };
        }
        let session_deposited = self
            .payers
            .peek(&self.store, &session, |state: &PayerState| state.deposited)?
            .unwrap_or(0);
        if session_deposited > 0 {
            return Err(GrantError::SessionKeyIsPayer(session).into());
        }
        if self.grants.load_existing(&self.store, &payer)? {
            return Err(GrantError::PayerIsSessionKey(payer).into());
        }
        let payer_deposited = self
            .payers
            .peek(&self.store, &payer, |state: &PayerState| state.deposited)?
            .unwrap_or(0);
        if payer_deposited == 0 && self.config.unknown_payers == UnknownPayers::Reject {
            return Err(GrantError::UnknownPayer(payer).into());
        }
        let held = HeldGrant {
            grant: signed.clone(),
            granted_at: self.position(),
            revoked: None,
        };
        self.grants.insert_new(session, held);
        Ok(())
    }

    /// Revokes a session key for good, from now on. A second revocation changes nothing (the
    /// first one's moment stands). Refused: no grant for the key, or one from another payer.
    pub(crate) fn revoke_grant(
        &mut self,
        revocation: &CheckedRevocation,
    ) -> Result<(), LedgerError> {
        let signed = revocation.signed();
        let session = signed.revocation.session;
        if !self.grants.load_existing(&self.store, &session)? {
            return Err(GrantError::NoGrant(session).into());
        }
        let held = self
            .grants
            .get(&session)
            .ok_or_else(|| invariant("grant not cached after load"))?;
        if held.grant.grant.payer != signed.revocation.payer {
            return Err(GrantError::NotTheGranter(session).into());
        }
        if held.revoked.is_some() {
            return Ok(());
        }
        let position = self.position();
        self.grants
            .get_mut(&session)
            .ok_or_else(|| invariant("grant evicted inside a group"))?
            .revoked = Some((*signed, position));
        Ok(())
    }

    /// For a receipt with the session flag: the payer whose grant admits it, or why none does
    /// (no grant, revoked, outside the validity at its time or now, payee out of scope). The
    /// grant stays cached for the rest of the receipt's checks.
    pub(super) fn session_payer(
        &mut self,
        receipt: &ReceiptView<'_>,
        now_ms: u64,
    ) -> Result<Result<PayerKey, Reason>, LedgerError> {
        let session = receipt.payer();
        if !self.grants.load_existing(&self.store, &session)? {
            return Ok(Err(Reason::NoGrant));
        }
        let held = self
            .grants
            .get(&session)
            .ok_or_else(|| invariant("grant not cached after load"))?;
        if held.revoked.is_some() {
            return Ok(Err(Reason::GrantRevoked));
        }
        let grant = &held.grant.grant;
        Ok(grant
            .admits(&receipt.payee(), receipt.timestamp_ms(), now_ms)
            .map(|()| grant.payer))
    }

    /// What the session will have spent with `receipt` accepted, or why its grant's cap or
    /// allowance refuses it, beside what it spent before. The grant was loaded by
    /// [`Ledger::session_payer`]; the spend is loaded here.
    pub(super) fn session_charge(
        &mut self,
        receipt: &ReceiptView<'_>,
    ) -> Result<Result<(GrantSpend, GrantSpend), Reason>, LedgerError> {
        let session = receipt.payer();
        // Derived from the store on a miss, which is exact: a session's spend stays cached (as
        // changed) through every group that changes one of its windows and until that group is
        // on disk, so when it is not cached, none of its windows is newer than the store.
        let store = &self.store;
        self.grant_spends
            .load_with(&session, || session_spend(&store.snapshot(), &session))?;
        let spent = self
            .grant_spends
            .get(&session)
            .ok_or_else(|| invariant("grant spend not cached after load"))?;
        let held = self
            .grants
            .get(&session)
            .ok_or_else(|| invariant("grant not cached after session_payer"))?;
        Ok(held
            .grant
            .grant
            .charge(spent, receipt.amount(), receipt.timestamp_ms())
            .map(|after| (*spent, after)))
    }
}
