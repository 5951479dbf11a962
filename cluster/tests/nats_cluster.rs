//! The cluster crate against a real 3-server NATS JetStream cluster on loopback: shared
//! resources, the replicated and deduplicated log, leases, expiry and fencing.

// This file kills single servers; stopping and restarting the whole cluster
// (`kill_all`, `restart_all`) is data_path's.
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use harness::NatsCluster;
use tokio::sync::watch;
use tollgate_cluster::{
    Cluster, ClusterConfig, ClusterError, FenceError, Lease, LeaseError, subject_of,
};

/// Generous bound for one eventually-true condition (an election, an expiry): the tests check
/// what happens, never how fast.
const DEADLINE: Duration = Duration::from_secs(60);

fn config(nats: &NatsCluster, node: &str) -> ClusterConfig {
    ClusterConfig {
        servers: nats.urls(),
        node_id: node.to_string(),
        partitions: 16,
        // Short leases keep the takeover test to seconds.
        lease_ttl_ms: 1_500,
        lease_heartbeat_ms: 300,
        ..ClusterConfig::default()
    }
}

/// Retries `attempt` until it succeeds (a server election in progress answers with errors).
async fn eventually<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_resources_and_a_partition_count_mismatch_is_refused() {
    let nats = NatsCluster::start().await;
    let (a, b) = tokio::join!(
        Cluster::start(config(&nats, "a")),
        Cluster::start(config(&nats, "b"))
    );
    let a = a.expect("first node");
    b.expect("second node with the same config");
    assert_eq!(a.partitions().get(), 16);
    let info = a.stream().get_info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.config.subjects, vec!["tollgate.rx.*".to_string()]);
    // Summaries have a store of their own, beside the checkpoints'.
    for store in ["OBJ_tollgate-checkpoints", "OBJ_tollgate-summaries"] {
        let mut objects = a.jetstream().get_stream(store).await.expect(store);
        let info = objects.info().await.expect("object store info");
        assert_eq!(info.config.num_replicas, 3, "{store}");
    }

    let mut other_count = config(&nats, "c");
    other_count.partitions = 8;
    match Cluster::start(other_count).await {
        Err(ClusterError::PartitionCount { cluster, ours }) => {
            assert_eq!((cluster, ours), (16, 8))
        }
        other => panic!("expected a partition count mismatch, got {other:?}"),
    }

    let mut other_replicas = config(&nats, "d");
    other_replicas.stream_replicas = 1;
    match Cluster::start(other_replicas).await {
        Err(ClusterError::Mismatch {
            field,
            ours,
            theirs,
            ..
        }) => assert_eq!(
            (field, ours.as_str(), theirs.as_str()),
            ("replicas", "1", "3")
        ),
        other => panic!("expected a replicas mismatch, got {other:?}"),
    }

    let mut other_ttl = config(&nats, "e");
    other_ttl.lease_ttl_ms = 3_000;
    match Cluster::start(other_ttl).await {
        Err(ClusterError::Mismatch {
            resource, field, ..
        }) => {
            assert_eq!(
                (resource.as_str(), field),
                ("KV bucket tollgate-leases", "max_age")
            )
        }
        other => panic!("expected a lease TTL mismatch, got {other:?}"),
    }

    // The refused nodes changed nothing: a node with the original settings still joins.
    Cluster::start(config(&nats, "f"))
        .await
        .expect("the cluster is as the first node made it");
    let info = a.stream().get_info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
}

