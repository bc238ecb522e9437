//! The message store: schema, contacts and chats, and the message writer shared by
//! [`crate::generate`] and [`crate::simulate_day`].

use std::collections::HashMap;

use rand::distributions::WeightedIndex;
use rand::prelude::Distribution;
use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ChatGenError, SqlContext};
use crate::media::{Kind, Written};
use crate::text;

/// Schema modelled on WhatsApp's `msgstore.db`: rowid tables, `AUTOINCREMENT` ids, and
/// the secondary indexes that make a day's inserts land all over the file.
pub(crate) const SCHEMA: &str = "
CREATE TABLE props (_id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, value TEXT);
CREATE TABLE jid (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL, server TEXT NOT NULL, agent INTEGER, device INTEGER,
    type INTEGER, raw_string TEXT);
CREATE UNIQUE INDEX jid_key_index ON jid (user, server, agent, device);
CREATE INDEX jid_raw_string_index ON jid (raw_string);
CREATE TABLE chat (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    jid_row_id INTEGER UNIQUE, hidden INTEGER, subject TEXT, created_timestamp INTEGER,
    display_message_row_id INTEGER, last_message_row_id INTEGER,
    last_read_message_row_id INTEGER, last_read_receipt_sent_message_row_id INTEGER,
    archived INTEGER, sort_timestamp INTEGER, mod_tag INTEGER,
    unseen_message_count INTEGER, group_type INTEGER, ephemeral_expiration INTEGER);
CREATE TABLE group_participant_user (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_jid_row_id INTEGER NOT NULL, user_jid_row_id INTEGER NOT NULL,
    rank INTEGER, pending INTEGER);
CREATE UNIQUE INDEX group_participant_user_index
    ON group_participant_user (group_jid_row_id, user_jid_row_id);
CREATE TABLE message (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_row_id INTEGER NOT NULL, from_me INTEGER NOT NULL, key_id TEXT NOT NULL,
    sender_jid_row_id INTEGER, status INTEGER, broadcast INTEGER, recipient_count INTEGER,
    participant_hash TEXT, origination_flags INTEGER, origin INTEGER,
    timestamp INTEGER, received_timestamp INTEGER, receipt_server_timestamp INTEGER,
    message_type INTEGER, text_data TEXT, starred INTEGER, lookup_tables INTEGER,
    message_add_on_flags INTEGER, sort_id INTEGER NOT NULL DEFAULT 0, media_ref INTEGER);
CREATE UNIQUE INDEX message_key_id_index ON message (key_id);
CREATE INDEX message_chat_timestamp_index ON message (chat_row_id, timestamp);
CREATE INDEX message_sort_id_index ON message (chat_row_id, sort_id);
CREATE INDEX message_starred_index ON message (starred) WHERE starred = 1;
CREATE TABLE receipt (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_row_id INTEGER NOT NULL, receipt_user_jid_row_id INTEGER NOT NULL,
    receipt_timestamp INTEGER, read_timestamp INTEGER, played_timestamp INTEGER);
CREATE UNIQUE INDEX receipt_user_index ON receipt (message_row_id, receipt_user_jid_row_id);
CREATE TABLE media (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_row_id INTEGER NOT NULL, chat_row_id INTEGER, transferred INTEGER,
    file_path TEXT, file_size INTEGER, mime_type TEXT, file_hash TEXT, enc_file_hash TEXT,
    media_key BLOB, media_key_timestamp INTEGER, direct_path TEXT, width INTEGER,
    height INTEGER, media_duration INTEGER, media_name TEXT, page_count INTEGER);
CREATE UNIQUE INDEX media_message_index ON media (message_row_id);
CREATE INDEX media_file_hash_index ON media (file_hash);
CREATE TABLE message_add_on (
    _id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_message_row_id INTEGER NOT NULL, chat_row_id INTEGER, from_me INTEGER,
    key_id TEXT, sender_jid_row_id INTEGER, timestamp INTEGER, reaction TEXT);
