-- PostgreSQL's first start (compose.yaml mounts this file into /docker-entrypoint-initdb.d).
-- One database per component, so that no component can read another's tables (docs/operator.md
-- "Database"); the owner is the compose file's POSTGRES_USER. In production give each
-- organisation a role of its own that owns only its databases.
CREATE DATABASE central;             -- the central operator: registry, consent service, translator
CREATE DATABASE machida;             -- Machida City's node
CREATE DATABASE machida_residents;   -- Machida's resident registry (the department's own database)
CREATE DATABASE machida_procedures;  -- Machida's one-stop desk and its procedure runners
CREATE DATABASE tokyo;               -- the Tokyo Metropolitan Government's node
CREATE DATABASE gas;                 -- Tama Gas's node

-- Example data of Machida's resident registry, keyed by its own code (住民票コード); the table is
-- declared to Machida's node in docs/examples/machida-residents.toml.
\connect machida_residents
CREATE TABLE residents (
  resident_code VARCHAR(32) PRIMARY KEY,
  address VARCHAR(200) NOT NULL,
  moved_in_on DATE NOT NULL
);
INSERT INTO residents (resident_code, address, moved_in_on) VALUES
  ('R-0001', '東京都町田市森野2-2-22', '2024-04-01'),
  ('R-0002', '東京都町田市原町田4-1-1', '2019-10-15'),
  ('R-0003', '東京都町田市鶴川1-2-3', '2021-06-30');
