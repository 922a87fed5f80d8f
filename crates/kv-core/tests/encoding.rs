//! The postcard encodings of log entries and stored entries are a promise to old data
//! and to other nodes: these tests pin them, byte for byte.

use kv_core::{Command, Entry, Limits, Precondition, Request, Token, Ttl};
use serde::{Deserialize, Serialize};

/// `Entry` as first released, with a plain `Vec<u8>` value.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlainEntry {
    value: Vec<u8>,
    revision: u64,
    create_revision: u64,
    version: u64,
    expires_at_ms: Option<u64>,
}

/// `Command` as first released, with a plain `Vec<u8>` value.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum PlainCommand {
    Set {
        key: String,
        value: Vec<u8>,
        ttl: Ttl,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    Expire {
        up_to_ms: u64,
    },
    DeletePrefix {
        prefix: String,
    },
    Batch(Vec<PlainCommand>),
    Idempotent {
        id: String,
        fingerprint: u128,
        retain_ms: u64,
        command: Box<PlainCommand>,
    },
    // Appended later: earlier variants keep their numbers.
    Purge,
    WithinQuota {
        max_data_bytes: u64,
        command: Box<PlainCommand>,
    },
    Session {
        id: u128,
        seq: u64,
        ack: u64,
        fingerprint: u128,
        idle_ms: u64,
        command: Box<PlainCommand>,
    },
    OpenSession {
        id: u128,
        idle_ms: u64,
    },
    WithinLimits {
        limits: Limits,
        command: Box<PlainCommand>,
    },
    PutToken {
        id: u64,
        token: Token,
    },
    RevokeToken {
        id: u64,
    },
    Authorized {
        token: u64,
        command: Box<PlainCommand>,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlainRequest {
    stamp_ms: u64,
    command: PlainCommand,
}

fn plain_entry(e: &Entry) -> PlainEntry {
    PlainEntry {
        value: e.value.clone(),
        revision: e.revision,
        create_revision: e.create_revision,
        version: e.version,
        expires_at_ms: e.expires_at_ms,
    }
}

fn plain_command(c: &Command) -> PlainCommand {
    match c {
        Command::Set {
            key,
            value,
            ttl,
            precondition,
        } => PlainCommand::Set {
            key: key.clone(),
            value: value.clone(),
            ttl: *ttl,
            precondition: *precondition,
        },
        Command::Delete { key, precondition } => PlainCommand::Delete {
            key: key.clone(),
            precondition: *precondition,
        },
        Command::Expire { up_to_ms } => PlainCommand::Expire {
            up_to_ms: *up_to_ms,
        },
        Command::DeletePrefix { prefix } => PlainCommand::DeletePrefix {
            prefix: prefix.clone(),
        },
        Command::Batch(commands) => {
            PlainCommand::Batch(commands.iter().map(plain_command).collect())
        }
        Command::Idempotent {
            id,
            fingerprint,
            retain_ms,
            command,
        } => PlainCommand::Idempotent {
            id: id.clone(),
            fingerprint: *fingerprint,
            retain_ms: *retain_ms,
            command: Box::new(plain_command(command)),
        },
        Command::Purge => PlainCommand::Purge,
        Command::WithinQuota {
            max_data_bytes,
            command,
        } => PlainCommand::WithinQuota {
            max_data_bytes: *max_data_bytes,
            command: Box::new(plain_command(command)),
        },
        Command::WithinLimits { limits, command } => PlainCommand::WithinLimits {
            limits: *limits,
            command: Box::new(plain_command(command)),
        },
        Command::Session {
            id,
            seq,
            ack,
            fingerprint,
            idle_ms,
            command,
        } => PlainCommand::Session {
            id: *id,
            seq: *seq,
            ack: *ack,
            fingerprint: *fingerprint,
            idle_ms: *idle_ms,
            command: Box::new(plain_command(command)),
        },
        Command::OpenSession { id, idle_ms } => PlainCommand::OpenSession {
            id: *id,
            idle_ms: *idle_ms,
        },
        Command::PutToken { id, token } => PlainCommand::PutToken {
            id: *id,
            token: token.clone(),
        },
        Command::RevokeToken { id } => PlainCommand::RevokeToken { id: *id },
        Command::Authorized { token, command } => PlainCommand::Authorized {
            token: *token,
            command: Box::new(plain_command(command)),
        },
    }
}

fn plain_request(r: &Request) -> PlainRequest {
    PlainRequest {
        stamp_ms: r.stamp_ms,
        command: plain_command(&r.command),
    }
}

fn entry(value: Vec<u8>) -> Entry {
    Entry {
        value,
        revision: 300,
        create_revision: 7,
        version: 2,
        expires_at_ms: Some(1_700_000_000_000),
    }
}

fn request(first: Vec<u8>, second: Vec<u8>) -> Request {
    Request {
        stamp_ms: 1_700_000_000_000,
        command: Command::Batch(vec![
            Command::Set {
                key: "k/1".into(),
                value: first,
                ttl: Ttl::AfterMs(5000),
                precondition: Precondition::Revision(42),
            },
            Command::Idempotent {
                id: "req".into(),
                fingerprint: 9,
                retain_ms: 1000,
                command: Box::new(Command::Set {
                    key: "k/2".into(),
                    value: second,
                    ttl: Ttl::Keep,
                    precondition: Precondition::Absent,
                }),
            },
            Command::Delete {
                key: "k/3".into(),
                precondition: Precondition::Always,
            },
        ]),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

/// Values whose length prefixes take one, two, three and four varint bytes.
fn values() -> Vec<Vec<u8>> {
    [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 21) + 3]
        .into_iter()
        .map(|n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect()
}

#[test]
fn entry_encoding_is_the_released_one() {
    // Produced by the released code (value as a plain Vec<u8>).
    let golden = [
        0x07, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x7d, 0xac, 0x02, 0x07, 0x02, 0x01, 0x80, 0xd0,
        0x95, 0xff, 0xbc, 0x31,
    ];
    let e = entry(br#"{"a":1}"#.to_vec());
    assert_eq!(encode(&e), golden);
    assert_eq!(postcard::from_bytes::<Entry>(&golden).expect("decodes"), e);
}

#[test]
fn request_encoding_is_the_released_one() {
    // Produced by the released code (values as plain Vec<u8>).
    let golden = [
        0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x04, 0x03, 0x00, 0x03, 0x6b, 0x2f, 0x31, 0x06, 0x5b,
        0x74, 0x72, 0x75, 0x65, 0x5d, 0x01, 0x88, 0x27, 0x02, 0x2a, 0x05, 0x03, 0x72, 0x65, 0x71,
        0x09, 0xe8, 0x07, 0x00, 0x03, 0x6b, 0x2f, 0x32, 0x03, 0x22, 0x78, 0x22, 0x02, 0x01, 0x01,
        0x03, 0x6b, 0x2f, 0x33, 0x00,
    ];
    let r = request(b"[true]".to_vec(), br#""x""#.to_vec());
    assert_eq!(encode(&r), golden);
    assert_eq!(
        postcard::from_bytes::<Request>(&golden).expect("decodes"),
        r
    );
}

#[test]
fn later_commands_take_the_next_variant_numbers() {
    // As first logged, and still decoded: a proposer's data quota alone.
    let quota = Command::WithinQuota {
        max_data_bytes: 1 << 33,
        command: Box::new(Command::Purge),
    };
    let golden = [0x07, 0x80, 0x80, 0x80, 0x80, 0x20, 0x06];
    assert_eq!(encode(&quota), golden);
    assert_eq!(encode(&plain_command(&quota)), golden);
    assert_eq!(
        postcard::from_bytes::<Command>(&golden).expect("decodes"),
        quota
    );
    let c = Command::WithinLimits {
        limits: Limits {
            max_data_bytes: 1 << 33,
            max_records: 7,
        },
        command: Box::new(Command::Session {
            id: 5,
            seq: 2,
            ack: 1,
            fingerprint: 9,
            idle_ms: 300,
            command: Box::new(Command::Purge),
        }),
    };
    let golden = [
        0x0a, 0x80, 0x80, 0x80, 0x80, 0x20, 0x07, 0x08, 0x05, 0x02, 0x01, 0x09, 0xac, 0x02, 0x06,
    ];
    assert_eq!(encode(&c), golden);
    assert_eq!(encode(&plain_command(&c)), golden);
    assert_eq!(
        postcard::from_bytes::<Command>(&golden).expect("decodes"),
        c
    );
    let open = Command::OpenSession { id: 5, idle_ms: 3 };
    assert_eq!(encode(&open), [0x09, 0x05, 0x03]);
    assert_eq!(encode(&plain_command(&open)), [0x09, 0x05, 0x03]);
    let authorized = Command::Authorized {
        token: 3,
        command: Box::new(Command::RevokeToken { id: 4 }),
    };
    assert_eq!(encode(&authorized), [0x0d, 0x03, 0x0c, 0x04]);
    assert_eq!(
        encode(&plain_command(&authorized)),
        [0x0d, 0x03, 0x0c, 0x04]
    );
    let put = Command::PutToken {
        id: 1,
        token: Token {
            name: "a".into(),
            hash: [0; 32],
            admin: true,
            grants: vec![kv_core::Grant {
                prefix: "p".into(),
                access: kv_core::Access::Write,
            }],
            created_ms: 2,
        },
    };
    let mut golden = vec![0x0b, 0x01, 0x01, b'a'];
    golden.extend([0; 32]);
    golden.extend([0x01, 0x01, 0x01, b'p', 0x01, 0x02]);
    assert_eq!(encode(&put), golden);
    assert_eq!(encode(&plain_command(&put)), golden);
}

#[test]
fn values_of_every_length_class_encode_as_plain_byte_vectors_do() {
    for value in values() {
        let e = entry(value.clone());
        let bytes = encode(&plain_entry(&e));
        assert_eq!(encode(&e), bytes, "entry with a {}-byte value", value.len());
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).expect("decodes"), e);

        let r = request(value.clone(), value.iter().rev().copied().collect());
        let bytes = encode(&plain_request(&r));
        assert_eq!(
            encode(&r),
            bytes,
            "request with {}-byte values",
            value.len()
        );
        assert_eq!(postcard::from_bytes::<Request>(&bytes).expect("decodes"), r);
    }
}

#[test]
fn json_of_entries_and_requests_is_unchanged() {
    let e = entry(br#"{"a":1}"#.to_vec());
    let json = serde_json::to_string(&plain_entry(&e)).expect("encodes");
    assert!(json.starts_with(r#"{"value":[123,34,97"#), "{json}");
    assert_eq!(serde_json::to_string(&e).expect("encodes"), json);
    assert_eq!(serde_json::from_str::<Entry>(&json).expect("decodes"), e);

    let r = request(b"[true]".to_vec(), br#""x""#.to_vec());
    let json = serde_json::to_string(&plain_request(&r)).expect("encodes");
    assert_eq!(serde_json::to_string(&r).expect("encodes"), json);
    assert_eq!(serde_json::from_str::<Request>(&json).expect("decodes"), r);
}
