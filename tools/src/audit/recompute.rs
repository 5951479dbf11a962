//! An epoch recomputed from its receipts alone, and compared with what the operator serves and
//! what the chain holds. Pure: the evidence comes in, the findings go out, so every fault the
//! auditor must catch is tested here without a server or a chain.
//!
//! The rules are the ledger's own, applied in the order the ledger applied them (the archive's):
//! each signature under the single-receipt rule ([`Verifier::verify_one`], the rule
//! `tollgate receipts verify` uses), each nonce against the channel's anti-replay window
//! ([`NonceWindow`], the engine's type), and the amounts summed with checked arithmetic. A receipt
//! that breaks a rule is a finding and counts for nothing, as the ledger should have refused it.
//!
//! What an epoch `e` must commit, with `latest(ch)` the channel's all-time cumulative before `e`:
//! - a leaf for every channel with a receipt in `e`, and for every channel of each disputed epoch
//!   whose amounts were carried into `e`, committing `latest(ch)` plus its receipts in `e`;
//! - debits and credits: the sums of its own receipts plus those of the carried epochs.
//!
//! The anti-replay windows start empty at the first epoch audited, so a replay of a receipt
//! accepted before it is caught only as far as the windows it then builds reach.
//!
//! A session receipt (signed by a session key, [`ReceiptView::is_session`]) is charged to the
//! payer of the session's grant: its leaf, debit and funds are that payer's, its nonce is in the
//! window of (session key, payee), as in the ledger. Its grant must have taken effect at or
//! before the receipt's archive position and not been revoked by then, must admit it
//! ([`Grant::admits`], with the receipt's timestamp standing in for the server's acceptance
//! time, which the archive does not keep) and must have room for it ([`Grant::charge`], the
//! session's spend replayed in archive order from the first epoch audited). Grants are held
//! only once their payer's signature checks ([`checked_grant`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rayon::prelude::*;
use serde::Serialize;
use tollgate_engine::grant::{Grant, GrantSpend, SignedRevocation};
use tollgate_engine::ledger::window::NonceWindow;
use tollgate_engine::receipt::RECEIPT_BYTES;
use tollgate_engine::{Address, Domain, PayerKey, ReceiptView, Verifier};
use tollgate_query::grants::{GrantView, PositionView};
use tollgate_settle::merkle::{EpochTree, Leaf, StandardDump};
use tollgate_settle::onchain::OnchainEpoch;

type Channel = (PayerKey, Address);

/// One archived receipt, where the archive put it.
#[derive(Clone, Debug)]
pub struct Archived {
    /// The epoch it was accepted into.
    pub epoch: u64,
    /// Its position among that epoch's receipts.
    pub index: u64,
    /// The 176 bytes as signed.
    pub bytes: [u8; RECEIPT_BYTES],
}

/// What the operator's API says about an epoch.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// The tree dump (`GET /v1/epochs/{n}/tree`).
    pub tree: Option<StandardDump>,
    /// The root in the epoch record.
    pub root: Option<alloy::primitives::B256>,
    /// The record's total debited.
    pub debit_total: Option<u128>,
    /// What the record says was cut as shortfall.
    pub shortfall: u128,
}

/// Everything one epoch's audit looks at.
#[derive(Clone, Debug)]
pub struct EpochEvidence {
    /// The epoch.
    pub epoch: u64,
    /// Its archived receipts, in the order the ledger applied them.
    pub receipts: Vec<Archived>,
    /// Disputed epochs whose amounts the ledger carried into this one.
    pub carried: Vec<u64>,
    /// The API's view.
    pub served: Served,
    /// The chain's view, when a chain was given.
    pub onchain: Option<OnchainEpoch>,
    /// What each payer deposited onchain, when a chain was given.
    pub deposits: Option<BTreeMap<PayerKey, u128>>,
}

