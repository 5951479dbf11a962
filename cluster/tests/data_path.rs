//! The cluster data path against a real 3-server NATS JetStream cluster on loopback: two nodes,
//! each an ingest node (verify, split, publish, ask) and the owner of half the partitions
//! (consume in log order, apply to the partition's RocksDB ledger), and a fleet that sends
//! through both. Every ack is checked against a model of the ledger's rules, every payer's total
//! against what the acks accepted, and re-sends (through the other node, after a restart) get
//! the original ack and charge nothing twice. Also: an owner refuses a mis-split part, an
//! ingest node refuses an answer that does not fit its part, and a node owns its partitions
//! again after the whole NATS cluster was down.

mod harness;

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::PublishMessage;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use ed25519_dalek::SigningKey;
use futures::{StreamExt, TryStreamExt};
use harness::{NatsCluster, trace, within};
use tollgate_cluster::{
    Answer, AnswerProblem, Ask, BatchId, Cluster, ClusterConfig, Epochs, FundsClient, FundsError,
    FundsLog, FundsLogError, Mark, Node, NodeLedgers, Part, PublishError, Publisher, Shortfall,
    Summary, Verdicts, ask_subject, partition_of, subject_of, subjects,
};
use tollgate_engine::ledger::{FundsEvent, FundsKind, HeadWithdrawals};
use tollgate_engine::pipeline::{
    BatchAck, BatchOutcome, EngineConfig, SubmitRequest, UnknownPayers,
};
use tollgate_engine::{
    Address, Domain, PayerKey, Reason, Receipt, ReceiptBatch, UnsignedReceipt, Verifier,
    VerifyConfig, VerifyPool,
};

const DOMAIN: Domain = Domain {
    chain_id: 31_337,
    contract: Address([0xc0; 20]),
};
const PARTITIONS: u32 = 16;
const PAYERS: u32 = 200;
const BATCHES: u64 = 40;
const BATCH_RECEIPTS: usize = 100;
/// Batches in flight at once over both nodes.
const CONCURRENT_BATCHES: usize = 8;
/// Bound for anything that must happen eventually (elections, lease expiry, catch-up).
const DEADLINE: Duration = Duration::from_secs(60);

fn config(nats: &NatsCluster, node: &str) -> ClusterConfig {
    ClusterConfig {
        servers: nats.urls(),
        node_id: node.to_string(),
        partitions: PARTITIONS,
        // Short leases: the restart below waits one TTL for the old lease to expire.
        lease_ttl_ms: 1_500,
        lease_heartbeat_ms: 300,
        ..ClusterConfig::default()
    }
}

fn verifier() -> Arc<VerifyPool> {
    let config = VerifyConfig {
        threads: 1,
        ..VerifyConfig::default()
    };
    Arc::new(VerifyPool::new(Verifier::new(DOMAIN, config.clone()), config).expect("verify pool"))
}

/// Chainless ledgers: unknown payers are accepted.
fn ledgers(dir: &Path, verifier: &Arc<VerifyPool>) -> NodeLedgers {
    ledgers_with(dir, verifier, UnknownPayers::Accept)
}

