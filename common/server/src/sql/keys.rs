//! The aggregator's HPKE keys and their rotation: added pending, promoted to active (advertised),
//! retired (no longer advertised, still opening what clients encrypted from a cached
//! configuration), and deleted once no client can still hold them.

use super::{SqlStore, KEY_CACHE_SECONDS};
use crate::sealing::SealedColumn;
use crate::storage::Storage as _;
use crate::storage::{first_free_config_id, HpkeKeyRecord, HpkeKeyState, StoreError, RETIRED_KEY_GRACE_SECONDS};
use duet_common::hpke::{HpkeKeypair, HpkePrivateKey};
use duet_common::messages::{HpkeConfig, HpkeConfigId};
use duet_common::{Decode, Encode};
use sqlx::any::AnyRow;
use sqlx::Row;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored HPKE {what} is corrupt"))
}

fn record(r: &AnyRow) -> Result<HpkeKeyRecord, StoreError> {
    Ok(HpkeKeyRecord {
        config: HpkeConfig::get_decoded(&r.get::<Vec<u8>, _>("config")).map_err(|_| corrupt("config"))?,
        state: HpkeKeyState::from_db(&r.get::<String, _>("state")).ok_or_else(|| corrupt("key state"))?,
        created_at_seconds: r.get("created_at_seconds"),
        state_changed_at_seconds: r.get("state_changed_at_seconds"),
    })
}

/// One key's row inside a step's transaction; `NotFound` if there is none.
async fn key_row(tx: &mut super::Tx<'_>, id: HpkeConfigId) -> Result<AnyRow, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM hpke_keys WHERE config_id = $1"))
        .bind(i64::from(id.0))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| StoreError::NotFound(format!("no HPKE key with config ID {}", id.0)))
}

const COLUMNS: &str = "config_id, config, private_key, state, created_at_seconds, state_changed_at_seconds";

impl SqlStore {
    /// The keys that open input shares, active first; within a state the most recently changed
    /// first, so that clients, which take the first configuration they support, prefer the key
    /// activated last.
    /// Served from memory for [`KEY_CACHE_SECONDS`] after each read ([`Self::forget_keypairs`]
    /// makes the next call read).
    pub(super) async fn hpke_keypairs_inner(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError> {
        let now = self.now_seconds();
        if let Some((at, keys)) = &*self.keypairs.read().unwrap_or_else(|e| e.into_inner()) {
            if now - at < KEY_CACHE_SECONDS {
                return Ok(keys.clone());
            }
        }
        let keys = self.read_keypairs().await?;
        *self.keypairs.write().unwrap_or_else(|e| e.into_inner()) = Some((now, keys.clone()));
        Ok(keys)
    }

    /// Makes the next [`Self::hpke_keypairs_inner`] read the keys (this replica changed them).
    pub(super) fn forget_keypairs(&self) {
        *self.keypairs.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The keys as stored; creates the first active key when there is none.
    async fn read_keypairs(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError> {
        let keys = self.load_keypairs().await?;
        if keys.iter().any(|(_, state)| *state == HpkeKeyState::Active) {
            return Ok(keys);
        }
        // First use (or only pending keys so far): an active key under the smallest free ID.
        let taken: Vec<u8> = keys.iter().map(|(k, _)| k.config().id.0).collect();
        let id = first_free_config_id(&taken)
            .ok_or_else(|| StoreError::Conflict("all 256 HPKE config IDs are taken and none is active".into()))?;
        let kp = HpkeKeypair::generate_default(id);
        let (config, sealed) = self.stored_key(&kp)?;
        let now = self.now_seconds();
        sqlx::query(&format!(
            "INSERT INTO hpke_keys ({COLUMNS}) VALUES ($1, $2, $3, 'active', $4, $4) ON CONFLICT DO NOTHING"
        ))
        .bind(i64::from(id.0))
        .bind(config)
        .bind(sealed)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(StoreError::from)?;
        // Another replica may have won the race with a key of its own; either is fine.
        self.load_keypairs().await
    }

    /// A key as stored: its encoded configuration, and its private key sealed, bound to that
    /// configuration (config ID and public key).
    fn stored_key(&self, kp: &HpkeKeypair) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let config = kp.config().get_encoded().map_err(|e| StoreError::Internal(e.to_string()))?;
        let sealed = self.keys.seal(SealedColumn::HpkePrivateKey, &config, kp.private_key().as_bytes());
        Ok((config, sealed))
    }

    /// Seals the private keys a database written before sealing holds in the clear, and seals
    /// again under the first database key those an older key sealed (at start-up). Returns how
    /// many it sealed.
    pub(super) async fn seal_stored_private_keys(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query("SELECT config_id, config, private_key FROM hpke_keys").fetch_all(&mut *tx).await?;
        let mut sealed = 0;
        for r in &rows {
            let (config, stored): (Vec<u8>, Vec<u8>) = (r.get("config"), r.get("private_key"));
            let id: i64 = r.get("config_id");
            let resealed = self
                .keys
                .reseal(SealedColumn::HpkePrivateKey, &config, &stored)
                .map_err(|e| StoreError::Sealed(format!("stored HPKE key {id}: its private key {e}")))?;
            let Some(resealed) = resealed else { continue };
            sqlx::query("UPDATE hpke_keys SET private_key = $1 WHERE config_id = $2")
                .bind(resealed)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sealed += 1;
        }
        tx.commit().await?;
        Ok(sealed)
    }

    async fn load_keypairs(&self) -> Result<Vec<(HpkeKeypair, HpkeKeyState)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM hpke_keys
             ORDER BY CASE state WHEN 'active' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,
                      state_changed_at_seconds DESC, created_at_seconds DESC, config_id DESC"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        rows.iter()
            .map(|r| {
                let rec = record(r)?;
                let private = self
                    .keys
                    .open(
                        SealedColumn::HpkePrivateKey,
                        &r.get::<Vec<u8>, _>("config"),
                        &r.get::<Vec<u8>, _>("private_key"),
                    )
                    .map_err(|e| {
                        StoreError::Sealed(format!("stored HPKE key {}: its private key {e}", rec.config.id.0))
                    })?;
                let kp =
                    HpkeKeypair::new(rec.config, HpkePrivateKey::new(private.to_vec())).map_err(|_| corrupt("key"))?;
                Ok((kp, rec.state))
            })
            .collect()
    }

    pub(super) async fn hpke_keys_inner(&self) -> Result<Vec<HpkeKeyRecord>, StoreError> {
        // Creates the first key if there is none, so that the list shows what clients see.
        self.hpke_keypairs_inner().await?;
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM hpke_keys ORDER BY config_id"))
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::from)?;
        rows.iter().map(record).collect()
    }

