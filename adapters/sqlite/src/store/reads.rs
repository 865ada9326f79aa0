//! The application's typed reads ([`RecordReader`]) on SQLite: indexed lookups and range
//! scans, one row at a time, so a page never holds more than its `limit` records.

use super::{blob, decode_shared, SqliteStore, TxError, TxResult};
use crate::error::SqliteError;
use crate::schema::{dec_u64, dec_uuid};
use hybridsync_core::{DeviceId, Hlc, OwnedRecord};
use hybridsync_core::{OwnedCursor, Page, RecordReader, SharedView};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

/// The columns of a device-owned record read back with its stamp's device id.
const OWNED_COLUMNS: &str = "o.uuid, o.seq, o.hlc_ms, o.hlc_counter, hd.device, o.data";

/// A device-owned record from a row of [`OWNED_COLUMNS`].
fn owned_row(row: &rusqlite::Row<'_>, owner: DeviceId, model: &str) -> TxResult<OwnedRecord> {
    Ok(OwnedRecord {
        owner,
        uuid: dec_uuid("owned", blob(row, 0, "owned")?)?,
        seq: dec_u64(row.get(1)?),
        hlc: Hlc::new(
            dec_u64(row.get(2)?),
            row.get(3)?,
            DeviceId(dec_uuid("devices", blob(row, 4, "devices")?)?),
        ),
        model: model.to_owned(),
        data: row.get(5)?,
    })
}

/// The interned id of `model`, if any record ever used it.
fn model_id(conn: &Connection, model: &str) -> TxResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM models WHERE name = ?1")?
        .query_row(params![model], |r| r.get(0))
        .optional()?)
}

/// The first device (by id, the reference's order) at or after `from`: `(interned id, id)`.
fn device_from(
    conn: &Connection,
    from: &[u8],
    inclusive: bool,
) -> TxResult<Option<(i64, DeviceId)>> {
    let sql = if inclusive {
        "SELECT id, device FROM devices WHERE device >= ?1 ORDER BY device LIMIT 1"
    } else {
        "SELECT id, device FROM devices WHERE device > ?1 ORDER BY device LIMIT 1"
    };
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(sql)?
        .query_row(params![from], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((id, bytes)) => Ok(Some((id, DeviceId(dec_uuid("devices", &bytes)?)))),
        None => Ok(None),
    }
}

fn get_owned(
    conn: &Connection,
    owner: DeviceId,
    model: &str,
    uuid: Uuid,
) -> TxResult<Option<OwnedRecord>> {
    let sql = format!(
        "SELECT {OWNED_COLUMNS} FROM owned o
         JOIN devices od ON od.id = o.owner
         JOIN models m ON m.id = o.model
         JOIN devices hd ON hd.id = o.hlc_device
         WHERE od.device = ?1 AND m.name = ?2 AND o.uuid = ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![owner.0.as_bytes(), model, uuid.as_bytes()])?;
    match rows.next()? {
        Some(row) => Ok(Some(owned_row(row, owner, model)?)),
        None => Ok(None),
    }
}

fn list_owned(
    conn: &Connection,
    model: &str,
    after: Option<OwnedCursor>,
    limit: u32,
) -> TxResult<Page<OwnedRecord, OwnedCursor>> {
    let limit = limit.max(1) as usize;
    let mut items: Vec<OwnedRecord> = Vec::new();
    let Some(model_id) = model_id(conn, model)? else {
        return Ok(Page { items, next: None });
    };
    let sql = format!(
        "SELECT {OWNED_COLUMNS} FROM owned o JOIN devices hd ON hd.id = o.hlc_device
         WHERE o.owner = ?1 AND o.model = ?2 AND o.uuid > ?3 AND o.data IS NOT NULL
         ORDER BY o.uuid LIMIT ?4"
    );
    // Owners in id order, each one's records by the `(owner, model, uuid)` index.
    let (mut owner, mut from) = match after {
        Some((o, u)) => (
            device_from(conn, o.0.as_bytes(), true)?.filter(|(_, d)| *d == o),
            u.as_bytes().to_vec(),
        ),
        None => (device_from(conn, &[], true)?, Vec::new()),
    };
    // A cursor whose owner holds nothing (any more): start with the next owner.
    if owner.is_none() {
        if let Some((o, _)) = after {
            owner = device_from(conn, o.0.as_bytes(), false)?;
            from = Vec::new();
        }
    }
    while let Some((id, device)) = owner {
        let fetch = i64::try_from(limit + 1 - items.len()).unwrap_or(i64::MAX);
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![id, model_id, from, fetch])?;
        while let Some(row) = rows.next()? {
            if items.len() == limit {
                let next = items.last().map(|l| (l.owner, l.uuid));
                return Ok(Page { items, next });
            }
            items.push(owned_row(row, device, model)?);
        }
        owner = device_from(conn, device.0.as_bytes(), false)?;
        from = Vec::new();
    }
    Ok(Page { items, next: None })
}