fn ledgers_with(dir: &Path, verifier: &Arc<VerifyPool>, policy: UnknownPayers) -> NodeLedgers {
    let mut engine = EngineConfig::new(dir);
    engine.ledger.unknown_payers = policy;
    NodeLedgers {
        data_dir: dir.to_path_buf(),
        engine,
        verifier: verifier.clone(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn payer_key(n: u32) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn payer_of(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

fn receipt(key: &SigningKey, amount: u64, nonce: u64) -> Receipt {
    UnsignedReceipt {
        payer: payer_of(key),
        payee: Address([0xee; 20]),
        amount,
        nonce,
        timestamp_ms: now_ms(),
        request_hash: [3; 32],
        session: false,
    }
    .sign(key, &DOMAIN)
}

fn request(producer_id: u64, batch_seq: u64, receipts: &[Receipt]) -> SubmitRequest {
    SubmitRequest {
        client_id: 1,
        producer_id,
        session_epoch: 1,
        batch_seq,
        receipts: ReceiptBatch::from_receipts(receipts),
        prejudged: Vec::new(),
    }
}

/// A fleet batch and the ack the ledger's rules give it: receipt 0 signed for another amount
/// (bad signature), the last a copy of receipt 1 (a duplicate inside the batch), the rest fresh
/// nonces of payers spread over every partition; `charged` is what each payer pays for it.
struct FleetBatch {
    request: SubmitRequest,
    expected: BatchAck,
    charged: Vec<(PayerKey, u128)>,
}

fn fleet_batch(keys: &[SigningKey], batch: u64, nonces: &mut [u64]) -> FleetBatch {
    let mut receipts = Vec::with_capacity(BATCH_RECEIPTS);
    let mut charged = Vec::new();
    for i in 0..BATCH_RECEIPTS - 1 {
        let payer = (batch as usize * BATCH_RECEIPTS + i * 7) % keys.len();
        nonces[payer] += 1;
        let amount = 1 + (batch + i as u64) % 50;
        let mut signed = receipt(&keys[payer], amount, nonces[payer]);
        if i == 0 {
            signed.amount += 1;
        } else {
            charged.push((payer_of(&keys[payer]), u128::from(amount)));
        }
        receipts.push(signed);
    }
    receipts.push(receipts[1]);
    let last = u32::try_from(BATCH_RECEIPTS - 1).expect("fits");
    FleetBatch {
        request: request(1 + batch % 2, batch, &receipts),
        expected: BatchAck {
            batch_seq: batch,
            accepted: last - 1,
            rejections: vec![(0, Reason::BadSignature), (last, Reason::Duplicate)],
        },
        charged,
    }
}

/// Every payer's pending total, read from the ledger of its partition's owner.
fn totals(nodes: &[&Node], payers: &[PayerKey]) -> HashMap<PayerKey, u128> {
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");
    let owned: HashMap<u32, _> = nodes.iter().flat_map(|node| node.owned()).collect();
    payers
        .iter()
        .map(|payer| {
            let reader = &owned[&partition_of(payer, partitions)];
            let pending = reader
                .payer(payer)
                .expect("read")
                .map_or(0, |balance| balance.pending);
            (*payer, pending)
        })
        .collect()
}

/// A NATS cluster and one node owning every partition, with its ledgers' directory, verifier
/// and cluster handle.
async fn one_node() -> (
    NatsCluster,
    tempfile::TempDir,
    Arc<VerifyPool>,
    Cluster,
    Node,
) {
    let nats = within("start NATS", NatsCluster::start()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let verifier = verifier();
    let cluster = within("connect node a", Cluster::start(config(&nats, "a")))
        .await
        .expect("node a");
    let node = Node::start(&cluster, ledgers(dir.path(), &verifier), 0..PARTITIONS);
    until_owned(&[&node], PARTITIONS as usize).await;
    (nats, dir, verifier, cluster, node)
}

async fn until_owned(nodes: &[&Node], partitions: usize) {
    let deadline = Instant::now() + DEADLINE;
    while nodes.iter().map(|node| node.owned().len()).sum::<usize>() < partitions {
        assert!(Instant::now() < deadline, "partitions not all owned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_through_two_nodes_are_counted_exactly_once_and_resends_get_the_original_ack() {
    trace();
    let started = Instant::now();
    let nats = within("start NATS", NatsCluster::start()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let verifier = verifier();
    let (a, b) = tokio::join!(
        Cluster::start(config(&nats, "a")),
        Cluster::start(config(&nats, "b"))
    );
    let (a, b) = (a.expect("node a"), b.expect("node b"));
    let node_a = Node::start(
        &a,
        ledgers(&dir.path().join("a"), &verifier),
        0..PARTITIONS / 2,
    );
    let node_b = Node::start(
        &b,
        ledgers(&dir.path().join("b"), &verifier),
        PARTITIONS / 2..PARTITIONS,
    );
    until_owned(&[&node_a, &node_b], PARTITIONS as usize).await;
    let timeout = Duration::from_secs(30);
    let publishers = [
        Publisher::new(&a, verifier.clone(), timeout),
        Publisher::new(&b, verifier.clone(), timeout),
    ];

    // (a) The fleet: batches alternate between the nodes, several in flight at once.
    let keys: Vec<SigningKey> = (0..PAYERS).map(payer_key).collect();
    let payers: Vec<PayerKey> = keys.iter().map(payer_of).collect();
    let mut nonces = vec![0u64; keys.len()];
    let batches: Vec<FleetBatch> = (0..BATCHES)
        .map(|batch| fleet_batch(&keys, batch, &mut nonces))
        .collect();
    let mut expected_totals: HashMap<PayerKey, u128> = HashMap::new();
    for batch in &batches {
        for (payer, amount) in &batch.charged {
            *expected_totals.entry(*payer).or_default() += amount;
        }
    }
    let sending = Instant::now();
    for chunk in batches.chunks(CONCURRENT_BATCHES) {
        let sent = futures::future::join_all(chunk.iter().map(|batch| {
            let publisher = &publishers[(batch.request.batch_seq % 2) as usize];
            publisher.submit(batch.request.clone())
        }));
        let acks = within("send a chunk of batches", sent).await;
        for (batch, ack) in chunk.iter().zip(acks) {
            assert_eq!(
                ack.expect("acked"),
                batch.expected,
                "batch {}",
                batch.request.batch_seq
            );
        }
    }
    let receipts = BATCHES as usize * BATCH_RECEIPTS;
    let sent_in = sending.elapsed();
    let counted = totals(&[&node_a, &node_b], &payers);
    let wrong: Vec<_> = payers
        .iter()
        .filter(|payer| counted[*payer] != expected_totals.get(*payer).copied().unwrap_or(0))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} payers' totals differ from their acks",
        wrong.len()
    );
    let touched: std::collections::BTreeSet<u32> = payers
        .iter()
        .map(|payer| partition_of(payer, NonZeroU32::new(PARTITIONS).expect("non-zero")))
        .collect();
    assert_eq!(
        touched.len(),
        PARTITIONS as usize,
        "the fleet reaches every partition"
    );
    println!(
        "{receipts} receipts in {BATCHES} batches from {PAYERS} payers through 2 nodes in \
         {sent_in:?}: every ack as the model says, lost 0 / double 0 over {} payers",
        payers.len()
    );

    // (b) The fleet lost its connection to node b before an ack: it re-sends through node a.
    // The log deduplicates the re-published parts; node a asks their owners and gets the
    // original verdicts, and nothing is charged twice.
    for batch in batches
        .iter()
        .filter(|batch| batch.request.batch_seq % 2 == 1)
        .take(3)
    {
        acked_as_expected(&publishers[0], batch, "re-send").await;
    }
    // A batch whose ack the fleet never got from node a: cut short once node a published every
    // part (read back from the log), finished through node b.
    let mut fresh_nonces = nonces.clone();
    let interrupted = fleet_batch(&keys, BATCHES, &mut fresh_nonces);
    let first_try = tokio::spawn({
        let publisher = publishers[0].clone();
        let request = interrupted.request.clone();
        async move { within("submit", publisher.submit(request)).await }
    });
    until_published(&a, &interrupted).await;
    first_try.abort();
    let finished = publishers[1]
        .submit(interrupted.request.clone())
        .await
        .expect("acked");
    assert_eq!(finished, interrupted.expected);
    for (payer, amount) in &interrupted.charged {
        *expected_totals.entry(*payer).or_default() += amount;
    }
    // Other receipts under a number already used are refused, whichever node they reach, in a
    // partition the original batch reached (receipt 1's payer's; each partition's ledger knows
    // only its own parts).
    let mut other = interrupted.request.clone();
    let reused_payer = (BATCHES as usize * BATCH_RECEIPTS + 7) % keys.len();
    other.receipts = ReceiptBatch::from_receipts(&[receipt(&keys[reused_payer], 1, 1_000_000)]);
    match within("submit", publishers[0].submit(other)).await {
        Err(PublishError::BatchMismatch { batch_seq, .. }) => assert_eq!(batch_seq, BATCHES),
        other => panic!("expected a batch mismatch, got {other:?}"),
    }
    assert_eq!(
        totals(&[&node_a, &node_b], &payers),
        expected_with_zeros(&payers, &expected_totals)
    );

    // A restarted node resumes each partition right after the position its ledger holds (its
    // new log consumers start there, not at the log's start with duplicates skipped): the
    // re-sends still get their original acks, nothing is applied twice, new work goes on.
    let positions: Vec<(u32, u64)> = node_a
        .owned()
        .iter()
        .map(|(partition, reader)| {
            let position = reader.log_position().expect("read").expect("applied parts");
            (*partition, position)
        })
        .collect();
    assert_eq!(positions.len(), PARTITIONS as usize / 2);
    within("stop node_a", node_a.stop())
        .await
        .expect("node a stops cleanly");
    let restarted = SystemTime::now();
    let node_a = Node::start(
        &a,
        ledgers(&dir.path().join("a"), &verifier),
        0..PARTITIONS / 2,
    );
    until_owned(&[&node_a, &node_b], PARTITIONS as usize).await;
    for (partition, position) in positions {
        assert_eq!(
            consumer_start(&a, partition, restarted).await,
            position + 1,
            "partition {partition} resumes after its stored position {position}"
        );
    }
    for batch in batches.iter().take(4) {
        acked_as_expected(&publishers[1], batch, "re-send after restart").await;
    }
    let next = fleet_batch(&keys, BATCHES + 1, &mut fresh_nonces);
    assert_eq!(
        publishers[0]
            .submit(next.request.clone())
            .await
            .expect("acked"),
        next.expected
    );
    for (payer, amount) in &next.charged {
        *expected_totals.entry(*payer).or_default() += amount;
    }
    assert_eq!(
        totals(&[&node_a, &node_b], &payers),
        expected_with_zeros(&payers, &expected_totals)
    );
    println!("re-sends through the other node and after a restart: original acks, double 0");

    within("stop node_a", node_a.stop())
        .await
        .expect("node a stops");
    within("stop node_b", node_b.stop())
        .await
        .expect("node b stops");
    println!("data path test took {:?}", started.elapsed());
}

/// Sends `batch` through `publisher`: it must get the ack the model says (the original one,
/// for a re-send).
async fn acked_as_expected(publisher: &Publisher, batch: &FleetBatch, what: &str) {
    let step = format!("{what} of batch {}", batch.request.batch_seq);
    let again = within(&step, publisher.submit(batch.request.clone()))
        .await
        .expect("acked");
    assert_eq!(
        again, batch.expected,
        "{what} of batch {}",
        batch.request.batch_seq
    );
}

/// Waits until the log holds every part of `batch`: each partition it reaches has, as its
/// latest message, the part with the batch's message id.
async fn until_published(cluster: &Cluster, batch: &FleetBatch) {
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");
    let reached: BTreeSet<u32> = batch
        .charged
        .iter()
        .map(|(payer, _)| partition_of(payer, partitions))
        .collect();
    let id = BatchId {
        client_id: batch.request.client_id,
        producer_id: batch.request.producer_id,
        session_epoch: batch.request.session_epoch,
        batch_seq: batch.request.batch_seq,
    };
    let deadline = Instant::now() + DEADLINE;
    for partition in reached {
        loop {
            let latest = within(
                "read the log's latest message",
                cluster
                    .stream()
                    .get_last_raw_message_by_subject(&subject_of(partition)),
            )
            .await;
            let message_id = latest.ok().and_then(|message| {
                let id = message.headers.get("Nats-Msg-Id")?;
                Some(id.as_str().to_string())
            });
            if message_id.as_deref() == Some(id.message_id(partition).as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "part of partition {partition} never published"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The start sequence of the newest log consumer of `partition` created after `since`.
async fn consumer_start(cluster: &Cluster, partition: u32, since: SystemTime) -> u64 {
    let stream = cluster.stream().clone();
    let consumers: Vec<_> = within("list the log's consumers", stream.consumers().try_collect())
        .await
        .expect("list the log's consumers");
    let newest = consumers
        .into_iter()
        .filter(|info| info.config.filter_subject == subject_of(partition))
        .filter(|info| SystemTime::from(info.created) >= since)
        .max_by_key(|info| info.created)
        .unwrap_or_else(|| panic!("no consumer of partition {partition} since the restart"));
    match newest.config.deliver_policy {
        DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        other => panic!("partition {partition}'s consumer delivers {other:?}"),
    }
}

fn expected_with_zeros(
    payers: &[PayerKey],
    expected: &HashMap<PayerKey, u128>,
) -> HashMap<PayerKey, u128> {
    payers
        .iter()
        .map(|payer| (*payer, expected.get(payer).copied().unwrap_or(0)))
        .collect()
}

/// A part's answer stays the same however many later parts the producer sends to its
/// partition and whether it moved on to a new session: the ledger keeps only the newest
/// `acks_kept_per_producer` (64) acks of a producer and drops them all with a new session, so an
/// answer read from those would leave a charged part never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_part_keeps_its_ack_after_many_later_parts_and_a_new_session() {
    trace();
    const LATER_PARTS: u64 = 70;
    let (_nats, _dir, verifier, cluster, node) = one_node().await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));

    // One payer: every part lands in the same partition.
    let key = payer_key(1);
    let first = request(9, 0, &[receipt(&key, 5, 1)]);
    let first_ack = within("submit", publisher.submit(first.clone()))
        .await
        .expect("acked");
    assert_eq!(first_ack.accepted, 1);
    for batch_seq in 1..=LATER_PARTS {
        let later = request(9, batch_seq, &[receipt(&key, 1, 1 + batch_seq)]);
        within("submit", publisher.submit(later))
            .await
            .expect("acked");
    }
    let again = within("submit", publisher.submit(first.clone())).await;
    assert_eq!(
        again.as_ref().ok(),
        Some(&first_ack),
        "re-send after {LATER_PARTS} later parts: {again:?}"
    );

    let mut next_session = request(9, 0, &[receipt(&key, 1, 1_000)]);
    next_session.session_epoch = 2;
    within("submit", publisher.submit(next_session))
        .await
        .expect("acked");
    let again = within("submit", publisher.submit(first)).await;
    assert_eq!(
        again.as_ref().ok(),
        Some(&first_ack),
        "re-send after a new session: {again:?}"
    );
    let payer = payer_of(&key);
    assert_eq!(
        totals(&[&node], &[payer])[&payer],
        5 + u128::from(LATER_PARTS) + 1,
        "nothing charged twice"
    );
    within("stop node", node.stop()).await.expect("node stops");
}

/// A payer's funds come from its partition's owner, asked from the cluster: none for a payer it
/// never saw, everything acked as soon as the ack is in, and `NoOwner` once nobody owns the
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funds_come_from_the_partition_owner_with_every_ack_in_them() {
    trace();
    let (_nats, _dir, verifier, cluster, node) = one_node().await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let funds = FundsClient::new(&cluster);
    let key = payer_key(3);
    let payer = payer_of(&key);
    assert_eq!(
        within("ask for funds", funds.funds(payer))
            .await
            .expect("answered"),
        None
    );
    let batch = request(4, 0, &[receipt(&key, 7, 1), receipt(&key, 5, 2)]);
    assert_eq!(
        within("submit", publisher.submit(batch))
            .await
            .expect("acked")
            .accepted,
        2
    );
    let known = funds
        .funds(payer)
        .await
        .expect("answered")
        .expect("a known payer");
    assert_eq!((known.pending, known.receipts, known.channels), (12, 2, 1));
    within("stop node", node.stop()).await.expect("node stops");
    // The owner's unsubscription reaches the server shortly after it stops: until then a query
    // may go unanswered.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match within("ask for funds", funds.funds(payer)).await {
            Err(FundsError::NoOwner { .. }) => break,
            Err(FundsError::Timeout { .. }) if Instant::now() < deadline => {}
            other => panic!("with no owner: {other:?}"),
        }
    }

    // A new owner with an empty ledger replays the log: asked the moment it owns the
    // partitions, it answers with every ack in it (it applies through the log's tail first), or
    // says it is catching up; never a balance short of what was acked.
    let fresh = tempfile::tempdir().expect("temp dir");
    let next = Node::start(&cluster, ledgers(fresh.path(), &verifier), 0..PARTITIONS);
    until_owned(&[&next], PARTITIONS as usize).await;
    loop {
        match within("ask for funds", funds.funds(payer)).await {
            Ok(Some(known)) => {
                assert_eq!((known.pending, known.receipts), (12, 2));
                break;
            }
            Err(FundsError::CatchingUp { .. }) if Instant::now() < deadline => {}
            other => panic!("from the new owner: {other:?}"),
        }
    }
    within("stop next", next.stop()).await.expect("node stops");
}

/// The funds watcher's news reaches the owners' funds checks through the logs, in log order
/// with the parts and each event once: a payer is unknown until its deposit is in its
/// partition's log, spends up to it, is refused what an unconfirmed withdrawal request takes
/// (until the set that replaces it), and a deposit published again (within the log's
/// duplicate window, and past it without a message id) counts once; a new owner replaying the
/// log finds the same. The watcher's progress record round-trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funds_news_reaches_the_funds_check_in_log_order_and_once() {
    trace();
    let nats = within("start NATS", NatsCluster::start()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let verifier = verifier();
    let cluster = within("connect node a", Cluster::start(config(&nats, "a")))
        .await
        .expect("node a");
    let ledgers = |dir: &Path| ledgers_with(dir, &verifier, UnknownPayers::Reject);
    let node = Node::start(&cluster, ledgers(dir.path()), 0..PARTITIONS);
    until_owned(&[&node], PARTITIONS as usize).await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let funds = FundsClient::new(&cluster);
    let log = FundsLog::new(&cluster);

    assert_eq!(log.next_block().await.expect("read"), None);
    log.record_next_block(12).await.expect("recorded");
    assert_eq!(log.next_block().await.expect("read"), Some(12));

    let key = payer_key(3);
    let payer = payer_of(&key);
    let mut batch_seq = 0;
    let mut spend = async |amount: u64, nonce: u64| {
        batch_seq += 1;
        let sent = publisher.submit(request(4, batch_seq, &[receipt(&key, amount, nonce)]));
        let ack = within("spend", sent).await.expect("acked");
        ack.rejections.first().map(|(_, reason)| *reason)
    };
    assert_eq!(spend(7, 1).await, Some(Reason::UnknownPayer));

    let deposit = Mark::Funds(FundsEvent {
        payer,
        kind: FundsKind::Deposit,
        amount: 10,
        block: 2,
        log_index: 0,
    });
    log.publish(std::slice::from_ref(&deposit))
        .await
        .expect("published");
    assert_eq!(spend(7, 1).await, None);
    assert_eq!(spend(5, 2).await, Some(Reason::InsufficientFunds));
    // Again by the watcher (stored once by its id), and as if past the duplicate window.
    log.publish(std::slice::from_ref(&deposit))
        .await
        .expect("published again");
    let partition = partition_of(&payer, NonZeroU32::new(PARTITIONS).expect("non-zero"));
    cluster
        .jetstream()
        .publish(subject_of(partition), deposit.encode())
        .await
        .expect("sent")
        .await
        .expect("stored without an id");
    assert_eq!(spend(5, 2).await, Some(Reason::InsufficientFunds));

    let mut heads = log.unknown_head_sets();
    let requested = HeadWithdrawals([(payer, 3)].into());
    log.publish_head(&requested, &mut heads)
        .await
        .expect("published");
    assert_eq!(spend(1, 3).await, Some(Reason::InsufficientFunds));
    log.publish_head(&HeadWithdrawals::default(), &mut heads)
        .await
        .expect("published");
    assert_eq!(spend(3, 3).await, None);
    match log.publish(&[Mark::Seal(1)]).await {
        Err(FundsLogError::NotNews { .. }) => {}
        other => panic!("a seal mark from the watcher: {other:?}"),
    }
    // A second deposit, and a request at the head that takes 4 of it; a funds mark for
    // another partition's payer, in this partition's log, moves nothing here (nor this
    // partition's funds cursor).
    let Mark::Funds(first) = deposit else {
        unreachable!("built as a funds mark")
    };
    let second = Mark::Funds(FundsEvent {
        amount: 20,
        block: 3,
        ..first
    });
    log.publish(&[second]).await.expect("published");
    log.publish_head(&HeadWithdrawals([(payer, 4)].into()), &mut heads)
        .await
        .expect("published");
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");
    let elsewhere = (0..)
        .map(|n| payer_of(&payer_key(n)))
        .find(|other| partition_of(other, partitions) != partition)
        .expect("a payer of another partition");
    let misrouted = Mark::Funds(FundsEvent {
        payer: elsewhere,
        kind: FundsKind::Deposit,
        amount: 1_000,
        block: 99,
        log_index: 0,
    });
    cluster
        .jetstream()
        .publish(subject_of(partition), misrouted.encode())
        .await
        .expect("sent")
        .await
        .expect("stored");
    let expected = (30, 10, 16);
    let known = within("ask for funds", funds.funds(payer))
        .await
        .expect("answered")
        .expect("known");
    assert_eq!((known.deposited, known.pending, known.available), expected);
    // Still takes its own events after the stray one: the cursor did not move to block 99.
    let third = Mark::Funds(FundsEvent {
        amount: 5,
        block: 50,
        ..first
    });
    log.publish(&[third]).await.expect("published");
    let expected = (35, 10, 21);
    let known = within("ask for funds", funds.funds(payer))
        .await
        .expect("answered")
        .expect("known");
    assert_eq!((known.deposited, known.pending, known.available), expected);
    within("stop node", node.stop()).await.expect("node stops");

    let fresh = tempfile::tempdir().expect("temp dir");
    let next = Node::start(&cluster, ledgers(fresh.path()), 0..PARTITIONS);
    until_owned(&[&next], PARTITIONS as usize).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match within("ask for funds", funds.funds(payer)).await {
            Ok(Some(known)) => {
                assert_eq!((known.deposited, known.pending, known.available), expected);
                break;
            }
            Err(FundsError::CatchingUp { .. } | FundsError::NoOwner { .. })
                if Instant::now() < deadline => {}
            other => panic!("from the new owner: {other:?}"),
        }
    }
    within("stop next", next.stop()).await.expect("node stops");
}

/// A part the ingest node split wrongly (a receipt whose payer lives in another partition) is
/// refused whole by the owner: nothing of it is charged in either partition's ledger, its ask
/// is answered `Refused`, and the owner goes on applying the parts after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_refuses_a_mis_split_part_and_charges_nothing_of_it() {
    trace();
    let (_nats, _dir, verifier, cluster, node) = one_node().await;
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");

    // Two payers of different partitions, both in a part published to the first's subject.
    let home_key = payer_key(1);
    let home = partition_of(&payer_of(&home_key), partitions);
    let stranger_key = (2..)
        .map(payer_key)
        .find(|key| partition_of(&payer_of(key), partitions) != home)
        .expect("a payer of another partition");
    let stranger = partition_of(&payer_of(&stranger_key), partitions);
    let receipts = [receipt(&home_key, 5, 1), receipt(&stranger_key, 7, 1)];
    let part = Part {
        partition: home,
        batch: BatchId {
            client_id: 1,
            producer_id: 3,
            session_epoch: 1,
            batch_seq: 0,
        },
        published_ms: now_ms(),
        receipts: ReceiptBatch::from_receipts(&receipts),
    };
    let client = cluster.jetstream().client();
    let seq = cluster
        .jetstream()
        .send_publish(
            subject_of(home),
            PublishMessage::build()
                .message_id(part.batch.message_id(home))
                .payload(part.encode()),
        )
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence;
    let ask = Ask {
        seq,
        digest: tollgate_engine::ledger::record::batch_digest(&part.receipts),
    };
    let reply = client
        .request(ask_subject(home), ask.encode())
        .await
        .expect("the owner answers");
    assert_eq!(
        Answer::decode(&reply.payload).expect("an answer"),
        Answer {
            seq,
            verdicts: Verdicts::Refused
        }
    );

    // The owner goes on: the same payers' receipts, split right, are charged once each.
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let ack = publisher
        .submit(request(
            3,
            1,
            &[receipt(&home_key, 11, 2), receipt(&stranger_key, 13, 2)],
        ))
        .await
        .expect("acked");
    assert_eq!(ack.accepted, 2);
    let owned = node.owned();
    for (partition, key, total) in [(home, &home_key, 11), (stranger, &stranger_key, 13)] {
        let pending = |partition: u32| {
            owned[&partition]
                .payer(&payer_of(key))
                .expect("read")
                .map_or(0, |balance| balance.pending)
        };
        assert_eq!(
            pending(partition),
            total,
            "charged once in its own partition"
        );
    }
    assert_eq!(
        owned[&home].payer(&payer_of(&stranger_key)).expect("read"),
        None,
        "the stranger is not charged in the mis-split part's partition"
    );
    within("stop node", node.stop()).await.expect("node stops");
}

/// An ingest node checks the owner's answer against its question and its part: an answer for
/// another log sequence, another batch number, a count or a rejection index that does not fit
/// the part, or a refusal, is a typed error and acks nothing. The "owner" here is the test,
/// answering on the partition's ask subject (no node owns anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_node_refuses_an_answer_that_does_not_fit_its_part() {
    trace();
    let nats = within("start NATS", NatsCluster::start()).await;
    let verifier = verifier();
    let cluster = within("connect node a", Cluster::start(config(&nats, "a")))
        .await
        .expect("node a");
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(10));
    let key = payer_key(1);
    let partition = partition_of(
        &payer_of(&key),
        NonZeroU32::new(PARTITIONS).expect("non-zero"),
    );
    let mut asks = cluster
        .jetstream()
        .client()
        .subscribe(ask_subject(partition))
        .await
        .expect("subscribe");
    let client = cluster.jetstream().client();

    type Twist = fn(u64, u64) -> Answer;
    let cases: [(Twist, &str); 6] = [
        (
            |seq, batch| Answer {
                seq: seq + 1,
                verdicts: Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                    batch_seq: batch,
                    accepted: 2,
                    rejections: Vec::new(),
                })),
            },
            "sequence",
        ),
        (
            |seq, batch| Answer {
                seq,
                verdicts: Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                    batch_seq: batch + 1,
                    accepted: 2,
                    rejections: Vec::new(),
                })),
            },
            "batch",
        ),
        (
            |seq, batch| Answer {
                seq,
                verdicts: Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                    batch_seq: batch,
                    accepted: 3,
                    rejections: Vec::new(),
                })),
            },
            "count",
        ),
        (
            |seq, batch| Answer {
                seq,
                verdicts: Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                    batch_seq: batch,
                    accepted: 1,
                    rejections: vec![(2, Reason::Duplicate)],
                })),
            },
            "index",
        ),
        (
            |seq, batch| Answer {
                seq,
                verdicts: Verdicts::Ledger(BatchOutcome::Acked(BatchAck {
                    batch_seq: batch,
                    accepted: 0,
                    rejections: vec![(1, Reason::Duplicate), (1, Reason::Stale)],
                })),
            },
            "index twice",
        ),
        (
            |seq, _| Answer {
                seq,
                verdicts: Verdicts::Refused,
            },
            "refused",
        ),
    ];
    for (batch_seq, (twist, case)) in (0u64..).zip(cases) {
        let nonce = 10 * (batch_seq + 1);
        let batch = request(
            5,
            batch_seq,
            &[receipt(&key, 1, nonce), receipt(&key, 2, nonce + 1)],
        );
        let submitted = tokio::spawn({
            let publisher = publisher.clone();
            async move { within("submit", publisher.submit(batch)).await }
        });
        let message = asks.next().await.expect("an ask");
        let ask = Ask::decode(&message.payload).expect("an ask");
        client
            .publish(
                message.reply.expect("a reply subject"),
                twist(ask.seq, batch_seq).encode(),
            )
            .await
            .expect("answer");
        let error = submitted.await.expect("joined").expect_err(case);
        let seq = ask.seq;
        match (case, error) {
            (
                "refused",
                PublishError::PartRefused {
                    partition: p,
                    seq: s,
                },
            ) => {
                assert_eq!((p, s), (partition, seq));
            }
            (
                _,
                PublishError::BadAnswer {
                    partition: p,
                    seq: s,
                    problem,
                },
            ) => {
                assert_eq!((p, s), (partition, seq), "{case}");
                let fits = match problem {
                    AnswerProblem::Sequence { answered } => {
                        case == "sequence" && answered == seq + 1
                    }
                    AnswerProblem::BatchSeq { answered } => {
                        case == "batch" && answered == batch_seq + 1
                    }
                    AnswerProblem::Count {
                        receipts,
                        accepted,
                        rejected,
                    } => case == "count" && (receipts, accepted, rejected) == (2, 3, 0),
                    AnswerProblem::Index { index, receipts } => {
                        case.starts_with("index") && receipts == 2 && index >= 1
                    }
                };
                assert!(fits, "{case}: {problem:?}");
            }
            (_, other) => panic!("{case}: {other:?}"),
        }
    }
}

