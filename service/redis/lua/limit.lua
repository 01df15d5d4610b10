-- limit.lua: concurrency limits across all workers — slots held under leases, and the jobs waiting.
--
-- A limit (a plugin's, or one of its actions': at most N attempts running in the whole
-- deployment) is a ZSET of slots, <ns>:limit:<plugin>[:<action>]: each member an attempt
-- ("<job id>#<attempt>") scored by its lease deadline on Redis's clock (TIME: the workers' clocks
-- may differ, and a slot must lapse for every one of them at the same moment). A slot past its
-- deadline is dead — its worker was killed, or lost Redis for a whole lease — and every call drops
-- the dead slots first: a dead worker's slot comes back within a lease, as its job does. The worker
-- renews its slots in the pipeline that renews its jobs' leases (service/worker/take.py).
--
-- A job refused waits in the refusing limit's waiting set, <ns>:limit-waiting:<plugin>[:<action>]
-- (member "<queue>\n<arq id>", scored by when it was submitted: the oldest is promoted first),
-- while its queue entry is parked a while ahead. When slots come free (a release, or a worker's
-- periodic look), the first waiters are promoted: their queue score becomes now, and a wake-up on
-- the wake channel has the workers take them. A waiter leaves the set when it gets its slots, or
-- when its job is gone or no longer queued.
--
-- ARGV[1] is the call, JSON: {"op": ...}. Every key is declared: the caller names the queue and
-- record of each waiter to promote (it learns them from the reply of "release").
--
-- op "acquire": a slot of each of an attempt's limits, all or none.
--   KEYS[1 .. L]       the limits' slot sets (the plugin's first, then the action's)
--   KEYS[L + 1 .. 2L]  their waiting sets, same order
--   ARGV[1]  {"op": "acquire", "member": "<job id>#<attempt>", "limits": [N, ...], "lease_ms": <ms>,
--             "waiter": "<queue>\n<arq id>", "submitted_ms": <ms>, "waiting_ttl_ms": <ms>}
--   Reply: {0, 0} acquired (the waiter leaves every waiting set); {i, held} refused by limit i,
--   which has `held` live slots (nothing is taken; the waiter joins limit i's waiting set).
--   An attempt that holds a slot already keeps it (counted once).
--
-- op "renew": extend slots this worker holds.
--   KEYS[1 .. S]  slot sets
--   ARGV[1]  {"op": "renew", "lease_ms": <ms>, "members": [[member, ...] per slot set]}
--   Reply: how many slots were renewed (a slot dropped as dead is not brought back).
--
-- op "release": give an attempt's slots back (or, with member "", only look), and say who is next.
--   KEYS[1 .. L]       slot sets;  KEYS[L + 1 .. 2L]  their waiting sets
--   ARGV[1]  {"op": "release", "member": "<job id>#<attempt>" or "", "limits": [N, ...], "extra": <k>}
--   Reply: per limit, {free slots, {the first free + k waiters}} (no waiters when none is free).
--
-- op "promote": make waiters of one limit ready now, as many as it has free slots.
--   KEYS[1]  the limit's waiting set; then per candidate c: KEYS[2c] its queue, KEYS[2c + 1] its record
--   ARGV[1]  {"op": "promote", "free": <n>, "now": "<ms, the queues' clock>", "wake_channel": "<ns>:ch:wake"}
--   ARGV[1 + c]  candidate c's waiter member; its arq id is the part after the newline
--   Reply: how many were promoted. Per candidate, in order, until `free` are counted:
--     queued, parked ahead   → its score becomes now (counted), a wake-up names its queue;
--     queued and ready       → counted (promoted already, not taken yet);
--     running                → counted (being given its slots, or being parked, at this moment);
--     gone, ended, retrying, not in its queue → leaves the waiting set (not counted).
--   With "waiting": false (Redis Cluster: the waiting set is in another slot than the jobs), KEYS
--   are the candidates' queue and record only (KEYS[2c - 1], KEYS[2c]), nothing leaves the set, and
--   the reply is per candidate: 2 promoted, 1 counted, 0 gone (the caller removes it), -1 not looked at.

local call = cjson.decode(ARGV[1])

-- Redis's clock, in ms: slots lapse by it, whichever worker looks.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keep `key` at least `ttl_ms` longer (a set left by every worker goes, after a while).
local function keep(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end

-- The live slots of `key` after dropping the dead ones.
local function live(key, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

local function acquire()
  local now, limits, member = server_ms(), call.limits, call.member
  local n = #limits
  for i, max in ipairs(limits) do
    local key = KEYS[i]
    local held = live(key, now)
    local mine = redis.call('ZSCORE', key, member)
    if mine then held = held - 1 end
    if held >= max then
      local waiting = KEYS[n + i]
      redis.call('ZADD', waiting, 'NX', call.submitted_ms, call.waiter)
      keep(waiting, call.waiting_ttl_ms)
      return {i, held}
    end
  end
  for i = 1, n do
    redis.call('ZADD', KEYS[i], now + call.lease_ms, member)
    keep(KEYS[i], 2 * call.lease_ms)
    redis.call('ZREM', KEYS[n + i], call.waiter)
  end
  return {0, 0}
end

local function renew()
  local deadline, renewed = server_ms() + call.lease_ms, 0
  for i, members in ipairs(call.members) do
    for _, member in ipairs(members) do
      if redis.call('ZSCORE', KEYS[i], member) then
        redis.call('ZADD', KEYS[i], deadline, member)
        renewed = renewed + 1
      end
    end
    keep(KEYS[i], 2 * call.lease_ms)
  end
  return renewed
end

local function release()
  local now, limits, replies = server_ms(), call.limits, {}
  local n = #limits
  for i, max in ipairs(limits) do
    if call.member ~= '' then redis.call('ZREM', KEYS[i], call.member) end
    local free = math.max(max - live(KEYS[i], now), 0)
    local next = {}
    if free > 0 then next = redis.call('ZRANGE', KEYS[n + i], 0, free + call.extra - 1) end
    replies[i] = {free, next}
  end
  return replies
end

local function promote()
  -- Without the waiting set (call.waiting == false: Redis Cluster, where it is in another slot than
  -- the jobs) KEYS are only the candidates' queue and record, and the reply says, per candidate, 2
  -- promoted, 1 counted, 0 gone (the caller takes it out of the waiting set), -1 not looked at.
  local with_set = call.waiting ~= false
  local first = with_set and 1 or 0
  local waiting, now, counted, promoted, woken, outcomes = KEYS[1], tonumber(call.now), 0, 0, {}, {}
  for c = 1, #ARGV - 1 do
    if counted >= call.free then
      outcomes[c] = -1
    else
      local waiter = ARGV[1 + c]
      local queue, record = KEYS[first + 2 * c - 1], KEYS[first + 2 * c]
      local arq_id = string.sub(waiter, string.find(waiter, '\n', 1, true) + 1)
      local state = redis.call('HGET', record, 'state')
      local score = tonumber(redis.call('ZSCORE', queue, arq_id))
      outcomes[c] = 1
      if state == 'running' then
        counted = counted + 1
      elseif state == 'queued' and score then
        counted = counted + 1
        if score > now then
          redis.call('ZADD', queue, 'XX', now, arq_id)
          promoted = promoted + 1
          woken[queue] = true
          outcomes[c] = 2
        end
      else
        outcomes[c] = 0
        if with_set then redis.call('ZREM', waiting, waiter) end
      end
    end
  end
  for queue in pairs(woken) do publish(call.wake_channel, queue) end
  if with_set then return promoted end
  return outcomes
end

local ops = {acquire = acquire, renew = renew, release = release, promote = promote}
return ops[call.op]()
