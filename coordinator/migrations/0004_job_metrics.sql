-- What a job's list entry shows without reading its log: the latest
-- training loss, validation loss, step time and throughput a rank reported,
-- and the target tokens trained so far (steps run again after a restart
-- count again: they were computed again).
ALTER TABLE jobs ADD COLUMN train_loss REAL;
ALTER TABLE jobs ADD COLUMN valid_loss REAL;
ALTER TABLE jobs ADD COLUMN step_seconds REAL;
ALTER TABLE jobs ADD COLUMN tokens_per_s REAL;
ALTER TABLE jobs ADD COLUMN trained_tokens BIGINT NOT NULL DEFAULT 0;
