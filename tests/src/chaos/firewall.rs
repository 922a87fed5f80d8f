//! Network partitions between nodes' loopback addresses, as iptables DROP rules.
//!
//! Every rule lives in one chain of this process's own ([`chain`]: the prefix and the
//! process id, so two runs on one machine never touch each other's rules), jumped to
//! from OUTPUT (loopback packets pass OUTPUT once, so dropping there cuts the pair in
//! that direction). The chain is created when a [`Firewall`] is made, after removing
//! chains left by crashed runs (whose process is gone), and is removed when the firewall
//! is dropped, also during a panic. Only addresses in 127.0.0.0/8 are ever named;
//! nothing else on the machine is touched.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The start of every chain this suite adds.
pub const CHAIN_PREFIX: &str = "QUORUM_KV_CHAOS";

/// The chain holding every rule this process adds.
pub fn chain() -> String {
    format!("{CHAIN_PREFIX}_{}", std::process::id())
}

/// The chain, and the DROP rules in it.
pub struct Firewall {
    blocked: Vec<(Ipv4Addr, Ipv4Addr)>,
}

fn iptables(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("running iptables (install it: apt-get install iptables)")
}

fn must(args: &[&str]) -> Result<()> {
    let out = iptables(args)?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes `chain` and every jump to it, if they exist.
fn remove_chain(chain: &str) {
    // A crashed run may have left several jumps.
    while iptables(&["-D", "OUTPUT", "-j", chain]).is_ok_and(|o| o.status.success()) {}
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

/// Removes the chains of runs whose process is gone. (A chain without a process id is
/// an older version's, whose rules name addresses this version never uses.)
fn remove_leftover_chains() -> Result<()> {
    let listing = iptables(&["-S"])?;
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let Some(name) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(suffix) = name.strip_prefix(CHAIN_PREFIX) else {
            continue;
        };
        let Some(pid) = suffix
            .strip_prefix('_')
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_chain(name);
        }
    }
    Ok(())
}

impl Firewall {
    /// Creates the chain (removing a leftover one first). Fails, loudly, without root or
    /// without iptables: partition tests must never pass by not partitioning.
    pub fn new() -> Result<Self> {
        let euid = Command::new("id")
            .arg("-u")
            .output()
            .context("running id -u")?;
        if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
            bail!("network partitions need root (iptables); run the chaos suite as root");
        }
        remove_leftover_chains()?;
        let chain = chain();
        remove_chain(&chain);
        must(&["-N", &chain])?;
        must(&["-I", "OUTPUT", "1", "-j", &chain])?;
        Ok(Self { blocked: vec![] })
    }

    /// Drops packets between `a` and `b`, both ways.
    pub fn block(&mut self, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
        for ip in [a, b] {
            if !ip.is_loopback() {
                bail!("refusing a firewall rule for {ip}: only 127.0.0.0/8 is ever touched");
            }
        }
        if a == b || self.is_blocked(a, b) {
            return Ok(());
        }
        for (src, dst) in [(a, b), (b, a)] {
            let (src, dst) = (src.to_string(), dst.to_string());
            must(&["-A", &chain(), "-s", &src, "-d", &dst, "-j", "DROP"])?;
        }
        self.blocked.push((a, b));
        Ok(())
    }

    /// Whether `a` and `b` are cut off from each other.
    pub fn is_blocked(&self, a: Ipv4Addr, b: Ipv4Addr) -> bool {
        self.blocked
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    /// Removes every rule (the chain stays until drop).
    pub fn heal(&mut self) -> Result<()> {
        must(&["-F", &chain()])?;
        self.blocked.clear();
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        remove_chain(&chain());
    }
}
