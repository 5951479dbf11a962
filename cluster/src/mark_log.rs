//! Writing a mark into one partition's log: the one way the coordinator and the funds watcher
//! put anything there, under the mark's message id and bounded in time.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};

use crate::error::NatsError;
use crate::part::Mark;
use crate::partition::subject_of;

/// How long publishing one mark may take before it is given up (the writer publishes it again
/// later, and the log stores it once by its id, or applying it twice changes nothing).
pub(crate) const MARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `mark` into `partition`'s log and returns once the log holds it.
pub(crate) async fn publish_mark(
    jetstream: &jetstream::Context,
    partition: u32,
    mark: &Mark,
) -> Result<(), NatsError> {
    let mut message = PublishMessage::build().payload(mark.encode());
    if let Some(id) = mark.message_id(partition) {
        message = message.message_id(id);
    }
    let published = async {
        jetstream
            .send_publish(subject_of(partition), message)
            .await?
            .await?;
        Ok::<(), NatsError>(())
    };
    // A publish can stall for good when a server goes away mid-request.
    tokio::time::timeout(MARK_TIMEOUT, published).await?
}