/// One thing that does not agree. Its `Display` is the line the auditor prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// An archived record that is not a receipt.
    #[error("epoch {epoch} receipt {index}: malformed ({problem})")]
    Malformed {
        /// epoch
        epoch: u64,
        /// position
        index: u64,
        /// what is wrong
        problem: String,
    },
    /// A receipt whose signature fails the single rule under this deployment (forged, or
    /// signed for another chain or contract).
    #[error(
        "epoch {epoch} receipt {index}: {reason} for payer {payer} under this deployment \
         (forged, or signed for another chain or contract) yet accepted"
    )]
    BadSignature {
        /// epoch
        epoch: u64,
        /// position
        index: u64,
        /// payer named in it
        payer: String,
        /// the rule's reason code
        reason: String,
    },
    /// A receipt the anti-replay window refuses: counted twice, or replayed below the window.
    #[error(
        "epoch {epoch} receipt {index}: nonce {nonce} of payer {payer} to {payee} is {reason} \
         (a replay) yet accepted"
    )]
    Replay {
        /// epoch
        epoch: u64,
        /// position
        index: u64,
        /// payer
        payer: String,
        /// payee
        payee: String,
        /// nonce
        nonce: u64,
        /// duplicate or stale
        reason: String,
    },
    /// A total that does not fit: no honest ledger accepts it.
    #[error("epoch {epoch}: {what} overflows")]
    Overflow {
        /// epoch
        epoch: u64,
        /// which total
        what: String,
    },
    /// A carried disputed epoch the audit has no amounts for (not audited in this run).
    #[error(
        "epoch {epoch}: carries disputed epoch {carried}, whose receipts this audit did not read"
    )]
    CarriedUnknown {
        /// epoch
        epoch: u64,
        /// the disputed epoch
        carried: u64,
    },
    /// The served tree is not a valid tree of its own values.
    #[error("epoch {epoch}: the served tree is invalid: {problem}")]
    TreeInvalid {
        /// epoch
        epoch: u64,
        /// what is wrong
        problem: String,
    },
    /// A channel the receipts move has no leaf, or a leaf with another amount.
    #[error("epoch {epoch}: leaf of payer {payer} to {payee} {problem}")]
    Leaf {
        /// epoch
        epoch: u64,
        /// payer
        payer: String,
        /// payee
        payee: String,
        /// what differs
        problem: String,
    },
    /// Two roots that should be one differ.
    #[error("epoch {epoch}: root {what} is {found}, the receipts give {expected}")]
    Root {
        /// epoch
        epoch: u64,
        /// whose root
        what: String,
        /// the root found there
        found: String,
        /// the root of the recomputed leaves
        expected: String,
    },
    /// A payer debited other than its receipts say.
    #[error("epoch {epoch}: {by} debits payer {payer} {found}, the receipts give {expected}")]
    Debit {
        /// epoch
        epoch: u64,
        /// the API or the chain
        by: String,
        /// payer
        payer: String,
        /// debited there
        found: u128,
        /// recomputed
        expected: u128,
    },
    /// A payee credited other than its receipts say.
    #[error("epoch {epoch}: {by} credits payee {payee} {found}, the receipts give {expected}")]
    Credit {
        /// epoch
        epoch: u64,
        /// the API or the chain
        by: String,
        /// payee
        payee: String,
        /// credited there
        found: u128,
        /// recomputed
        expected: u128,
    },
    /// A session receipt its grant does not allow: no grant (or not yet), revoked by then,
    /// outside its validity or payee scope, or over its cap or allowance.
    #[error(
        "epoch {epoch} receipt {index}: session key {session} {problem} ({reason}) yet accepted"
    )]
    SessionReceipt {
        /// epoch
        epoch: u64,
        /// position
        index: u64,
        /// the session key that signed it
        session: String,
        /// the receipt reason the server owed it
        reason: String,
        /// what the grant says
        problem: String,
    },
    /// A grant or revocation the operator serves whose payer signature or fields do not check
    /// under this deployment: the grant is not held (its session's receipts are charged to
    /// nobody), a revocation is not taken as one.
    #[error("the {what} of session key {session} does not check: {reason} ({problem})")]
    GrantInvalid {
        /// grant or revocation
        what: String,
        /// the session key
        session: String,
        /// the grant error's stable name
        reason: String,
        /// what is wrong
        problem: String,
    },
    /// A payer spent more than it ever deposited.
    #[error(
        "epoch {epoch}: payer {payer} has spent {spent} in all, more than the {deposited} it deposited"
    )]
    Overspent {
        /// epoch
        epoch: u64,
        /// payer
        payer: String,
        /// all-time spend
        spent: u128,
        /// all-time deposits
        deposited: u128,
    },
}

/// What an epoch's receipts add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochAmounts {
    /// Per payer.
    pub debits: BTreeMap<PayerKey, u128>,
    /// Per payee.
    pub credits: BTreeMap<Address, u128>,
    /// The channels moved (with those of carried epochs).
    pub channels: BTreeSet<Channel>,
}

/// One epoch's result.
#[derive(Debug)]
pub struct EpochAudit {
    /// The epoch.
    pub epoch: u64,
    /// Receipts read.
    pub receipts: u64,
    /// Leaves recomputed.
    pub leaves: usize,
    /// Root of the recomputed leaves (none for an epoch without receipts).
    pub root: Option<alloy::primitives::B256>,
    /// Everything that disagrees, in the order found.
    pub findings: Vec<Finding>,
}

/// A session's grant as the auditor holds it: its signed terms, where the operator says it and
/// its revocation took effect, and what the session has spent in the epochs audited so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionGrant {
    /// The terms the payer signed.
    pub grant: Grant,
    /// Where it took effect.
    pub granted_at: PositionView,
    /// Where its (checked) revocation took effect.
    pub revoked_at: Option<PositionView>,
}

/// `view`'s grant once its payer signature and fields check for `domain` (and its revocation's,
/// which must be by the same payer for the same session); else the findings saying why. A
/// revocation that does not check is reported and not taken as one.
pub fn checked_grant(view: &GrantView, domain: &Domain) -> (Option<SessionGrant>, Vec<Finding>) {
    let invalid = |what: &str, error: tollgate_engine::grant::GrantError| Finding::GrantInvalid {
        what: what.into(),
        session: view.terms.session_key.clone(),
        reason: error.name().into(),
        problem: error.to_string(),
    };
    let grant = match view.terms.signed().and_then(|signed| signed.check(domain)) {
        Ok(checked) => checked.signed().grant.clone(),
        Err(error) => return (None, vec![invalid("grant", error)]),
    };
    let mut findings = Vec::new();
    let revoked_at = view.revocation.as_ref().and_then(|revocation| {
        let checked = revocation
            .terms
            .signed()
            .and_then(|signed| signed.check(domain))
            .map(|checked| *checked.signed())
            .and_then(
                |SignedRevocation {
                     revocation: terms, ..
                 }| {
                    if (terms.payer, terms.session) == (grant.payer, grant.session) {
                        Ok(())
                    } else {
                        Err(tollgate_engine::grant::GrantError::NotTheGranter(
                            terms.session,
                        ))
                    }
                },
            );
        match checked {
            Ok(()) => Some(revocation.effective_at),
            Err(error) => {
                findings.push(invalid("revocation", error));
                None
            }
        }
    });
    let held = SessionGrant {
        grant,
        granted_at: view.granted_at,
        revoked_at,
    };
    (Some(held), findings)
}

