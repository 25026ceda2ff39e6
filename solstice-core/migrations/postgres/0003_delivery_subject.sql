-- What a delivery is about (`owner/name@commit`), to find the delivery a
-- forge's "run the checks of this commit again" refers to.
ALTER TABLE deliveries ADD COLUMN subject TEXT;
CREATE INDEX deliveries_subject ON deliveries (forge, subject, received_at);
