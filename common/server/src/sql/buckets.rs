//! Batch buckets on SQL (DAP-18 "Batch Buckets"): output shares added to a bucket's shards, a
//! batch's buckets combined, and the record of which batches were collected.

use super::{SqlStore, Tx};
use crate::storage::*;
use duet_common::messages::*;
use duet_common::time::Time;
use duet_common::Encode;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

impl SqlStore {
    /// Adds `values` to a bucket shard (read, merge, write) inside `tx`.
    pub async fn add_to_bucket(
        tx: &mut Tx<'_>,
        task: &Task,
        bucket: &BatchBucket,
        shard: i64,
        values: &BucketValues,
    ) -> Result<(), StoreError> {
        let key = bucket.key();
        let existing = sqlx::query(
            "SELECT aggregate_share, report_count, checksum, min_time, max_time FROM batch_aggregations
             WHERE task_id = $1 AND bucket = $2 AND shard = $3",
        )
        .bind(task.id.as_bytes().as_slice())
        .bind(&key)
        .bind(shard)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        let mut merged = values.clone();
        if let Some(row) = existing {
            merged.merge(&Self::bucket_values_from_row(task, &row)?)?;
        }
        let share = merged.aggregate_share.get_encoded().map_err(|e| StoreError::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO batch_aggregations (task_id, bucket, shard, aggregate_share, report_count, checksum, min_time, max_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (task_id, bucket, shard) DO UPDATE SET aggregate_share = excluded.aggregate_share,
               report_count = excluded.report_count, checksum = excluded.checksum,
               min_time = excluded.min_time, max_time = excluded.max_time",
        )
        .bind(task.id.as_bytes().as_slice())
        .bind(&key)
        .bind(shard)
        .bind(share)
        .bind(merged.report_count as i64)
        .bind(merged.checksum.0.as_slice())
        .bind(merged.min_time.units() as i64)
        .bind(merged.max_time.units() as i64)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(())
    }

    fn bucket_values_from_row(task: &Task, row: &AnyRow) -> Result<BucketValues, StoreError> {
        let corrupt = || StoreError::Corrupt("stored batch aggregation is corrupt".into());
        Ok(BucketValues {
            aggregate_share: task.vdaf.decode_aggregate_share(&row.get::<Vec<u8>, _>(0)).map_err(|_| corrupt())?,
            report_count: row.get::<i64, _>(1) as u64,
            checksum: BatchChecksum(row.get::<Vec<u8>, _>(2).try_into().map_err(|_| corrupt())?),
            min_time: Time::from_units(row.get::<i64, _>(3) as u64),
            max_time: Time::from_units(row.get::<i64, _>(4) as u64),
        })
    }

    /// Combines every bucket shard of a batch: a time-interval batch `[start, end)` or a
    /// leader-selected batch ID. `None` if the batch holds no reports.
    pub async fn batch_values(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<Option<BucketValues>, StoreError> {
        let rows = match batch {
            Batch::TimeInterval(interval) => {
                let end = interval.end().ok_or_else(|| StoreError::Internal("interval overflow".into()))?;
                // Time-interval bucket keys are big-endian unit numbers, so byte order is time
                // order and the batch is a key range.
                sqlx::query(
                    "SELECT aggregate_share, report_count, checksum, min_time, max_time FROM batch_aggregations
                     WHERE task_id = $1 AND bucket >= $2 AND bucket < $3",
                )
                .bind(task.id.as_bytes().as_slice())
                .bind(BatchBucket::TimeInterval(interval.start).key())
                .bind(BatchBucket::TimeInterval(end).key())
                .fetch_all(&mut **tx)
                .await
                .map_err(StoreError::from)?
            }
            Batch::LeaderSelected(id) => sqlx::query(
                "SELECT aggregate_share, report_count, checksum, min_time, max_time FROM batch_aggregations
                 WHERE task_id = $1 AND bucket = $2",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(id.as_bytes().as_slice())
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::from)?,
        };
        let mut total: Option<BucketValues> = None;
        for row in &rows {
            let v = Self::bucket_values_from_row(task, row)?;
            match &mut total {
                Some(t) => t.merge(&v)?,
                None => total = Some(v),
            }
        }
        Ok(total)
    }

    /// Whether a bucket lies in an already collected batch.
    pub async fn bucket_collected(tx: &mut Tx<'_>, task: &Task, bucket: &BatchBucket) -> Result<bool, StoreError> {
        let row = match bucket {
            BatchBucket::TimeInterval(t) => sqlx::query(
                "SELECT 1 FROM collected_batches WHERE task_id = $1 AND batch_start <= $2 AND batch_end > $3 LIMIT 1",
            )
            .bind(task.id.as_bytes().as_slice())
            .bind(t.units() as i64)
            .bind(t.units() as i64),
            BatchBucket::LeaderSelected(id) => {
                sqlx::query("SELECT 1 FROM collected_batches WHERE task_id = $1 AND batch_id = $2 LIMIT 1")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
            }
        }
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(row.is_some())
    }

    /// [`SqlStore::bucket_collected`], asked once per bucket within a step.
    pub async fn bucket_collected_cached(
        tx: &mut Tx<'_>,
        task: &Task,
        bucket: &BatchBucket,
        cache: &mut HashMap<BatchBucket, bool>,
    ) -> Result<bool, StoreError> {
        if let Some(c) = cache.get(bucket) {
            return Ok(*c);
        }
        let c = Self::bucket_collected(tx, task, bucket).await?;
        cache.insert(*bucket, c);
        Ok(c)
    }

    /// Whether any part of the batch was already collected.
    pub async fn batch_overlaps_collected_tx(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<bool, StoreError> {
        let row = match batch {
            Batch::TimeInterval(i) => {
                let end = i.end().ok_or_else(|| StoreError::Internal("interval overflow".into()))?;
                sqlx::query(
                    "SELECT 1 FROM collected_batches WHERE task_id = $1 AND batch_start < $2 AND batch_end > $3 LIMIT 1",
                )
                .bind(task.id.as_bytes().as_slice())
                .bind(end.units() as i64)
                .bind(i.start.units() as i64)
            }
            Batch::LeaderSelected(id) => {
                sqlx::query("SELECT 1 FROM collected_batches WHERE task_id = $1 AND batch_id = $2 LIMIT 1")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
            }
        }
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?;
        Ok(row.is_some())
    }

    pub async fn mark_collected(tx: &mut Tx<'_>, task: &Task, batch: &Batch, now: i64) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO collected_batches (task_id, batch_start, batch_end, batch_id, collected_at_seconds)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(task.id.as_bytes().as_slice());
        let q = match batch {
            Batch::TimeInterval(i) => {
                let end = i.end().ok_or_else(|| StoreError::Internal("interval overflow".into()))?;
                q.bind(Some(i.start.units() as i64)).bind(Some(end.units() as i64)).bind(None::<Vec<u8>>)
            }
            Batch::LeaderSelected(id) => q.bind(None::<i64>).bind(None::<i64>).bind(Some(id.as_bytes().to_vec())),
        };
        q.bind(now).execute(&mut **tx).await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Undoes [`SqlStore::mark_collected`] for a batch of which nothing was released.
    pub async fn unmark_collected(tx: &mut Tx<'_>, task: &Task, batch: &Batch) -> Result<(), StoreError> {
        let q = match batch {
            Batch::TimeInterval(i) => {
                let end = i.end().ok_or_else(|| StoreError::Internal("interval overflow".into()))?;
                sqlx::query("DELETE FROM collected_batches WHERE task_id = $1 AND batch_start = $2 AND batch_end = $3")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(i.start.units() as i64)
                    .bind(end.units() as i64)
            }
            Batch::LeaderSelected(id) => {
                sqlx::query("DELETE FROM collected_batches WHERE task_id = $1 AND batch_id = $2")
                    .bind(task.id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
            }
        };
        q.execute(&mut **tx).await.map_err(StoreError::from)?;
        Ok(())
    }
}
