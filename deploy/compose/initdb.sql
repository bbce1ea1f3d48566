-- Run once by the postgres image, when its data volume is first initialised
-- (/docker-entrypoint-initdb.d). A database per role: the leader's and the helper's tables
-- must never be reachable from the other role's connection.
--
-- This is the single-host trial set-up. In production the leader and the helper are run by
-- two organisations, each with its own PostgreSQL server, administrators and backups.
CREATE DATABASE duet_leader;
CREATE DATABASE duet_helper;