CREATE INDEX message_add_on_parent_index ON message_add_on (parent_message_row_id);
CREATE TABLE message_quoted (
    message_row_id INTEGER PRIMARY KEY, chat_row_id INTEGER, parent_message_chat_row_id INTEGER,
    from_me INTEGER, sender_jid_row_id INTEGER, key_id TEXT, timestamp INTEGER,
    message_type INTEGER, origin INTEGER, text_data TEXT, lookup_tables INTEGER);
CREATE TABLE message_edit_info (
    message_row_id INTEGER PRIMARY KEY, original_key_id TEXT, edited_timestamp INTEGER,
    sender_timestamp INTEGER);
";

/// `message.status` of an outgoing message the server has acknowledged.
pub(crate) const STATUS_SENT: i64 = 4;
/// `message.status` of an outgoing message delivered to the recipient's phone.
pub(crate) const STATUS_DELIVERED: i64 = 5;
/// `message.status` of an outgoing message the recipient has read.
pub(crate) const STATUS_READ: i64 = 13;
/// `message_type` of a message deleted for everyone (its text is cleared).
pub(crate) const TYPE_REVOKED: i64 = 15;

/// One chat as the writer needs it.
#[derive(Debug, Clone)]
pub(crate) struct Chat {
    pub id: i64,
    pub jid_row_id: i64,
    /// Group members' jid rows; empty for a one-to-one chat.
    pub participants: Vec<i64>,
}

impl Chat {
    fn is_group(&self) -> bool {
        !self.participants.is_empty()
    }
}

/// Writes contacts and chats for a fresh store; returns the chats, most active first.
pub(crate) fn create_people<R: Rng>(
    conn: &Connection,
    rng: &mut R,
    start_ms: i64,
) -> Result<Vec<Chat>, ChatGenError> {
    const CONTACTS: usize = 260;
    const CHATS: usize = 140;
    let mut contacts = Vec::with_capacity(CONTACTS);
    {
        let mut ins = conn
            .prepare(
                "INSERT INTO jid (user, server, agent, device, type, raw_string)
                 VALUES (?1, ?2, 0, 0, ?3, ?4)",
            )
            .ctx("prepare jid insert")?;
        for _ in 0..CONTACTS {
            let cc = ["49", "44", "1", "33", "34", "39", "31"][rng.gen_range(0..7)];
            let user = format!("{cc}{}", rng.gen_range(1_500_000_000u64..1_799_999_999));
            let raw = format!("{user}@s.whatsapp.net");
            ins.execute(params![user, "s.whatsapp.net", 0, raw])
                .ctx("insert contact")?;
            contacts.push(conn.last_insert_rowid());
        }
    }
    let mut chats = Vec::with_capacity(CHATS);
    let mut next_contact = 0usize;
    for i in 0..CHATS {
        // Every third chat or so is a group; the busiest chats are a mix of both.
        let group = rng.gen_range(0..10) < 3;
        let created = start_ms - rng.gen_range(0..400) * 86_400_000;
        let (jid_row_id, subject, participants) = if group {
            let user = format!(
                "1203630{}",
                rng.gen_range(10_000_000_000u64..99_999_999_999)
            );
            let raw = format!("{user}@g.us");
            conn.execute(
                "INSERT INTO jid (user, server, agent, device, type, raw_string)
                 VALUES (?1, 'g.us', 0, 0, 1, ?2)",
                params![user, raw],
            )
            .ctx("insert group jid")?;
            let gid = conn.last_insert_rowid();
            let n = rng.gen_range(3..20);
            let mut members: Vec<i64> = Vec::with_capacity(n);
            while members.len() < n {
                let c = contacts[rng.gen_range(0..contacts.len())];
                if !members.contains(&c) {
                    members.push(c);
                }
            }
            for &m in &members {
                conn.execute(
                    "INSERT INTO group_participant_user (group_jid_row_id, user_jid_row_id, rank, pending)
                     VALUES (?1, ?2, ?3, 0)",
                    params![gid, m, i64::from(rng.gen_range(0..10) == 0)],
                )
                .ctx("insert group participant")?;
            }
            let subject = text::GROUP_SUBJECTS[rng.gen_range(0..text::GROUP_SUBJECTS.len())];
            (gid, Some(subject), members)
        } else {
            let c = contacts[next_contact % contacts.len()];
            next_contact += 1;
            (c, None, Vec::new())
        };
        conn.execute(
            "INSERT INTO chat (jid_row_id, hidden, subject, created_timestamp, archived,
                 sort_timestamp, mod_tag, unseen_message_count, group_type, ephemeral_expiration)
             VALUES (?1, 0, ?2, ?3, ?4, ?3, 0, 0, ?5, 0)",
            params![
                jid_row_id,
                subject,
                created,
                i64::from(i > 20 && rng.gen_range(0..8) == 0),
                i64::from(group),
            ],
        )
        .ctx("insert chat")?;
        chats.push(Chat {
            id: conn.last_insert_rowid(),
            jid_row_id,
            participants,
        });
    }
    conn.execute(
        "INSERT INTO props (key, value) VALUES ('version', '2.26.23.77'), ('db_version', '1')",
        [],
    )
    .ctx("insert props")?;
    Ok(chats)
}

