-- Expand: what each caller has reserved per currency per UTC day, against its daily cap
-- (`max_amount_per_day` in the callers file). Only an addition: a release that does not know
-- it neither reads nor writes it (and enforces no daily cap).
--
-- One row per caller, currency and day, created by the day's first reservation; a
-- reservation adds to `total` only while it stays within the cap, a release gives back
-- (never below zero). `total` is in minor units, as every amount of this store. Replicas
-- reserve with one INSERT … ON CONFLICT DO UPDATE each: the row lock serializes them.
CREATE TABLE caller_daily_totals (
    caller   TEXT   NOT NULL,
    currency TEXT   NOT NULL,
    day      DATE   NOT NULL,
    total    BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    PRIMARY KEY (caller, currency, day)
);
