//! What the store benchmarks share.

use auditgate::writer::WriterOptions;

/// The writer's settings for a benchmark: the product's defaults, or the batch size
/// `AUDITGATE_BENCH_BATCH` names, to see how commit size matters.
pub fn writer_options() -> WriterOptions {
    match std::env::var("AUDITGATE_BENCH_BATCH").map(|text| text.parse()) {
        Ok(Ok(batch_size)) => WriterOptions {
            batch_size,
            ..WriterOptions::default()
        },
        _ => WriterOptions::default(),
    }
}