/// The auditor's memory across the epochs of one run, audited in order.
#[derive(Debug)]
pub struct Recompute {
    verifier: Verifier,
    window_nonces: u32,
    /// Every channel's all-time cumulative as recomputed (or, before the first audited epoch,
    /// as the earlier epochs' validated trees say).
    latest: HashMap<Channel, u128>,
    windows: HashMap<Channel, NonceWindow>,
    /// Each audited epoch's amounts (carried ones included), for epochs carried later.
    amounts: HashMap<u64, EpochAmounts>,
    /// Session grants by session key, with what each session spent so far.
    grants: HashMap<PayerKey, (SessionGrant, GrantSpend)>,
}

fn checked_add(total: &mut u128, amount: u128) -> bool {
    match total.checked_add(amount) {
        Some(sum) => {
            *total = sum;
            true
        }
        None => false,
    }
}

impl Recompute {
    /// An auditor of receipts signed for the deployment `verifier` checks, with the server's
    /// anti-replay window size.
    pub fn new(verifier: Verifier, window_nonces: u32) -> Self {
        Self {
            verifier,
            window_nonces,
            latest: HashMap::new(),
            windows: HashMap::new(),
            amounts: HashMap::new(),
            grants: HashMap::new(),
        }
    }

    /// Holds `grant` for the receipts audited from now on: a new one with nothing spent, a known
    /// one with its spend so far (the operator may have revoked it since).
    pub fn hold_grant(&mut self, grant: SessionGrant) {
        let session = grant.grant.session;
        let spent = self
            .grants
            .get(&session)
            .map_or_else(GrantSpend::default, |(_, spent)| *spent);
        self.grants.insert(session, (grant, spent));
    }

    /// The payer a session receipt at `archived`'s position is charged to, if its grant held
    /// it then and admits it; else the finding.
    fn session_payer(
        &self,
        archived: &Archived,
        receipt: &ReceiptView<'_>,
    ) -> Result<PayerKey, Finding> {
        let at = PositionView {
            epoch: archived.epoch,
            index: archived.index,
        };
        let finding = |reason: tollgate_engine::Reason, problem: String| Finding::SessionReceipt {
            epoch: archived.epoch,
            index: archived.index,
            session: receipt.payer().to_string(),
            reason: reason.name().into(),
            problem,
        };
        let Some((held, _)) = self.grants.get(&receipt.payer()) else {
            return Err(finding(
                tollgate_engine::Reason::NoGrant,
                "has no grant the operator serves with a valid payer signature".into(),
            ));
        };
        if at < held.granted_at {
            return Err(finding(
                tollgate_engine::Reason::NoGrant,
                format!(
                    "was not granted yet: its grant took effect at epoch {} receipt {}",
                    held.granted_at.epoch, held.granted_at.index
                ),
            ));
        }
        if let Some(revoked) = held.revoked_at.filter(|revoked| at >= *revoked) {
            return Err(finding(
                tollgate_engine::Reason::GrantRevoked,
                format!(
                    "was revoked: its revocation took effect at epoch {} receipt {}",
                    revoked.epoch, revoked.index
                ),
            ));
        }
        let signed_at = receipt.timestamp_ms();
        held.grant
            .admits(&receipt.payee(), signed_at, signed_at)
            .map_err(|reason| {
                finding(
                    reason,
                    format!(
                        "is not admitted by its grant (signed at {signed_at} ms for {}, grant \
                         valid {} to {} ms)",
                        receipt.payee(),
                        held.grant.valid_from_ms,
                        held.grant.valid_until_ms
                    ),
                )
            })?;
        Ok(held.grant.payer)
    }

    /// Takes the leaves of an epoch before the first audited one as the channels' cumulatives
    /// (its tree already checked against its committed root by the caller).
    pub fn remember(&mut self, tree: &EpochTree) {
        for (_, leaf) in tree.leaves() {
            self.latest
                .insert((leaf.payer, leaf.payee), leaf.cumulative);
        }
    }

    /// Audits one epoch, the epochs before it already audited or remembered.
    pub fn audit(&mut self, evidence: &EpochEvidence) -> EpochAudit {
        let epoch = evidence.epoch;
        let mut findings = Vec::new();
        let (mut amounts, moved) = self.replay(evidence, &mut findings);
        for carried in &evidence.carried {
            match self.amounts.get(carried) {
                Some(carried_amounts) => {
                    if !merge(&mut amounts, carried_amounts) {
                        findings.push(Finding::Overflow {
                            epoch,
                            what: format!("carrying epoch {carried}"),
                        });
                    }
                }
                None => findings.push(Finding::CarriedUnknown {
                    epoch,
                    carried: *carried,
                }),
            }
        }
        // Leaves: the channel's cumulative before this epoch plus what its own receipts moved
        // (a carried channel's receipts are in `latest` already, from its own epoch's audit).
        let mut leaves = Vec::with_capacity(amounts.channels.len());
        for channel in &amounts.channels {
            let before = self.latest.get(channel).copied().unwrap_or(0);
            let Some(cumulative) = before.checked_add(moved.get(channel).copied().unwrap_or(0))
            else {
                findings.push(Finding::Overflow {
                    epoch,
                    what: "a channel's cumulative".into(),
                });
                continue;
            };
            leaves.push(Leaf {
                payer: channel.0,
                payee: channel.1,
                cumulative,
            });
        }
        let tree = EpochTree::build(epoch, leaves.iter().copied()).ok();
        let root = tree.as_ref().map(EpochTree::root);
        compare_tree(epoch, &leaves, root, &evidence.served, &mut findings);
        compare_amounts(epoch, &amounts, evidence, &mut findings);
        if let Some(onchain) = &evidence.onchain
            && let Some(root) = root
            && onchain.root != root
        {
            findings.push(Finding::Root {
                epoch,
                what: "committed onchain".into(),
                found: onchain.root.to_string(),
                expected: root.to_string(),
            });
        }
        for leaf in &leaves {
            self.latest
                .insert((leaf.payer, leaf.payee), leaf.cumulative);
        }
        if let Some(deposits) = &evidence.deposits {
            self.check_funds(epoch, &amounts, deposits, &mut findings);
        }
        self.amounts.insert(epoch, amounts);
        EpochAudit {
            epoch,
            receipts: evidence.receipts.len() as u64,
            leaves: leaves.len(),
            root,
            findings,
        }
    }

