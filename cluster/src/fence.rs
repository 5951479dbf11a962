//! Fencing: an owner's writes carry the token of the lease it holds, and a receiver refuses a
//! token that is not the partition's current one. A lease alone cannot stop a paused owner that
//! wakes up after losing it (it may not yet know); the receiver's check can.

use async_nats::HeaderMap;

/// Header carrying a fence on messages an owner publishes: `<partition>:<token>`.
pub const FENCE_HEADER: &str = "Tollgate-Fence";

/// The proof of ownership an owner attaches to its writes: the partition and the token of its
/// lease (the lease bucket revision at which it was acquired; see [`crate::lease`]). Tokens only
/// grow: a later owner of a partition always holds a larger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub partition: u32,
    pub token: u64,
}

/// Why a fenced write is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error("the write carries no {FENCE_HEADER} header")]
    Missing,
    #[error("the {FENCE_HEADER} header {value:?} is not `<partition>:<token>`")]
    Malformed { value: String },
    #[error("the write is fenced for partition {presented}, not {expected}")]
    WrongPartition { presented: u32, expected: u32 },
    /// The writer's lease is not the partition's current one (`current` is `None` when nobody
    /// holds the partition now).
    #[error("stale fence on partition {partition}: token {presented}, current {current:?}")]
    Stale {
        partition: u32,
        presented: u64,
        current: Option<u64>,
    },
}

impl Fence {
    /// Adds this fence to the headers of a message about to be published.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(
            FENCE_HEADER,
            format!("{}:{}", self.partition, self.token).as_str(),
        );
    }

    /// Reads the fence a received message carries.
    pub fn read(headers: Option<&HeaderMap>) -> Result<Fence, FenceError> {
        let value = headers
            .and_then(|h| h.get(FENCE_HEADER))
            .ok_or(FenceError::Missing)?
            .as_str();
        let malformed = || FenceError::Malformed {
            value: value.to_string(),
        };
        let (partition, token) = value.split_once(':').ok_or_else(malformed)?;
        Ok(Fence {
            partition: partition.parse().map_err(|_| malformed())?,
            token: token.parse().map_err(|_| malformed())?,
        })
    }

    /// The receiver's rule: a write about `partition` is admitted only with the token of the
    /// partition's current lease (`current`, `None` when it has no holder).
    pub fn admit(&self, partition: u32, current: Option<u64>) -> Result<(), FenceError> {
        if self.partition != partition {
            return Err(FenceError::WrongPartition {
                presented: self.partition,
                expected: partition,
            });
        }
        if current != Some(self.token) {
            return Err(FenceError::Stale {
                partition,
                presented: self.token,
                current,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_fence_reads_back() {
        let fence = Fence {
            partition: 12,
            token: 9_000_000_001,
        };
        let mut headers = HeaderMap::new();
        fence.stamp(&mut headers);
        assert_eq!(Fence::read(Some(&headers)), Ok(fence));
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        assert_eq!(Fence::read(None), Err(FenceError::Missing));
        assert_eq!(
            Fence::read(Some(&HeaderMap::new())),
            Err(FenceError::Missing)
        );
        for bad in ["", "3", "3:", ":4", "3:x", "-1:4", "3:4:5"] {
            let mut headers = HeaderMap::new();
            headers.insert(FENCE_HEADER, bad);
            assert_eq!(
                Fence::read(Some(&headers)),
                Err(FenceError::Malformed {
                    value: bad.to_string()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_the_current_token_of_the_same_partition_is_admitted() {
        let fence = Fence {
            partition: 3,
            token: 40,
        };
        assert_eq!(fence.admit(3, Some(40)), Ok(()));
        assert!(matches!(
            fence.admit(3, Some(41)),
            Err(FenceError::Stale {
                current: Some(41),
                ..
            })
        ));
        assert!(matches!(
            fence.admit(3, None),
            Err(FenceError::Stale { current: None, .. })
        ));
        assert!(matches!(
            fence.admit(4, Some(40)),
            Err(FenceError::WrongPartition { .. })
        ));
    }
}
