-- The schema as it shipped has no index for reading a timeline: which index the feed needs is
-- part of the fix, so stage-1 owns that migration (stages/stage-1/migrations/). 0001 created one
-- here; it is dropped rather than edited out of 0001, so databases that applied 0001 keep their
-- migration history valid.
drop index if exists idx_posts_user_created;