/// Reads the chats of an existing store, in id order (which is activity order).
pub(crate) fn load_chats(conn: &Connection) -> Result<Vec<Chat>, ChatGenError> {
    let mut members: HashMap<i64, Vec<i64>> = HashMap::new();
    {
        let mut st = conn
            .prepare(
                "SELECT group_jid_row_id, user_jid_row_id FROM group_participant_user ORDER BY _id",
            )
            .ctx("read group participants")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .ctx("read group participants")?;
        for row in rows {
            let (g, u) = row.ctx("read group participants")?;
            members.entry(g).or_default().push(u);
        }
    }
    let mut st = conn
        .prepare("SELECT _id, jid_row_id FROM chat ORDER BY _id")
        .ctx("read chats")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .ctx("read chats")?;
    let mut chats = Vec::new();
    for row in rows {
        let (id, jid_row_id) = row.ctx("read chats")?;
        chats.push(Chat {
            id,
            jid_row_id,
            participants: members.remove(&jid_row_id).unwrap_or_default(),
        });
    }
    if chats.is_empty() {
        return Err(ChatGenError::Internal {
            detail: "the message store has no chats".into(),
        });
    }
    Ok(chats)
}

/// Media to attach to the next message.
pub(crate) struct Attach<'a> {
    pub kind: Kind,
    pub size: u64,
    pub written: &'a Written,
    pub forwarded: bool,
}

/// Writes messages with their receipts and media rows, choosing chats by activity.
pub(crate) struct Writer {
    pub chats: Vec<Chat>,
    dist: WeightedIndex<f64>,
    pub next_id: i64,
    /// Last message id and timestamp per chat index, to update `chat` at the end.
    pub last: HashMap<usize, (i64, i64)>,
    /// Last text message per chat index, which the next message may quote in a reply.
    quotable: HashMap<usize, Quotable>,
}

/// What a reply copies of the message it quotes.
#[derive(Debug, Clone)]
struct Quotable {
    from_me: bool,
    key_id: String,
    ts: i64,
    text: String,
}

impl Writer {
    /// A writer whose next message gets id `next_id`.
    pub(crate) fn new(chats: Vec<Chat>, next_id: i64) -> Result<Self, ChatGenError> {
        // Zipf-like activity: a handful of chats carry most of the traffic.
        let weights: Vec<f64> = (0..chats.len())
            .map(|i| 1.0 / ((i + 1) as f64).powf(1.1))
            .collect();
        let dist = WeightedIndex::new(&weights).map_err(|e| ChatGenError::Internal {
            detail: format!("chat weights: {e}"),
        })?;
        Ok(Self {
            chats,
            dist,
            next_id,
            last: HashMap::new(),
            quotable: HashMap::new(),
        })
    }

    /// Index into [`Self::chats`] of a chat chosen by activity.
    pub(crate) fn pick_chat<R: Rng>(&self, rng: &mut R) -> usize {
        self.dist.sample(rng)
    }

