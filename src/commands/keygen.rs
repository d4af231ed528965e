//! `auditgate keygen`: a new Ed25519 key for signing tree heads and checkpoints.

use std::path::Path;
use std::process::ExitCode;

use crate::log::checkpoint::{verifier_key_path, write_new_key_files};
use crate::log::config::default_log_id;
use crate::log::head::public_key_path;

/// Writes the private key at `out`, `out.pub` and `out.vkey`, and prints them with the config
/// snippet that signs heads with the key.
pub fn keygen(out: &Path, origin: Option<String>) -> anyhow::Result<ExitCode> {
    let origin = origin.unwrap_or_else(default_log_id);
    let (signer, vkey) = write_new_key_files(out, &origin)?;
    let public = public_key_path(out);
    let vkey_path = verifier_key_path(out);
    crate::commands::cli::print_stdout(&format!(
        "private key:  {} (keep it secret)\npublic key:   {}\nverifier key: {}\nkey id:       \
         {}\n\nCheckpoints verify with this verifier key (vkey):\n\n{vkey}\n\nSign tree heads \
         with it:\n\n[log]\nsigning_key = {:?}\norigin = {:?}\npublish_heads = \
         [\"file:data/heads.ndjson\"]\n",
        out.display(),
        public.display(),
        vkey_path.display(),
        signer.key_id(),
        out.display().to_string(),
        origin,
    ))?;
    Ok(ExitCode::SUCCESS)
}