    /// The epoch's own receipts through the signature and anti-replay rules, in archive order:
    /// their amounts, and what they moved each channel by.
    fn replay(
        &mut self,
        evidence: &EpochEvidence,
        findings: &mut Vec<Finding>,
    ) -> (EpochAmounts, HashMap<Channel, u128>) {
        let mut amounts = EpochAmounts::default();
        let mut moved: HashMap<Channel, u128> = HashMap::new();
        // Each signature's verdict depends on nothing else: checked on every core, one receipt
        // at a time under the single rule; the windows and sums below must go in archive order.
        let verdicts: Vec<_> = evidence
            .receipts
            .par_iter()
            .map(|archived| {
                ReceiptView::parse(&archived.bytes)
                    .map(|receipt| self.verifier.verify_one(&receipt))
            })
            .collect();
        for (archived, verdict) in evidence.receipts.iter().zip(verdicts) {
            let receipt = match ReceiptView::parse(&archived.bytes) {
                Ok(receipt) => receipt,
                Err(error) => {
                    findings.push(Finding::Malformed {
                        epoch: archived.epoch,
                        index: archived.index,
                        problem: error.to_string(),
                    });
                    continue;
                }
            };
            if let Ok(Err(reason)) = verdict {
                findings.push(Finding::BadSignature {
                    epoch: archived.epoch,
                    index: archived.index,
                    payer: receipt.payer().to_string(),
                    reason: reason.name().to_owned(),
                });
                continue;
            }
            // A session's nonces are its own with the payee; its amounts are its payer's.
            let signer = (receipt.payer(), receipt.payee());
            let payer = if receipt.is_session() {
                match self.session_payer(archived, &receipt) {
                    Ok(payer) => payer,
                    Err(finding) => {
                        findings.push(finding);
                        continue;
                    }
                }
            } else {
                signer.0
            };
            let window = self
                .windows
                .entry(signer)
                .or_insert_with(|| NonceWindow::new(self.window_nonces));
            if let Err(reason) = window.check(receipt.nonce()) {
                findings.push(Finding::Replay {
                    epoch: archived.epoch,
                    index: archived.index,
                    payer: signer.0.to_string(),
                    payee: signer.1.to_string(),
                    nonce: receipt.nonce(),
                    reason: reason.name().to_owned(),
                });
                continue;
            }
            if receipt.is_session()
                && let Some((held, spent)) = self.grants.get_mut(&signer.0)
            {
                match held
                    .grant
                    .charge(spent, receipt.amount(), receipt.timestamp_ms())
                {
                    Ok(after) => *spent = after,
                    Err(reason) => {
                        findings.push(Finding::SessionReceipt {
                            epoch: archived.epoch,
                            index: archived.index,
                            session: signer.0.to_string(),
                            reason: reason.name().into(),
                            problem: format!(
                                "spends {} beyond its grant (cap {}, allowance {:?}; spent {} in \
                                 all, {} in period {})",
                                receipt.amount(),
                                held.grant.cap,
                                held.grant.allowance.map(|a| (a.amount, a.period_ms)),
                                spent.total,
                                spent.period_total,
                                spent.period
                            ),
                        });
                        continue;
                    }
                }
            }
            window.insert(receipt.nonce());
            let channel = (payer, signer.1);
            let amount = u128::from(receipt.amount());
            amounts.channels.insert(channel);
            if !checked_add(amounts.debits.entry(channel.0).or_default(), amount)
                || !checked_add(amounts.credits.entry(channel.1).or_default(), amount)
                || !checked_add(moved.entry(channel).or_default(), amount)
            {
                findings.push(Finding::Overflow {
                    epoch: evidence.epoch,
                    what: "an epoch total".into(),
                });
            }
        }
        (amounts, moved)
    }

    fn check_funds(
        &self,
        epoch: u64,
        amounts: &EpochAmounts,
        deposits: &BTreeMap<PayerKey, u128>,
        findings: &mut Vec<Finding>,
    ) {
        // One pass over every channel, not one per debited payer: all-time spend per payer.
        let mut spent: BTreeMap<PayerKey, Option<u128>> = amounts
            .debits
            .keys()
            .map(|payer| (*payer, Some(0)))
            .collect();
        for ((owner, _), cumulative) in &self.latest {
            if let Some(total) = spent.get_mut(owner) {
                *total = total.and_then(|total| total.checked_add(*cumulative));
            }
        }
        for (payer, spent) in spent {
            let deposited = deposits.get(&payer).copied().unwrap_or(0);
            match spent {
                Some(spent) if spent <= deposited => {}
                Some(spent) => findings.push(Finding::Overspent {
                    epoch,
                    payer: payer.to_string(),
                    spent,
                    deposited,
                }),
                None => findings.push(Finding::Overflow {
                    epoch,
                    what: format!("payer {payer}'s all-time spend"),
                }),
            }
        }
    }
}

