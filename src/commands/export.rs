//! `auditgate export`: the entries of a store as CSV, JSON, NDJSON or OCSF, streamed, with proofs
//! when asked; or, with `--bundle DIR`, a directory an auditor takes away: the export with
//! proofs, each entry's C2SP tlog proof, the signed checkpoint and the verifier key.

use std::path::{Path, PathBuf};

use crate::commands::query::{filter_params, open_read_store_and_key, parse_cli_filters};
use crate::export::proofs::{write_signed_export_with_each_proof, EntryProof, ProofError};
use crate::export::{ExportEncoder, ExportFormat, ExportReader};
use crate::log::head::LogSigner;
use crate::log::tlog_proof::TlogProof;
use crate::store::query::Filter;

/// `auditgate export`: the entries matching the filters, streamed chunk by chunk to standard
/// output or a file. A file is written under a temporary name and renamed when complete, so an
/// auditor never picks up half an export.
pub fn export(args: &crate::commands::cli::ExportArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut params = filter_params(&args.filters);
    if args.asc {
        params.push(("order".to_string(), "asc".to_string()));
    }
    let (filter, page) = match parse_cli_filters("export", &params) {
        Ok(parsed) => parsed,
        Err(code) => return Ok(code),
    };
    if let Some(dir) = &args.bundle {
        return export_bundle(args, dir, &filter);
    }
    let format: ExportFormat = match args.format.as_deref().unwrap_or_default().parse() {
        Ok(format) => format,
        Err(error) => {
            eprintln!("auditgate export: --format: {error}");
            return Ok(std::process::ExitCode::from(64));
        }
    };
    if args.proofs && format != ExportFormat::Ndjson {
        eprintln!(
            "auditgate export: --proofs: only with --format ndjson (each line carries its \
             entry's proof)"
        );
        return Ok(std::process::ExitCode::from(64));
    }
    let (opened, signer) =
        match open_read_store_and_key("export", &args.store, args.filters.log_id.as_deref()) {
            Ok(opened) => opened,
            Err(code) => return Ok(code),
        };
    let store = opened.store.as_ref();
    let head = if args.proofs {
        match store.latest_head()? {
            Some(head) => Some(head),
            None => {
                eprintln!(
                    "auditgate export: --proofs: the log has no signed tree head yet (a [log] \
                     signing_key signs one within sign_interval of the first entries)"
                );
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    } else {
        None
    };
    let write = |out: &mut dyn std::io::Write| -> std::io::Result<u64> {
        match &head {
            // With the log's key (from --config) the manifest is signed, so lines removed
            // from the file cannot be hidden by recomputing its count and digest.
            Some(head) => match &signer {
                Some(signer) => crate::export::proofs::write_signed_export_with_proofs(
                    store,
                    &filter,
                    head,
                    signer.clone(),
                    out,
                ),
                None => crate::export::proofs::write_export_with_proofs(store, &filter, head, out),
            }
            .map_err(|error| match error {
                crate::export::proofs::ProofError::Io(error) => error,
                other => std::io::Error::other(other),
            }),
            None => write_export(store, filter.clone(), page.order, format, out),
        }
    };
    match &args.output {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = write(&mut out).and_then(|rows| out.flush().map(|()| rows));
            match written {
                Ok(_) => {}
                // `auditgate export ... | head` is a normal way to look at an export.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(error) => return Err(error).context("export failed"),
            }
            opened.check_consistent()?;
        }
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let written = write(&mut out).and_then(|rows| {
                out.into_inner()
                    .map_err(|error| error.into_error())?
                    .sync_all()?;
                Ok(rows)
            });
            let written = written.and_then(|rows| {
                opened.check_consistent().map_err(std::io::Error::other)?;
                Ok(rows)
            });
            let rows = match written {
                Ok(rows) => rows,
                Err(error) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(error).with_context(|| format!("cannot write {}", path.display()));
                }
            };
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot move the export to {}", path.display()))?;
            eprintln!(
                "auditgate export: {rows} entr{} written to {}{}",
                if rows == 1 { "y" } else { "ies" },
                path.display(),
                match &head {
                    Some(head) => format!(
                        ", with proofs against the signed head at size {}",
                        head.head.size
                    ),
                    None => String::new(),
                }
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The files of an export bundle.
pub const BUNDLE_ENTRIES: &str = "entries.ndjson";
pub const BUNDLE_PROOFS: &str = "proofs";
pub const BUNDLE_CHECKPOINT: &str = "checkpoint";
pub const BUNDLE_VKEY: &str = "log.vkey";

/// `auditgate export --bundle DIR`: every matching entry the latest signed head covers, in
/// `DIR/entries.ndjson` with proofs (its manifest signed) and as `DIR/proofs/<seq>.tlog-proof`,
/// with `DIR/checkpoint` (that head, signed as a C2SP checkpoint) and `DIR/log.vkey`. The bundle
/// is written into `DIR.partial` and renamed to DIR when complete, so an auditor never takes
/// away half a bundle; DIR must not exist.
fn export_bundle(
    args: &crate::commands::cli::ExportArgs,
    dir: &Path,
    filter: &Filter,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::commands::store_location::{locate, LocateError};
    use anyhow::Context as _;
    use std::process::ExitCode;
    let located = match locate(args.store.db.as_deref(), args.store.config.as_deref()) {
        Ok(located) => located,
        Err(LocateError::Config(errors)) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(crate::commands::EXIT_USAGE));
        }
    };
    let signer = match (&args.key, &located.config_signer) {
        (Some(path), _) => std::sync::Arc::new(
            LogSigner::load(path).with_context(|| format!("cannot load {}", path.display()))?,
        ),
        (None, Some(signer)) => signer.clone(),
        (None, None) => {
            eprintln!(
                "auditgate export: --bundle: the checkpoint needs the log's signing key: give \
                 --key KEY, or --config with a [log] signing_key"
            );
            return Ok(ExitCode::from(crate::commands::EXIT_USAGE));
        }
    };
    if dir.exists() {
        eprintln!(
            "auditgate export: --bundle: {} already exists; a bundle is written into a new \
             directory",
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let partial = partial_path(dir);
    if partial.exists() {
        eprintln!(
            "auditgate export: --bundle: {} exists (left by an interrupted export?); remove it \
             first",
            partial.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let log_id = args
        .filters
        .log_id
        .clone()
        .or(located.config_log_id.clone())
        .unwrap_or_default();
    let opened = match located.location.open_for_reading(&log_id) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("auditgate export: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = opened.store.as_ref();
    let Some(head) = store.latest_head()? else {
        eprintln!(
            "auditgate export: --bundle: the log has no signed tree head yet (a [log] \
             signing_key signs one within sign_interval of the first entries)"
        );
        return Ok(ExitCode::FAILURE);
    };
    // As at /api/v1/log/checkpoint: only a stored head the key signed gets a checkpoint, so a
    // database edited without the key cannot make this command sign a root the log never signed.
    signer.public_key().verify(&head).with_context(|| {
        format!(
            "the latest stored head (size {}) does not verify under the signing key; no \
             checkpoint is signed for it (auditgate verify says more)",
            head.head.size
        )
    })?;
    let origin = args
        .origin
        .clone()
        .or(located.config_origin.clone())
        .unwrap_or_else(|| head.head.log_id.clone());
    let checkpoint = signer.sign_checkpoint(&origin, &head.head)?;
    // The witnesses' stored cosignatures of that checkpoint go with it, so the auditor's
    // `verify-proof --witness` checks them offline.
    let checkpoint = crate::store::cosigned_checkpoint(store, &checkpoint)?;
    let vkey = signer.verifier_key(&origin)?;

    let written = write_bundle(store, filter, &head, signer, &checkpoint, &vkey, &partial)
        .and_then(|rows| {
            opened.check_consistent()?;
            Ok(rows)
        });
    let rows = match written {
        Ok(rows) => rows,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(error.context(format!("cannot write the bundle {}", dir.display())));
        }
    };
    std::fs::rename(&partial, dir)
        .with_context(|| format!("cannot move the bundle to {}", dir.display()))?;
    eprintln!(
        "auditgate export: {rows} entr{} written to {} with a tlog proof each, against the \
         checkpoint of {origin} at size {}; check them with: auditgate verify-proof {}/{}/*.{} \
         --vkey {}/{}",
        if rows == 1 { "y" } else { "ies" },
        dir.display(),
        head.head.size,
        dir.display(),
        BUNDLE_PROOFS,
        crate::log::tlog_proof::FILE_EXTENSION,
        dir.display(),
        BUNDLE_VKEY,
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the bundle's files into `dir` (made here) and syncs them; the number of entries.
fn write_bundle(
    store: &dyn crate::store::Store,
    filter: &Filter,
    head: &crate::log::head::SignedTreeHead,
    signer: std::sync::Arc<LogSigner>,
    checkpoint: &str,
    vkey: &crate::log::checkpoint::VerifierKey,
    dir: &Path,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let proofs = dir.join(BUNDLE_PROOFS);
    std::fs::create_dir_all(&proofs)
        .with_context(|| format!("cannot make {}", proofs.display()))?;
    let entries_path = dir.join(BUNDLE_ENTRIES);
    let file = std::fs::File::create(&entries_path)
        .with_context(|| format!("cannot create {}", entries_path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut each = |entry: &crate::entry::AuditEntry, proof: &EntryProof| {
        let text =
            TlogProof::for_entry(entry, proof.audit_path.clone(), checkpoint.to_string()).format();
        let path = proofs.join(format!(
            "{}.{}",
            entry.seq,
            crate::log::tlog_proof::FILE_EXTENSION
        ));
        write_synced(&path, text.as_bytes()).map_err(ProofError::Io)
    };
    let rows =
        write_signed_export_with_each_proof(store, filter, head, signer, &mut out, &mut each)
            .with_context(|| format!("cannot write {}", entries_path.display()))?;
    out.flush()?;
    out.into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()?;
    write_synced(&dir.join(BUNDLE_CHECKPOINT), checkpoint.as_bytes())?;
    write_synced(&dir.join(BUNDLE_VKEY), format!("{vkey}\n").as_bytes())?;
    Ok(rows)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Streams an export into `out`, one store chunk at a time; the number of entries written.
pub fn write_export(
    store: &dyn crate::store::Store,
    filter: Filter,
    order: crate::store::query::Order,
    format: ExportFormat,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    let mut reader =
        ExportReader::start(store, filter, order, None).map_err(std::io::Error::other)?;
    let mut encoder = ExportEncoder::new(format);
    out.write_all(&encoder.begin())?;
    let mut rows = 0u64;
    while let Some(entries) = reader.next_chunk(store).map_err(std::io::Error::other)? {
        rows += entries.len() as u64;
        out.write_all(&encoder.encode(&entries).map_err(std::io::Error::other)?)?;
    }
    out.write_all(&encoder.finish())?;
    Ok(rows)
}
