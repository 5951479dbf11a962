//! What the chain's funds events change: deposits, withdrawal requests and completed withdrawals,
//! each applied once by its position `(block, log_index)`, and the withdrawal requests at the
//! chain's head that the cursor has not reached yet.

use super::error::{LedgerError, invariant};
use super::record::{FundsCursor, HeadWithdrawals, PayerState};
use super::state::Ledger;
use super::{FundsEvent, FundsKind};

impl Ledger {
    /// Applies one chain event exactly once: an event at or before the cursor changes nothing.
    pub(crate) fn apply_funds(&mut self, event: FundsEvent) -> Result<(), LedgerError> {
        let position = FundsCursor {
            block: event.block,
            log_index: event.log_index,
        };
        if self.cursor.is_some_and(|cursor| position <= cursor) {
            return Ok(());
        }
        if event.kind != FundsKind::BlockScanned {
            self.payers
                .load(&self.store, &event.payer, PayerState::default)?;
            let mut next = *self
                .payers
                .get(&event.payer)
                .ok_or_else(|| invariant("payer not cached after load"))?;
            let overflow = || LedgerError::FundsOverflow { payer: event.payer };
            match event.kind {
                FundsKind::Deposit => {
                    next.deposited = next
                        .deposited
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::WithdrawalRequested => {
                    next.withdrawal_requested = next
                        .withdrawal_requested
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::WithdrawalCompleted => {
                    // The contract completes only what was requested; if the request predates
                    // what this ledger watched, the chain is still the authority.
                    next.withdrawal_requested =
                        next.withdrawal_requested.saturating_sub(event.amount);
                    next.withdrawn = next
                        .withdrawn
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::BlockScanned => {}
            }
            *self
                .payers
                .get_mut(&event.payer)
                .ok_or_else(|| invariant("payer evicted inside a group"))? = next;
        }
        self.cursor = Some(position);
        self.group.meta_dirty = true;
        Ok(())
    }

    /// Replaces the withdrawal requests of the blocks past the cursor with `requests`: what the
    /// chain's head holds now. Requests the cursor has since reached are in both until then,
    /// refused twice for a moment, which is safe; one a reorg dropped is in neither.
    pub(crate) fn apply_head_withdrawals(&mut self, requests: HeadWithdrawals) {
        if requests != self.head_withdrawals {
            self.head_withdrawals = requests;
            self.group.head_withdrawals_dirty = true;
        }
    }
}