/// Adds `other`'s amounts and channels to `into`; false on overflow.
fn merge(into: &mut EpochAmounts, other: &EpochAmounts) -> bool {
    into.channels.extend(other.channels.iter().copied());
    other
        .debits
        .iter()
        .all(|(payer, amount)| checked_add(into.debits.entry(*payer).or_default(), *amount))
        && other
            .credits
            .iter()
            .all(|(payee, amount)| checked_add(into.credits.entry(*payee).or_default(), *amount))
}

fn compare_tree(
    epoch: u64,
    leaves: &[Leaf],
    root: Option<alloy::primitives::B256>,
    served: &Served,
    findings: &mut Vec<Finding>,
) {
    let leaf_finding = |channel: &Channel, problem: String| Finding::Leaf {
        epoch,
        payer: channel.0.to_string(),
        payee: channel.1.to_string(),
        problem,
    };
    if let Some(dump) = &served.tree {
        match dump.clone().into_tree() {
            Err(error) => findings.push(Finding::TreeInvalid {
                epoch,
                problem: error.to_string(),
            }),
            Ok(tree) => {
                let served_leaves: BTreeMap<Channel, u128> = tree
                    .leaves()
                    .map(|(_, leaf)| ((leaf.payer, leaf.payee), leaf.cumulative))
                    .collect();
                let ours: BTreeMap<Channel, u128> = leaves
                    .iter()
                    .map(|leaf| ((leaf.payer, leaf.payee), leaf.cumulative))
                    .collect();
                // In channel order, so the first line names the first differing channel.
                let channels: BTreeSet<&Channel> =
                    served_leaves.keys().chain(ours.keys()).collect();
                for channel in channels {
                    match (ours.get(channel), served_leaves.get(channel)) {
                        (Some(expected), None) => findings.push(leaf_finding(
                            channel,
                            format!(
                                "is missing from the served tree (the receipts give {expected})"
                            ),
                        )),
                        (None, Some(found)) => findings.push(leaf_finding(
                            channel,
                            format!(
                                "commits {found}, but no receipt moved this channel: an added leaf"
                            ),
                        )),
                        (Some(expected), Some(found)) if expected != found => {
                            findings.push(leaf_finding(
                                channel,
                                format!("commits {found}, the receipts give {expected}"),
                            ))
                        }
                        _ => {}
                    }
                }
                if let Some(root) = root
                    && tree.root() != root
                    && findings.is_empty()
                {
                    findings.push(Finding::Root {
                        epoch,
                        what: "of the served tree".into(),
                        found: tree.root().to_string(),
                        expected: root.to_string(),
                    });
                }
                if let Some(record_root) = served.root
                    && record_root != tree.root()
                {
                    findings.push(Finding::Root {
                        epoch,
                        what: "in the API's epoch record (not the served tree's)".into(),
                        found: record_root.to_string(),
                        expected: root.map_or_else(|| "none".into(), |root| root.to_string()),
                    });
                }
            }
        }
    } else if let (Some(record_root), Some(root)) = (served.root, root)
        && record_root != root
    {
        findings.push(Finding::Root {
            epoch,
            what: "in the API's epoch record".into(),
            found: record_root.to_string(),
            expected: root.to_string(),
        });
    }
}