    /// Inserts one message at `ts` (ms) in chat index `ci`; returns its id and whether it was
    /// sent by the phone's owner.
    pub(crate) fn message<R: Rng>(
        &mut self,
        conn: &Connection,
        rng: &mut R,
        ci: usize,
        ts: i64,
        status_out: i64,
        attach: Option<Attach<'_>>,
    ) -> Result<(i64, bool), ChatGenError> {
        let chat = &self.chats[ci];
        let id = self.next_id;
        self.next_id += 1;
        let from_me = rng.gen_bool(if chat.is_group() { 0.2 } else { 0.45 });
        let sender = (chat.is_group() && !from_me)
            .then(|| chat.participants[rng.gen_range(0..chat.participants.len())]);
        let key_id = key_id(rng);
        // The phone stamps its own messages when it sends them.
        let received = if from_me {
            ts
        } else {
            ts + rng.gen_range(50..3_000)
        };
        let server_ts = if from_me {
            ts + rng.gen_range(100..900)
        } else {
            -1
        };
        let starred = i64::from(rng.gen_range(0..200) == 0);
        let (message_type, text_data, media_ref, origination) = match &attach {
            Some(a) => {
                let media_id = insert_media(conn, rng, id, chat.id, a, ts)?;
                (
                    a.kind.message_type(),
                    text::caption(rng),
                    Some(media_id),
                    i64::from(a.forwarded),
                )
            }
            None => (0, Some(text::message_text(rng)), None, 0),
        };
        let recipients = if from_me {
            chat.participants.len().max(1) as i64
        } else {
            0
        };
        conn.prepare_cached(
            "INSERT INTO message (_id, chat_row_id, from_me, key_id, sender_jid_row_id, status,
                 broadcast, recipient_count, participant_hash, origination_flags, origin,
                 timestamp, received_timestamp, receipt_server_timestamp, message_type,
                 text_data, starred, lookup_tables, message_add_on_flags, sort_id, media_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, NULL, ?8, 0, ?9, ?10, ?11, ?12, ?13, ?14, 0,
                 0, ?1, ?15)",
        )
        .ctx("prepare message insert")?
        .execute(params![
            id,
            chat.id,
            i64::from(from_me),
            key_id,
            sender,
            if from_me { status_out } else { 0 },
            recipients,
            origination,
            ts,
            received,
            server_ts,
            message_type,
            text_data,
            starred,
            media_ref,
        ])
        .ctx("insert message")?;
        if from_me {
            let mut ins = conn
                .prepare_cached(
                    "INSERT INTO receipt (message_row_id, receipt_user_jid_row_id,
                         receipt_timestamp, read_timestamp, played_timestamp)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .ctx("prepare receipt insert")?;
            let single = [chat.jid_row_id];
            let who: &[i64] = if chat.is_group() {
                &chat.participants
            } else {
                &single
            };
            for &user in who {
                let delivered = ts + rng.gen_range(300..20_000);
                // Outgoing messages still waiting to be read carry no read time yet.
                let read = (status_out == STATUS_READ && rng.gen_range(0..10) < 8)
                    .then(|| delivered + rng.gen_range(1_000..7_200_000));
                let played = (message_type == Kind::Voice.message_type())
                    .then_some(read)
                    .flatten();
                ins.execute(params![id, user, delivered, read, played])
                    .ctx("insert receipt")?;
            }
        }
        // About one text message in eight is a reply; the app copies the quoted message.
        if message_type == 0 && rng.gen_range(0..8) == 0 {
            if let Some(q) = self.quotable.get(&ci) {
                conn.prepare_cached(
                    "INSERT INTO message_quoted (message_row_id, chat_row_id,
                         parent_message_chat_row_id, from_me, sender_jid_row_id, key_id,
                         timestamp, message_type, origin, text_data, lookup_tables)
                     VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, 0, 0, ?7, 0)",
                )
                .ctx("prepare quote insert")?
                .execute(params![
                    id,
                    chat.id,
                    i64::from(q.from_me),
                    sender,
                    q.key_id,
                    q.ts,
                    q.text
                ])
                .ctx("insert quote")?;
            }
        }
        if let (0, Some(text)) = (message_type, text_data) {
            self.quotable.insert(
                ci,
                Quotable {
                    from_me,
                    key_id,
                    ts,
                    text,
                },
            );
        }
        self.last.insert(ci, (id, ts));
        Ok((id, from_me))
    }

    /// Points each touched chat at its newest message.
    pub(crate) fn update_chats(&self, conn: &Connection, unseen: bool) -> Result<(), ChatGenError> {
        let mut st = conn
            .prepare_cached(
                "UPDATE chat SET display_message_row_id = ?2, last_message_row_id = ?2,
                     last_read_message_row_id = ?3, last_read_receipt_sent_message_row_id = ?3,
                     sort_timestamp = ?4, unseen_message_count = ?5
                 WHERE _id = ?1",
            )
            .ctx("prepare chat update")?;
        let mut touched: Vec<_> = self.last.iter().collect();
        touched.sort();
        for (&ci, &(id, ts)) in touched {
            let (read_to, n_unseen) = if unseen && ci % 3 == 0 {
                (id - 1, 1)
            } else {
                (id, 0)
            };
            st.execute(params![self.chats[ci].id, id, read_to, ts, n_unseen])
                .ctx("update chat")?;
        }
        Ok(())
    }
}