/// The whole NATS cluster goes down under a node that owns every partition: its leases lapse
/// and its owners stop; when NATS is back it competes for and owns every partition again,
/// earlier batches keep their acks and new ones are acked and charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_owns_its_partitions_again_after_nats_was_down() {
    trace();
    let (mut nats, _dir, verifier, cluster, node) = one_node().await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let keys: Vec<SigningKey> = (0..PAYERS).map(payer_key).collect();
    let payers: Vec<PayerKey> = keys.iter().map(payer_of).collect();
    let mut nonces = vec![0u64; keys.len()];
    let before = fleet_batch(&keys, 0, &mut nonces);
    acked_as_expected(&publisher, &before, "send").await;

    nats.kill_all();
    let deadline = Instant::now() + DEADLINE;
    while !node.owned().is_empty() {
        assert!(
            Instant::now() < deadline,
            "owners kept running without NATS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    within("restart NATS", nats.restart_all()).await;
    until_owned(&[&node], PARTITIONS as usize).await;

    acked_as_expected(&publisher, &before, "re-send after the outage").await;
    let after = fleet_batch(&keys, 1, &mut nonces);
    acked_as_expected(&publisher, &after, "send").await;
    let mut expected: HashMap<PayerKey, u128> = HashMap::new();
    for (payer, amount) in before.charged.iter().chain(&after.charged) {
        *expected.entry(*payer).or_default() += amount;
    }
    assert_eq!(
        totals(&[&node], &payers),
        expected_with_zeros(&payers, &expected)
    );
    within("stop node", node.stop()).await.expect("node stops");
}

/// Log messages an owner applies between two checkpoints in the checkpoint test.
const CHECKPOINT_EVERY: u64 = 4;

/// The names and positions of `partition`'s checkpoints in the object store, oldest first,
/// from the store's metadata subjects (its own listing can hang while objects are deleted).
async fn checkpoints_of(cluster: &Cluster, partition: u32) -> Vec<(String, u64)> {
    let bucket = &cluster.config().checkpoint_bucket;
    let listing = async {
        let objects = cluster
            .jetstream()
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .expect("the checkpoint store's stream");
        subjects(&objects, format!("$O.{bucket}.M.*"))
            .await
            .expect("list checkpoints")
    };
    let listed = within(format!("list partition {partition}'s checkpoints"), listing).await;
    let prefix = format!("p.{partition}.");
    let mut found: Vec<(String, u64)> = listed
        .keys()
        .filter_map(|subject| {
            let encoded = subject.rsplit('.').next()?;
            let name = String::from_utf8(URL_SAFE.decode(encoded).ok()?).ok()?;
            let seq = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((name, seq))
        })
        .collect();
    found.sort_by_key(|(_, seq)| *seq);
    found
}

/// Messages the log holds for each partition.
async fn log_messages(cluster: &Cluster) -> HashMap<u32, usize> {
    let counts = within(
        "count the log's messages",
        subjects(cluster.stream(), "tollgate.rx.>".to_string()),
    )
    .await
    .expect("subject counts");
    (0..PARTITIONS)
        .map(|p| (p, counts.get(&subject_of(p)).copied().unwrap_or(0)))
        .collect()
}

/// An owner checkpoints each partition every few log messages (or a moment after the last),
/// keeps two checkpoints and purges the log through the older one. A new owner with an empty
/// data directory restores each partition from its newest checkpoint and replays only the log
/// after it: every payer's total
/// equals what was acked, though the log no longer holds all of it. A corrupt newest
/// checkpoint is passed over for the one before it (a longer replay, the same totals); a
/// partition whose every checkpoint is corrupt, or deleted, is not owned at all, since its log
/// was purged (the purge floor says how far) and lacks what the new owner would need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_restores_checkpoints_and_replays_only_the_rest_of_a_purged_log() {
    trace();
    let nats = within("start NATS", NatsCluster::start()).await;
    let checkpointing = |node| ClusterConfig {
        checkpoint_every_messages: CHECKPOINT_EVERY,
        // The time policy too: however fast the batches go, each partition's owner checkpoints
        // within a moment of the last message it applied.
        checkpoint_every_ms: 300,
        checkpoints_kept: 2,
        ..config(&nats, node)
    };
    let verifier = verifier();
    let dir_a = tempfile::tempdir().expect("temp dir");
    let cluster = within("connect node a", Cluster::start(checkpointing("a")))
        .await
        .expect("node a");
    let node_a = Node::start(&cluster, ledgers(dir_a.path(), &verifier), 0..PARTITIONS);
    until_owned(&[&node_a], PARTITIONS as usize).await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let keys: Vec<SigningKey> = (0..PAYERS).map(payer_key).collect();
    let payers: Vec<PayerKey> = keys.iter().map(payer_of).collect();
    let mut nonces = vec![0u64; keys.len()];
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");
    let mut expected: HashMap<PayerKey, u128> = HashMap::new();
    // Log messages published per partition: one per batch reaching it.
    let mut published: HashMap<u32, usize> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for batch in 0..BATCHES {
        if batch == BATCHES / 2 {
            // Half way, every partition checkpointed once, so the second half gives it a second
            // checkpoint, and its log a purge.
            let deadline = Instant::now() + DEADLINE;
            for partition in 0..PARTITIONS {
                while checkpoints_of(&cluster, partition).await.is_empty() {
                    assert!(Instant::now() < deadline, "no checkpoint of {partition}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let batch = fleet_batch(&keys, batch, &mut nonces);
        acked_as_expected(&publisher, &batch, "a batch").await;
        let reached: BTreeSet<u32> = batch
            .charged
            .iter()
            .map(|(payer, _)| partition_of(payer, partitions))
            .collect();
        for partition in reached {
            *published.entry(partition).or_default() += 1;
        }
        for (payer, amount) in batch.charged {
            *expected.entry(payer).or_default() += amount;
        }
    }
    // Wait until every partition has its two newest checkpoints, its log is purged below them,
    // and nothing changes any more (the last checkpoint due was stored).
    let deadline = Instant::now() + DEADLINE;
    let mut last = Vec::new();
    loop {
        let counts = log_messages(&cluster).await;
        let mut now = Vec::new();
        for partition in 0..PARTITIONS {
            now.push(checkpoints_of(&cluster, partition).await);
        }
        let purged = (0..PARTITIONS).all(|p| counts[&p] < published[&p]);
        if purged && now.iter().all(|stored| stored.len() == 2) && now == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints {now:?}, log {counts:?} of {published:?}"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counts = log_messages(&cluster).await;
    within("stop node_a", node_a.stop())
        .await
        .expect("node a stops");

    // Partition 0's newest checkpoint corrupt: its older one and a longer replay. Both of
    // partition 1's corrupt: not owned.
    let garbage = |name: String| {
        let store = cluster.checkpoints().clone();
        async move {
            within(
                "overwrite a checkpoint",
                store.put(name.as_str(), &mut &b"not a checkpoint"[..]),
            )
            .await
            .expect("overwrite a checkpoint");
        }
    };
    let zero = checkpoints_of(&cluster, 0).await;
    garbage(zero[1].0.clone()).await;
    for (name, _) in checkpoints_of(&cluster, 1).await {
        garbage(name).await;
    }
    // Partition 3's checkpoints deleted outright (markers and all): nothing listed, but its log
    // is purged, so nothing may resume it from an empty ledger.
    let bucket = &cluster.config().checkpoint_bucket;
    let objects = cluster
        .jetstream()
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .expect("the checkpoint store's stream");
    for (name, _) in checkpoints_of(&cluster, 3).await {
        cluster.checkpoints().delete(&name).await.expect("delete");
        objects
            .purge()
            .filter(format!("$O.{bucket}.M.{}", URL_SAFE.encode(&name)))
            .await
            .expect("drop its marker");
    }
    assert!(checkpoints_of(&cluster, 3).await.is_empty());
    // What keeps it unowned: its purge floor, recorded before the purge.
    let floor: serde_json::Value = serde_json::from_slice(
        &cluster
            .jetstream()
            .get_key_value(&cluster.config().meta_bucket)
            .await
            .expect("the meta bucket")
            .get("floor.3")
            .await
            .expect("read the floor")
            .expect("partition 3's floor is recorded"),
    )
    .expect("a floor record");
    assert!(floor["floor"].as_u64() > Some(0), "{floor}");

    let newest_of_two = checkpoints_of(&cluster, 2).await[1].1;
    let dir_b = tempfile::tempdir().expect("temp dir");
    let since = SystemTime::now();
    let cluster_b = within("connect node b", Cluster::start(checkpointing("b")))
        .await
        .expect("node b");
    let node_b = Node::start(&cluster_b, ledgers(dir_b.path(), &verifier), 0..PARTITIONS);
    let unowned = [1, 3];
    until_owned(&[&node_b], PARTITIONS as usize - unowned.len()).await;
    // Partitions 1 and 3 stay unowned however long node b tries (each try lets its lease
    // lapse).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let owned = node_b.owned();
    for partition in unowned {
        assert!(
            !owned.contains_key(&partition),
            "partition {partition}, with no usable checkpoint and its log purged, was owned"
        );
    }
    assert_eq!(owned.len(), PARTITIONS as usize - unowned.len());
    let restorable: Vec<PayerKey> = payers
        .iter()
        .copied()
        .filter(|payer| !unowned.contains(&partition_of(payer, partitions)))
        .collect();
    // Each restored ledger's log resumed right after its checkpoint: partition 0's after the
    // older one, not from the start of the log.
    assert_eq!(consumer_start(&cluster, 0, since).await, zero[0].1 + 1);
    assert_eq!(consumer_start(&cluster, 2, since).await, newest_of_two + 1);
    let want = expected_with_zeros(&restorable, &expected);
    assert_eq!(totals(&[&node_b], &restorable), want);
    println!(
        "restored 14 of 16 partitions from checkpoints (partition 0 from its older one); log \
         messages left per partition after purges: {counts:?}"
    );
    within("stop node_b", node_b.stop())
        .await
        .expect("node b stops");
}

/// Waits until `partition`'s summary of `epoch` is stored and satisfies `wanted`.
async fn summary_when(
    epochs: &Epochs,
    epoch: u64,
    partition: u32,
    wanted: impl Fn(&Summary) -> bool,
) -> Summary {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let summaries = within("read the summaries", epochs.summaries(epoch))
            .await
            .expect("summaries read");
        if let Some(summary) = summaries[partition as usize].clone().filter(&wanted) {
            return summary;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition}'s summary of epoch {epoch}: {:?}",
            summaries[partition as usize]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A payer's exit overtook its debit in a sealed epoch, so the commit reverted with `Overdraft`
/// and the coordinator wrote a shortfall mark: the payer's owner records the uncovered rest as
/// cut from what the payer paid in the epoch, in payee order, and stores its summary again with
/// the cut; at the commit mark the ledger writes the cut off instead of settling it. A shortfall
/// mark for a payer the epoch does not debit, one in another payer's partition, or one based on
/// a cut the ledger no longer holds changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortfall_mark_leaves_the_uncovered_debit_out_of_the_summary_and_the_settlement() {
    trace();
    let (_nats, _dir, verifier, cluster, node) = one_node().await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));
    let epochs = Epochs::new(&cluster);
    let partitions = NonZeroU32::new(PARTITIONS).expect("non-zero");
    let key = payer_key(1);
    let payer = payer_of(&key);
    let partition = partition_of(&payer, partitions);
    let (payee_a, payee_b) = (Address([0x0a; 20]), Address([0x0b; 20]));
    let pay = |payee: Address, amount: u64, nonce: u64| {
        UnsignedReceipt {
            payee,
            ..receipt(&key, amount, nonce).unsigned()
        }
        .sign(&key, &DOMAIN)
    };
    let receipts = [pay(payee_a, 3_000, 1), pay(payee_b, 4_000, 2)];
    let ack = within("submit", publisher.submit(request(9, 1, &receipts)))
        .await
        .expect("acked");
    assert_eq!(ack.accepted, 2, "{ack:?}");
    within("seal", epochs.mark(Mark::Seal(1)))
        .await
        .expect("sealed");
    let sealed = summary_when(&epochs, 1, partition, |_| true).await;
    assert_eq!(sealed.sealed.debits, vec![(payer, 7_000)]);
    assert!(sealed.shortfalls.is_empty());

    // For a payer of the partition the epoch does not debit: nothing recorded. In another
    // partition's log: refused.
    let undebited = (2..)
        .map(|n| payer_of(&payer_key(n)))
        .find(|other| partition_of(other, partitions) == partition)
        .expect("another payer of the partition");
    within("shortfall", epochs.shortfall(1, undebited, (0, 0)))
        .await
        .expect("published");
    let elsewhere = (0..PARTITIONS)
        .find(|&p| p != partition)
        .expect("another partition");
    let misrouted = Mark::Shortfall(Shortfall {
        epoch: 1,
        payer,
        available: 0,
        based_on: 0,
    });
    cluster
        .jetstream()
        .publish(subject_of(elsewhere), misrouted.encode())
        .await
        .expect("sent")
        .await
        .expect("stored");
    // The chain held 2,500 of the 7,000: all 3,000 paid to a is cut, then 1,500 of b's 4,000.
    within("shortfall", epochs.shortfall(1, payer, (2_500, 0)))
        .await
        .expect("published");
    let covered = summary_when(&epochs, 1, partition, |summary| {
        !summary.shortfalls.is_empty()
    })
    .await;
    assert_eq!(
        covered.shortfalls,
        vec![(payer, payee_a, 3_000), (payer, payee_b, 1_500)]
    );
    assert_eq!(
        covered.sealed, sealed.sealed,
        "the epoch itself is as sealed"
    );
    // A mark based on that cut is recorded: the chain now holds 2,000, so 5,000 is cut. Then a
    // mark written from the summary before it (the chain then held 6,000) is not: the commit
    // relies on the cut its summary showed, and the commit mark comes right after.
    within("shortfall", epochs.shortfall(1, payer, (2_000, 4_500)))
        .await
        .expect("published");
    let recut = summary_when(&epochs, 1, partition, |summary| {
        summary.shortfalls != covered.shortfalls
    })
    .await;
    assert_eq!(
        recut.shortfalls,
        vec![(payer, payee_a, 3_000), (payer, payee_b, 2_000)]
    );
    within("shortfall", epochs.shortfall(1, payer, (6_000, 4_500)))
        .await
        .expect("published");
    let elsewhere_summary = summary_when(&epochs, 1, elsewhere, |_| true).await;
    assert!(elsewhere_summary.shortfalls.is_empty());

    within("commit", epochs.mark(Mark::Committed(1)))
        .await
        .expect("committed");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let balance = node.owned()[&partition]
            .payer(&payer)
            .expect("read")
            .expect("known");
        if balance.pending == 0 {
            assert_eq!((balance.settled, balance.shortfall), (2_000, 5_000));
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {balance:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    within("stop node", node.stop()).await.expect("node stops");
}
