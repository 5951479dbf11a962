//! Session grants as the ledger holds them: the held grant, what each session spent, and each
//! session's anti-replay windows.

use super::*;
use crate::grant::{GRANT_BYTES, GrantSpend, REVOCATION_BYTES, SignedGrant, SignedRevocation};

/// Where in the order of accepted receipts something took effect: the open epoch and how many
/// receipts it had accepted (the archive index the next one gets). A receipt archived at a
/// position before it was judged without it; one at or after it, with it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Position {
    /// The open epoch.
    pub epoch: u64,
    /// Receipts it had accepted.
    pub index: u64,
}

/// A session key's grant, what the session spent under it, and its revocation if any: what
/// readers see of one session key (one grant per session key for its lifetime). The ledger keeps
/// it as two records, [`HeldGrant`] and [`GrantSpend`], so that a session's receipts rewrite only
/// the small one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GrantRecord {
    /// The grant as the payer signed it (checked before it was stored).
    pub grant: SignedGrant,
    /// When it took effect.
    pub granted_at: Position,
    /// What the session has spent.
    pub spent: GrantSpend,
    /// The payer's revocation and when it took effect.
    pub revoked: Option<(SignedRevocation, Position)>,
}

impl GrantRecord {
    /// The reader's view of a held grant and its spend.
    pub fn new(held: HeldGrant, spent: GrantSpend) -> Self {
        Self {
            grant: held.grant,
            granted_at: held.granted_at,
            spent,
            revoked: held.revoked,
        }
    }
}

/// A session key's grant and its revocation, which change only when the payer signs something:
/// `'g' ‖ session key`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HeldGrant {
    /// The grant as the payer signed it (checked before it was stored).
    pub grant: SignedGrant,
    /// When it took effect.
    pub granted_at: Position,
    /// The payer's revocation and when it took effect.
    pub revoked: Option<(SignedRevocation, Position)>,
}

/// Key of a held grant: `'g' ‖ session key`.
pub fn grant_key(session: &PayerKey) -> [u8; 33] {
    session_key_with(GRANT_KEY_PREFIX, session)
}

/// The prefix every grant key starts with.
pub const GRANT_KEY_PREFIX: u8 = b'g';

/// Key under which ledgers kept what a session spent before the spend moved into the session's
/// windows: `'s' ‖ session key`. Read only when the ledger opens, to fold such records in.
pub fn grant_spend_key(session: &PayerKey) -> [u8; 33] {
    session_key_with(GRANT_SPEND_KEY_PREFIX, session)
}

/// The prefix of [`grant_spend_key`].
pub const GRANT_SPEND_KEY_PREFIX: u8 = b's';

fn session_key_with(prefix: u8, session: &PayerKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = prefix;
    out[1..].copy_from_slice(&session.0);
    out
}

fn put_grant_spend(out: &mut Vec<u8>, spend: &GrantSpend) {
    out.extend_from_slice(&spend.total.to_le_bytes());
    out.extend_from_slice(&spend.period.to_le_bytes());
    out.extend_from_slice(&spend.period_total.to_le_bytes());
}

fn put_position(out: &mut Vec<u8>, position: &Position) {
    out.extend_from_slice(&position.epoch.to_le_bytes());
    out.extend_from_slice(&position.index.to_le_bytes());
}

impl Decoder<'_> {
    fn position(&mut self) -> Result<Position, DecodeError> {
        Ok(Position {
            epoch: self.u64()?,
            index: self.u64()?,
        })
    }
    fn grant_spend(&mut self) -> Result<GrantSpend, DecodeError> {
        Ok(GrantSpend {
            total: self.u128()?,
            period: self.u64()?,
            period_total: self.u128()?,
        })
    }
}

/// Version 1 held the session's spend between `granted_at` and the revocation; version 2 keeps
/// it in its own record (see [`Ledger`](crate::ledger) open, which splits version 1 records).
const HELD_GRANT_VERSION: u8 = 2;

impl HeldGrant {
    /// Version 2: grant (288 bytes), granted_at (epoch u64, index u64), option<(revocation 164
    /// bytes, position)>.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = versioned_encoder(
            HELD_GRANT_VERSION,
            GRANT_BYTES + 16 + 1 + REVOCATION_BYTES + 16,
        );
        out.extend_from_slice(&self.grant.to_bytes());
        put_position(&mut out, &self.granted_at);
        put_option(&mut out, self.revoked.as_ref(), |out, (revocation, at)| {
            out.extend_from_slice(&revocation.to_bytes());
            put_position(out, at);
        });
        out
    }

    /// Inverse of [`HeldGrant::encode`]; a version 1 record is refused (the ledger splits them
    /// when it opens, see [`HeldGrant::decode_any`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match Self::decode_any(bytes)? {
            (held, None) => Ok(held),
            (_, Some(_)) => Err(DecodeError("grant: version 1 record not split".into())),
        }
    }

    /// A record of either version, with the spend a version 1 record held.
    pub fn decode_any(bytes: &[u8]) -> Result<(Self, Option<GrantSpend>), DecodeError> {
        let (mut d, version) = Decoder::versioned(bytes, "grant", HELD_GRANT_VERSION)?;
        let grant = SignedGrant::decode(&d.take::<GRANT_BYTES>()?)
            .map_err(|e| DecodeError(format!("grant: {e}")))?;
        let granted_at = d.position()?;
        let spent = match version {
            1 => Some(d.grant_spend()?),
            _ => None,
        };
        let revoked = d.option(|d| {
            let revocation = SignedRevocation::decode(&d.take::<REVOCATION_BYTES>()?)
                .map_err(|e| DecodeError(format!("grant: {e}")))?;
            Ok((revocation, d.position()?))
        })?;
        d.finish()?;
        Ok((
            Self {
                grant,
                granted_at,
                revoked,
            },
            spent,
        ))
    }
}

