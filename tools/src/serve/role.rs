//! A cluster role one node at a time holds by lease (the settlement coordinator, the funds
//! watcher): every node with the chain configured competes for it, and the holder does the
//! role's work until it loses the lease or shuts down.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tollgate_cluster::{Lease, LeaseKeeper};

/// Competes through `keeper` until `shutdown`; while the lease is held, runs a `term` of the
/// role (a future that works until dropped), with the gauge `gauge` at 1.
pub(super) async fn hold<Term: Future<Output = ()>>(
    role: &'static str,
    gauge: &'static str,
    keeper: LeaseKeeper,
    shutdown: CancellationToken,
    mut term: impl FnMut() -> Term,
) {
    let mut held = keeper.held();
    loop {
        let token = tokio::select! {
            () = shutdown.cancelled() => break,
            lease = acquired(&mut held) => match lease {
                Some(lease) => lease.token(),
                None => break,
            },
        };
        tracing::info!(token, role, "took the role's lease");
        let holding = metrics::gauge!(gauge);
        holding.set(1.0);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = lost(&mut held, token) => {
                tracing::warn!(token, role, "lost the role's lease");
            }
            () = term() => {}
        }
        holding.set(0.0);
    }
    metrics::gauge!(gauge).set(0.0);
    keeper.stop().await;
}

/// The lease once this node holds it; `None` if the keeper stopped.
async fn acquired(held: &mut watch::Receiver<Option<Lease>>) -> Option<Lease> {
    held.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|lease| lease.clone())
}

/// Returns once the lease of token `token` is no longer held.
async fn lost(held: &mut watch::Receiver<Option<Lease>>, token: u64) {
    let _ = held
        .wait_for(|lease| lease.as_ref().map(Lease::token) != Some(token))
        .await;
}
