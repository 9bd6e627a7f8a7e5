-- The feed reads one user's timeline, newest first, ties broken by id: an index in exactly that
-- order lets Postgres read the first `limit` entries of that user's range and stop, with no scan
-- of the table and no sort.
create index idx_posts_user_created on posts (user_id, created_at desc, id desc);
