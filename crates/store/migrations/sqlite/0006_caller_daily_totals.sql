-- Expand: what each caller has reserved per currency per UTC day, against its daily cap
-- (`max_amount_per_day` in the callers file). Only an addition: a release that does not know
-- it neither reads nor writes it (and enforces no daily cap).
--
-- One row per caller, currency and day, created by the day's first reservation; a
-- reservation adds to `total` only while it stays within the cap, a release gives back
-- (never below zero). `day` is the ISO date (YYYY-MM-DD), so days sort as text; `total` is
-- in minor units, as every amount of this store.
CREATE TABLE caller_daily_totals (
    caller   TEXT    NOT NULL,
    currency TEXT    NOT NULL,
    day      TEXT    NOT NULL
        CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    total    INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
    PRIMARY KEY (caller, currency, day)
) STRICT, WITHOUT ROWID;
