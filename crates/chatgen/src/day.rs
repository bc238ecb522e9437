//! One day of chatting on an existing folder.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection, OptionalExtension};

use crate::db::{self, Attach, Writer, STATUS_DELIVERED, STATUS_READ, STATUS_SENT, TYPE_REVOKED};
use crate::error::{io_err, ChatGenError, SqlContext};
use crate::media::{self, Kind, Namer, Written};
use crate::{pages_changed, DaySummary, DB_FILE, PAGE_SIZE};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// How much a day does, as fractions of the messages already stored, so that the share
/// of pages a day rewrites stays near 12% whatever the store's size.
mod rate {
    /// New messages.
    pub const NEW: f64 = 0.006;
    /// Outgoing messages of the last days that get read (status and receipt updated).
    pub const RECENT_READ: f64 = 0.004;
    /// Messages anywhere in history that get a reaction, a star or a late receipt.
    pub const HISTORIC: f64 = 0.0025;
}

/// Activity is spread over this many transactions (hours of the waking day).
const SLICES: u64 = 16;

pub(crate) fn simulate_day(dir: &Path, seed: u64) -> Result<DaySummary, ChatGenError> {
    let db_path = dir.join(DB_FILE);
    if !db_path.is_file() {
        return Err(ChatGenError::NoDatabase {
            dir: dir.to_path_buf(),
        });
    }
    // The copy lives next to the store (same disk, room for it) and is removed on drop,
    // also when the day fails half-way.
    let before = tempfile::Builder::new()
        .prefix(".msgstore-before-day-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, "create a temporary copy in", e))?;
    std::fs::copy(&db_path, before.path())
        .map_err(|e| io_err(before.path(), "copy the message store to", e))?;

    let mut summary = run_day(dir, &db_path, seed)?;
    let (changed, total) = pages_changed(before.path(), &db_path, PAGE_SIZE)
        .map_err(|e| io_err(&db_path, "compare pages of", e))?;
    summary.db_pages = total;
    summary.db_pages_changed = changed;
    Ok(summary)
}

fn run_day(dir: &Path, db_path: &Path, seed: u64) -> Result<DaySummary, ChatGenError> {
    let conn = Connection::open(db_path).ctx("open the message store")?;
    // As the app opens it.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .ctx("open the message store in WAL mode")?;
    let has_messages = db::query_i64(
        &conn,
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'message'",
    )?;
    if has_messages != Some(1) {
        return Err(ChatGenError::NoDatabase {
            dir: dir.to_path_buf(),
        });
    }
    let stored = db::query_i64(&conn, "SELECT count(*) FROM message")?.unwrap_or(0);
    let max_id = db::query_i64(&conn, "SELECT max(_id) FROM message")?.unwrap_or(0);
    let seq = db::query_i64(
        &conn,
        "SELECT seq FROM sqlite_sequence WHERE name = 'message'",
    )?
    .unwrap_or(0);
    let max_ts = db::query_i64(&conn, "SELECT max(timestamp) FROM message")?.unwrap_or(0);
    let max_media = db::query_i64(&conn, "SELECT max(_id) FROM media")?.unwrap_or(0);
    let chats = db::load_chats(&conn)?;
    let mut writer = Writer::new(chats, max_id.max(seq) + 1)?;

    // Mixing in the store's state keeps a reused seed from replaying yesterday's key ids
    // (which the unique index would reject), while the same folder + seed stays repeatable.
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ (max_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (max_ts as u64).rotate_left(29),
    );
    let m = stored.max(1) as f64;
    let n_new = ((m * rate::NEW) as u64).max(60);
    let n_recent = ((m * rate::RECENT_READ) as u64).max(30);
    let n_hist = ((m * rate::HISTORIC) as u64).max(20);
    let n_edit = (n_new / 150).max(1);
    let n_revoke = (n_new / 300).max(1);
    let n_delete = (n_new / 300).max(1);
    let n_media = (n_new / 100).clamp(2, 80);
    let recent_window = (stored / 50).max(200);

    // The day after the newest message, 07:00 to 23:00.
    let day_start = (max_ts.div_euclid(DAY_MS) + 1) * DAY_MS + 7 * HOUR_MS;
    let step = (16 * HOUR_MS) / n_new as i64;
    let mut namer = Namer::default();
    let mut s = DaySummary::default();
    let mut new_ids: Vec<i64> = Vec::new();

    for slice in 0..SLICES {
        let part = |n: u64| n * (slice + 1) / SLICES - n * slice / SLICES;
        let tx = conn.unchecked_transaction().ctx("begin a transaction")?;

        // New messages, with media spread evenly among them.
        let first = n_new * slice / SLICES;
        for i in first..first + part(n_new) {
            let ts = day_start + i as i64 * step + rng.gen_range(0..step.max(1));
            let ci = writer.pick_chat(&mut rng);
            let media_due = n_media * (i + 1) / n_new > n_media * i / n_new;
            let status = if rng.gen_bool(0.5) {
                STATUS_DELIVERED
            } else {
                STATUS_SENT
            };
            let (id, _) = if media_due {
                let (kind, size, w, fwd) =
                    new_media(&conn, dir, &mut rng, &mut namer, ts, max_media)?;
                s.new_media_files += 1;
                s.new_media_bytes += size;
                let att = Attach {
                    kind,
                    size,
                    written: &w,
                    forwarded: fwd,
                };
                writer.message(&conn, &mut rng, ci, ts, status, Some(att))?
            } else {
                writer.message(&conn, &mut rng, ci, ts, status, None)?
            };
            new_ids.push(id);
            s.new_messages += 1;
        }
        let now = day_start + (slice as i64 + 1) * HOUR_MS;

        // Recent outgoing messages get read: status and the recipients' receipts.
        for _ in 0..part(n_recent) {
            let id = max_id - rng.gen_range(0..recent_window);
            s.updated_rows += read_message(&conn, id, now)?;
        }
        // Scattered over history: reactions, stars, late receipts.
        for _ in 0..part(n_hist) {
            let id = rng.gen_range(1..=max_id.max(1));
            s.updated_rows += match rng.gen_range(0..10) {
                0..=3 => react(&conn, &mut rng, &writer, id, now)?,
                4..=6 => conn
                    .prepare_cached("UPDATE message SET starred = 1 - starred WHERE _id = ?1")
                    .ctx("prepare star")?
                    .execute([id])
                    .ctx("star a message")? as u64,
                _ => read_message(&conn, id, now)?,
            };
        }
        // Today's own messages are delivered and read as the day goes on.
        let today = new_ids.len();
        for _ in 0..part(n_new / 2) {
            if today == 0 {
                break;
            }
            let id = new_ids[rng.gen_range(0..today)];
            s.updated_rows += read_message(&conn, id, now)?;
        }
        for _ in 0..part(n_edit) {
            let id = max_id - rng.gen_range(0..recent_window);
            s.updated_rows += edit(&conn, &mut rng, id, now)?;
        }
        for _ in 0..part(n_revoke) {
            let id = max_id - rng.gen_range(0..recent_window);
            s.updated_rows += conn
                .prepare_cached(
                    "UPDATE message SET message_type = ?2, text_data = NULL
                     WHERE _id = ?1 AND from_me = 1 AND media_ref IS NULL",
                )
                .ctx("prepare revoke")?
                .execute(params![id, TYPE_REVOKED])
                .ctx("revoke a message")? as u64;
        }
        for _ in 0..part(n_delete) {
            let id = rng.gen_range(1..=max_id.max(1));
            s.updated_rows += delete(&conn, id)?;
        }
        writer.update_chats(&conn, true)?;
        tx.commit().ctx("commit a transaction")?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .ctx("checkpoint the WAL")?;
    // Closing the last connection removes the (now empty) -wal and -shm files.
    conn.close().map_err(|(_, source)| ChatGenError::Sqlite {
        action: "close the message store",
        source,
    })?;
    Ok(s)
}

/// Marks an outgoing message read: its status and any receipts still without a read time.
fn read_message(conn: &Connection, id: i64, now: i64) -> Result<u64, ChatGenError> {
    let a = conn
        .prepare_cached(
            "UPDATE message SET status = ?2 WHERE _id = ?1 AND from_me = 1 AND status < ?2",
        )
        .ctx("prepare status update")?
        .execute(params![id, STATUS_READ])
        .ctx("update a message status")?;
    let b = conn
        .prepare_cached(
            "UPDATE receipt SET read_timestamp = ?2 WHERE message_row_id = ?1 AND read_timestamp IS NULL",
        )
        .ctx("prepare receipt update")?
        .execute(params![id, now])
        .ctx("update receipts")?;
    Ok((a + b) as u64)
}

/// Someone reacts to message `id`.
fn react<R: Rng>(
    conn: &Connection,
    rng: &mut R,
    writer: &Writer,
    id: i64,
    now: i64,
) -> Result<u64, ChatGenError> {
    const REACTIONS: &[&str] = &["👍", "❤️", "😂", "😮", "😢", "🙏"];
    let chat: Option<i64> = conn
        .prepare_cached("SELECT chat_row_id FROM message WHERE _id = ?1")
        .ctx("prepare reaction lookup")?
        .query_row([id], |r| r.get(0))
        .optional()
        .ctx("look up a message")?;
    let Some(chat) = chat else { return Ok(0) };
    let sender = writer
        .chats
        .iter()
        .find(|c| c.id == chat)
        .map(|c| c.jid_row_id);
    conn.prepare_cached(
        "INSERT INTO message_add_on (parent_message_row_id, chat_row_id, from_me, key_id,
             sender_jid_row_id, timestamp, reaction)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .ctx("prepare reaction insert")?
    .execute(params![
        id,
        chat,
        i64::from(rng.gen_bool(0.3)),
        db::key_id(rng),
        sender,
        now,
        REACTIONS[rng.gen_range(0..REACTIONS.len())],
    ])
    .ctx("insert a reaction")?;
    let n = conn
        .prepare_cached("UPDATE message SET message_add_on_flags = 1 WHERE _id = ?1")
        .ctx("prepare add-on flag")?
        .execute([id])
        .ctx("flag a reaction")?;
    Ok(n as u64 + 1)
}

/// The sender fixes a recent message of theirs.
fn edit<R: Rng>(conn: &Connection, rng: &mut R, id: i64, now: i64) -> Result<u64, ChatGenError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT text_data, key_id FROM message
             WHERE _id = ?1 AND from_me = 1 AND message_type = 0 AND text_data IS NOT NULL",
        )
        .ctx("prepare edit lookup")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .ctx("look up a message")?;
    let Some((old, key)) = row else { return Ok(0) };
    let new = crate::text::edited(rng, &old);
    conn.prepare_cached("UPDATE message SET text_data = ?2 WHERE _id = ?1")
        .ctx("prepare edit")?
        .execute(params![id, new])
        .ctx("edit a message")?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO message_edit_info
             (message_row_id, original_key_id, edited_timestamp, sender_timestamp)
         VALUES (?1, ?2, ?3, ?3)",
    )
    .ctx("prepare edit info")?
    .execute(params![id, key, now])
    .ctx("record an edit")?;
    Ok(2)
}

