//! Login rate limiting: failed logins are counted per user and per client address in a
//! sliding window; past the limit, logins are refused (429) until the window moves on. Pure
//! and clocked from outside, so the rules are tested without sleeping.

use std::collections::{HashMap, VecDeque};

/// Failures allowed per user within the window.
pub const MAX_FAILURES_PER_USER: usize = 5;
/// Failures allowed per client address within the window (several users behind one NAT).
pub const MAX_FAILURES_PER_ADDR: usize = 20;
/// The window, in seconds.
pub const WINDOW_SECS: i64 = 60;
/// Bound on tracked keys, so a flood of random usernames cannot grow memory without limit.
const MAX_TRACKED: usize = 100_000;

/// Failure times per key.
#[derive(Default)]
pub struct LoginLimiter {
    users: HashMap<String, VecDeque<i64>>,
    addrs: HashMap<String, VecDeque<i64>>,
}

fn prune(q: &mut VecDeque<i64>, now: i64) {
    while q.front().is_some_and(|t| *t <= now - WINDOW_SECS) {
        q.pop_front();
    }
}

fn retry_after(
    map: &mut HashMap<String, VecDeque<i64>>,
    key: &str,
    limit: usize,
    now: i64,
) -> Option<i64> {
    let q = map.get_mut(key)?;
    prune(q, now);
    (q.len() >= limit).then(|| q.front().map_or(1, |t| t + WINDOW_SECS - now).max(1))
}

impl LoginLimiter {
    /// `Some(seconds)` if a login for `user` from `addr` must be refused now.
    pub fn check(&mut self, user: &str, addr: &str, now: i64) -> Option<i64> {
        let u = retry_after(&mut self.users, user, MAX_FAILURES_PER_USER, now);
        let a = retry_after(&mut self.addrs, addr, MAX_FAILURES_PER_ADDR, now);
        u.max(a)
    }

    /// Records a failed login.
    pub fn failed(&mut self, user: &str, addr: &str, now: i64) {
        for (map, key) in [(&mut self.users, user), (&mut self.addrs, addr)] {
            if map.len() >= MAX_TRACKED {
                map.retain(|_, q| {
                    prune(q, now);
                    !q.is_empty()
                });
            }
            if map.len() < MAX_TRACKED || map.contains_key(key) {
                map.entry(key.to_string()).or_default().push_back(now);
            }
        }
    }

    /// A successful login clears the user's failures (not the address's).
    pub fn succeeded(&mut self, user: &str) {
        self.users.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_the_user_for_the_window() {
        let mut l = LoginLimiter::default();
        for i in 0..5 {
            assert_eq!(l.check("alice", "1.1.1.1", 100 + i), None);
            l.failed("alice", "1.1.1.1", 100 + i);
        }
        assert_eq!(l.check("alice", "2.2.2.2", 105), Some(55));
        assert_eq!(
            l.check("bob", "1.1.1.1", 105),
            None,
            "other users are not affected"
        );
        assert_eq!(
            l.check("alice", "2.2.2.2", 160),
            None,
            "the window moved on"
        );
    }

    #[test]
    fn one_address_guessing_many_users_is_limited() {
        let mut l = LoginLimiter::default();
        for i in 0..20 {
            l.failed(&format!("user{i}"), "6.6.6.6", 10);
        }
        assert!(l.check("fresh", "6.6.6.6", 11).is_some());
        assert!(l.check("fresh", "7.7.7.7", 11).is_none());
    }

    #[test]
    fn success_clears_the_user() {
        let mut l = LoginLimiter::default();
        for _ in 0..4 {
            l.failed("carol", "a", 0);
        }
        l.succeeded("carol");
        l.failed("carol", "a", 1);
        assert_eq!(l.check("carol", "a", 1), None);
    }
}
