-- HPKE key rotation: when a key entered its state, so that a retired key is deleted only after
-- clients can no longer hold it in their caches. 'expired' is the retired state: no longer
-- advertised, still accepted.
ALTER TABLE hpke_keys ADD COLUMN state_changed_at_seconds INTEGER NOT NULL DEFAULT 0;
UPDATE hpke_keys SET state_changed_at_seconds = created_at_seconds;
