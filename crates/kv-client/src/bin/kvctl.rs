//! `kvctl`: the quorum-kv command line.
//!
//! Exit codes: 0 ok, 1 not found or precondition failed, 2 usage or a refused request,
//! 3 unavailable (or the outcome of a write is unknown).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kv_client::{
    ClientError, ClientOptions, Created, Entry, KvClient, NewToken, RetryPolicy, SetOptions,
    Swapped, TokenGrant, LOCAL_CLUSTER,
};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(version, about = "Command line for a quorum-kv cluster")]
struct Cli {
    /// Comma-separated node URLs.
    #[arg(long, env = "KV_ENDPOINTS", default_value = LOCAL_CLUSTER, global = true)]
    endpoints: String,
    /// Give up after this many seconds, retries included.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    /// Bearer token, for clusters with auth on.
    #[arg(long, env = "KV_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM file of the CA to trust for https endpoints (instead of the system's roots).
    #[arg(long, env = "KV_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// PEM file of a client certificate, for nodes that require one (with --key).
    #[arg(long = "cert", env = "KV_CERT", global = true, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long = "key", env = "KV_KEY", global = true, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// How to print results.
    #[arg(long, value_enum, default_value_t = Output::Json, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a key's entry (exit 1 if absent).
    Get { key: String },
    /// Write a JSON value ("-" reads it from standard input).
    Put {
        key: String,
        json: String,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Create only if the key is absent (exit 1 and print the current entry if not).
        #[arg(long, conflicts_with = "if_revision")]
        if_absent: bool,
        /// Write only if the key is at this revision (exit 1 and print the current entry if not).
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Delete only if the key is at this revision.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// List the live keys with a prefix, in key order.
    List {
        prefix: String,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete every key with a (non-empty) prefix.
    DeletePrefix { prefix: String },
    /// Cluster information.
    Cluster {
        #[command(subcommand)]
        what: ClusterCmd,
    },
    /// Access tokens (needs an admin token).
    Token {
        #[command(subcommand)]
        what: TokenCmd,
    },
    /// Download a backup of the whole cluster from its leader into FILE, checked against
    /// its SHA-256 (needs an admin token); `kv-server restore` seeds a node from it.
    Backup { file: std::path::PathBuf },
    /// Leadership (needs an admin token).
    Leader {
        #[command(subcommand)]
        what: LeaderCmd,
    },
    /// Cluster membership (needs an admin token).
    Member {
        #[command(subcommand)]
        what: MemberCmd,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Members with their roles and how far each has replicated.
    List,
    /// Add a node as a learner and print its id and the `join` line for its
    /// configuration; start it, then `member promote ID`.
    Add {
        /// The new node's client address (ip:port).
        #[arg(long)]
        client_addr: String,
        /// The new node's raft address (ip:port).
        #[arg(long)]
        raft_addr: String,
        /// Its id (default: one above the highest member's).
        #[arg(long)]
        id: Option<u64>,
    },
    /// Make a learner a voter, waiting (up to --timeout) until it has caught up.
    Promote { id: u64 },
    /// Remove a node, voter or learner (the leader too: the others elect another).
    Remove { id: u64 },
    /// Replace node OLD (say, one whose disk died) with a new node, on OLD's addresses or
    /// new ones: adds the new node as a learner under a new id, prints its `id` and
    /// `join` lines on stderr, waits (up to --timeout) until it has been started and
    /// caught up, promotes it if OLD was a voter, and removes OLD (first instead, when
    /// the new node takes its addresses). Run again after a timeout to finish.
    Replace {
        /// The node to replace.
        old: u64,
        /// The new node's client address (ip:port).
        #[arg(long)]
        client_addr: String,
        /// The new node's raft address (ip:port).
        #[arg(long)]
        raft_addr: String,
        /// Its id (default: one above the highest any member ever had).
        #[arg(long)]
        id: Option<u64>,
    },
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Hand leadership to voter N (default: the one that has replicated furthest), as
    /// before restarting or removing the leader; writes pause for about a second.
    Move { to: Option<u64> },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it with its secret, which is shown only now.
    Create {
        /// Who holds it (a service, a workspace).
        #[arg(long)]
        name: String,
        /// May manage tokens and read the cluster's state.
        #[arg(long)]
        admin: bool,
        /// May read keys under this prefix ("" for every key); repeatable.
        #[arg(long = "read", value_name = "PREFIX")]
        read: Vec<String>,
        /// May read and write keys under this prefix; repeatable.
        #[arg(long = "write", value_name = "PREFIX")]
        write: Vec<String>,
    },
    /// List tokens, without secrets.
    List,
    /// Revoke a token on every node.
    Revoke {
        /// The token's id (16 hex digits).
        id: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Leader, term, members and indexes as the answering node sees them.
    Status,
}

/// A result to print and the exit code that goes with it.
struct Done {
    value: Value,
    code: u8,
}

fn ok(value: Value) -> Done {
    Done { value, code: 0 }
}

fn entry_row(e: &Entry<Value>) -> String {
    let ttl = e
        .ttl_ms
        .map_or("-".to_owned(), |t| format!("{:.1}s", t as f64 / 1000.0));
    format!(
        "{}\t{}\t{}\t{}\t{}",
        e.key, e.revision, e.version, ttl, e.value
    )
}

fn print(done: &Done, output: Output) {
    match output {
        Output::Json => println!("{}", done.value),
        Output::Table => match &done.value {
            Value::Array(items) => {
                for item in items {
                    match serde_json::from_value::<Entry<Value>>(item.clone()) {
                        Ok(e) => println!("{}", entry_row(&e)),
                        Err(_) => println!(
                            "{}",
                            item.as_str()
                                .map_or_else(|| item.to_string(), str::to_owned)
                        ),
                    }
                }
            }
            Value::Object(map) => {
                match serde_json::from_value::<Entry<Value>>(done.value.clone()) {
                    Ok(e) => println!("{}", entry_row(&e)),
                    Err(_) => {
                        for (k, v) in map {
                            println!("{k}\t{v}");
                        }
                    }
                }
            }
            other => println!("{other}"),
        },
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn read_value(raw: &str) -> Result<Value, String> {
    let text = if raw == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        s
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| format!("the value is not valid JSON: {e}"))
}

/// Promotes learner `id`, asking again (up to `timeout_s`) while it is catching up in the
/// background; asking again is harmless.
async fn promote_when_caught_up(
    client: &KvClient,
    id: u64,
    timeout_s: u64,
) -> Result<Value, ClientError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    loop {
        match client.promote_member(id).await {
            Err(ClientError::Rejected { error, .. })
                if error.known_code() == Some(kv_core::ErrorCode::NotCaughtUp)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// A member as `GET /v1/admin/members` lists it.
struct Member {
    id: u64,
    voter: bool,
    leader: bool,
    addrs: [Option<std::net::SocketAddr>; 2],
}

fn members_of(listing: &Value) -> Vec<Member> {
    let addr = |m: &Value, field: &str| m[field].as_str().and_then(|a| a.parse().ok());
    listing["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| Member {
            id: m["id"].as_u64().unwrap_or_default(),
            voter: m["voter"] == true,
            leader: m["leader"] == true,
            addrs: [addr(m, "client_addr"), addr(m, "raft_addr")],
        })
        .collect()
}

/// Runs a membership call again while another change (say, one a previous run left
/// going) is still in progress.
async fn when_no_change_runs<F, Fut>(timeout_s: u64, call: F) -> Result<Value, ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Value, ClientError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    loop {
        match call().await {
            Err(ClientError::Rejected { error, .. })
                if error.known_code() == Some(kv_core::ErrorCode::MembershipChangeInProgress)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// `member replace`: the new node joins as a learner and, if `old` was a voter, is
/// promoted once it has caught up; `old` leaves. `old` leaves first when the new node
/// takes one of its addresses (a node whose disk died, restarted empty), otherwise
/// last, so the cluster never has fewer voters than it had. A leader hands leadership
/// on before it leaves. Each step is skipped when a previous run did it, so running
/// it again after a timeout finishes the job.
async fn replace_member(
    client: &KvClient,
    old: u64,
    client_addr: &str,
    raft_addr: &str,
    id: Option<u64>,
    timeout_s: u64,
) -> Result<Value, ClientError> {
    let usage = |what: &str, raw: &str| {
        raw.parse::<std::net::SocketAddr>()
            .map_err(|_| ClientError::Codec(format!("{what} {raw:?} is not an ip:port address")))
    };
    let wanted = [
        Some(usage("--client-addr", client_addr)?),
        Some(usage("--raft-addr", raft_addr)?),
    ];
    let listed = members_of(&client.members().await?);
    let previous = listed.iter().find(|m| m.id == old);
    // Whether the old node should leave before its replacement comes: it holds an
    // address the replacement needs.
    let leaves_first =
        previous.is_some_and(|m| m.addrs.iter().any(|a| a.is_some() && wanted.contains(a)));
    let was_voter = previous.is_none_or(|m| m.voter);
    let leave = |leader: bool| async move {
        if leader {
            when_no_change_runs(timeout_s, || client.move_leader(None)).await?;
        }
        when_no_change_runs(timeout_s, || client.remove_member(old)).await
    };
    let mut removed = false;
    if leaves_first {
        leave(previous.is_some_and(|m| m.leader)).await?;
        removed = true;
    }
    let listed = members_of(&client.members().await?);
    let existing = listed.iter().find(|m| m.addrs == wanted && m.id != old);
    let added = match existing {
        Some(m) => m.id,
        None => {
            let answer =
                when_no_change_runs(timeout_s, || client.add_member(client_addr, raft_addr, id))
                    .await?;
            let new_id = answer["id"].as_u64().unwrap_or_default();
            eprintln!(
                "node {new_id} added as a learner. Start it with\n  id = {new_id}\n  \
                 client_addr = \"{client_addr}\"\n  raft_addr = \"{raft_addr}\"\n  \
                 join = \"{}\"\nand an empty data_dir; waiting up to {timeout_s} s for it to catch up",
                answer["cluster_id"].as_str().unwrap_or_default()
            );
            new_id
        }
    };
    if was_voter && !existing.is_some_and(|m| m.voter) {
        promote_when_caught_up(client, added, timeout_s).await?;
    }
    if !removed {
        let listed = members_of(&client.members().await?);
        if let Some(m) = listed.iter().find(|m| m.id == old) {
            leave(m.leader).await?;
        }
    }
    Ok(json!({ "removed": old, "replaced_by": added, "members": client.members().await? }))
}

async fn run(client: &KvClient, command: Cmd, timeout_s: u64) -> Result<Done, ClientError> {
    Ok(match command {
        Cmd::Get { key } => match client.get::<Value>(&key).await? {
            Some(e) => ok(to_json(&e)),
            None => Done {
                value: json!({ "error": "key not found", "key": key }),
                code: 1,
            },
        },
        Cmd::Put {
            key,
            json,
            ttl,
            if_absent,
            if_revision,
        } => {
            let value = match read_value(&json) {
                Ok(v) => v,
                Err(message) => {
                    return Ok(Done {
                        value: json!({ "error": message }),
                        code: 2,
                    })
                }
            };
            let ttl = ttl.map(Duration::from_secs);
            if if_absent {
                match client.create(&key, &value, ttl).await? {
                    Created::Created(meta) => ok(to_json(&meta)),
                    Created::Exists(current) => Done {
                        value: json!({ "error": "key exists", "current": current }),
                        code: 1,
                    },
                }
            } else if let Some(revision) = if_revision {
                if ttl.is_some() {
                    return Ok(Done {
                        value: json!({ "error": "--ttl with --if-revision is not supported" }),
                        code: 2,
                    });
                }
                match client.compare_and_set(&key, &value, revision).await? {
                    Swapped::Swapped(meta) => ok(to_json(&meta)),
                    Swapped::Mismatch(current) => Done {
                        value: json!({ "error": "revision mismatch", "current": current }),
                        code: 1,
                    },
                }
            } else {
                ok(to_json(
                    &client
                        .set(
                            &key,
                            &value,
                            SetOptions {
                                ttl,
                                keep_ttl: false,
                            },
                        )
                        .await?,
                ))
            }
        }
        Cmd::Delete {
            key,
            if_revision: None,
        } => ok(to_json(&client.delete(&key).await?)),
        Cmd::Delete {
            key,
            if_revision: Some(revision),
        } => match client.delete_if::<Value>(&key, revision).await? {
            Swapped::Swapped(d) => ok(to_json(&d)),
            Swapped::Mismatch(current) => Done {
                value: json!({ "error": "revision mismatch", "current": current }),
                code: 1,
            },
        },
        Cmd::List { prefix, keys_only } => {
            let entries = client
                .list_with::<Value>(&prefix, 1000)
                .collect_all()
                .await?;
            if keys_only {
                ok(Value::Array(
                    entries.into_iter().map(|e| Value::String(e.key)).collect(),
                ))
            } else {
                ok(to_json(&entries))
            }
        }
        Cmd::DeletePrefix { prefix } => ok(to_json(&client.delete_prefix(&prefix).await?)),
        Cmd::Cluster {
            what: ClusterCmd::Status,
        } => ok(client.cluster().await?),
        Cmd::Token {
            what:
                TokenCmd::Create {
                    name,
                    admin,
                    read,
                    write,
                },
        } => {
            let grants = read
                .into_iter()
                .map(|p| (p, "read"))
                .chain(write.into_iter().map(|p| (p, "write")))
                .map(|(prefix, access)| TokenGrant {
                    prefix,
                    access: access.to_owned(),
                })
                .collect();
            let spec = NewToken {
                name,
                admin,
                grants,
            };
            ok(to_json(&client.create_token(&spec).await?))
        }
        Cmd::Token {
            what: TokenCmd::List,
        } => ok(to_json(&client.tokens().await?)),
        Cmd::Backup { file } => {
            let backup = client.backup_to(&file).await?;
            ok(
                json!({ "file": file.display().to_string(), "index": backup.index, "bytes": backup.bytes }),
            )
        }
        Cmd::Leader {
            what: LeaderCmd::Move { to },
        } => ok(client.move_leader(to).await?),
        Cmd::Member {
            what: MemberCmd::List,
        } => ok(client.members().await?),
        Cmd::Member {
            what:
                MemberCmd::Add {
                    client_addr,
                    raft_addr,
                    id,
                },
        } => ok(client.add_member(&client_addr, &raft_addr, id).await?),
        Cmd::Member {
            what: MemberCmd::Promote { id },
        } => ok(promote_when_caught_up(client, id, timeout_s).await?),
        Cmd::Member {
            what: MemberCmd::Remove { id },
        } => ok(client.remove_member(id).await?),
        Cmd::Member {
            what:
                MemberCmd::Replace {
                    old,
                    client_addr,
                    raft_addr,
                    id,
                },
        } => ok(replace_member(client, old, &client_addr, &raft_addr, id, timeout_s).await?),
        Cmd::Token {
            what: TokenCmd::Revoke { id },
        } => ok(to_json(&client.revoke_token(&id).await?)),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let policy = RetryPolicy {
        deadline: Duration::from_secs(cli.timeout),
        ..RetryPolicy::default()
    };
    let endpoints = cli
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let read = |path: &Option<std::path::PathBuf>, what: &str| {
        path.as_deref()
            .map(std::fs::read)
            .transpose()
            .map_err(|e| format!("reading {what}: {e}"))
    };
    let files = (|| {
        let ca_pem = read(&cli.cacert, "--cacert")?;
        let identity_pem = match (
            read(&cli.client_cert, "--cert")?,
            read(&cli.client_key, "--key")?,
        ) {
            (Some(mut cert), Some(key)) => {
                cert.extend(key);
                Some(cert)
            }
            _ => None,
        };
        Ok::<_, String>((ca_pem, identity_pem))
    })();
    let (ca_pem, identity_pem) = match files {
        Ok(files) => files,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::from(2);
        }
    };
    let options = ClientOptions {
        policy,
        token: cli.token.clone().filter(|t| !t.is_empty()),
        ca_pem,
        identity_pem,
    };
    let client = match KvClient::with_options(endpoints, options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&client, cli.command, cli.timeout).await {
        Ok(done) => {
            print(&done, cli.output);
            ExitCode::from(done.code)
        }
        Err(e) => {
            eprintln!("kvctl: {e}");
            let code = match e {
                ClientError::NotFound(_) | ClientError::PreconditionFailed { .. } => 1,
                ClientError::Unavailable { .. } | ClientError::OutcomeUnknown { .. } => 3,
                ClientError::Rejected { .. }
                | ClientError::Input(_)
                | ClientError::Codec(_)
                | ClientError::Setup(_) => 2,
            };
            ExitCode::from(code)
        }
    }
}
