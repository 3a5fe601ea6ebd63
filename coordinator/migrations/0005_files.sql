-- Files a tenant uploaded through the OpenAI-compatible API: a name, a
-- purpose and where the bytes are (the content-addressed upload under the
-- coordinator's data folder; several files may share one).
CREATE TABLE files (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    filename   TEXT    NOT NULL,
    purpose    TEXT    NOT NULL,
    bytes      BIGINT  NOT NULL,
    sha256     TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX files_by_tenant ON files (tenant_id, seq);

-- The request a job was created from through the OpenAI-compatible API
-- (model name, file ids, suffix, hyperparameters), as JSON.
CREATE TABLE job_requests (
    job_id  TEXT NOT NULL PRIMARY KEY REFERENCES jobs (id),
    request TEXT NOT NULL
);
