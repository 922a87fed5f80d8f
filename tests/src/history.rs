//! Chaos-test histories: one JSON object per line, exactly the format of the project's
//! HISTORY-FORMAT.md (shared with an independent checker, so no field is added or
//! renamed here). Unknown fields are rejected when reading.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// An operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Get,
    Put,
    Delete,
    Cas,
    /// Create-if-absent.
    Create,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Took effect, and the response is as logged.
    Ok,
    /// cas/create: precondition not met (an observation); get/put/delete: not executed.
    Fail,
    /// May or may not have taken effect; stays open until the end of the history.
    #[serde(alias = "info", alias = "timeout", alias = "indeterminate")]
    Unknown,
    /// Definitely not executed.
    Error,
}

/// One logical client operation, from its first call to its final response (retries
/// with the same idempotency key included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// Client (lane) id.
    pub client: u64,
    /// What was done.
    pub op: OpKind,
    /// The key.
    pub key: String,
    /// Written value (put/create/cas) or value read (get, when found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// cas: the value the key must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// cas: the version the key must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    /// Writes: the key expires this long after the write (0 or absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// When the first request was sent, ns on the history's monotonic clock.
    pub call: u64,
    /// When the final response arrived (absent for `unknown`).
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub ret: Option<u64>,
    /// How it ended.
    pub result: Outcome,
    /// get: whether the key was present; delete: whether it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// get: the version read; writes: the version assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Free text (node, request id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Op {
    /// Checks the fields an operation of this kind and outcome must (not) have.
    pub fn validate(&self) -> Result<()> {
        let writes = matches!(self.op, OpKind::Put | OpKind::Create | OpKind::Cas);
        if writes && self.value.is_none() {
            bail!("{:?} without a value", self.op);
        }
        if self.op == OpKind::Cas && self.expected.is_none() && self.expected_version.is_none() {
            bail!("cas without expected or expected_version");
        }
        if self.op != OpKind::Cas && (self.expected.is_some() || self.expected_version.is_some()) {
            bail!("expected/expected_version on a {:?}", self.op);
        }
        if !writes && self.ttl_ms.is_some_and(|t| t > 0) {
            bail!("ttl_ms on a {:?}", self.op);
        }
        if self.op == OpKind::Get && self.result == Outcome::Ok {
            match self.found {
                None => bail!("an ok get without found"),
                Some(true) if self.value.is_none() => bail!("a get found without a value"),
                Some(false) if self.value.is_some() || self.version.is_some() => {
                    bail!("a get not found with a value or version")
                }
                _ => {}
            }
        }
        if self.result != Outcome::Unknown {
            match self.ret {
                None => bail!("a {:?} operation without a return time", self.result),
                Some(r) if r < self.call => bail!("returns before its call"),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Parses a history: blank lines and lines starting with `#` are skipped; every other
/// line must be one valid operation.
pub fn parse(text: &str) -> Result<Vec<Op>> {
    let mut ops = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let op: Op =
            serde_json::from_str(line).with_context(|| format!("line {}: {line}", n + 1))?;
        op.validate()
            .with_context(|| format!("line {}: {line}", n + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

/// Reads and parses a history file.
pub fn read(path: &Path) -> Result<Vec<Op>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text)
}

/// Writes one operation as one line.
pub fn write_line(out: &mut impl Write, op: &Op) -> Result<()> {
    serde_json::to_writer(&mut *out, op)?;
    out.write_all(b"\n")?;
    Ok(())
}
