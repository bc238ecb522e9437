//! Building a fresh chat folder.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::Connection;

use crate::db::{self, Attach, Writer, STATUS_DELIVERED, STATUS_READ};
use crate::error::{io_err, ChatGenError, SqlContext};
use crate::media::{self, Namer, Written};
use crate::{ChatSpec, GenSummary, DB_FILE, PAGE_SIZE};

/// The newest message of a generated history is near this instant (2026-11-21 UTC, ms), so
/// file names and timestamps do not depend on the clock.
const HISTORY_END_MS: i64 = 1_795_219_200_000;
/// History covers three years.
const HISTORY_SPAN_MS: i64 = 3 * 365 * 86_400_000;
/// Bytes of database per message on average (rows, receipts, media rows, indexes), used
/// only to space timestamps so the history spans about [`HISTORY_SPAN_MS`].
const EST_BYTES_PER_MESSAGE: u64 = 300;
/// Smallest database accepted: the schema alone takes a few dozen pages.
pub(crate) const MIN_DB_BYTES: u64 = 256 * 1024;
/// Messages per transaction while filling.
const BATCH: u64 = 20_000;
/// How often (in messages) the file size is checked against the target.
const SIZE_CHECK_EVERY: u64 = 16;

pub(crate) fn generate(dir: &Path, spec: &ChatSpec) -> Result<GenSummary, ChatGenError> {
    if spec.db_bytes < MIN_DB_BYTES {
        return Err(ChatGenError::InvalidSpec {
            reason: format!(
                "db_bytes {} is below the {MIN_DB_BYTES}-byte minimum",
                spec.db_bytes
            ),
        });
    }
    prepare_dir(dir)?;
    media::create_dirs(dir)?;

    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let plan = media::plan(&mut rng, spec.media_bytes);

    let db_path = dir.join(DB_FILE);
    let conn = Connection::open(&db_path).ctx("create the message store")?;
    // A fresh file nobody else reads: skip the journal and fsyncs while filling, and
    // switch to WAL (persisted in the header) at the end.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{};",
        cache_kib(spec.db_bytes)
    ))
    .ctx("configure the new store")?;
    conn.execute_batch("BEGIN").ctx("begin")?;
    conn.execute_batch(db::SCHEMA).ctx("create the schema")?;
    let start_ms = HISTORY_END_MS - HISTORY_SPAN_MS;
    let chats = db::create_people(&conn, &mut rng, start_ms)?;
    let mut writer = Writer::new(chats, 1)?;

    let target_pages = spec.db_bytes.div_ceil(PAGE_SIZE as u64);
    let est_messages = (spec.db_bytes / EST_BYTES_PER_MESSAGE).max(1);
    let mean_gap_ms = (HISTORY_SPAN_MS as f64 / est_messages as f64).max(1.0);
    let mut ts = start_ms;
    let mut written: Vec<Option<Written>> = vec![None; plan.len()];
    let mut next_media = 0usize;
    let mut namer = Namer::default();
    let mut messages = 0u64;
    let mut pages = page_count(&conn)?;
    let mut summary = GenSummary::default();

    loop {
        let progress = pages as f64 / target_pages as f64;
        let done = pages >= target_pages;
        if done && next_media >= plan.len() {
            break;
        }
        // Media is spread evenly over the history by size progress; whatever is left once
        // the file is full goes onto the last messages.
        let attach_now =
            next_media < plan.len() && (done || progress * plan.len() as f64 >= next_media as f64);
        let gap = -(1.0 - rng.gen::<f64>()).ln() * mean_gap_ms;
        ts += gap as i64 + 1;
        let ci = writer.pick_chat(&mut rng);
        // The most recent messages are delivered but not yet read.
        let status_out = if progress > 0.995 {
            STATUS_DELIVERED
        } else {
            STATUS_READ
        };
        if attach_now {
            let idx = next_media;
            next_media += 1;
            let w = media::write(dir, &plan, &written, idx, ts, &mut namer, &mut rng)?;
            let p = &plan[idx];
            writer.message(
                &conn,
                &mut rng,
                ci,
                ts,
                status_out,
                Some(Attach {
                    kind: p.kind,
                    size: p.size,
                    written: &w,
                    forwarded: p.forward_of.is_some(),
                }),
            )?;
            summary.media_files += 1;
            summary.media_bytes += p.size;
            summary.duplicate_media_files += u64::from(p.forward_of.is_some());
            written[idx] = Some(w);
        } else {
            writer.message(&conn, &mut rng, ci, ts, status_out, None)?;
        }
        messages += 1;
        if messages % SIZE_CHECK_EVERY == 0 {
            pages = page_count(&conn)?;
        }
        if messages % BATCH == 0 {
            conn.execute_batch("COMMIT; BEGIN").ctx("commit a batch")?;
        }
    }
    writer.update_chats(&conn, true)?;
    conn.execute_batch("COMMIT").ctx("commit")?;
    finish_as_wal(&conn)?;
    // Closing the last connection removes the (now empty) -wal and -shm files.
    conn.close().map_err(|(_, source)| ChatGenError::Sqlite {
        action: "close the message store",
        source,
    })?;

    summary.messages = messages;
    summary.db_bytes = std::fs::metadata(&db_path)
        .map_err(|e| io_err(&db_path, "stat the message store", e))?
        .len();
    Ok(summary)
}

/// Switches the store to WAL as the app keeps it and leaves all data in the main file.
fn finish_as_wal(conn: &Connection) -> Result<(), ChatGenError> {
    conn.execute_batch(
        "PRAGMA locking_mode = NORMAL;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;",
    )
    .ctx("switch the store to WAL")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .ctx("checkpoint the WAL")
}

/// Page cache for filling: enough to hold the whole file up to 512 MiB, in KiB.
fn cache_kib(db_bytes: u64) -> u64 {
    (db_bytes / 1024 + 8192).min(512 * 1024)
}

fn page_count(conn: &Connection) -> Result<u64, ChatGenError> {
    // Called every few messages: keep the statement prepared.
    let n: i64 = conn
        .prepare_cached("PRAGMA page_count")
        .ctx("prepare page count")?
        .query_row([], |r| r.get(0))
        .ctx("read the page count")?;
    Ok(n.max(0) as u64)
}

/// Creates `dir` or accepts it if empty; refuses anything else.
fn prepare_dir(dir: &Path) -> Result<(), ChatGenError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ChatGenError::DirNotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create folder", e))
        }
        Err(e) => Err(io_err(dir, "read folder", e)),
    }
}
