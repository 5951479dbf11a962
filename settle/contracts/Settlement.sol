// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title Tollgate settlement
/// @notice Payers deposit an ERC20 against an ed25519 payer key; the operator (the Tollgate engine)
/// commits one epoch at a time: a Merkle root over every channel's cumulative amount plus the net
/// debits and credits since the previous epoch. Credits become withdrawable once the epoch has
/// survived the challenge window.
///
/// Design choices (see settle/README.md for the long form):
/// - At most one epoch is ever open to dispute: an epoch can only be committed once the previous
///   one is complete and past its challenge window. Deploy with a window no longer than the engine's
///   epoch interval. This keeps every account in ONE storage slot (settled | pending | stamp), makes
///   `dispute` O(1) (the voided epoch's pending amounts are discarded lazily the next time each
///   account is touched) and makes a steady-state entry cost a single warm SSTORE.
/// - ed25519 cannot be verified cheaply on the EVM, so a payer key's exit rights belong to the EVM
///   account that made its first deposit (`payerOwner`). Anyone may top a key up afterwards, but only
///   the owner can request and complete a withdrawal. A key holder should therefore make the first
///   deposit themselves; a deposit to a key someone else owns is a gift to that owner.
/// - The arbiter is meant to be an independent watchtower (e.g. a multisig run by payees or an
///   auditor) that recomputes each epoch from the receipts the operator publishes and disputes an
///   epoch whose root or balances do not match. It can only void the open epoch; the engine carries
///   the voided amounts into its next epoch, so epoch numbers are never reused.
/// - Amounts are kept in 96 bits per account (7.9e28 smallest units): ample for a 6- or 18-decimal
///   dollar token, and it is what lets an account fit one slot. A commit that would take a payee past
///   that is refused whole, so a slot can always be folded and withdrawn.
/// - A deposit is credited with what the contract's token balance actually grew by, so a token that
///   takes a fee on transfer credits what arrived. Tokens whose balances change without a transfer
///   (rebasing, interest-bearing, or ones an issuer can seize from) are not supported: the contract
///   would then owe more or less than it holds.
contract Settlement is ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// One payer's net debit for a part of an epoch.
    struct Debit {
        bytes32 payerKey;
        uint256 amount;
    }

    /// One slot per payer and per payee. For a payer, `settled` is the deposit left after every final
    /// debit and `pending` is the debit of commit `stamp`; for a payee, `settled` is withdrawable and
    /// `pending` is the credit of commit `stamp`. `pending` is folded into `settled` (or dropped, if
    /// that commit was voided) the next time the account is touched by a different commit.
    struct Account {
        uint96 settled;
        uint96 pending;
        uint64 stamp;
    }

    /// One epoch commitment, numbered by `seq`. Account stamps name the seq, so amounts of a voided
    /// commit stay recognisable as voided however much later the account is touched.
    struct Commit {
        uint64 epoch;
        uint64 completedAt;
        uint64 prevLive;
        uint16 parts;
        uint16 partsDone;
        bool voided;
    }

    struct WithdrawalRequest {
        uint96 amount;
        uint64 readyAt;
    }

    IERC20 public immutable token;
    address public immutable operator;
    address public immutable arbiter;
    uint64 public immutable challengeWindowSecs;
    uint64 public immutable withdrawalDelaySecs;

    /// Highest epoch whose commit has started (its parts may still be arriving, or it was voided).
    uint64 public lastEpoch;
    /// Commit seq of the latest commit that is not voided (0: none yet).
    uint64 public liveSeq;
    /// Commit seqs issued so far.
    uint64 public seqCount;
    /// Debits minus credits of the parts of the open commit seen so far.
    int256 private openImbalance;

    mapping(uint64 seq => Commit) public commits;
    mapping(uint64 epoch => bytes32) public roots;
    mapping(bytes32 payerKey => Account) public payers;
    mapping(address payee => Account) public payees;
    mapping(bytes32 payerKey => address) public payerOwner;
    mapping(bytes32 payerKey => WithdrawalRequest) public withdrawalRequests;
    /// Bitmap of voided commit seqs, 256 per word, so the check while applying entries stays warm.
    mapping(uint256 word => uint256) private voidedSeqs;

    /// `amount` is what was credited: what the contract's balance grew by.
    event Deposited(bytes32 indexed payerKey, address indexed from, address indexed owner, uint256 amount);
    event EpochCommitted(
        uint64 indexed epoch,
        uint16 part,
        uint16 parts,
        bytes32 root,
        uint64 seq,
        uint256 debitTotal,
        uint256 creditTotal,
        bool complete
    );
    event Disputed(uint64 indexed epoch, uint64 seq, address arbiter);
    event Withdrawn(address indexed payee, uint256 amount);
    event WithdrawalRequested(bytes32 indexed payerKey, address indexed owner, uint256 amount, uint64 readyAt);
    event WithdrawalCompleted(bytes32 indexed payerKey, address indexed owner, uint256 amount, uint256 remaining);

    /// A zero address for the token, operator or arbiter, or a withdrawal delay not above the window.
    error BadConfig();
    /// Only the operator may commit epochs.
    error NotOperator();
    /// Only the arbiter may dispute.
    error NotArbiter();
    /// The commit is not the next one the contract expects (a resubmitted or skipped epoch or part).
    error UnexpectedPart(uint64 expectedEpoch, uint16 expectedPart, uint64 epoch, uint16 part);
    /// `parts` is zero, or differs from the first part's.
    error BadParts(uint16 parts);
    /// A later part names a different root than the first part.
    error RootMismatch(bytes32 expected, bytes32 got);
    /// The previous epoch is still inside its challenge window.
    error PreviousEpochNotFinal(uint64 epoch, uint64 finalAt);
    /// A debit would take a payer below zero.
    error Overdraft(bytes32 payerKey, uint256 available, uint256 amount);
    /// The epoch's debits and credits differ once its last part is in.
    error Unbalanced(uint64 epoch, int256 debitsMinusCredits);
    /// A credit names the zero address.
    error ZeroPayee();
    /// A deposit or withdrawal request of zero, or a zero payer key.
    error ZeroAmount();
    /// An account balance would exceed 96 bits.
    error AmountTooLarge(uint256 amount);
    /// The epoch is not the open one, or its challenge window has closed.
    error NotDisputable(uint64 epoch);
    /// Only the EVM account that first deposited for a payer key may withdraw its deposit.
    error NotPayerOwner(bytes32 payerKey, address owner);
    /// No withdrawal was requested for this payer key.
    error NoWithdrawalRequest(bytes32 payerKey);
    /// The withdrawal delay has not passed yet.
    error WithdrawalNotReady(uint64 readyAt);
    /// Nothing to pay out: a payee with no final credit, or a payer with nothing left.
    error NothingToWithdraw();

    constructor(
        IERC20 token_,
        address operator_,
        address arbiter_,
        uint64 challengeWindowSecs_,
        uint64 withdrawalDelaySecs_
    ) {
        if (
            address(token_) == address(0) || operator_ == address(0) || arbiter_ == address(0)
                || withdrawalDelaySecs_ <= challengeWindowSecs_
        ) revert BadConfig();
        token = token_;
        operator = operator_;
        arbiter = arbiter_;
        challengeWindowSecs = challengeWindowSecs_;
        withdrawalDelaySecs = withdrawalDelaySecs_;
    }

    // ----------------------------------------------------------------------------------- payers

    /// Pulls `amount` tokens and credits `payerKey` with what arrived (less than `amount` for a
    /// fee-on-transfer token); `Deposited` names the credited amount. The first depositor becomes
    /// the key's exit owner. Non-reentrant, like every call that moves tokens, so a token's transfer
    /// hook cannot move the balance this measures.
    function deposit(bytes32 payerKey, uint256 amount) external nonReentrant {
        if (amount == 0 || payerKey == bytes32(0)) revert ZeroAmount();
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received == 0) revert ZeroAmount();
        address owner = payerOwner[payerKey];
        if (owner == address(0)) {
            owner = msg.sender;
            payerOwner[payerKey] = owner;
        }
        Account memory account = payers[payerKey];
        uint256 settled = account.settled + received;
        if (settled > type(uint96).max) revert AmountTooLarge(settled);
        account.settled = uint96(settled);
        payers[payerKey] = account;
        emit Deposited(payerKey, msg.sender, owner, received);
    }

    /// Starts (or adds to) a payer exit. The delay (longer than an epoch plus the window) lets the
    /// engine commit every receipt it accepted before it saw this request; adding to a pending
    /// request restarts the delay. Requests add up, as the engine's ledger counts them.
    function requestWithdrawal(bytes32 payerKey, uint256 amount) external {
        _onlyPayerOwner(payerKey);
        if (amount == 0) revert ZeroAmount();
        uint256 total = withdrawalRequests[payerKey].amount + amount;
        if (total > type(uint96).max) revert AmountTooLarge(total);
        uint64 readyAt = uint64(block.timestamp) + withdrawalDelaySecs;
        withdrawalRequests[payerKey] = WithdrawalRequest(uint96(total), readyAt);
        emit WithdrawalRequested(payerKey, msg.sender, amount, readyAt);
    }

    /// Pays out the request, capped at what is left after every debit committed so far (the open
    /// epoch's debit stays reserved until that epoch is final or voided). An unpaid remainder stays
    /// requested, exactly as the engine's ledger keeps it, and can be completed later.
    function completeWithdrawal(bytes32 payerKey) external nonReentrant {
        _onlyPayerOwner(payerKey);
        WithdrawalRequest memory request = withdrawalRequests[payerKey];
        if (request.readyAt == 0) revert NoWithdrawalRequest(payerKey);
        if (block.timestamp < request.readyAt) revert WithdrawalNotReady(request.readyAt);
        Account memory account = _resolve(payers[payerKey], true);
        uint256 spendable = account.settled - account.pending;
        uint256 amount = request.amount < spendable ? request.amount : spendable;
        if (amount == 0) revert NothingToWithdraw();
        account.settled -= uint96(amount);
        payers[payerKey] = account;
        uint96 remaining = request.amount - uint96(amount);
        if (remaining == 0) delete withdrawalRequests[payerKey];
        else withdrawalRequests[payerKey].amount = remaining;
        token.safeTransfer(msg.sender, amount);
        emit WithdrawalCompleted(payerKey, msg.sender, amount, remaining);
    }

    // ----------------------------------------------------------------------------------- payees

    /// Pays the caller every credit from final epochs.
    function withdraw() external nonReentrant {
        Account memory account = _resolve(payees[msg.sender], false);
        uint256 amount = account.settled;
        if (amount == 0) revert NothingToWithdraw();
        account.settled = 0;
        payees[msg.sender] = account;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    // --------------------------------------------------------------------------------- operator

    /// Commits part `part` of `parts` of `epoch`. `credits` are packed `amount << 160 | payee` words
    /// (one calldata word per credit instead of two).
    function commitEpoch(
        uint64 epoch,
        uint16 part,
        uint16 parts,
        bytes32 root,
        Debit[] calldata debits,
        uint256[] calldata credits
    ) external {
        if (msg.sender != operator) revert NotOperator();
        uint64 seq = liveSeq;
        Commit memory commit = commits[seq];
        bool opening = seq == 0 || commit.partsDone == commit.parts;
        {
            (uint64 expectedEpoch, uint16 expectedPart) = opening ? (lastEpoch + 1, 0) : (lastEpoch, commit.partsDone);
            if (epoch != expectedEpoch || part != expectedPart) {
                revert UnexpectedPart(expectedEpoch, expectedPart, epoch, part);
            }
        }
        if (opening) {
            if (parts == 0) revert BadParts(parts);
            if (seq != 0) {
                uint64 finalAt = commit.completedAt + challengeWindowSecs;
                if (block.timestamp < finalAt) revert PreviousEpochNotFinal(commit.epoch, finalAt);
            }
            commit = Commit(epoch, 0, seq, parts, 0, false);
            seq = seqCount + 1;
            seqCount = seq;
            liveSeq = seq;
            lastEpoch = epoch;
            roots[epoch] = root;
        } else {
            if (parts != commit.parts) revert BadParts(parts);
            bytes32 expectedRoot = roots[epoch];
            if (root != expectedRoot) revert RootMismatch(expectedRoot, root);
        }

        uint256 debitTotal;
        for (uint256 i; i < debits.length; ++i) {
            bytes32 payerKey = debits[i].payerKey;
            uint256 amount = debits[i].amount;
            Account memory account = _roll(payers[payerKey], seq, commit.prevLive, true);
            uint256 pending = account.pending + amount;
            if (pending > account.settled) revert Overdraft(payerKey, account.settled - account.pending, amount);
            account.pending = uint96(pending);
            payers[payerKey] = account;
            debitTotal += amount;
        }

        uint256 creditTotal;
        for (uint256 i; i < credits.length; ++i) {
            uint256 word = credits[i];
            address payee = address(uint160(word));
            uint256 amount = word >> 160;
            if (payee == address(0)) revert ZeroPayee();
            Account memory account = _roll(payees[payee], seq, commit.prevLive, false);
            uint256 pending = account.pending + amount;
            // Checked against what the slot will hold once folded, not `pending` alone: a sum past
            // 96 bits would make that fold, and so `withdraw()` and every later commit touching
            // this payee, revert for good.
            uint256 total = uint256(account.settled) + pending;
            if (total > type(uint96).max) revert AmountTooLarge(total);
            account.pending = uint96(pending);
            payees[payee] = account;
            creditTotal += amount;
        }

        int256 imbalance = openImbalance + int256(debitTotal) - int256(creditTotal);
        commit.partsDone += 1;
        bool complete = commit.partsDone == commit.parts;
        if (complete) {
            if (imbalance != 0) revert Unbalanced(epoch, imbalance);
            commit.completedAt = uint64(block.timestamp);
        }
        if (openImbalance != (complete ? int256(0) : imbalance)) openImbalance = complete ? int256(0) : imbalance;
        commits[seq] = commit;
        emit EpochCommitted(epoch, part, parts, root, seq, debitTotal, creditTotal, complete);
    }

    // ---------------------------------------------------------------------------------- arbiter

    /// Voids the open epoch while it is still incomplete or inside its challenge window. Its debits
    /// and credits are discarded lazily and its root is deleted; the number stays used, and the
    /// operator commits the corrected amounts in the next epoch.
    function dispute(uint64 epoch) external {
        if (msg.sender != arbiter) revert NotArbiter();
        uint64 seq = liveSeq;
        Commit memory commit = commits[seq];
        if (seq == 0 || commit.epoch != epoch || _isFinal(commit)) revert NotDisputable(epoch);
        commits[seq].voided = true;
        voidedSeqs[seq >> 8] |= uint256(1) << (seq & 0xff);
        liveSeq = commit.prevLive;
        delete roots[epoch];
        openImbalance = 0;
        emit Disputed(epoch, seq, msg.sender);
    }

    // ------------------------------------------------------------------------------------ views

    /// True when `epoch` is final (see `isFinal`) and `proof` shows `(epoch, payer, payee,
    /// cumulative)` is a leaf of its root; false for an epoch still arriving in parts, still inside
    /// its challenge window, voided, or never committed. Leaves follow OpenZeppelin's
    /// StandardMerkleTree: double keccak of the ABI encoding.
    function verifyLeaf(uint64 epoch, bytes32 payer, address payee, uint256 cumulative, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        if (!isFinal(epoch)) return false;
        bytes32 root = roots[epoch];
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(epoch, payer, payee, cumulative))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// True when `epoch` was committed in full, was not voided and its challenge window has passed:
    /// nothing can undo it any more. Only the latest live epoch can be pending; every older epoch
    /// with a root became final before its successor could open.
    function isFinal(uint64 epoch) public view returns (bool) {
        if (roots[epoch] == bytes32(0)) return false;
        Commit memory live = commits[liveSeq];
        return live.epoch != epoch || _isFinal(live);
    }

    /// What a payer could still be debited: deposit minus final and open debits.
    function available(bytes32 payerKey) external view returns (uint256) {
        Account memory account = _resolve(payers[payerKey], true);
        return account.settled - account.pending;
    }

    /// What a payee could withdraw now.
    function withdrawable(address payee) external view returns (uint256) {
        return _resolve(payees[payee], false).settled;
    }

    // --------------------------------------------------------------------------------- internal

    function _onlyPayerOwner(bytes32 payerKey) private view {
        address owner = payerOwner[payerKey];
        if (owner != msg.sender) revert NotPayerOwner(payerKey, owner);
    }

    function _isVoided(uint64 seq) private view returns (bool) {
        return (voidedSeqs[seq >> 8] >> (seq & 0xff)) & 1 == 1;
    }

    /// Moves an account onto commit `seq`. Only called while committing, when every older commit
    /// is either final or voided (one epoch open at a time), so no finality check is needed. The
    /// commit before `seq` (`prevLive`) cannot have been voided, which spares the bitmap lookup for
    /// accounts touched every epoch.
    function _roll(Account memory account, uint64 seq, uint64 prevLive, bool isPayer)
        private
        view
        returns (Account memory)
    {
        if (account.stamp == seq) return account;
        if (account.pending != 0 && (account.stamp == prevLive || !_isVoided(account.stamp))) {
            account.settled = _fold(account, isPayer);
        }
        account.pending = 0;
        account.stamp = seq;
        return account;
    }

    /// Folds the pending amount in if its commit is final, drops it if voided, keeps it otherwise.
    function _resolve(Account memory account, bool isPayer) private view returns (Account memory) {
        if (account.pending == 0) return account;
        Commit memory commit = commits[account.stamp];
        if (commit.voided) {
            account.pending = 0;
        } else if (_isFinal(commit)) {
            account.settled = _fold(account, isPayer);
            account.pending = 0;
        }
        return account;
    }

    /// Complete and past its challenge window (the caller checks `voided` where it matters).
    function _isFinal(Commit memory commit) private view returns (bool) {
        return commit.partsDone == commit.parts && block.timestamp >= commit.completedAt + challengeWindowSecs;
    }

    function _fold(Account memory account, bool isPayer) private pure returns (uint96) {
        if (isPayer) return account.settled - account.pending;
        uint256 settled = uint256(account.settled) + account.pending;
        if (settled > type(uint96).max) revert AmountTooLarge(settled);
        return uint96(settled);
    }
}