/// "Delete for me": the message and everything hanging off it. Media files stay on disk,
/// as the app keeps them unless asked.
fn delete(conn: &Connection, id: i64) -> Result<u64, ChatGenError> {
    let mut n = 0;
    for sql in [
        "DELETE FROM receipt WHERE message_row_id = ?1",
        "DELETE FROM media WHERE message_row_id = ?1",
        "DELETE FROM message_add_on WHERE parent_message_row_id = ?1",
        "DELETE FROM message_edit_info WHERE message_row_id = ?1",
        "DELETE FROM message WHERE _id = ?1",
    ] {
        n += conn
            .prepare_cached(sql)
            .ctx("prepare delete")?
            .execute([id])
            .ctx("delete a message")?;
    }
    Ok(n as u64)
}

/// A new media file for today: a fresh capture, or (one in four) a forward of stored media.
fn new_media<R: Rng>(
    conn: &Connection,
    dir: &Path,
    rng: &mut R,
    namer: &mut Namer,
    ts: i64,
    max_media: i64,
) -> Result<(Kind, u64, Written, bool), ChatGenError> {
    if max_media > 0 && rng.gen_range(0..4) == 0 {
        let pick = rng.gen_range(1..=max_media);
        let row: Option<(String, i64, String, String, Option<String>)> = conn
            .prepare_cached(
                "SELECT file_path, file_size, mime_type, file_hash, media_name FROM media
                 WHERE _id >= ?1 ORDER BY _id LIMIT 1",
            )
            .ctx("prepare media lookup")?
            .query_row([pick], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
            .ctx("look up stored media")?;
        if let Some((path, size, mime, hash, name)) = row {
            if let Some(kind) = Kind::from_mime(&mime) {
                if dir.join(&path).is_file() {
                    let rel = media::forward_existing(dir, kind, &path, ts, namer, rng)?;
                    let w = Written {
                        rel_path: rel,
                        file_hash: hash,
                        media_name: name,
                    };
                    return Ok((kind, size.max(0) as u64, w, true));
                }
            }
        }
    }
    let kind = Kind::draw(rng);
    let size = kind.draw_size(rng);
    let seed = rng.gen();
    let w = media::write_fresh(dir, kind, size, seed, ts, namer, rng)?;
    Ok((kind, size, w, false))
}