fn compare_amounts(
    epoch: u64,
    amounts: &EpochAmounts,
    evidence: &EpochEvidence,
    findings: &mut Vec<Finding>,
) {
    let expected_total = amounts
        .debits
        .values()
        .try_fold(0u128, |total, amount| total.checked_add(*amount));
    if let (Some(found), Some(expected)) = (evidence.served.debit_total, expected_total)
        && found != expected
    {
        findings.push(Finding::Debit {
            epoch,
            by: "the API's epoch total".into(),
            payer: "(all)".into(),
            found,
            expected,
        });
    }
    let Some(onchain) = &evidence.onchain else {
        return;
    };
    // A payer whose exit overtook its debit is cut, debit and credits alike (the epoch's
    // shortfall): onchain may be lower by exactly that much, never higher.
    let mut uncovered = 0u128;
    let payers: BTreeSet<&PayerKey> = amounts.debits.keys().chain(onchain.debits.keys()).collect();
    for payer in payers {
        let expected = amounts.debits.get(payer).copied().unwrap_or(0);
        let found = onchain.debits.get(payer).copied().unwrap_or(0);
        if found < expected && evidence.served.shortfall > 0 {
            uncovered = uncovered.saturating_add(expected - found);
            continue;
        }
        if found != expected {
            findings.push(Finding::Debit {
                epoch,
                by: "the chain".into(),
                payer: payer.to_string(),
                found,
                expected,
            });
        }
    }
    if uncovered > evidence.served.shortfall {
        findings.push(Finding::Debit {
            epoch,
            by: "the chain (beyond the epoch's shortfall)".into(),
            payer: "(all)".into(),
            found: uncovered,
            expected: evidence.served.shortfall,
        });
    }
    let payees: BTreeSet<&Address> = amounts
        .credits
        .keys()
        .chain(onchain.credits.keys())
        .collect();
    for payee in payees {
        let expected = amounts.credits.get(payee).copied().unwrap_or(0);
        let found = onchain.credits.get(payee).copied().unwrap_or(0);
        if found != expected && !(found < expected && evidence.served.shortfall > 0) {
            findings.push(Finding::Credit {
                epoch,
                by: "the chain".into(),
                payee: payee.to_string(),
                found,
                expected,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use tollgate_engine::{Domain, UnsignedReceipt, VerifyConfig};

    const DOMAIN: Domain = Domain {
        chain_id: 31_337,
        contract: Address([0xc0; 20]),
    };
    const P1: Address = Address([0x11; 20]);
    const P2: Address = Address([0x22; 20]);
    const P3: Address = Address([0x33; 20]);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn payer(seed: u8) -> PayerKey {
        PayerKey(key(seed).verifying_key().to_bytes())
    }

    fn signed(seed: u8, payee: Address, amount: u64, nonce: u64, domain: &Domain) -> [u8; 176] {
        UnsignedReceipt {
            payer: payer(seed),
            payee,
            amount,
            nonce,
            timestamp_ms: 1_800_000_000_000,
            request_hash: [9; 32],
            session: false,
        }
        .sign(&key(seed), domain)
        .to_bytes()
    }

    fn archived(epoch: u64, records: &[[u8; 176]]) -> Vec<Archived> {
        records
            .iter()
            .enumerate()
            .map(|(index, bytes)| Archived {
                epoch,
                index: index as u64,
                bytes: *bytes,
            })
            .collect()
    }

    fn leaf(seed: u8, payee: Address, cumulative: u128) -> Leaf {
        Leaf {
            payer: payer(seed),
            payee,
            cumulative,
        }
    }

    /// What an honest operator serves and commits for `leaves`, debits and credits.
    fn honest(
        epoch: u64,
        receipts: Vec<Archived>,
        leaves: &[Leaf],
        debits: &[(u8, u128)],
        credits: &[(Address, u128)],
    ) -> EpochEvidence {
        let tree = EpochTree::build(epoch, leaves.iter().copied()).expect("tree");
        let total = debits.iter().map(|(_, amount)| amount).sum();
        EpochEvidence {
            epoch,
            receipts,
            carried: Vec::new(),
            served: Served {
                tree: Some(tree.standard_dump()),
                root: Some(tree.root()),
                debit_total: Some(total),
                shortfall: 0,
            },
            onchain: Some(OnchainEpoch {
                epoch,
                root: tree.root(),
                parts_landed: 1,
                parts: 1,
                debits: debits
                    .iter()
                    .map(|(seed, amount)| (payer(*seed), *amount))
                    .collect(),
                credits: credits.iter().copied().collect(),
                disputed: false,
                last_block: 1,
                completed_at: 0,
            }),
            deposits: Some(BTreeMap::from([(payer(1), 1_000), (payer(2), 1_000)])),
        }
    }

    /// Epoch 1: alice pays P1 10 and P2 20, bob pays P1 5.
    fn epoch_1() -> EpochEvidence {
        honest(
            1,
            archived(
                1,
                &[
                    signed(1, P1, 10, 1, &DOMAIN),
                    signed(1, P2, 20, 1, &DOMAIN),
                    signed(2, P1, 5, 1, &DOMAIN),
                ],
            ),
            &[leaf(1, P1, 10), leaf(1, P2, 20), leaf(2, P1, 5)],
            &[(1, 30), (2, 5)],
            &[(P1, 15), (P2, 20)],
        )
    }

    fn auditor() -> Recompute {
        Recompute::new(Verifier::new(DOMAIN, VerifyConfig::default()), 1_024)
    }

    fn findings(evidence: &EpochEvidence) -> Vec<Finding> {
        auditor().audit(evidence).findings
    }

    #[test]
    fn an_honest_epoch_and_its_successor_agree() {
        let mut auditor = auditor();
        let audit = auditor.audit(&epoch_1());
        assert_eq!(audit.findings, []);
        assert_eq!((audit.receipts, audit.leaves), (3, 3));
        // Epoch 2 moves alice→P1 again: its leaf commits the all-time 17.
        let epoch_2 = honest(
            2,
            archived(2, &[signed(1, P1, 7, 2, &DOMAIN)]),
            &[leaf(1, P1, 17)],
            &[(1, 7)],
            &[(P1, 7)],
        );
        assert_eq!(auditor.audit(&epoch_2).findings, []);
    }

    #[test]
    fn an_inflated_debit_onchain_is_named() {
        let mut evidence = epoch_1();
        let onchain = evidence.onchain.as_mut().expect("onchain");
        onchain.debits.insert(payer(1), 31);
        onchain.credits.insert(P1, 16);
        let found = findings(&evidence);
        assert!(
            found.contains(&Finding::Debit {
                epoch: 1,
                by: "the chain".into(),
                payer: payer(1).to_string(),
                found: 31,
                expected: 30,
            }),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| matches!(f, Finding::Credit { found: 16, .. })),
            "{found:?}"
        );
    }

    #[test]
    fn a_credit_to_the_wrong_payee_is_named() {
        let mut evidence = epoch_1();
        let onchain = evidence.onchain.as_mut().expect("onchain");
        onchain.credits = BTreeMap::from([(P1, 15), (P3, 20)]);
        let found = findings(&evidence);
        let credited: Vec<(String, u128, u128)> = found
            .iter()
            .filter_map(|f| match f {
                Finding::Credit {
                    payee,
                    found,
                    expected,
                    ..
                } => Some((payee.clone(), *found, *expected)),
                _ => None,
            })
            .collect();
        assert_eq!(credited, [(P2.to_string(), 0, 20), (P3.to_string(), 20, 0)]);
    }

    #[test]
    fn a_leaf_missing_or_added_is_named_first_channel_first() {
        let mut missing = epoch_1();
        let tree = EpochTree::build(1, [leaf(1, P1, 10), leaf(1, P2, 20)]).expect("tree");
        missing.served.tree = Some(tree.standard_dump());
        let found = findings(&missing);
        assert!(
            matches!(&found[0], Finding::Leaf { payer, problem, .. }
                if *payer == payer_of(2) && problem.contains("missing")),
            "{found:?}"
        );

        let mut added = epoch_1();
        let tree = EpochTree::build(
            1,
            [
                leaf(1, P1, 10),
                leaf(1, P2, 20),
                leaf(2, P1, 5),
                leaf(2, P3, 1),
            ],
        )
        .expect("tree");
        added.served.tree = Some(tree.standard_dump());
        let found = findings(&added);
        assert!(
            found
                .iter()
                .any(|f| matches!(f, Finding::Leaf { payee, problem, .. }
                if *payee == P3.to_string() && problem.contains("added leaf"))),
            "{found:?}"
        );

        // Two wrong amounts: the first line names the first channel in (payer, payee) order.
        let mut wrong = epoch_1();
        let tree =
            EpochTree::build(1, [leaf(1, P1, 11), leaf(1, P2, 21), leaf(2, P1, 5)]).expect("tree");
        wrong.served.tree = Some(tree.standard_dump());
        let found = findings(&wrong);
        let first = [(payer(1), P1), (payer(1), P2)]
            .into_iter()
            .min()
            .expect("two channels");
        assert!(
            matches!(&found[0], Finding::Leaf { payer, payee, .. }
                if *payer == first.0.to_string() && *payee == first.1.to_string()),
            "{found:?}"
        );
    }

    fn payer_of(seed: u8) -> String {
        payer(seed).to_string()
    }

    #[test]
    fn a_receipt_signed_for_another_deployment_is_named() {
        let other = Domain {
            chain_id: 1,
            ..DOMAIN
        };
        let mut evidence = epoch_1();
        evidence.receipts.push(Archived {
            epoch: 1,
            index: 3,
            bytes: signed(2, P2, 1, 1, &other),
        });
        let found = findings(&evidence);
        assert_eq!(
            found,
            [Finding::BadSignature {
                epoch: 1,
                index: 3,
                payer: payer_of(2),
                reason: "bad_signature".into(),
            }]
        );
    }

    #[test]
    fn a_replayed_receipt_counted_twice_is_named() {
        let replayed = signed(2, P1, 5, 1, &DOMAIN);
        // The operator counted bob's receipt twice: leaf 10, debit 10, credit 20 to P1.
        let evidence = honest(
            1,
            archived(
                1,
                &[
                    signed(1, P1, 10, 1, &DOMAIN),
                    signed(1, P2, 20, 1, &DOMAIN),
                    replayed,
                    replayed,
                ],
            ),
            &[leaf(1, P1, 10), leaf(1, P2, 20), leaf(2, P1, 10)],
            &[(1, 30), (2, 10)],
            &[(P1, 20), (P2, 20)],
        );
        let found = findings(&evidence);
        assert_eq!(
            found[0],
            Finding::Replay {
                epoch: 1,
                index: 3,
                payer: payer_of(2),
                payee: P1.to_string(),
                nonce: 1,
                reason: "duplicate".into(),
            }
        );
        assert!(
            found.iter().any(|f| matches!(f, Finding::Leaf { .. })),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| matches!(
                f,
                Finding::Debit {
                    found: 10,
                    expected: 5,
                    ..
                }
            )),
            "{found:?}"
        );
    }

    #[test]
    fn a_root_that_does_not_match_the_leaves_is_named() {
        let mut evidence = epoch_1();
        let dump = evidence.served.tree.as_mut().expect("tree");
        dump.tree[0] = alloy::primitives::B256::repeat_byte(7);
        evidence.onchain.as_mut().expect("onchain").root = alloy::primitives::B256::repeat_byte(7);
        let found = findings(&evidence);
        assert!(
            found
                .iter()
                .any(|f| matches!(f, Finding::TreeInvalid { .. })),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| matches!(f, Finding::Root { what, .. } if what == "committed onchain")),
            "{found:?}"
        );
    }

    #[test]
    fn a_disputed_epoch_is_owed_again_where_it_was_carried() {
        let mut carrying = auditor();
        assert_eq!(carrying.audit(&epoch_1()).findings, []);
        // Epoch 1 disputed and carried into 2, where bob also pays P2 3: every channel of 1 has
        // a leaf in 2 and the debits are epoch 1's plus 2's.
        let mut epoch_2 = honest(
            2,
            archived(2, &[signed(2, P2, 3, 1, &DOMAIN)]),
            &[
                leaf(1, P1, 10),
                leaf(1, P2, 20),
                leaf(2, P1, 5),
                leaf(2, P2, 3),
            ],
            &[(1, 30), (2, 8)],
            &[(P1, 15), (P2, 23)],
        );
        epoch_2.carried = vec![1];
        assert_eq!(carrying.audit(&epoch_2).findings, []);
        // Without the carry the same commit is three added leaves and wrong amounts.
        let mut fresh = auditor();
        fresh.audit(&epoch_1());
        epoch_2.carried.clear();
        assert!(fresh.audit(&epoch_2).findings.len() >= 3);
    }

    const SIGNED_AT: u64 = 1_800_000_000_000;

    /// Session key `session`'s receipt (not a deposit key: charged through its grant).
    fn session_signed(session: u8, payee: Address, amount: u64, nonce: u64) -> [u8; 176] {
        UnsignedReceipt {
            payer: payer(session),
            payee,
            amount,
            nonce,
            timestamp_ms: SIGNED_AT,
            request_hash: [9; 32],
            session: true,
        }
        .sign(&key(session), &DOMAIN)
        .to_bytes()
    }

    /// Alice's grant to session key 9: cap 50, P1 and P2 only, valid around `SIGNED_AT`, in
    /// effect from epoch 1 receipt 0.
    fn alice_grants_9() -> tollgate_engine::grant::SignedGrant {
        Grant {
            domain: DOMAIN,
            payer: payer(1),
            session: payer(9),
            nonce: 1,
            cap: 50,
            allowance: None,
            valid_from_ms: SIGNED_AT - 1_000,
            valid_until_ms: SIGNED_AT + 1_000,
            payees: tollgate_engine::grant::PayeeScope::Only(vec![P1, P2]),
        }
        .sign(&key(1))
    }

    fn view(
        grant: &tollgate_engine::grant::SignedGrant,
        granted_at: (u64, u64),
        revoked_at: Option<(u64, u64)>,
    ) -> GrantView {
        let mut record = tollgate_engine::ledger::record::GrantRecord {
            grant: grant.clone(),
            granted_at: tollgate_engine::ledger::record::Position {
                epoch: granted_at.0,
                index: granted_at.1,
            },
            spent: GrantSpend::default(),
            revoked: None,
        };
        record.revoked = revoked_at.map(|(epoch, index)| {
            (
                tollgate_engine::grant::Revocation {
                    domain: DOMAIN,
                    payer: grant.grant.payer,
                    session: grant.grant.session,
                    revoked_at_ms: 0,
                }
                .sign(&key(1)),
                tollgate_engine::ledger::record::Position { epoch, index },
            )
        });
        GrantView::of(&record)
    }

    fn holding(grant: &GrantView) -> Recompute {
        let mut auditor = auditor();
        let (held, found) = checked_grant(grant, &DOMAIN);
        assert_eq!(found, []);
        auditor.hold_grant(held.expect("a valid grant"));
        auditor
    }

    #[test]
    fn a_session_receipt_is_charged_to_the_payer_of_its_grant() {
        // Epoch 1: alice's own receipt to P1 (10) and her session's (30): one leaf of 40.
        let evidence = honest(
            1,
            archived(
                1,
                &[signed(1, P1, 10, 1, &DOMAIN), session_signed(9, P1, 30, 1)],
            ),
            &[leaf(1, P1, 40)],
            &[(1, 40)],
            &[(P1, 40)],
        );
        let mut auditor = holding(&view(&alice_grants_9(), (1, 0), None));
        assert_eq!(auditor.audit(&evidence).findings, []);
        // Without the grant the same archive charges nobody: the receipt is named, and the
        // leaf and debits no longer add up.
        let found = findings(&evidence);
        assert!(
            matches!(&found[0], Finding::SessionReceipt { index: 1, reason, .. } if reason == "no_grant"),
            "{found:?}"
        );
    }

    #[test]
    fn session_receipts_their_grant_does_not_allow_are_named() {
        let reasons = |grant: GrantView, records: &[[u8; 176]]| -> Vec<(u64, String)> {
            holding(&grant)
                .audit(&EpochEvidence {
                    epoch: 2,
                    receipts: archived(2, records),
                    carried: Vec::new(),
                    served: Served::default(),
                    onchain: None,
                    deposits: None,
                })
                .findings
                .into_iter()
                .filter_map(|finding| match finding {
                    Finding::SessionReceipt { index, reason, .. } => Some((index, reason)),
                    _ => None,
                })
                .collect()
        };
        let grant = alice_grants_9();
        // Before its grant took effect (epoch 2 receipt 1), and at or after its revocation
        // (epoch 2 receipt 2): the receipt between is the only one allowed.
        assert_eq!(
            reasons(
                view(&grant, (2, 1), Some((2, 2))),
                &[
                    session_signed(9, P1, 1, 1),
                    session_signed(9, P1, 1, 2),
                    session_signed(9, P1, 1, 3),
                ],
            ),
            [(0, "no_grant".into()), (2, "grant_revoked".into())]
        );
        // Outside its scope, then over its cap (the cap counts what was accepted before).
        assert_eq!(
            reasons(
                view(&grant, (1, 0), None),
                &[
                    session_signed(9, P3, 1, 1),
                    session_signed(9, P1, 45, 2),
                    session_signed(9, P2, 6, 3),
                    session_signed(9, P2, 5, 4),
                ],
            ),
            [
                (0, "payee_not_in_grant".into()),
                (2, "over_grant_cap".into())
            ]
        );
        // Signed after the grant expired.
        let short = Grant {
            valid_until_ms: SIGNED_AT,
            ..grant.grant.clone()
        }
        .sign(&key(1));
        assert_eq!(
            reasons(view(&short, (1, 0), None), &[session_signed(9, P1, 1, 1)]),
            [(0, "grant_expired".into())]
        );
    }

    #[test]
    fn a_grant_whose_payer_signature_fails_is_not_held() {
        let mut forged = alice_grants_9();
        forged.signature = key(2).sign(&forged.grant.signing_bytes()).to_bytes();
        let (held, found) = checked_grant(&view(&forged, (1, 0), None), &DOMAIN);
        assert_eq!(held, None);
        assert!(
            matches!(&found[..], [Finding::GrantInvalid { what, reason, .. }]
                if what == "grant" && reason == "bad_signature"),
            "{found:?}"
        );
    }

    #[test]
    fn spending_more_than_was_ever_deposited_is_named() {
        let mut evidence = epoch_1();
        evidence.deposits = Some(BTreeMap::from([(payer(1), 29), (payer(2), 5)]));
        assert_eq!(
            findings(&evidence),
            [Finding::Overspent {
                epoch: 1,
                payer: payer_of(1),
                spent: 30,
                deposited: 29,
            }]
        );
    }
}
