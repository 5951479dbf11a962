//! The cluster data path against a real 3-server NATS JetStream cluster on loopback: two nodes,
//! each an ingest node (verify, split, publish, ask) and the owner of half the partitions
//! (consume in log order, apply to the partition's RocksDB ledger), and a fleet that sends
//! through both. Every ack is checked against a model of the ledger's rules, every payer's total
//! against what the acks accepted, and re-sends (through the other node, after a restart) get
//! the original ack and charge nothing twice.

// This test kills no server (nats_cluster does): `NatsCluster::kill` stays unused here.
#[allow(dead_code)]
mod harness;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use harness::NatsCluster;
use tollgate_cluster::{
    Cluster, ClusterConfig, Node, NodeLedgers, PublishError, Publisher, partition_of,
};
use tollgate_engine::pipeline::{BatchAck, EngineConfig, SubmitRequest, UnknownPayers};
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

/// Chainless ledgers (no deposits through the log yet): unknown payers are accepted.
fn ledgers(dir: &Path, verifier: &Arc<VerifyPool>) -> NodeLedgers {
    let mut engine = EngineConfig::new(dir);
    engine.ledger.unknown_payers = UnknownPayers::Accept;
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

async fn until_owned(nodes: &[&Node], partitions: usize) {
    let deadline = Instant::now() + DEADLINE;
    while nodes.iter().map(|node| node.owned().len()).sum::<usize>() < partitions {
        assert!(Instant::now() < deadline, "partitions not all owned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_through_two_nodes_are_counted_exactly_once_and_resends_get_the_original_ack() {
    let started = Instant::now();
    let nats = NatsCluster::start().await;
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
        let acks = futures::future::join_all(chunk.iter().map(|batch| {
            let publisher = &publishers[(batch.request.batch_seq % 2) as usize];
            publisher.submit(batch.request.clone())
        }))
        .await;
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
        let again = publishers[0]
            .submit(batch.request.clone())
            .await
            .expect("acked");
        assert_eq!(
            again, batch.expected,
            "re-send of batch {}",
            batch.request.batch_seq
        );
    }
    // A re-send cut short on node a (it may or may not have published), finished through b.
    let mut fresh_nonces = nonces.clone();
    let interrupted = fleet_batch(&keys, BATCHES, &mut fresh_nonces);
    let _ = tokio::time::timeout(
        Duration::from_millis(2),
        publishers[0].submit(interrupted.request.clone()),
    )
    .await;
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
    match publishers[0].submit(other).await {
        Err(PublishError::BatchMismatch { batch_seq, .. }) => assert_eq!(batch_seq, BATCHES),
        other => panic!("expected a batch mismatch, got {other:?}"),
    }
    assert_eq!(
        totals(&[&node_a, &node_b], &payers),
        expected_with_zeros(&payers, &expected_totals)
    );

    // A restarted node resumes each partition right after the position its ledger holds: the
    // re-sends still get their original acks, nothing is applied twice, new work goes on.
    node_a.stop().await.expect("node a stops cleanly");
    let node_a = Node::start(
        &a,
        ledgers(&dir.path().join("a"), &verifier),
        0..PARTITIONS / 2,
    );
    until_owned(&[&node_a, &node_b], PARTITIONS as usize).await;
    for batch in batches.iter().take(4) {
        let again = publishers[1]
            .submit(batch.request.clone())
            .await
            .expect("acked");
        assert_eq!(
            again, batch.expected,
            "re-send after restart of batch {}",
            batch.request.batch_seq
        );
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

    node_a.stop().await.expect("node a stops");
    node_b.stop().await.expect("node b stops");
    println!("data path test took {:?}", started.elapsed());
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
    const LATER_PARTS: u64 = 70;
    let nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let verifier = verifier();
    let cluster = Cluster::start(config(&nats, "a")).await.expect("node a");
    let node = Node::start(&cluster, ledgers(dir.path(), &verifier), 0..PARTITIONS);
    until_owned(&[&node], PARTITIONS as usize).await;
    let publisher = Publisher::new(&cluster, verifier.clone(), Duration::from_secs(30));

    // One payer: every part lands in the same partition.
    let key = payer_key(1);
    let first = request(9, 0, &[receipt(&key, 5, 1)]);
    let first_ack = publisher.submit(first.clone()).await.expect("acked");
    assert_eq!(first_ack.accepted, 1);
    for batch_seq in 1..=LATER_PARTS {
        let later = request(9, batch_seq, &[receipt(&key, 1, 1 + batch_seq)]);
        publisher.submit(later).await.expect("acked");
    }
    let again = publisher.submit(first.clone()).await;
    assert_eq!(
        again.as_ref().ok(),
        Some(&first_ack),
        "re-send after {LATER_PARTS} later parts: {again:?}"
    );

    let mut next_session = request(9, 0, &[receipt(&key, 1, 1_000)]);
    next_session.session_epoch = 2;
    publisher.submit(next_session).await.expect("acked");
    let again = publisher.submit(first).await;
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
    node.stop().await.expect("node stops");
}
