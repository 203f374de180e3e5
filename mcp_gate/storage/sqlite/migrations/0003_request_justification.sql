-- The requester's own words for a request, asked by elicitation (untrusted: shown, never decisive).
ALTER TABLE approvals ADD COLUMN justification TEXT;
