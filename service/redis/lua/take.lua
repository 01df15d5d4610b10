-- take.lua: claim and start a batch of ready jobs for one worker, and keep its listing.
--
-- Every key this script touches is declared, so it can take only the jobs the caller names: the
-- candidates, with their record and lease keys in KEYS. It finds the next ones itself: after
-- taking, it reads each queue's head (ZRANGEBYSCORE) and returns the ready jobs it saw as hints,
-- which the caller names as candidates in its next call. A worker under load thus takes in one
-- round trip per take; one that finds ready jobs it did not know of calls again at once. A named
-- job is taken only if it is still ready (ZMSCORE: its score <= now) and unclaimed (the lease's
-- SET NX): another worker may have taken it since it was seen, or it may have ended or been
-- rescheduled.
--
-- KEYS[1 .. Q]           the worker's queues, in the order it reads them this time
-- KEYS[Q + 1 .. 2Q]      their idle sets (<ns>:idle:<lane>:<plugin>[@<host>]), same order
-- KEYS[2Q + 2c - 1]      record of candidate c (c = 1, 2, ...): <ns>:job:<id>
-- KEYS[2Q + 2c]          lease of candidate c: arq:in-progress:<ns>:<id>
-- ARGV[1]  the take, JSON:
--   {"now": "<ms>", "limit": <jobs to take at most>, "room": <the worker's free slots: limit unless
--    given; a call per partition on Redis Cluster is given a share of them to take>,
--    "ahead": <ready jobs to report for the next take>,
--    "lease_ms": <ms>, "worker": "<worker id>", "queues": Q, "job_channel": "<ns>:ch:job:",
--    "listing": {"current": "none" | "idle" | "wake", "ttl_ms": <0: do not list>, "fresh": <bool>,
--                "idle": <bool: nothing runs on this worker>, "used": [<queue index>, ...]}}
--   where `used` are the queues whose listing a submit used up (a hand-off or a wake-up).
-- ARGV[2 + 3(c - 1) ..]  candidate c: its queue index, arq job id, job id (plain values, not JSON:
--   a take of a hundred jobs decodes no per-job JSON); its channel is job_channel .. job id.
-- Reply: {due (ms, or -1), how the worker is listed now, {hints: queue index, arq id, ...}, then
--   per candidate taken or dropped: {arq id, queue index, status, attempt, request JSON, cancel
--   reason, enqueued at ms, problem, {bad fields}, the request's signature}}, status
--   'run'      its attempt started here (record running, attempt + 1, worker, seq + 1); a record still
--              running (its previous attempt's lease lapsed: its worker stopped answering) first gets
--              that attempt's history entry, `attempt:<n>` with state 'lost' (also for 'expired');
--   'expired'  past its queue-wait limit (expires_at_ms): claimed, not started; the worker fails it;
--   'malformed' its record cannot be run (problem: what is wrong, e.g. an integer field that is not
--              one, an unknown state, no request; bad fields: the integer fields at fault):
--              claimed, not started; the worker fails it with the problem and dead-letters it;
--   'missing'  its record is gone: it left its queue;
--   'ended'    its record had ended: it left its queue.
--   "due" is when to look again: the earliest score ahead in a queue's head (a deferred job, a
--   running one's lease), or when a lapsed claim whose lease outlived its score can be taken.
--
-- A taken job stays in its queue, as in arq, but with the score now + lease (ZADD XX): out of the
-- ready window of every worker. The worker renews that score and the lease together while the
-- job runs; a killed worker stops renewing, and the job falls due again within the lease.
--
-- The listing: a worker with free slots that took nothing, or not enough to fill them, lists
-- itself in each of its queues' idle sets, so that a submit finds it: as itself when nothing runs
-- on it (the submit hands it the job), as '~' .. itself when jobs run (the submit wakes it, once,
-- naming the job: a busy worker takes new work in batches). A full worker is not listed: it looks
-- again when a slot frees up. Renewed when stale, when its kind changes, and where a submit used
-- it up; left as it is when ready jobs remain for the worker's next call.

local take = cjson.decode(ARGV[1])
local now, limit, worker, lease_ms = tonumber(take.now), take.limit, take.worker, take.lease_ms
local room = take.room or limit
local nq = take.queues
local replies, due, taken, hints, jobs = {-1, 'none', {}}, -1, 0, {}, {}

local function due_at(ms)
  if due < 0 or ms < due then due = ms end
end

-- What is wrong with a live record that keeps it from starting ('' if nothing), and its bad fields.
local function malformed(r)
  local problems, bad = bad_integers({'attempt', 'seq', 'expires_at_ms', 'enqueued_at_ms'}, {r[2], r[3], r[6], r[7]})
  if not LIVE[r[1]] then
    problems[#problems + 1] = 'state: ' .. string.format('%q', string.sub(r[1], 1, 40)) .. ' is not a job state'
  end
  if not r[5] then problems[#problems + 1] = 'request: missing' end
  return table.concat(problems, '; '), bad
end

-- The history entry (service.models.AttemptInfo) of attempt `n` if the record says it is still running: it
-- never settled, and its lease lapsed (this take holds the lease now), so its worker stopped answering.
-- HSETNX: an entry written meanwhile stays as it is.
local function note_lost(record, r, n)
  if r[1] ~= 'running' or n < 1 then return end
  redis.call('HSETNX', record, 'attempt:' .. n,
    attempt_entry(n, r[10], r[11], 'lost', 'its worker stopped answering (lease lapsed)', nil))
end

local function start(queue, qi, job, record, lease)
  local r = redis.call('HMGET', record, 'state', 'attempt', 'seq', 'cancel_requested', 'request', 'expires_at_ms',
    'enqueued_at_ms', 'watched', 'sig', 'worker', 'started_at_ms')
  if not r[1] or TERMINAL[r[1]] then
    redis.call('ZREM', queue, job.arq_id)
    redis.call('DEL', lease)
    return {job.arq_id, qi, r[1] and 'ended' or 'missing', 0, '', '', 0, '', {}, ''}
  end
  local problem, bad = malformed(r)
  if problem ~= '' then  -- claimed, not started: the worker fails it with the problem
    return {job.arq_id, qi, 'malformed', 0, r[5] or '', '', 0, problem, bad, r[9] or ''}
  end
  local attempt, seq = to_int(r[2], 0) + 1, to_int(r[3], 0) + 1
  note_lost(record, r, attempt - 1)
  if r[6] and to_int(r[6], 0) < now then
    return {job.arq_id, qi, 'expired', attempt - 1, r[5], '', r[7] or 0, '', {}, r[9] or ''}
  end
  redis.call('HSET', record, unpack(attempt_fields(worker, attempt, seq, take.now, {})))
  publish_state(r[8], take.job_channel .. job.job_id, job.job_id, 'running', attempt, seq)
  return {job.arq_id, qi, 'run', attempt, r[5], r[4] or '', r[7] or 0, '', {}, r[9] or ''}
end

-- The scores of `ids` in `queue`, in slices (Lua's unpack stops at a few thousand values).
local function scores_of(queue, ids)
  local scores = {}
  for i = 1, #ids, 1000 do
    local part = redis.call('ZMSCORE', queue, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #part do scores[i + j - 1] = part[j] end
  end
  return scores
end

local function take_from(qi, candidates)
  local queue, ids, bumped = KEYS[qi], {}, {}
  for i, c in ipairs(candidates) do ids[i] = jobs[c].arq_id end
  local scores = scores_of(queue, ids)
  for i, c in ipairs(candidates) do
    if taken >= limit then break end
    local score, job = tonumber(scores[i]), jobs[c]
    local lease = KEYS[2 * nq + 2 * c]
    if score and score <= now then
      if redis.call('SET', lease, worker, 'NX', 'PX', lease_ms) then
        local reply = start(queue, qi, job, KEYS[2 * nq + 2 * c - 1], lease)
        replies[#replies + 1] = reply
        if reply[3] == 'run' or reply[3] == 'expired' or reply[3] == 'malformed' then
          taken = taken + 1
          bumped[#bumped + 1] = now + lease_ms
          bumped[#bumped + 1] = job.arq_id
        end
      else
        local left = redis.call('PTTL', lease)
        if left > 0 then due_at(now + left) end
      end
    end
  end
  for i = 1, #bumped, 1000 do
    redis.call('ZADD', queue, 'XX', unpack(bumped, i, math.min(i + 999, #bumped)))
  end
end

-- The head of queue `qi` after the take: its ready jobs become hints (as many as there are free
-- slots left, plus `ahead` for the next take), its first score ahead a due time.
local function look(qi)
  local wanted = room - taken + take.ahead
  local head = redis.call('ZRANGEBYSCORE', KEYS[qi], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, wanted + 1)
  for i = 1, #head, 2 do
    local score = tonumber(head[i + 1])
    if score > now then
      due_at(score)
      return
    end
    if i <= 2 * wanted then
      hints[#hints + 1] = qi
      hints[#hints + 1] = head[i]
    end
  end
end

local by_queue = {}
for c = 1, (#ARGV - 1) / 3 do
  local qi = tonumber(ARGV[3 * c - 1])
  jobs[c] = {arq_id = ARGV[3 * c], job_id = ARGV[3 * c + 1]}
  by_queue[qi] = by_queue[qi] or {}
  table.insert(by_queue[qi], c)
end
for qi = 1, nq do
  if by_queue[qi] and taken < limit then take_from(qi, by_queue[qi]) end
  look(qi)
end

local listing = take.listing
local current, want = listing.current, 'none'
if listing.ttl_ms > 0 and taken < room then want = (taken == 0 and listing.idle) and 'idle' or 'wake' end
if want ~= 'none' and #hints > 0 then want = current end  -- more is ready: the caller takes it next
local renew, used = want ~= current or not listing.fresh, {}
for _, qi in ipairs(listing.used) do used[qi] = true end
local function member(kind) return kind == 'idle' and worker or '~' .. worker end
if renew or #listing.used > 0 then
  for qi = 1, nq do
    local idle = KEYS[nq + qi]
    if want == 'none' then
      if current ~= 'none' then redis.call('ZREM', idle, worker, '~' .. worker) end
    elseif renew or used[qi] then
      if current == 'none' then redis.call('ZREMRANGEBYSCORE', idle, '-inf', now) end
      -- The other form goes: this worker's old kind, or the one a submit put in its place (a
      -- hand-off lists the worker as one to wake where it was idle).
      if current ~= 'none' and (current ~= want or used[qi]) then
        redis.call('ZREM', idle, member(want == 'idle' and 'wake' or 'idle'))
      end
      redis.call('ZADD', idle, now + listing.ttl_ms, member(want))
      redis.call('PEXPIRE', idle, listing.ttl_ms)
    end
  end
end
replies[1], replies[2], replies[3] = due, want, hints
return replies
