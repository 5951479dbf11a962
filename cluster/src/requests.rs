//! How an owner answers a request subject (asks, funds queries): each request decoded and
//! answered by a task of its own, at most a bound of them at once (beyond it a request is dropped
//! and its asker asks again after its timeout), until `stop` or the subscription's end.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::part::DecodeError;

/// Answers every request on `requests` that `decode` reads (`what` names them in the log of one
/// that does not) with the task `answer` makes of it and its reply subject.
pub(crate) async fn answer_each<R, A>(
    mut requests: async_nats::Subscriber,
    what: &'static str,
    waiting_max: usize,
    decode: impl Fn(&[u8]) -> Result<R, DecodeError>,
    answer: impl Fn(R, async_nats::Subject) -> A,
    stop: CancellationToken,
) where
    A: Future<Output = ()> + Send + 'static,
{
    let waiting = Arc::new(Semaphore::new(waiting_max));
    let mut answering = JoinSet::new();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = requests.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let (Some(reply), Ok(request)) = (message.reply, decode(&message.payload)) else {
            warn!(subject = %message.subject, "unreadable {what}; ignored");
            continue;
        };
        let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
            continue;
        };
        let task = answer(request, reply);
        answering.spawn(async move {
            let _permit = permit;
            task.await;
        });
        // Reap finished answers so the set stays as small as what is waiting.
        while answering.try_join_next().is_some() {}
    }
    answering.shutdown().await;
}
