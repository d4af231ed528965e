//! clap definitions of every subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit codes of every command, shown by `auditgate --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success; for verify, verify-export and verify-proof: intact
  1   verify, verify-export, verify-proof: tampered (the first bad entry is named);
      other commands: failed (a store that cannot be read or holds no log, a backup not
      written, an unhealthy sidecar for `health`)
  2   verify, verify-export, verify-proof: the log, export or proof could not be read, or
      the export carries no proofs
  64  the command line or the configuration file is invalid (every error listed)
Writing to a closed standard output (`auditgate query | head -1`) ends quietly.";

#[derive(Debug, Parser)]
#[command(
    name = "auditgate",
    version,
    about = "A reverse-proxy sidecar that gives any unmodified HTTP app a tamper-evident audit log",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: proxy in front of the app, admin API beside it.
    #[command(after_help = RUN_ENVIRONMENT)]
    Run {
        /// The configuration file.
        #[arg(
            long,
            short,
            default_value = "auditgate.toml",
            env = "AUDITGATE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Start a built-in sample app behind the sidecar, send it sample traffic, and print where to look.
    Demo(DemoArgs),
    /// Validate configuration files and list their rules with their methods and status (exit 0
    /// valid, 64 invalid, every error listed). Warnings (exit code unchanged) name placeholder
    /// hashes and secrets, rules an earlier rule shadows, `/posts/:id` or `/items/*` paths that
    /// only match literally, and values that look like mistyped sources (`response.body/id`).
    Check {
        /// Configuration files to check (default: $AUDITGATE_CONFIG, or auditgate.toml).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Vec<PathBuf>,
        /// More configuration files to check.
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Also list the operations of this OpenAPI document (JSON or YAML) that change state
        /// and that no rule of the configuration records (exit code unchanged).
        #[arg(long, value_name = "SPEC")]
        coverage: Option<PathBuf>,
    },
    /// Write rules for you: `rules from-openapi SPEC` drafts a rule per operation of an OpenAPI
    /// document, `rules suggest --config FILE` one per route learned from traffic.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Show which rule a request would match and the entry it would produce, without a proxy.
    Explain(ExplainArgs),
    /// Query the entries of a store.
    Query(QueryArgs),
    /// Export the entries of a store as CSV, JSON or NDJSON, streamed.
    Export(ExportArgs),
    /// Make an Ed25519 key that signs tree heads: writes PATH (private, mode 0600), PATH.pub and
    /// PATH.vkey (the verifier key of the log's checkpoints), and prints the verifier key.
    Keygen {
        /// Where the private key goes; the public key goes next to it with `.pub` appended, the
        /// checkpoint verifier key with `.vkey`.
        #[arg(long)]
        out: PathBuf,
        /// The origin of the log's checkpoints, the key name in the verifier key (`[log] origin`;
        /// default: the host name, the default log id), e.g. audit.example.com/orders.
        #[arg(long)]
        origin: Option<String>,
    },
    /// Check a log: every entry against its leaf hash, every tree node, every signed head
    /// (exit 0 intact, 1 tampered, 2 could not read).
    Verify(VerifyArgs),
    /// Check an NDJSON export made with proofs, without the database (exit 0 intact, 1 tampered,
    /// 2 could not read).
    VerifyExport(VerifyExportArgs),
    /// Check offline proofs of single entries: C2SP tlog-proof files, from GET
    /// /api/v1/entries/{id}/tlog-proof or `export --bundle`, against the log's verifier key;
    /// prints a line per file (exit 0 all valid, 1 any invalid, 2 a file or the key could not be
    /// read or a file is not a tlog proof).
    VerifyProof(VerifyProofArgs),
    /// Check an object-storage archive (`[[archive]]`) on its own, in its bucket
    /// (s3://BUCKET/PREFIX) or in a local copy (a directory): every object's proofs, signed
    /// head and checkpoint, and no gap, repeat or reordering between objects (exit 0 intact, 1
    /// tampered, 2 could not read).
    VerifyArchive(VerifyArchiveArgs),
    /// Copy a SQLite store consistently, also while a sidecar writes to it (for PostgreSQL,
    /// print the pg_dump to run). The copy verifies with `auditgate verify --db FILE`.
    Backup(BackupArgs),
    /// Prune entries past their retention now: delete their rows, keep their leaf hashes, and
    /// record an `audit.pruned` entry. Safe to run beside a running sidecar.
    Prune(PruneArgs),
    /// Write the log as C2SP tlog tiles into a directory (`checkpoint`, `tile/...`), the same
    /// files the admin listener serves under /tlog/, so the log can be mirrored to any static
    /// host or bucket and checked there with any tlog client. Reads the store only.
    Tiles(TilesArgs),
    /// Ask a running sidecar whether it is healthy: GET an admin URL, exit 0 on a 2xx answer,
    /// 1 otherwise (for a container HEALTHCHECK, where the image has no curl).
    Health {
        /// The admin endpoint to ask: /healthz (alive) or /readyz (can take writes).
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
        /// Longest wait for the answer.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
    /// Make a new admin token and print it with the SHA-256 the config stores.
    Token {
        /// Name for the token's holder (recorded as the actor of their queries).
        #[arg(long, default_value = "ops")]
        name: String,
        /// Scopes, comma-separated: read, export, write (anything else is refused, as `check`
        /// refuses it).
        #[arg(long, default_value = "read,export")]
        scopes: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Draft a commented rule per operation that changes state (POST, PUT, PATCH, DELETE) of an
    /// OpenAPI 3.x or Swagger 2.0 document (JSON or YAML), and a [redact] section for its secret
    /// fields, as TOML to append to a config.
    FromOpenapi(FromOpenapiArgs),
    /// Draft a rule per route and method learned from traffic (`[discover] enabled = true`)
    /// that no rule covers yet, as TOML to append to the config: mutations (POST, PUT, PATCH,
    /// DELETE), busiest route first.
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The sidecar's configuration: its `[discover]` file is read, and routes its rules already
    /// cover are left out.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The SQLite store whose learned routes to read (`<db>.routes.json` beside it), when there
    /// is no configuration at hand.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub db: Option<PathBuf>,
    /// The learned routes file itself.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "db"])]
    pub routes: Option<PathBuf>,
    /// Also draft rules for reads (GET).
    #[arg(long)]
    pub reads: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FromOpenapiArgs {
    /// The OpenAPI or Swagger document, JSON or YAML.
    pub spec: PathBuf,
    /// Also draft rules for reads (GET).
    #[arg(long)]
    pub reads: bool,
    /// The path prefix the sidecar sees in front of the document's paths, instead of the first
    /// server URL's path (OpenAPI 3) or basePath (Swagger 2.0); "" for none.
    #[arg(long, value_name = "PREFIX")]
    pub base_path: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Writes `text` to standard output. A closed standard output (`auditgate query | head -1`) is
/// not an error: the reader took what it wanted, and the rest is dropped quietly. Any other
/// failure (a full disk behind a redirect) is returned.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's database goes (default: a new temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy_listen: String,
    /// Admin and viewer listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Exit once the sample traffic is done instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "auditgate.toml")]
    pub config: PathBuf,
    /// HTTP method, e.g. DELETE.
    pub method: String,
    /// Path and query, e.g. /api/users/42?force=1.
    pub target: String,
    /// The status the app answers with.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// A request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The request body (e.g. JSON).
    #[arg(long)]
    pub body: Option<String>,
    /// A response header, 'Name: value' (repeatable).
    #[arg(long = "response-header", value_name = "HEADER")]
    pub response_headers: Vec<String>,
    /// The response body (e.g. JSON).
    #[arg(long)]
    pub response_body: Option<String>,
    /// The client's socket address, to test trusted-proxy handling.
    #[arg(long, default_value = "127.0.0.1")]
    pub peer: String,
}

/// The filters `query` and `export` share, named as the admin API's parameters.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Actor id or email.
    #[arg(long)]
    pub actor: Option<String>,
    /// Exact action.
    #[arg(long)]
    pub action: Option<String>,
    /// Action prefix, e.g. "user.".
    #[arg(long)]
    pub action_prefix: Option<String>,
    /// Leave out actions starting with this, e.g. "audit." for auditgate's own entries; repeat
    /// for several.
    #[arg(long, value_name = "PREFIX")]
    pub exclude_action_prefix: Vec<String>,
    #[arg(long)]
    pub resource_type: Option<String>,
    #[arg(long)]
    pub resource_id: Option<String>,
    /// success, failure, error or unknown.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Status code or class (404, 4xx).
    #[arg(long)]
    pub status: Option<String>,
    /// Address or CIDR.
    #[arg(long)]
    pub ip: Option<String>,
    /// RFC 3339 time, a date, or a duration ago (24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Free text over actor, action, resource and path.
    #[arg(long)]
    pub q: Option<String>,
    /// One log, when several sidecars share a PostgreSQL database.
    #[arg(long)]
    pub log_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Most entries to print.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub asc: bool,
    /// json (one entry per line) or table.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// csv, json, ndjson or ocsf (one OCSF API Activity event per line).
    #[arg(long, required_unless_present = "bundle")]
    pub format: Option<String>,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub asc: bool,
    /// Write to this file (complete or not at all) instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// NDJSON only: give each entry its inclusion proof against the latest signed head, which
    /// ends the file, so `auditgate verify-export FILE --key PUBKEY` checks it offline (entries
    /// oldest first; those newer than the head are left for the next export).
    #[arg(long)]
    pub proofs: bool,
    /// Write what an auditor takes away into the new directory DIR: `entries.ndjson` (the
    /// export with proofs, its manifest signed), `proofs/<seq>.tlog-proof` per entry (C2SP
    /// tlog proofs, for `auditgate verify-proof`), `checkpoint` (the signed checkpoint every
    /// proof leads to) and `log.vkey` (the key that verifies it). Needs the log's signing key.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["format", "output", "proofs", "asc"])]
    pub bundle: Option<PathBuf>,
    /// With --bundle: the log's private key, which signs the checkpoint; default: the
    /// `[log] signing_key` of --config.
    #[arg(long, value_name = "KEY", requires = "bundle")]
    pub key: Option<PathBuf>,
    /// With --bundle: the checkpoint's origin; default: `[log] origin` of --config, else the log
    /// id.
    #[arg(long, requires = "bundle")]
    pub origin: Option<String>,
}

/// Where a read command finds the store. Either names it; neither means `--db data/audit.db`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The SQLite database (opened read-only; never created), or a PostgreSQL URL
    /// (postgres://USER@HOST/DB; password from the URL or PGPASSWORD). Default: data/audit.db.
    #[arg(long, value_name = "FILE|URL", conflicts_with = "config")]
    pub db: Option<PathBuf>,
    /// A sidecar's configuration file: the store its [store] names (with its password_env and
    /// TLS settings) and its [log] log_id.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The log to check in a PostgreSQL database several sidecars share (their [log] log_id;
    /// with --config, that file's).
    #[arg(long)]
    pub log_id: Option<String>,
    /// A published heads file (`publish_heads = ["file:..."]`): its heads are checked too, and
    /// every head in the database must be in it. This is what finds a database restored from an
    /// older copy.
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// Public key file (`PATH.pub` from keygen) to check head signatures; repeat for rotated
    /// keys. Without it, roots are checked but signatures are not.
    #[arg(long = "key", value_name = "PUBKEY")]
    pub keys: Vec<PathBuf>,
    /// A witness's verifier key file (NAME+KEYID+KEY, an Ed25519 cosignature/v1 key, C2SP
    /// tlog-cosignature); repeat for several. The latest signed head must carry a stored
    /// cosignature by --witnesses-required of them (default: all).
    #[arg(long = "witness", value_name = "VKEY_FILE")]
    pub witnesses: Vec<PathBuf>,
    /// How many of the --witness keys must have cosigned the latest signed head; with
    /// --config and no --witness, of the config's [[log.witnesses]].
    #[arg(long, value_name = "K")]
    pub witnesses_required: Option<usize>,
    /// The origin of the log's checkpoints, which the cosignatures sign; default: [log]
    /// origin of --config, else the log id.
    #[arg(long)]
    pub origin: Option<String>,
    /// Print the report as JSON (the shape of GET /api/v1/verify).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyExportArgs {
    /// The export (NDJSON with proofs).
    pub file: PathBuf,
    /// Public key file (`PATH.pub` from keygen); repeat for rotated keys.
    #[arg(long = "key", value_name = "PUBKEY", required = true)]
    pub keys: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyProofArgs {
    /// The proofs (`.tlog-proof` files).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The log's checkpoint verifier key (`PATH.vkey` from keygen, `log.vkey` of a bundle, or
    /// `vkey` of GET /api/v1/log/key); the checkpoint's origin must be its name.
    #[arg(long, value_name = "VKEY")]
    pub vkey: PathBuf,
    /// A witness's verifier key file (NAME+KEYID+KEY, an Ed25519 cosignature/v1 key, C2SP
    /// tlog-cosignature); repeat for several. Each proof's checkpoint must carry a valid
    /// cosignature by --witnesses-required of them (default: all).
    #[arg(long = "witness", value_name = "VKEY_FILE")]
    pub witnesses: Vec<PathBuf>,
    /// How many of the --witness keys must have cosigned each proof's checkpoint.
    #[arg(long, value_name = "K", requires = "witnesses")]
    pub witnesses_required: Option<usize>,
}

#[derive(Debug, Args)]
pub struct VerifyArchiveArgs {
    /// s3://BUCKET/PREFIX (the archive's `url`, or deeper, down to one log's folder), or a
    /// directory holding a copy of the bucket's keys under PREFIX.
    pub source: String,
    /// Public key file (`PATH.pub` from keygen); repeat for rotated keys.
    #[arg(long = "key", value_name = "PUBKEY", required = true)]
    pub keys: Vec<PathBuf>,
    /// Take the endpoint, region and access keys from this configuration's `[[archive]]` table
    /// for the same bucket.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The S3 API's base URL (MinIO, R2, ...); default AWS's for the region.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Address the bucket in the path (default with --endpoint) or, with false, in the host.
    #[arg(long)]
    pub path_style: Option<bool>,
}

#[derive(Debug, Args)]
pub struct TilesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The directory the tiles go into (made if missing); files already there with the same
    /// content are left untouched, so a re-run rewrites only what changed.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// The log's private key (`auditgate keygen`), which signs the checkpoint; default: the
    /// `[log] signing_key` of --config.
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,
    /// The checkpoint's origin; default: `[log] origin` of --config, else the log id.
    #[arg(long)]
    pub origin: Option<String>,
    /// The log to write from a PostgreSQL database several sidecars share (with --config, that
    /// file's).
    #[arg(long)]
    pub log_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where the copy goes (a new SQLite file, mode 0600).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The configuration file (its `[store]`, `[log]` and `[retention]` apply).
    #[arg(
        long,
        short,
        default_value = "auditgate.toml",
        env = "AUDITGATE_CONFIG"
    )]
    pub config: PathBuf,
    /// Prune entries older than this (e.g. 90d) instead of `[retention] max_age`; the
    /// per-prefix rules still apply.
    #[arg(long)]
    pub older_than: Option<String>,
    /// Only say how many entries are due; change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Prune without asking: needed whenever entries would be deleted.
    #[arg(long)]
    pub yes: bool,
}

/// What `auditgate run --help` says about the environment and signals.
const RUN_ENVIRONMENT: &str = "\
Environment:
  AUDITGATE_CONFIG      the configuration file when --config is not given
  AUDITGATE_LOG         log filter: error, warn, info (default), debug, or per module
                        (auditgate=debug,hyper=warn); RUST_LOG is read when it is unset
  AUDITGATE_LOG_FORMAT  text (default) or json (one object a line, fields at the top level)
  AUDITGATE_DATA_DIR    where a relative [store] path, spill file and stream file go
                        (default: the configuration file's directory)
  Variables the configuration names (hs256_secret_env, password_env, ...) are read at start
  and on reload.

Signals:
  SIGTERM, SIGINT  stop taking connections, finish requests in flight within
                   [proxy] shutdown_grace, write every queued entry, sign a last head, exit
  SIGHUP           reload the configuration; an invalid file keeps the running one and logs
                   every error
";
