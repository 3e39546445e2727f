-- Token buckets of all the tiers of one request, checked and consumed in one atomic step.
--
-- KEYS[i]  the bucket of tier i: a hash with `tokens` (a float) and `ts` (microseconds of server time
--          at the last update). A missing bucket is a full one.
-- ARGV     per tier, in the order of KEYS: limit (bucket size; refills `limit` tokens per window),
--          then the window in microseconds.
--
-- Returns {1, i, remaining, full_ms} when the request is allowed (one token taken from every tier; i is
--         the tier with the fewest tokens left, `remaining` their count, `full_ms` the time until that
--         bucket is full again),
--      or {0, i, wait_ms, full_ms} when it is refused: tier i is the one whose next token is furthest
--         away (`wait_ms`). A refused request changes nothing, in any tier.
--
-- The clock is the server's (TIME), so every gateway process sharing this Redis sees one timeline.
-- Redis 5+ replicates scripts by effects, which a script calling TIME needs.

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local count = #KEYS
local levels = {}
local refused, longest_wait = 0, -1

for i = 1, count do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local stored = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = limit
  if stored[1] and stored[2] then
    tokens = tonumber(stored[1])
    local elapsed = now - tonumber(stored[2])
    -- A clock that steps back (failover to a replica) must not drain buckets.
    if elapsed > 0 then
      tokens = tokens + elapsed * limit / window
    end
    if tokens > limit then
      tokens = limit
    end
  end
  levels[i] = tokens
  if tokens < 1 then
    local wait = (1 - tokens) * window / limit
    if wait > longest_wait then
      refused, longest_wait = i, wait
    end
  end
end

if refused > 0 then
  local limit = tonumber(ARGV[2 * refused - 1])
  local window = tonumber(ARGV[2 * refused])
  local full = (limit - levels[refused]) * window / limit
  return {0, refused, math.ceil(longest_wait / 1000), math.ceil(full / 1000)}
end

local tightest, fewest, tightest_full = 0, -1, 0
for i = 1, count do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local left = levels[i] - 1
  local full_ms = math.ceil((limit - left) * window / limit / 1000)
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left), 'ts', string.format('%.0f', now))
  -- Once full again the bucket is the same as no bucket: let it expire then.
  redis.call('PEXPIRE', KEYS[i], full_ms + 1)
  local whole = math.floor(left)
  if fewest < 0 or whole < fewest or (whole == fewest and full_ms > tightest_full) then
    tightest, fewest, tightest_full = i, whole, full_ms
  end
end
return {1, tightest, fewest, tightest_full}