fn insert_media<R: Rng>(
    conn: &Connection,
    rng: &mut R,
    message_id: i64,
    chat_id: i64,
    a: &Attach<'_>,
    ts: i64,
) -> Result<i64, ChatGenError> {
    let mut media_key = [0u8; 32];
    rng.fill(&mut media_key[..]);
    let mut enc_hash = [0u8; 32];
    rng.fill(&mut enc_hash[..]);
    let direct_path = format!(
        "/v/t62.{}-24/{}_{}_{}_n.enc?ccb=11-4&oh=01_{}&oe={:08X}&_nc_sid=5e03e0",
        rng.gen_range(7114..7120),
        rng.gen_range(10_000_000u64..99_999_999),
        rng.gen_range(100_000_000_000_000u64..999_999_999_999_999),
        rng.gen_range(1_000_000_000_000_000u64..9_999_999_999_999_999),
        crate::media::base64(&media_key[..24]).replace(['+', '/', '='], "A"),
        rng.gen::<u32>(),
    );
    let (w, h) = match a.kind {
        Kind::Image => {
            let portrait = rng.gen_bool(0.6);
            if portrait {
                (Some(1200), Some(1600))
            } else {
                (Some(1600), Some(1200))
            }
        }
        Kind::Video => (Some(848), Some(480)),
        _ => (None, None),
    };
    let duration = match a.kind {
        Kind::Voice => Some((a.size / 2_000).max(1) as i64),
        Kind::Video => Some((a.size / 250_000).max(1) as i64),
        _ => None,
    };
    let pages = (a.kind == Kind::Document).then(|| rng.gen_range(1..40));
    conn.prepare_cached(
        "INSERT INTO media (message_row_id, chat_row_id, transferred, file_path, file_size,
             mime_type, file_hash, enc_file_hash, media_key, media_key_timestamp, direct_path,
             width, height, media_duration, media_name, page_count)
         VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .ctx("prepare media insert")?
    .execute(params![
        message_id,
        chat_id,
        a.written.rel_path,
        a.size as i64,
        a.kind.mime(),
        a.written.file_hash,
        crate::media::base64(&enc_hash),
        &media_key[..],
        ts / 1000,
        direct_path,
        w,
        h,
        duration,
        a.written.media_name,
        pages,
    ])
    .ctx("insert media")?;
    Ok(conn.last_insert_rowid())
}

/// A message key id as clients make them: 32 hex digits, or `3EB0` + 16 from web clients.
pub(crate) fn key_id<R: Rng>(rng: &mut R) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let (prefix, n) = if rng.gen_range(0..10) < 3 {
        ("3EB0", 16)
    } else {
        ("", 32)
    };
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    for _ in 0..n {
        s.push(HEX[rng.gen_range(0..16)] as char);
    }
    s
}

/// Reads one integer (e.g. a count or max); `None` for SQL NULL.
pub(crate) fn query_i64(conn: &Connection, sql: &str) -> Result<Option<i64>, ChatGenError> {
    conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .optional()
        .map(Option::flatten)
        .ctx("read store statistics")
}
