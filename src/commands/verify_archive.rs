//! `auditgate verify-archive`: where the archive is (a bucket, with its endpoint and keys from
//! the flags, the environment or a configuration file; or a directory), the check, the report
//! and the exit code.

use std::path::PathBuf;

use crate::archive::check::{verify_archive, ArchiveSource};
use crate::archive::config::{endpoint_url, parse_s3_url, BucketConfig, Credentials};
use crate::archive::s3::S3Client;
use crate::commands::cli::VerifyArchiveArgs;
use crate::log::head::LogVerifier;
use crate::verify::{EXIT_INTACT, EXIT_TAMPERED, EXIT_UNREADABLE, EXIT_USAGE};

/// Runs the command; returns the exit code.
pub fn run_verify_archive(args: &VerifyArchiveArgs) -> u8 {
    let keys: Result<Vec<LogVerifier>, String> = args
        .keys
        .iter()
        .map(|path| LogVerifier::load(path).map_err(|error| error.to_string()))
        .collect();
    let keys = match keys {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("auditgate verify-archive: {message}");
            return EXIT_UNREADABLE;
        }
    };
    let source = match source(args) {
        Ok(source) => source,
        Err((code, message)) => {
            eprintln!("auditgate verify-archive: {message}");
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auditgate verify-archive: cannot start: {error}");
            return EXIT_UNREADABLE;
        }
    };
    match runtime.block_on(verify_archive(&source, &keys)) {
        Ok(report) => {
            if let Err(error) = crate::commands::cli::print_stdout(&report.describe(&args.source)) {
                eprintln!("auditgate verify-archive: cannot write the report: {error}");
            }
            if report.ok() {
                EXIT_INTACT
            } else {
                EXIT_TAMPERED
            }
        }
        Err(error) => {
            eprintln!("auditgate verify-archive: cannot read the archive: {error}");
            EXIT_UNREADABLE
        }
    }
}

fn source(args: &VerifyArchiveArgs) -> Result<ArchiveSource, (u8, String)> {
    if !args.source.starts_with("s3://") {
        let path = PathBuf::from(&args.source);
        if !path.is_dir() {
            return Err((
                EXIT_UNREADABLE,
                format!(
                    "{}: not a directory; give s3://BUCKET/PREFIX or a local copy of the archive",
                    path.display()
                ),
            ));
        }
        return Ok(ArchiveSource::Directory(path));
    }
    let (bucket, prefix) = parse_s3_url(&args.source).map_err(|message| (EXIT_USAGE, message))?;
    let config = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path)
                .map_err(|errors| (EXIT_USAGE, errors.to_string().trim_end().to_string()))?;
            let archive = config
                .archives
                .into_iter()
                .find(|archive| archive.bucket.bucket == bucket)
                .ok_or_else(|| {
                    (
                        EXIT_USAGE,
                        format!(
                            "{} has no [[archive]] for the bucket `{bucket}`",
                            path.display()
                        ),
                    )
                })?;
            BucketConfig {
                prefix: prefix.clone(),
                ..archive.bucket
            }
        }
        None => {
            let endpoint = endpoint_url(args.endpoint.as_deref(), &args.region)
                .map_err(|message| (EXIT_USAGE, message))?;
            let credentials = match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(access_key_id), Ok(secret_access_key)) => Some(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
                }),
                _ => None,
            };
            BucketConfig {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                endpoint,
                region: args.region.clone(),
                path_style: args.path_style.unwrap_or(args.endpoint.is_some()),
                credentials,
                timeout: std::time::Duration::from_secs(60),
                tls: None,
            }
        }
    };
    let client = S3Client::new(&config).map_err(|error| (EXIT_UNREADABLE, error.to_string()))?;
    Ok(ArchiveSource::Bucket {
        client: Box::new(client),
        prefix,
    })
}