impl CacheValue for HeldGrant {
    type Key = PayerKey;
    fn receipt_money(&self) -> u128 {
        0
    }
}

impl Cached for HeldGrant {
    const CF: Cf = Cf::Grants;
    type KeyBytes = [u8; 33];
    fn key_bytes(key: &PayerKey) -> Self::KeyBytes {
        grant_key(key)
    }
    /// Grants change rarely: through the owned encoding.
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&HeldGrant::encode(self))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        HeldGrant::decode(bytes)
    }
}

/// What a session spent, as the sum of its windows' parts (see [`SessionWindow`]): held by the
/// writer's cache, never stored as a record of its own.
impl CacheValue for GrantSpend {
    type Key = PayerKey;
    fn receipt_money(&self) -> u128 {
        // A grant's spend follows the session's receipts only, not every receipt's: outside
        // the pair assertion, which the channel, payer and payee totals carry.
        0
    }
}

/// A session's spend as ledgers kept it before it moved into the windows (under
/// [`grant_spend_key`]): total u128, period u64, period total u128.
pub fn decode_legacy_grant_spend(bytes: &[u8]) -> Result<GrantSpend, DecodeError> {
    let mut d = Decoder::new(bytes, "grant spend")?;
    let spend = d.grant_spend()?;
    d.finish()?;
    Ok(spend)
}

/// The anti-replay window of one session with one payee, and the part of the session's spend
/// charged with that payee: `'w' ‖ session key ‖ payee`. A session's nonces are its own: two
/// agents of one payer cannot share a nonce sequence, so the window is per (session key, payee),
/// while the money goes to the payer's channel with the payee (which holds the totals). The
/// session's spend is the sum of its windows' parts ([`GrantSpend::combine`]): a session receipt
/// rewrites its window anyway, so keeping the spend there saves a record write per receipt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionWindow {
    /// The nonces accepted from the session by the payee.
    pub window: NonceWindow,
    /// What the session spent with the payee ([`GrantSpend::part_after`]).
    pub spent: GrantSpend,
}

/// Version 1 was a whole channel state; version 2 the window alone; version 3 the spent part
/// and the window; version 4 the same with the window as runs ([`put_window`]).
const SESSION_WINDOW_VERSION: u8 = 4;

/// Key of a session window: `'w' ‖ session key ‖ payee`.
pub fn session_window_key(key: &ChannelKey) -> [u8; 53] {
    let mut out = [0u8; 53];
    out[0] = SESSION_WINDOW_KEY_PREFIX;
    out[1..].copy_from_slice(&key.to_bytes());
    out
}

/// The prefix every session window key starts with.
pub const SESSION_WINDOW_KEY_PREFIX: u8 = b'w';

/// The prefix of all of one session's windows: `'w' ‖ session key`.
pub fn session_windows_prefix(session: &PayerKey) -> [u8; 33] {
    session_key_with(SESSION_WINDOW_KEY_PREFIX, session)
}

impl SessionWindow {
    /// An empty window with nothing spent.
    pub fn new(window_nonces: u32) -> Self {
        Self {
            window: NonceWindow::new(window_nonces),
            spent: GrantSpend::default(),
        }
    }
}

impl CacheValue for SessionWindow {
    /// The session key in the payer field.
    type Key = ChannelKey;
    fn receipt_money(&self) -> u128 {
        0
    }
}

impl Cached for SessionWindow {
    const CF: Cf = Cf::Grants;
    type KeyBytes = [u8; 53];
    fn key_bytes(key: &ChannelKey) -> Self::KeyBytes {
        session_window_key(key)
    }
    /// Version 4: spent (total u128, period u64, period total u128), then the window as runs.
    fn encode_into(&self, out: &mut Vec<u8>) {
        start_record(
            out,
            SESSION_WINDOW_VERSION,
            40 + window_bytes(self.window.words().len()),
        );
        put_grant_spend(out, &self.spent);
        put_window(out, &self.window);
    }
    /// Any version. Version 1 was a whole [`ChannelState`] (the session's totals with the
    /// payee, then the window), read for its window; versions 1 and 2 hold no spent part (the
    /// session's spend was its own record then, folded into one window when the ledger opens);
    /// versions 1 to 3 store every window word whole. Older versions are rewritten as version 4
    /// the next time the session uses the window.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut d, version) = Decoder::versioned(bytes, "session window", SESSION_WINDOW_VERSION)?;
        let (spent, window) = match version {
            1 => (GrantSpend::default(), d.channel_state(1)?.window),
            2 => (GrantSpend::default(), d.plain_window()?),
            3 => (d.grant_spend()?, d.plain_window()?),
            _ => (d.grant_spend()?, d.window()?),
        };
        d.finish()?;
        Ok(Self { window, spent })
    }
}
