-- THE LESSON, part two: the feed asks for one timeline, newest first, ties broken by id. Without an
-- index Postgres reads every post (Seq Scan) and sorts the user's rows to find the newest 20. An
-- index in exactly that order (user_id first, then the sort keys with their directions) lets it
-- read the first N entries of one user's range and stop: no scan of the table, no sort.
create index idx_posts_user_created on posts (user_id, created_at desc, id desc);
