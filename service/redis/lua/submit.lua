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
-- then nine per job (ARGV[3 + 9j + 1 ..]): request JSON, now ms, score ms (run-at), arq job id,
--   check ('1': the id may exist, look; '0': a fresh uuid, skip the look), watch ('1': publish
--   its changes from the start), job id, queue-wait limit ms ('' for none), lease ms (of a job
--   handed over).
-- A job handed to a worker goes out on its channel as "<arq id>\n<queue>\n<now ms>\n<request JSON>".
-- Reply, per job: {1} queued; {1, worker id} handed to that idle worker (claimed and started
--   here, exactly as a take would); {0, existing request, its state, ''} the id is taken by a
--   live job; {0, '', '', final record} the id is taken by an ended job.
--
-- A ready job that finds an idle worker listed for its queue is handed to it: its attempt starts
-- here and the job goes out on the worker's channel (one round trip less than wake + take). A
-- busy worker with room, listed as '~' .. id, is woken instead, once (it lists itself again at
-- its next take). With nobody listed every worker of the queue is busy or full and looks again
-- when it can: nothing is sent. A deferred job wakes every worker of its queue (once per call),
-- so that each one waits for the right time. A live record has no TTL: it goes with the job.

local wake_channel, worker_channel, job_channel = ARGV[1], ARGV[2], ARGV[3]
local woke = {}

local function create(k, a)
  local record, queue, idle, lease, result = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local job = {
    request = ARGV[a + 1], now = ARGV[a + 2], score = ARGV[a + 3], arq_id = ARGV[a + 4], check = ARGV[a + 5],
    watch = ARGV[a + 6], id = ARGV[a + 7], expires = ARGV[a + 8], lease_ms = ARGV[a + 9],
  }
  if job.check == '1' then
    local live = redis.call('HMGET', record, 'request', 'state')
    if live[1] then return {0, live[1], live[2] or '', ''} end
    local ended = redis.call('GET', result)
    if ended then return {0, '', '', ended} end
  end
  local extra = {'request', job.request, 'queue', queue, 'enqueued_at_ms', job.now, 'scheduled_at_ms', job.score}
  if job.expires ~= '' then extra[#extra + 1] = 'expires_at_ms'; extra[#extra + 1] = job.expires end
  if job.watch == '1' then extra[#extra + 1] = 'watched'; extra[#extra + 1] = '1' end
  local ready, worker = tonumber(job.score) <= tonumber(job.now), nil
  if ready then worker = redis.call('ZRANGEBYSCORE', idle, job.now, '+inf', 'LIMIT', 0, 1)[1] end
  if worker and string.sub(worker, 1, 1) ~= '~' then  -- an idle worker: hand the job over
    redis.call('ZREM', idle, worker)
    redis.call('HSET', record, unpack(attempt_fields(worker, 1, 1, job.now, extra)))
    redis.call('SET', lease, worker, 'PX', job.lease_ms)
    redis.call('ZADD', queue, tonumber(job.now) + tonumber(job.lease_ms), job.arq_id)
    publish_if_watched(job.watch == '1', job_channel .. job.id, state_message(job.id, 'running', 1, 1))
    redis.call('PUBLISH', worker_channel .. worker, job.arq_id .. '\n' .. queue .. '\n' .. job.now .. '\n' .. job.request)
    return {1, worker}
  end
  extra[#extra + 1] = 'state'; extra[#extra + 1] = 'queued'
  extra[#extra + 1] = 'attempt'; extra[#extra + 1] = 0
  extra[#extra + 1] = 'seq'; extra[#extra + 1] = 0
  redis.call('HSET', record, unpack(extra))
  redis.call('ZADD', queue, job.score, job.arq_id)
  if worker then  -- a busy worker with room: woken once, it takes this job (and what follows) in a batch
    redis.call('ZREM', idle, worker)
    redis.call('PUBLISH', worker_channel .. string.sub(worker, 2), queue)
  elseif not ready and not woke[queue] then  -- deferred: every worker of the queue looks again, to wait for it
    woke[queue] = true
    redis.call('PUBLISH', wake_channel, queue)
  end
  return {1}
end

local replies = {}
for j = 0, #KEYS / 5 - 1 do replies[j + 1] = create(j * 5, 3 + j * 9) end
return replies
