-- Expand: what an operation's answer needs beyond its call and Klarna's ids (the fee of a
-- due-date extension), kept when its outcome is unknown so that whoever settles it later can
-- answer in full. Only an addition: a release that does not know it leaves it NULL.
ALTER TABLE operations ADD COLUMN answer_context TEXT;
