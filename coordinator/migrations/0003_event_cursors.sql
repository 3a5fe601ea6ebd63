-- Agents number the events of each job attempt; the highest number stored
-- per rank's worker is kept beside the events, so a batch sent again after
-- a lost reply (or a coordinator restart) is stored once.
CREATE TABLE event_cursors (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, worker_id)
);
