//! The ingest client as the generator's [`Transport`]: one [`Client`] (one TCP connection, one
//! producer id) per generator connection.

use ed25519_dalek::SigningKey;
use tollgate_engine::grant::SignedRevocation;
use tollgate_engine::{Domain, Receipt};
use tollgate_ingest::client::{BatchVerdictsFuture, Client, ClientConfig, ClientError};

use super::driver::Transport;

/// What every connection of a run shares; [`connect`] adds the per-connection producer id.
#[derive(Clone, Debug)]
pub struct ClientTransportConfig {
    /// Server address, `host:port`.
    pub addr: String,
    /// Client id the server knows (any value for a server in open mode).
    pub client_id: u64,
    /// The key registered for `client_id`.
    pub client_key: SigningKey,
    /// The deployment receipts are signed for.
    pub domain: Domain,
    /// Receipts per batch (the generator forms batches itself; the client must not split them).
    pub batch_receipts_max: u32,
    /// Batches awaiting an ACK per connection.
    pub batches_in_flight_max: u32,
    /// Producer id of connection 0; connection i uses `base + i`. Unique per run, so the server's
    /// client sessions never take this run's batches for retries of an earlier run's.
    pub producer_id_base: u64,
}

/// Opens connection `index` (TCP connect and handshake).
pub async fn connect(config: ClientTransportConfig, index: u32) -> Result<Client, ClientError> {
    let mut client = ClientConfig::new(
        config.addr,
        config.client_id,
        config.client_key,
        config.producer_id_base.wrapping_add(u64::from(index)),
        config.domain,
    );
    client.batch_receipts_max = config.batch_receipts_max;
    client.batches_in_flight_max = config.batches_in_flight_max;
    // The generator bounds what it has in flight; a deep queue in the client would only hide
    // waiting time from the latency figures.
    client.queue_requests_max = config.batches_in_flight_max as usize;
    Client::connect(client).await
}

impl Transport for Client {
    type Error = ClientError;
    type Verdicts = BatchVerdictsFuture;

    async fn submit_batch(
        &self,
        receipts: Vec<Receipt>,
    ) -> Result<BatchVerdictsFuture, ClientError> {
        Client::submit_batch(self, receipts).await
    }

    async fn close(self) -> Result<(), ClientError> {
        Client::close(self).await.map(|_| ())
    }

    async fn revoke(&self, revocation: &SignedRevocation) -> Result<(), String> {
        match Client::revoke(self, revocation).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(refused.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }
}
