-- A worker proves its id with the session secret it got at registration;
-- only the secret's SHA-256 (hex) is kept. Attempts keep their ring
-- secret's hash only: the secret itself goes to the ranks once, in their
-- assignments.
ALTER TABLE workers ADD COLUMN secret_sha256 TEXT;
UPDATE attempts SET secret = '';
