-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Each cluster's add-ons as the controller last checked them (a JSON array of AddonStatus);
-- NULL until the cluster first became ready.
ALTER TABLE clusters ADD COLUMN addons TEXT;
