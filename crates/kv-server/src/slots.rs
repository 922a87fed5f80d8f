//! Caps on open connections, in all and per source address, shared by the client and
//! raft listeners: a connection takes a slot when accepted and gives it back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per source address, under a cap in all and one per address.
pub struct Slots {
    max: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One connection's place among the [`Slots`]; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every slot is taken.
    All(usize),
    /// Its address holds its share.
    Address(usize),
}

impl Slots {
    /// At most `max` slots in all and `max_per_ip` for one address.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_ip,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, unless a cap is reached. IPv6 addresses
    /// count by their /64 network, which one host is commonly given whole.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let ip = source(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if open.total >= self.max {
            return Err(Full::All(self.max));
        }
        if from_ip >= self.max_per_ip {
            return Err(Full::Address(self.max_per_ip));
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// Slots taken now.
    #[cfg(test)]
    fn taken(&self) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        (open.total, open.per_ip.len())
    }
}

/// The address a connection counts against: an IPv4 address (or an IPv4-mapped IPv6
/// one) itself, an IPv6 address's /64 network.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(network.into())
            }
        },
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_all_and_per_address_and_given_back() {
        let (max, per_ip) = (10, 4);
        let slots = Slots::new(max, per_ip);
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let first: Vec<_> = (0..per_ip)
            .map(|_| slots.admit(ip(1)).expect("a slot"))
            .collect();
        assert_eq!(slots.admit(ip(1)).err(), Some(Full::Address(per_ip)));
        let mut others: Vec<_> = (0..max - per_ip)
            .map(|i| slots.admit(ip(2 + (i / per_ip) as u8)).expect("a slot"))
            .collect();
        assert_eq!(slots.admit(ip(200)).err(), Some(Full::All(max)));
        others.pop();
        assert!(
            slots.admit(ip(200)).is_ok(),
            "a slot given back is free again"
        );
        drop(first);
        assert!(slots.admit(ip(1)).is_ok());
        drop(others);
        assert_eq!(slots.taken(), (0, 0), "every slot given back");
    }

    #[test]
    fn ipv6_addresses_count_by_their_network() {
        let slots = Slots::new(10, 2);
        let v6 = |host: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]);
        let held = [
            slots.admit(v6(1)).expect("a slot"),
            slots.admit(v6(2)).expect("a slot"),
        ];
        assert_eq!(slots.admit(v6(3)).err(), Some(Full::Address(2)), "one /64");
        let other = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(slots.admit(other).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("an address");
        let _a = slots.admit(mapped).expect("a slot");
        let _b = slots.admit(IpAddr::from([10, 0, 0, 1])).expect("a slot");
        assert!(
            slots.admit(mapped).is_err(),
            "mapped IPv4 counts as the IPv4 address"
        );
        drop(held);
    }
}
