//! Token → user, cached in process. Every request authenticates, and read
//! from the store each time that lookup is the largest read load on a
//! Scylla cluster at the mission's scale (issue #19). A user's token can
//! neither change nor be revoked, and a user record does not change after
//! sign-up, so a found token is kept `FOUND_TTL_MS`; a token not found is
//! remembered only `MISSING_TTL_MS`, so a token made on another node a
//! moment ago (and not yet on the replica read) is found soon after.
//!
//! Bounded: at most `MAX_FOUND` and `MAX_MISSING` entries; a full map is
//! emptied (a flood of random tokens costs store reads, as without the
//! cache, never memory). Device keys are not cached here: revoking a device
//! takes effect at once (`ingest::devices`).

use dashmap::DashMap;

use crate::domain::time::Millis;
use crate::startup::Sweep;
use crate::store::User;

pub const FOUND_TTL_MS: Millis = 5 * 60_000;
pub const MISSING_TTL_MS: Millis = 5_000;
pub const MAX_FOUND: usize = 200_000;
pub const MAX_MISSING: usize = 50_000;

#[derive(Default)]
pub struct TokenCache {
    found: DashMap<[u8; 32], (User, Millis)>,
    missing: DashMap<[u8; 32], Millis>,
}

/// What the cache knows of a token.
#[derive(Debug, PartialEq)]
pub enum Cached {
    Found(User),
    Missing,
    Unknown,
}

impl TokenCache {
    pub fn get(&self, token_hash: &[u8; 32], now: Millis) -> Cached {
        if let Some(entry) = self.found.get(token_hash)
            && entry.1 > now
        {
            return Cached::Found(entry.0.clone());
        }
        match self.missing.get(token_hash) {
            Some(until) if *until > now => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    pub fn put(&self, token_hash: [u8; 32], user: Option<User>, now: Millis) {
        match user {
            Some(user) => {
                if self.found.len() >= MAX_FOUND {
                    self.found.clear();
                }
                self.missing.remove(&token_hash);
                self.found.insert(token_hash, (user, now + FOUND_TTL_MS));
            }
            None => {
                if self.missing.len() >= MAX_MISSING {
                    self.missing.clear();
                }
                self.missing.insert(token_hash, now + MISSING_TTL_MS);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.found.len() + self.missing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sweep for TokenCache {
    fn sweep(&self, now: Millis) {
        self.found.retain(|_, (_, until)| *until > now);
        self.missing.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: uuid::Uuid::now_v7(),
            name: "Ann".into(),
            region: None,
            created_at: 0,
        }
    }

    #[test]
    fn found_tokens_live_minutes_missing_ones_seconds() {
        let cache = TokenCache::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(cache.get(&a, 0), Cached::Unknown);
        let ann = user();
        cache.put(a, Some(ann.clone()), 0);
        cache.put(b, None, 0);
        assert_eq!(cache.get(&a, FOUND_TTL_MS - 1), Cached::Found(ann.clone()));
        assert_eq!(cache.get(&b, MISSING_TTL_MS - 1), Cached::Missing);
        assert_eq!(
            cache.get(&b, MISSING_TTL_MS),
            Cached::Unknown,
            "asked again"
        );
        assert_eq!(cache.get(&a, FOUND_TTL_MS), Cached::Unknown);
        // A token found after it was missing (made on another node).
        cache.put(b, Some(ann.clone()), 10);
        assert_eq!(cache.get(&b, 11), Cached::Found(ann));
        cache.sweep(FOUND_TTL_MS + 10);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_flood_of_unknown_tokens_is_bounded() {
        let cache = TokenCache::default();
        for i in 0..(MAX_MISSING + 10) {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cache.put(hash, None, 0);
        }
        assert!(cache.len() <= MAX_MISSING);
    }
}