    pub(super) async fn add_hpke_key_inner(&self, kp: &HpkeKeypair) -> Result<HpkeKeyRecord, StoreError> {
        // The first key is made before the new one, so that the new one stays pending.
        self.hpke_keypairs_inner().await?;
        let mut tx = self.begin().await?;
        let id = i64::from(kp.config().id.0);
        let taken =
            sqlx::query("SELECT 1 FROM hpke_keys WHERE config_id = $1").bind(id).fetch_optional(&mut *tx).await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!("HPKE config ID {id} is taken")));
        }
        let now = self.now_seconds();
        let (config, sealed) = self.stored_key(kp)?;
        sqlx::query(&format!("INSERT INTO hpke_keys ({COLUMNS}) VALUES ($1, $2, $3, 'pending', $4, $4)"))
            .bind(id)
            .bind(config)
            .bind(sealed)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(HpkeKeyRecord {
            config: kp.config().clone(),
            state: HpkeKeyState::Pending,
            created_at_seconds: now,
            state_changed_at_seconds: now,
        })
    }

    pub(super) async fn set_hpke_key_state_inner(
        &self,
        id: HpkeConfigId,
        state: HpkeKeyState,
    ) -> Result<HpkeKeyRecord, StoreError> {
        let mut tx = self.begin().await?;
        let row = key_row(&mut tx, id).await?;
        let mut rec = record(&row)?;
        if rec.state == state {
            return Ok(rec);
        }
        match (rec.state, state) {
            (_, HpkeKeyState::Active) => {}
            (HpkeKeyState::Active, HpkeKeyState::Retired) => {
                let active = sqlx::query("SELECT COUNT(*) FROM hpke_keys WHERE state = 'active'")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::from)?
                    .get::<i64, _>(0);
                if active <= 1 {
                    return Err(StoreError::Conflict(format!(
                        "HPKE key {} is the only active key; activate another before retiring it",
                        id.0
                    )));
                }
            }
            (from, to) => {
                return Err(StoreError::Conflict(format!(
                    "HPKE key {} is {}; it cannot become {} (a pending key is activated or deleted)",
                    id.0,
                    from.label(),
                    to.label()
                )))
            }
        }
        let now = self.now_seconds();
        sqlx::query("UPDATE hpke_keys SET state = $1, state_changed_at_seconds = $2 WHERE config_id = $3")
            .bind(state.db())
            .bind(now)
            .bind(i64::from(id.0))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        rec.state = state;
        rec.state_changed_at_seconds = now;
        Ok(rec)
    }

    pub(super) async fn delete_hpke_key_inner(&self, id: HpkeConfigId, force: bool) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row = key_row(&mut tx, id).await?;
        let rec = record(&row)?;
        match rec.state {
            HpkeKeyState::Active => {
                return Err(StoreError::Conflict(format!("HPKE key {} is active; retire it first", id.0)));
            }
            HpkeKeyState::Retired if !force => {
                let age = self.now_seconds() - rec.state_changed_at_seconds;
                if age < RETIRED_KEY_GRACE_SECONDS {
                    return Err(StoreError::Conflict(format!(
                        "HPKE key {} was retired {age} s ago; clients may still encrypt to it from a cached \
                         configuration for up to {RETIRED_KEY_GRACE_SECONDS} s after retirement \
                         (delete with force to drop it now: their reports will then be refused)",
                        id.0
                    )));
                }
            }
            _ => {}
        }
        sqlx::query("DELETE FROM hpke_keys WHERE config_id = $1")
            .bind(i64::from(id.0))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}
