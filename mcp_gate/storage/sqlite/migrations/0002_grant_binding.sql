-- A grant covers calls under the same manifest rule, policy version and tool definition only.
ALTER TABLE grants ADD COLUMN rule TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN policy_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN pin TEXT NOT NULL DEFAULT '';
