-- Token bucket for one user, decided atomically inside Redis.
--
-- KEYS[1]  the user's bucket (a hash: tokens, at)
-- ARGV[1]  capacity (the burst a user may spend at once)
-- ARGV[2]  refill rate, tokens per second
-- Returns  { admitted (1/0), tokens left (floor), µs until the next whole token, µs until full }
--
-- Why a script: Redis runs it as one step, so no other request can read the bucket between our
-- read and our write. With GET-then-SET from the service, fifty concurrent requests would all
-- read "1 token left" and all be admitted.
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])

-- Redis's clock, not the caller's: instances with skewed clocks still agree on the refill.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now

-- Refill for the time since the last request, never above capacity.
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate / 1000000)

local admitted = 0
if tokens >= 1 then
  tokens = tokens - 1
  admitted = 1
end

-- Until one more whole token is in the bucket: after a 429, when a retry is admitted
-- (Retry-After); after any request, how long `tokens left` is all the caller can spend (`t`).
local next_token_us = math.ceil((math.floor(tokens) + 1 - tokens) * 1000000 / rate)

local full_in_us = math.ceil((capacity - tokens) * 1000000 / rate)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
-- A bucket that has refilled completely holds no information: let Redis drop it.
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(full_in_us / 1000)))
return { admitted, math.floor(tokens), next_token_us, full_in_us }
