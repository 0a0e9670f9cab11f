//! Per-client-address limits (`limits.max_connections_per_ip`, `limits.new_connections_per_ip_per
//! _second`): one address may hold only so many streams, and open only so many a second, so one
//! client cannot take the instance's whole connection budget. IPv6 clients are counted by their
//! /64 (one host usually holds a whole /64). The table holds an entry per address with open
//! streams, plus recently seen ones while their rate still matters; beyond `TABLE_LIMIT`
//! entries the idle ones are dropped first, so many addresses cannot grow memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use parking_lot::Mutex;
use shared::ErrorCode;

use crate::bucket::TokenBucket;
use crate::error::ApiError;

/// Entries kept beyond those with open streams (whose number the connection limit bounds).
const TABLE_LIMIT: usize = 100_000;

/// The per-address counts of one instance.
pub struct IpLimits {
    max_open: u32,
    per_second: f64,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

struct Entry {
    open: u32,
    /// New streams (`per_second` a second, as many at once).
    rate: TokenBucket,
}

/// One admitted stream's place in its address's count; released when dropped.
pub struct IpSlot {
    limits: Arc<IpLimits>,
    key: IpAddr,
}

impl IpLimits {
    /// Limits of `max_open` streams and `per_second` new ones per address (0: no limit).
    pub fn new(max_open: usize, per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max_open: u32::try_from(max_open).unwrap_or(u32::MAX),
            per_second: f64::from(per_second),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.max_open > 0 || self.per_second > 0.0
    }

    /// Counts a new stream from `client`, or refuses it with 429 and `Retry-After`.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Option<IpSlot>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = key_of(client);
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.len() >= TABLE_LIMIT && !table.contains_key(&key) {
            table.retain(|_, e| e.open > 0 || !e.rate.is_full(now));
            if table.len() >= TABLE_LIMIT {
                table.retain(|_, e| e.open > 0);
            }
        }
        let per_second = self.per_second;
        let entry = table.entry(key).or_insert_with(|| Entry {
            open: 0,
            rate: TokenBucket::new(per_second, per_second),
        });
        if self.max_open > 0 && entry.open >= self.max_open {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                format!("at most {} streams per client address", self.max_open),
            )
            .with_retry_after(1));
        }
        if self.per_second > 0.0 && !entry.rate.take(now) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::ConnectionRateLimited,
                format!(
                    "at most {} new streams a second per client address",
                    self.per_second
                ),
            )
            .with_retry_after(1));
        }
        entry.open += 1;
        Ok(Some(IpSlot {
            limits: self.clone(),
            key,
        }))
    }

    /// Entries in the table (for tests).
    pub fn tracked(&self) -> usize {
        self.table.lock().len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.limits.table.lock();
        if let Some(entry) = table.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
            // With a full bucket the entry remembers nothing the next stream needs.
            if entry.open == 0 && entry.rate.is_full(Instant::now()) {
                table.remove(&self.key);
            }
        }
    }
}

/// The counted address: IPv4 as is, IPv6 by its /64.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn streams_per_address_are_limited_and_freed() {
        let limits = IpLimits::new(2, 0);
        let a = limits.admit(ip("192.0.2.1")).unwrap();
        let _b = limits.admit(ip("192.0.2.1")).unwrap();
        let e = limits.admit(ip("192.0.2.1")).err().unwrap();
        assert_eq!(e.code(), ErrorCode::TooManyConnections);
        assert!(limits.admit(ip("192.0.2.2")).unwrap().is_some());
        drop(a);
        assert!(limits.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        let limits = IpLimits::new(1, 0);
        let _a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2::ffff")).is_err());
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_ok());
        assert_eq!(key_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn new_streams_per_second_are_limited() {
        let limits = IpLimits::new(0, 2);
        let a = limits.admit(ip("192.0.2.1")).unwrap();
        let b = limits.admit(ip("192.0.2.1")).unwrap();
        drop((a, b));
        // Closing them does not give the rate back.
        let e = limits.admit(ip("192.0.2.1")).err().unwrap();
        assert_eq!(e.code(), ErrorCode::ConnectionRateLimited);
        assert!(limits.admit(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn off_means_untracked_and_closed_addresses_are_forgotten() {
        let off = IpLimits::new(0, 0);
        assert!(off.admit(ip("192.0.2.1")).unwrap().is_none());
        assert_eq!(off.tracked(), 0);
        let limits = IpLimits::new(5, 0);
        let slots: Vec<_> = (0..50)
            .map(|i| limits.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limits.tracked(), 50);
        drop(slots);
        assert_eq!(limits.tracked(), 0);
    }
}
