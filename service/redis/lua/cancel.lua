-- cancel.lua: cancel a job. A waiting one (queued, or retrying after a backoff) is cancelled here
-- and leaves its queue; a running one gets the durable flag and a push to every worker.
--
-- KEYS[1]  record       <ns>:job:<id>              hash, the live JobRecord
-- KEYS[2]  result       arq:result:<ns>:<id>       string, an ended job's final record
-- KEYS[3]  checkpoint   <ns>:checkpoint:<id>       string, deleted with a waiting job
-- KEYS[4]  queue        the job's queue (optional: the caller learns it from a first call)
-- ARGV[1]  reason
-- ARGV[2]  now ms
-- ARGV[3]  the service's result TTL s (when the job's request sets no result_ttl_s)
-- ARGV[4]  arq job id (the job's member in its queue)
-- ARGV[5]  the ErrorInfo JSON a job cancelled while waiting ends with
-- ARGV[6]  the job channel (<ns>:ch:job:<id>)
-- ARGV[7]  the cancel channel (<ns>:ch:cancel)
-- ARGV[8]  job id
-- ARGV[9]  the cancel's time (ms), ARGV[10] its signature ('' when unsigned; service.signing)
-- Reply: {what, the state it was in}, what being
--   'missing'    no record, live or final;
--   'finished'   it had ended (state: how; '' if its final record is unreadable): nothing changed;
--   'running'    the flag is set and the workers were told ({"job_id", "reason", "generation": the
--                record's enqueued_at_ms, "ts", "sig"}): the outcome follows;
--   'cancelled'  it was waiting: it is cancelled and will never run;
--   'queue'      it is waiting in the queue named as the state, and KEYS[4] did not name that
--                queue: nothing changed; call again with it.

local record = KEYS[1]
local live = redis.call('HMGET', record, 'state', 'watched', 'queue', 'request', 'attempt', 'enqueued_at_ms')
local state = live[1]
if not state then
  local ended = redis.call('GET', KEYS[2])
  if not ended then return {'missing', ''} end
  local ok, final = pcall(cjson.decode, ended)
  local how = ok and type(final) == 'table' and type(final.actionq) == 'table' and final.actionq.state
  return {'finished', type(how) == 'string' and how or ''}
end
if TERMINAL[state] then return {'finished', state} end
if state == 'running' then
  redis.call('HSET', record, 'cancel_requested', ARGV[1])
  -- The push names the job's generation (when it was submitted), so that a worker that remembers
  -- it for a job it has not started yet never applies it to a later job reusing the id.
  local generation = to_int(live[6], 0)
  redis.call('PUBLISH', ARGV[7], '{"job_id":' .. cjson.encode(ARGV[8]) .. ',"reason":' .. cjson.encode(ARGV[1]) ..
    ',"generation":' .. string.format('%d', generation) .. ',"ts":' .. ARGV[9] .. ',"sig":' .. cjson.encode(ARGV[10]) ..
    '}')
  return {'running', state}
end
local queue = live[3] or ''
if KEYS[4] ~= queue then return {'queue', queue} end
redis.call('ZREM', queue, ARGV[4])
redis.call('DEL', KEYS[3])
local seq = redis.call('HINCRBY', record, 'seq', 1)
redis.call('HSET', record, 'state', 'cancelled', 'cancel_requested', ARGV[1], 'finished_at_ms', ARGV[2],
  'error', ARGV[5])
-- The job's own result TTL when it set one, else the service's.
local ok, request = pcall(cjson.decode, live[4] or '')
local ttl = ok and type(request) == 'table' and type(request.options) == 'table' and request.options.result_ttl_s
if type(ttl) ~= 'number' then ttl = tonumber(ARGV[3]) end
redis.call('EXPIRE', record, ttl)
publish_state(live[2], ARGV[6], ARGV[8], 'cancelled', to_int(live[5], 0), seq)
return {'cancelled', state}
