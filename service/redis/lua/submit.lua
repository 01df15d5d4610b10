-- submit.lua: create jobs (one or many): the record and the queue entry together, or nothing.
--
-- KEYS, five per job (job j = 0, 1, ...: KEYS[5j+1 .. 5j+5]):
--   record      <ns>:job:<id>               hash, the live JobRecord
--   queue       <ns>:queue:<lane>:<plugin>[@<host>]   zset, arq job id -> run-at ms
--   idle        <ns>:idle:<lane>:<plugin>[@<host>]    zset, workers waiting for the queue's jobs
--   lease       arq:in-progress:<ns>:<id>   string, set when the job is handed straight to a worker
--   result      arq:result:<ns>:<id>        string, an ended job's final record (idempotency check)
-- ARGV[1]  the wake channel (<ns>:ch:wake)
-- ARGV[2]  the worker channel prefix (<ns>:ch:worker:, + a worker id)
-- ARGV[3]  the job channel prefix (<ns>:ch:job:, + a job id)
--          (on Redis Cluster the three are the jobs' partition's sharded channels,
--          {<tag>}<ns>:ch:..., whose SPUBLISH counts the receivers on this node: exactly the
--          workers that hear it)
-- then ten per job (ARGV[3 + 10j + 1 ..]): request JSON, now ms, score ms (run-at), arq job id,
--   check ('1': the id may exist, look; '0': a fresh uuid, skip the look), watch ('1': publish
--   its changes from the start, beginning with a 'queued' state message of seq 0), job id,
--   queue-wait limit ms ('' for none), lease ms (of a job handed over), the request's signature
--   ('' when unsigned; service.signing).
-- A job handed to a worker goes out on its channel as
-- "<arq id>\n<queue>\n<now ms>\n<signature>\n<request JSON>";
-- a busy worker is woken with "<queue> <arq id>" (names have no spaces), and takes that job first.
-- Reply, per job: {1} queued; {1, worker id} handed to that idle worker (claimed and started
--   here, exactly as a take would); {0, existing request, its state, ''} the id is taken by a
--   live job; {0, '', '', final record} the id is taken by an ended job.
--
-- A ready job that finds an idle worker listed for its queue is handed to it: its attempt starts
-- here and the job goes out on the worker's channel (one round trip less than wake + take), and
-- the worker is listed as busy with room in its place. A busy worker with room, listed as '~' ..
-- id, is woken instead, once (it lists itself again at its next take), with the job's id. With
-- nobody listed every worker of the queue is busy or full and looks again when it can: nothing is
-- sent, and the call's later jobs for that queue do not look. A deferred job wakes every worker of
-- its queue (once per call), so that each one waits for the right time. A live record has no TTL: it goes with
-- the job.

local wake_channel, worker_channel, job_channel = ARGV[1], ARGV[2], ARGV[3]
local woke = {}
local nobody = {}  -- idle sets found empty in this call: no later job of the call looks again

local function create(k, a)
  local record, queue, idle, lease, result = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local request, now, score, arq_id, check = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local watch, id, expires, lease_ms, sig = ARGV[a + 6] == '1', ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]
  if check == '1' then
    local live = redis.call('HMGET', record, 'request', 'state')
    if live[1] then return {0, live[1], live[2] or '', ''} end
    local ended = redis.call('GET', result)
    if ended then return {0, '', '', ended} end
  end
  local optional = {}  -- the record's optional fields
  if expires ~= '' then optional[#optional + 1] = 'expires_at_ms'; optional[#optional + 1] = expires end
  if watch then optional[#optional + 1] = 'watched'; optional[#optional + 1] = '1' end
  if sig ~= '' then optional[#optional + 1] = 'sig'; optional[#optional + 1] = sig end
  -- Followed from the start: a subscriber hears the job exist (seq 0, the record's seq), then every change.
  publish_state(watch, job_channel .. id, id, 'queued', 0, 0)
  local ready, worker, listed_until = tonumber(score) <= tonumber(now), nil, nil
  if ready and not nobody[idle] then
    local listed = redis.call('ZRANGEBYSCORE', idle, now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    worker, listed_until = listed[1], listed[2]
    if not worker then nobody[idle] = true end
  end
  local handed = 0
  if worker and string.sub(worker, 1, 1) ~= '~' then  -- an idle worker: hand the job over...
    redis.call('ZREM', idle, worker)
    -- ...if it hears it: a worker whose subscription has not come back (Redis restarted, say)
    -- would leave the job claimed and unrun until its lease lapsed. Nothing it receives can run
    -- before this script has written the record below.
    handed = publish(worker_channel .. worker,
      arq_id .. '\n' .. queue .. '\n' .. now .. '\n' .. sig .. '\n' .. request)
    if handed == 0 then worker = nil end  -- not listening: its stale listing is gone, the job waits
  end
  if worker and handed > 0 then
    -- Listed as one to wake in its place: it has a job now, and (most likely) room for the next,
    -- which then wakes it naming the job instead of waiting, unannounced, for its next look.
    redis.call('ZADD', idle, listed_until, '~' .. worker)
    local fields = attempt_fields(worker, 1, 1, now, optional)
    redis.call('HSET', record, 'request', request, 'queue', queue, 'enqueued_at_ms', now, 'scheduled_at_ms', score,
      unpack(fields))
    redis.call('SET', lease, worker, 'PX', lease_ms)
    redis.call('ZADD', queue, tonumber(now) + tonumber(lease_ms), arq_id)
    publish_state(watch, job_channel .. id, id, 'running', 1, 1)
    return {1, worker}
  end
  redis.call('HSET', record, 'state', 'queued', 'request', request, 'queue', queue, 'attempt', 0,
    'enqueued_at_ms', now, 'scheduled_at_ms', score, 'seq', 0, unpack(optional))
  redis.call('ZADD', queue, score, arq_id)
  if worker then  -- a busy worker with room: woken once, it takes
    -- this job (and what follows) in a batch
    redis.call('ZREM', idle, worker)
    local name = string.sub(worker, 1, 1) == '~' and string.sub(worker, 2) or worker
    publish(worker_channel .. name, queue .. ' ' .. arq_id)
  elseif not ready and not woke[queue] then  -- deferred: every worker of the queue looks again, to wait for it
    woke[queue] = true
    publish(wake_channel, queue)
  end
  return {1}
end

local replies = {}
for j = 0, #KEYS / 5 - 1 do replies[j + 1] = create(j * 5, 3 + j * 10) end
return replies
