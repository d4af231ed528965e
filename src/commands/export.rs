//! `auditgate export`: the entries of a store as CSV, JSON, NDJSON or OCSF, streamed, with proofs
//! when asked.

use std::path::{Path, PathBuf};

use crate::commands::query::{filter_params, open_read_store_and_key, parse_cli_filters};
use crate::export::{ExportEncoder, ExportFormat, ExportReader};
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
    let format: ExportFormat = match args.format.parse() {
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
