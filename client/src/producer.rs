//! The idempotent producer of one client: its settings, and the next sequence
//! number of every channel it publishes on.
//!
//! Owns the per-channel sequences (PROTOCOL §8 `pid`/`seq`): each idempotent
//! publish takes the next one, and a retry re-sends the same number, so the
//! broker delivers it at most once per (producer id, channel). The producer id
//! itself is a connection's (it comes from `hello`/`welcome` and is presented
//! again after a reconnect); `pubsub` builds the frames and retries.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{ClientError, Result};
use crate::pending::lock;

/// At most this many channels get a sequence number (one `u64` each). A
/// channel's sequence is never forgotten (starting it again at 1 would make the
/// broker drop the new messages as duplicates), so past the bound an idempotent
/// publish on a new channel fails with a clear error instead.
pub(crate) const MAX_SEQUENCE_CHANNELS: usize = 1 << 20;

/// The producer settings of a client and its sequence numbers.
pub(crate) struct Producer {
    /// Publishes are idempotent unless a call says otherwise.
    pub idempotent: bool,
    /// The producer id presented in the first `hello` (else the broker mints one).
    pub id: Option<String>,
    /// How many times an idempotent publish cut off by a disconnect is sent again.
    pub retries: u32,
    /// The last sequence number used, by channel.
    seqs: Mutex<HashMap<String, u64>>,
}

impl Producer {
    pub fn new(
        idempotent: bool,
        id: Option<String>,
        retries: u32,
        sequences: HashMap<String, u64>,
    ) -> Producer {
        Producer {
            idempotent,
            id,
            retries,
            seqs: Mutex::new(sequences),
        }
    }

    /// The next sequence number of `channel` (the first is 1, or one above the
    /// seeded value).
    pub fn next_seq(&self, channel: &str) -> Result<u64> {
        let mut g = lock(&self.seqs);
        if let Some(n) = g.get_mut(channel) {
            *n += 1;
            return Ok(*n);
        }
        if g.len() >= MAX_SEQUENCE_CHANNELS {
            return Err(ClientError::Config(format!(
                "idempotent publishing on more than {MAX_SEQUENCE_CHANNELS} channels"
            )));
        }
        g.insert(channel.to_owned(), 1);
        Ok(1)
    }

    /// The last sequence number used on `channel` (0: none yet).
    pub fn sequence(&self, channel: &str) -> u64 {
        lock(&self.seqs).get(channel).copied().unwrap_or(0)
    }

    /// Makes `n` the last sequence number used on `channel`.
    pub fn set_sequence(&self, channel: &str, n: u64) -> Result<()> {
        let mut g = lock(&self.seqs);
        if !g.contains_key(channel) && g.len() >= MAX_SEQUENCE_CHANNELS {
            return Err(ClientError::Config(format!(
                "idempotent publishing on more than {MAX_SEQUENCE_CHANNELS} channels"
            )));
        }
        g.insert(channel.to_owned(), n);
        Ok(())
    }
}

impl Default for Producer {
    fn default() -> Self {
        Producer::new(false, None, 3, HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_per_channel_from_the_seed() {
        let p = Producer::new(true, None, 3, HashMap::from([("b".to_owned(), 41)]));
        assert_eq!(p.next_seq("a").unwrap(), 1);
        assert_eq!(p.next_seq("a").unwrap(), 2);
        assert_eq!(p.next_seq("b").unwrap(), 42);
        assert_eq!(p.sequence("a"), 2);
        assert_eq!(p.sequence("c"), 0);
        p.set_sequence("a", 10).unwrap();
        assert_eq!(p.next_seq("a").unwrap(), 11);
    }
}