fn with_id(id: &str) -> PublishMessage {
    PublishMessage::build()
        .message_id(id)
        .payload("part".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_dedups_by_message_id_and_keeps_quorum_after_a_server_is_killed() {
    let mut nats = NatsCluster::start().await;
    let node = Cluster::start(config(&nats, "a")).await.expect("node");
    let js = node.jetstream();
    let subject = subject_of(3);

    let mut acks = Vec::new();
    for _ in 0..2 {
        let ack = js
            .send_publish(subject.clone(), with_id("c1/p1/s1/b1/3"))
            .await
            .expect("publish")
            .await
            .expect("ack");
        acks.push(ack);
    }
    let (first, again) = (&acks[0], &acks[1]);
    assert!(!first.duplicate);
    assert!(again.duplicate, "the re-publish is recognised");
    assert_eq!(again.sequence, first.sequence);
    let info = node.stream().get_info().await.expect("info");
    assert_eq!(info.state.messages, 1, "stored once");

    // Kill the stream's leader: the two replicas left elect a new one and keep the log.
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("an R3 stream has a leader");
    nats.kill(&leader);

    let second = eventually("publish after the kill", || async {
        js.send_publish(subject.clone(), with_id("c1/p1/s1/b2/3"))
            .await?
            .await
            .map_err(async_nats::Error::from)
    })
    .await;
    assert!(second.sequence > first.sequence);
    let stream = node.stream();
    let info = eventually("stream info after the kill", || stream.get_info()).await;
    assert_eq!(info.state.messages, 2);
    for ack in [first, &second] {
        let message = eventually("read back", || stream.get_raw_message(ack.sequence)).await;
        assert_eq!(message.subject.as_str(), subject);
    }
}

/// Waits until `held` shows a lease satisfying `wanted`.
async fn wait_for(
    held: &mut watch::Receiver<Option<Lease>>,
    what: &str,
    wanted: impl Fn(&Lease) -> bool,
) -> Lease {
    let found = tokio::time::timeout(
        DEADLINE,
        held.wait_for(|lease| lease.as_ref().is_some_and(&wanted)),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
    .expect("keeper running");
    found.clone().expect("matched a lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_a_partition_until_it_stops_and_its_writes_are_then_fenced() {
    let nats = NatsCluster::start().await;
    let a = Cluster::start(config(&nats, "a")).await.expect("node a");
    let b = Cluster::start(config(&nats, "b")).await.expect("node b");

    // Two nodes claiming a vacant partition at the same moment: exactly one wins.
    let (from_a, from_b) = tokio::join!(a.leases().acquire(5), b.leases().acquire(5));
    let won = [&from_a, &from_b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "a: {from_a:?}, b: {from_b:?}");
    for lost in [&from_a, &from_b]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        assert!(
            matches!(lost, LeaseError::Held { .. } | LeaseError::Contended { .. }),
            "{lost:?}"
        );
    }

    // Two keepers on partition 7: one takes it, and keeps it through several renewals.
    let keepers = [a.leases().keep(7), b.leases().keep(7)];
    let mut held = [keepers[0].held(), keepers[1].held()];
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            for (i, h) in held.iter().enumerate() {
                if let Some(lease) = h.borrow().clone() {
                    return (i, lease);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (owner, lease) = first.expect("someone takes partition 7");
    let other = 1 - owner;
    let nodes = [&a, &b];
    let holder = nodes[owner]
        .leases()
        .holder(7)
        .await
        .expect("read")
        .expect("held");
    assert_eq!(holder.node, nodes[owner].leases().node_id());
    assert_eq!(holder.token, lease.token());

    let mut revision = lease.revision();
    for _ in 0..3 {
        let renewed = wait_for(&mut held[owner], "a renewal", |l| l.revision() > revision).await;
        assert_eq!(
            renewed.token(),
            lease.token(),
            "same tenure across renewals"
        );
        assert!(
            held[other].borrow().is_none(),
            "the other node never holds it"
        );
        revision = renewed.revision();
    }

    // The owner stalls (stops heartbeating); after the TTL the servers expire its lease and the
    // other keeper takes over.
    let [k0, k1] = keepers;
    let (stalled, running) = if owner == 0 { (k0, k1) } else { (k1, k0) };
    let mut old = stalled.stop().await.expect("it held the lease");
    let new = wait_for(&mut held[other], "the takeover", |_| true).await;
    assert!(new.token() > old.token(), "tokens grow with each owner");

    // The stalled owner wakes up: its renewal fails as lost...
    let old_owner = nodes[owner].leases();
    match old_owner.renew(&mut old).await {
        Err(LeaseError::Lost { partition, token }) => {
            assert_eq!((partition, token), (7, old.token()))
        }
        other => panic!("expected the lease lost, got {other:?}"),
    }

    // ...and a write fenced with its old token is refused where the new owner's is accepted.
    // The writes travel through the log (persisted, so none is lost in transit) and the
    // receiver checks the fence each one carries against the current lease.
    let mut sequences = Vec::new();
    for (node, fence) in [(nodes[owner], old.fence()), (nodes[other], new.fence())] {
        let mut headers = HeaderMap::new();
        fence.stamp(&mut headers);
        let ack = node
            .jetstream()
            .publish_with_headers(subject_of(7), headers, "owner write".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        sequences.push(ack.sequence);
    }
    let receiver = nodes[other];
    let mut verdicts = Vec::new();
    for sequence in sequences {
        let message = receiver
            .stream()
            .get_raw_message(sequence)
            .await
            .expect("read back");
        verdicts.push(
            receiver
                .leases()
                .check_fence(7, Some(&message.headers))
                .await,
        );
    }
    match &verdicts[0] {
        Err(LeaseError::Fenced(FenceError::Stale {
            partition: 7,
            presented,
            current: Some(current),
        })) => assert_eq!((*presented, *current), (old.token(), new.token())),
        other => panic!("the old owner's write: {other:?}"),
    }
    assert_eq!(verdicts[1].as_ref().expect("admitted"), &new.fence());
    drop(running);
}