fn count_owned(conn: &Connection, model: &str) -> TxResult<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM owned o JOIN models m ON m.id = o.model
             WHERE m.name = ?1 AND o.data IS NOT NULL",
        )?
        .query_row(params![model], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn get_shared(conn: &Connection, model: &str, uuid: Uuid) -> TxResult<Option<SharedView>> {
    let stored: Option<Vec<u8>> = conn
        .prepare_cached("SELECT registers FROM shared WHERE model = ?1 AND uuid = ?2")?
        .query_row(params![model, uuid.as_bytes()], |r| r.get(0))
        .optional()?;
    match stored {
        Some(bytes) => Ok(SharedView::of(&decode_shared(
            &bytes,
            &(model.to_owned(), uuid),
        )?)),
        None => Ok(None),
    }
}

/// Visits the shared records of `model` after `after` in uuid order, decoding one row at a
/// time; `visit` returns `false` to stop.
fn scan_shared(
    conn: &Connection,
    model: &str,
    after: Option<Uuid>,
    mut visit: impl FnMut(SharedView) -> bool,
) -> TxResult<()> {
    let from: Vec<u8> = after.map(|u| u.as_bytes().to_vec()).unwrap_or_default();
    let mut stmt = conn.prepare_cached(
        "SELECT uuid, registers FROM shared WHERE model = ?1 AND uuid > ?2 ORDER BY uuid",
    )?;
    let mut rows = stmt.query(params![model, from])?;
    while let Some(row) = rows.next()? {
        let key = (
            model.to_owned(),
            dec_uuid("shared", blob(row, 0, "shared")?)?,
        );
        let record = decode_shared(blob(row, 1, "shared")?, &key)?;
        if let Some(view) = SharedView::of(&record) {
            if !visit(view) {
                break;
            }
        }
    }
    Ok(())
}

fn list_shared(
    conn: &Connection,
    model: &str,
    after: Option<Uuid>,
    limit: u32,
) -> TxResult<Page<SharedView, Uuid>> {
    let limit = limit.max(1) as usize;
    let mut items: Vec<SharedView> = Vec::new();
    let mut more = false;
    scan_shared(conn, model, after, |v| {
        if items.len() == limit {
            more = true;
            return false;
        }
        items.push(v);
        true
    })?;
    let next = if more {
        items.last().map(|l| l.uuid)
    } else {
        None
    };
    Ok(Page { items, next })
}

fn count_shared(conn: &Connection, model: &str) -> TxResult<u64> {
    let mut n = 0u64;
    scan_shared(conn, model, None, |_| {
        n += 1;
        true
    })?;
    Ok(n)
}

/// Reads committed rows (a store is used by one thread: between batches, every batch that
/// `execute` returned is committed). A row that cannot be decoded fails the read with
/// [`SqliteError::CorruptRow`].
impl RecordReader for SqliteStore {
    type Error = SqliteError;

    fn get_owned(
        &self,
        owner: DeviceId,
        model: &str,
        uuid: Uuid,
    ) -> Result<Option<OwnedRecord>, SqliteError> {
        get_owned(&self.conn, owner, model, uuid).map_err(|e| self.read_err(e))
    }

    fn get_shared(&self, model: &str, uuid: Uuid) -> Result<Option<SharedView>, SqliteError> {
        get_shared(&self.conn, model, uuid).map_err(|e| self.read_err(e))
    }

    fn list_owned(
        &self,
        model: &str,
        after: Option<OwnedCursor>,
        limit: u32,
    ) -> Result<Page<OwnedRecord, OwnedCursor>, SqliteError> {
        list_owned(&self.conn, model, after, limit).map_err(|e| self.read_err(e))
    }

    fn list_shared(
        &self,
        model: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<SharedView, Uuid>, SqliteError> {
        list_shared(&self.conn, model, after, limit).map_err(|e| self.read_err(e))
    }

    fn count_owned(&self, model: &str) -> Result<u64, SqliteError> {
        count_owned(&self.conn, model).map_err(|e| self.read_err(e))
    }

    fn count_shared(&self, model: &str) -> Result<u64, SqliteError> {
        count_shared(&self.conn, model).map_err(|e| self.read_err(e))
    }
}

impl SqliteStore {
    fn read_err(&self, e: TxError) -> SqliteError {
        e.at(&self.path)
    }
}
